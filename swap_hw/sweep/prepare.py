"""Preparing a run: the data splits and the dense model (checkpoint, cache, or trained now)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import Scenario
from ..data import DataSplits, load_splits
from ..errors import ConfigError, SwapHwError
from ..layout import Layout
from ..models import build_model, cached_dense_model, load_checkpoint, prunable_names, train_model
from .plan import Seeds


@dataclass
class Prepared:
    """What every work unit reads: the data, the dense model and its layout, the seeds."""

    scenario: Scenario
    splits: DataSplits
    dense: nn.Module
    layout: Layout
    seeds: Seeds
    dense_was_cached: bool = False
    init_state: dict[str, torch.Tensor] = field(default_factory=dict)


def prepare(scenario: Scenario) -> Prepared:
    """Load the data and obtain the dense model (checkpoint, cache, or train it now)."""
    spec = scenario.spec
    seeds = Seeds(spec.seed)
    try:
        splits = load_splits(spec.data, seeds.split)
    except SwapHwError as exc:  # name the scenario and the field, like validation errors do
        raise ConfigError(scenario.file, "data", str(exc)) from None
    options = dict(spec.model.options)

    def build() -> nn.Module:
        return build_model(spec.model.arch, splits.input_shape, splits.n_classes, seeds.init, **options)

    init_state = {k: v.clone() for k, v in build().state_dict().items()}
    if spec.model.checkpoint:
        dense, cached = load_checkpoint(build(), spec.model.checkpoint), True
    else:
        t = spec.model.train

        def train(model: nn.Module) -> nn.Module:
            return train_model(model, splits.x_train, splits.y_train, epochs=t.epochs, lr=t.lr,
                               batch_size=t.batch_size, weight_decay=t.weight_decay, seed=seeds.train)

        description = {
            "data": spec.data.model_dump(mode="json"), "split_seed": seeds.split,
            "arch": spec.model.arch, "options": options, "train": t.model_dump(mode="json"),
            "init_seed": seeds.init, "train_seed": seeds.train, "torch": torch.__version__,
            "input_shape": list(splits.input_shape), "n_classes": splits.n_classes,
        }
        dense, cached = cached_dense_model(description, build, train, spec.output.cache_dir)
    dense.eval()
    for p in dense.parameters():
        p.requires_grad_(False)
    try:
        include = prunable_names(dense, spec.model.prune_layers)
    except SwapHwError as exc:  # layer names are known only once the model is built
        raise SwapHwError(f"{scenario.file}: {exc}") from None
    layout = Layout.from_model(dense, include=include)
    return Prepared(scenario, splits, dense, layout, seeds, cached, init_state)
