"""Preparing a run: the data splits and the dense model (in memory, checkpoint, cache, or trained now)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..config import Scenario
from ..data import DataSplits, load_splits
from ..digest import file_digest
from ..errors import ConfigError, ParameterError, SwapHwError
from ..gradients.per_sample import check_supported
from ..layout import Layout
from ..models import accuracy_and_loss, build_model, cached_dense_model, factory, load_checkpoint, prunable_names, reinitialised, train_model
from ..seeding import torch_global_seed
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

    def describe(self) -> dict:
        """What the run works on, for the reader of its table: the data (sizes, input shape and
        range, classes), the model (what it is, how many weights are pruned) and the dense
        model's plain test accuracy."""
        spec, inline = self.scenario.spec, self.scenario.inline
        x = self.splits.x_train
        if inline is not None and inline.model is not None:
            model = inline.model_class.rpartition(".")[2]
        else:
            model = spec.model.factory.rpartition(":")[2] if spec.model.factory else spec.model.arch
        return {
            "data": self.splits.name, "train": int(x.shape[0]), "test": int(self.splits.x_test.shape[0]),
            "input_shape": list(self.splits.input_shape), "input_range": [float(x.min()), float(x.max())],
            "classes": int(self.splits.n_classes), "model": model, "prunable": int(self.layout.d),
            "dense_accuracy": accuracy_and_loss(self.dense, *self.splits.test)[0],
        }


def _check_files(scenario: Scenario) -> None:
    """A user file must still hold what validation read: its digest is in the cell keys."""
    for field, (path, sha) in scenario.files.items():
        try:
            now = file_digest(path)
        except OSError as exc:
            raise ConfigError(scenario.file, field, f"cannot read {path}: {exc.strerror or exc}") from None
        if now != sha:
            raise ConfigError(scenario.file, field, f"{path} changed since the scenario was validated; "
                              "load the scenario again")


def _builder(scenario: Scenario, splits: DataSplits, seed: int) -> Callable[[], nn.Module]:
    """A function returning the untrained model, initialised from `seed`."""
    spec, inline = scenario.spec, scenario.inline
    options = dict(spec.model.options)
    if inline is not None and inline.model is not None:
        def from_object() -> nn.Module:
            return reinitialised(inline.model, seed)
        return from_object
    if spec.model.factory is not None:
        ref = spec.model.factory
        made = factory.resolve(ref, scenario.files["model.factory"][0])

        def from_factory() -> nn.Module:
            with torch_global_seed(seed):
                return factory.call(made, ref, splits.input_shape, splits.n_classes, options)
        return from_factory

    def from_arch() -> nn.Module:
        return build_model(spec.model.arch, splits.input_shape, splits.n_classes, seed, **options)
    return from_arch


def prepare(scenario: Scenario) -> Prepared:
    """Load the data and obtain the dense model (an in-memory model, a checkpoint, the cache, or
    trained now). Before any training the model's per-sample gradients are taken once on two
    examples, so a layer the gradient code cannot handle is named at once."""
    spec, inline = scenario.spec, scenario.inline
    seeds = Seeds(spec.seed)
    _check_files(scenario)
    try:
        if inline is not None and inline.data is not None:
            splits = inline.data
        else:
            splits = load_splits(spec.data, seeds.split)
    except SwapHwError as exc:  # name the scenario and the field, like validation errors do
        raise ConfigError(scenario.file, "data", str(exc)) from None
    try:
        build = _builder(scenario, splits, seeds.init)
        probe = build()
        layout = Layout.from_model(probe, include=prunable_names(probe, spec.model.prune_layers))
        check_supported(probe, splits.x_train, splits.y_train, layout)
    except ParameterError as exc:
        raise ConfigError(scenario.file, "model", str(exc)) from None
    except SwapHwError as exc:  # layer names are known only once the model is built
        raise ConfigError(scenario.file, "model.prune_layers", str(exc)) from None
    init_state = {k: v.clone() for k, v in probe.state_dict().items()}
    if inline is not None and inline.model is not None:
        dense, cached = copy.deepcopy(inline.model), True
    elif spec.model.checkpoint:
        try:
            dense, cached = load_checkpoint(build(), spec.model.checkpoint, spec.model.trusted), True
        except SwapHwError as exc:
            raise ConfigError(scenario.file, "model.checkpoint", str(exc)) from None
    else:
        t = spec.model.train

        def train(model: nn.Module) -> nn.Module:
            return train_model(model, splits.x_train, splits.y_train, epochs=t.epochs, lr=t.lr,
                               batch_size=t.batch_size, weight_decay=t.weight_decay, seed=seeds.train)

        model = scenario.model_description()
        description = {
            "data": scenario.data_description(), "split_seed": seeds.split,
            "arch": model.get("arch"), "options": model["options"], "train": t.model_dump(mode="json"),
            "init_seed": seeds.init, "train_seed": seeds.train, "torch": torch.__version__,
            "input_shape": list(splits.input_shape), "n_classes": splits.n_classes,
            **({"factory": model["factory"], "factory_sha": model["factory_sha"]} if "factory" in model else {}),
        }
        dense, cached = cached_dense_model(description, build, train, spec.output.cache_dir)
    dense.eval()
    for p in dense.parameters():
        p.requires_grad_(False)
    return Prepared(scenario, splits, dense, layout, seeds, cached, init_state)
