"""Preparing a run: the data splits and the dense model (in memory, checkpoint, cache, or trained now).

`checked_inputs` is everything a run checks before any training — the user's files unchanged,
the data loaded and its contents checked, the model built and its per-sample gradients probed, a
checkpoint read and fitted — and the warnings about legal but suspicious inputs (`check_inputs`
returns just those). `prepare` and `validate` both call it, so the checks are written once.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..config import Scenario
from ..data import DataError, DataSplits, load_splits
from ..digest import file_digest
from ..errors import ConfigError, ParameterError, RunFault, SwapHwError
from ..gradients.per_sample import check_supported
from ..layout import Layout
from ..models import accuracy_and_loss, build_model, cached_dense_model, factory, load_checkpoint, prunable_names, reinitialised, train_model
from ..models.training import nonfinite_tensors
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
    # legal but suspicious inputs, each "field: message" (see checked_inputs); stored with the run
    warnings: list[str] = field(default_factory=list)
    # where `dense`, `splits` and `init_state` live: prepare() leaves them on the CPU (the dense model
    # is trained and cached there, so its cache and digest do not depend on the device), on_device()
    # moves them once for the cells
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def on_device(self, device: torch.device) -> "Prepared":
        """This Prepared with the dense model, the data splits and the initial weights moved to
        `device`, once, for every cell computed there; itself when they are there already."""
        if device == self.device:
            return self
        dense = copy.deepcopy(self.dense).to(device)  # the caller's (CPU) model stays as it is
        splits = dataclasses.replace(self.splits, **{name: getattr(self.splits, name).to(device)
                                                     for name in ("x_train", "y_train", "x_test", "y_test")})
        init_state = {k: v.to(device) for k, v in self.init_state.items()}
        return dataclasses.replace(self, dense=dense, splits=splits, init_state=init_state, device=device)

    def describe(self) -> dict:
        """What the run works on, for the reader of its table: the data (sizes, input shape and
        range, classes), the model (what it is, how many weights are pruned) and the dense
        model's plain test accuracy, and the warnings about its inputs."""
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
            "warnings": list(self.warnings),
        }


def _check_files(scenario: Scenario) -> None:
    """A user file must still hold what validation read: its digest is in the cell keys."""
    for name, (path, sha) in scenario.files.items():
        try:
            now = file_digest(path)
        except OSError as exc:
            raise ConfigError(scenario.file, name, f"cannot read {path}: {exc.strerror or exc}") from None
        if now != sha:
            raise ConfigError(scenario.file, name, f"{path} changed since the scenario was validated; "
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


@dataclass
class CheckedInputs:
    """What the checks before training produced: the data, the model's builder, an initialised
    model (probed) and its layout, a checkpoint's model when there is one, and the warnings."""

    splits: DataSplits
    build: Callable[[], nn.Module]
    probe: nn.Module
    layout: Layout
    checkpoint: nn.Module | None
    warnings: list[str]


# Attacks clip inputs to [0, 1]; inputs beyond this margin outside it are "far outside".
_RANGE_MARGIN = 1e-3


def _attacks(scenario: Scenario) -> list[str]:
    """Where the scenario's attacks are (config paths of `adversarial` sources and conditions)."""
    out = []
    for family, members in (("sources", scenario.sources), ("conditions", scenario.conditions)):
        for i, member in enumerate(members):
            for m in getattr(member, "members", None) or [member]:
                if m.name == "adversarial":
                    path = m.config_path or f"{family}[{i}]"
                    if path not in out:
                        out.append(path)
    return out


def _data_warnings(scenario: Scenario, splits: DataSplits) -> list[str]:
    """Legal but suspicious data, each "field: message"."""
    out = []
    n, total = scenario.spec.calibration.n, int(splits.x_train.shape[0])
    if n > total:
        out.append(f"calibration.n: {n} is more than the {total} training examples; every replicate calibrates "
                   f"on all {total} (the same examples each time): lower calibration.n to at most {total}")
    attacks = _attacks(scenario)
    if attacks:
        lo = min(float(splits.x_train.min()), float(splits.x_test.min()))
        hi = max(float(splits.x_train.max()), float(splits.x_test.max()))
        if lo < -_RANGE_MARGIN or hi > 1 + _RANGE_MARGIN:
            out.append(f"{attacks[0]}: attacks clip inputs to [0, 1] (eps is in those units), but the inputs span "
                       f"[{lo:g}, {hi:g}], so attacked inputs are clipped: rescale the inputs to [0, 1]")
    return out


def _data_field(scenario: Scenario, exc: SwapHwError) -> str:
    if isinstance(exc, DataError):
        return exc.field
    return "data.path" if scenario.spec.data.name == "npz" else "data"


def checked_inputs(scenario: Scenario) -> CheckedInputs:
    """Every check a run makes before training, without training: the user's files unchanged, the
    data loaded and checked (ConfigError naming the field: `data.path` for an npz file's contents),
    the model built and its per-sample gradients taken on two examples (an unsupported layer is
    named), a checkpoint read and fitted to the model (`model.checkpoint`: damaged, NaN/Inf
    weights, missing keys), an in-memory model free of NaN/Inf. Returns the pieces `prepare`
    continues from and the warnings ("field: message") about legal but suspicious inputs: a
    calibration.n above the training examples, inputs outside [0, 1] under an attack."""
    spec, inline = scenario.spec, scenario.inline
    seeds = Seeds(spec.seed)
    _check_files(scenario)
    try:
        if inline is not None and inline.data is not None:
            splits = inline.data
        else:
            splits = load_splits(spec.data, seeds.split)
    except SwapHwError as exc:  # name the scenario and the field, like validation errors do
        raise ConfigError(scenario.file, _data_field(scenario, exc), str(exc)) from None
    warnings = _data_warnings(scenario, splits)
    try:
        build = _builder(scenario, splits, seeds.init)
        probe = build()
        layout = Layout.from_model(probe, include=prunable_names(probe, spec.model.prune_layers))
        check_supported(probe, splits.x_train, splits.y_train, layout)
    except ParameterError as exc:
        raise ConfigError(scenario.file, "model", str(exc)) from None
    except SwapHwError as exc:  # layer names are known only once the model is built
        raise ConfigError(scenario.file, "model.prune_layers", str(exc)) from None
    checkpoint = None
    if inline is not None and inline.model is not None:
        bad = nonfinite_tensors(inline.model)
        if bad:
            raise ConfigError(scenario.file, "model", f"the in-memory model holds NaN/Inf weights "
                              f"({', '.join(bad[:3])}{' …' if len(bad) > 3 else ''}); give a model that trained "
                              "without diverging")
    elif spec.model.checkpoint:
        try:
            checkpoint = load_checkpoint(build(), spec.model.checkpoint, spec.model.trusted)
        except SwapHwError as exc:
            raise ConfigError(scenario.file, "model.checkpoint", str(exc)) from None
    return CheckedInputs(splits, build, probe, layout, checkpoint, warnings)


def check_inputs(scenario: Scenario) -> list[str]:
    """The checks `run` makes before training (see `checked_inputs`); returns the warnings."""
    return checked_inputs(scenario).warnings


def prepare(scenario: Scenario) -> Prepared:
    """Load the data and obtain the dense model (an in-memory model, a checkpoint, the cache, or
    trained now), after `checked_inputs`: the data checked, and the model's per-sample gradients
    taken once on two examples, so a layer the gradient code cannot handle is named at once. A
    dense model with NaN/Inf weights after training (or in the cache) raises RunFault."""
    spec, inline = scenario.spec, scenario.inline
    seeds = Seeds(spec.seed)
    checked = checked_inputs(scenario)
    splits, build, probe, layout = checked.splits, checked.build, checked.probe, checked.layout
    init_state = {k: v.clone() for k, v in probe.state_dict().items()}
    if inline is not None and inline.model is not None:
        dense, cached = copy.deepcopy(inline.model), True
    elif checked.checkpoint is not None:
        dense, cached = checked.checkpoint, True
    else:
        t = spec.model.train

        def train(model: nn.Module) -> nn.Module:
            return train_model(model, splits.x_train, splits.y_train, epochs=t.epochs, lr=t.lr,
                               batch_size=t.batch_size, weight_decay=t.weight_decay, seed=seeds.train,
                               optimizer=t.optimizer, momentum=t.momentum)

        model = scenario.model_description()
        description = {
            "data": scenario.data_description(), "split_seed": seeds.split,
            "arch": model.get("arch"), "options": model["options"], "train": t.model_dump(mode="json"),
            "init_seed": seeds.init, "train_seed": seeds.train, "torch": torch.__version__,
            "input_shape": list(splits.input_shape), "n_classes": splits.n_classes,
            **({"factory": model["factory"], "factory_sha": model["factory_sha"]} if "factory" in model else {}),
        }
        dense, cached = cached_dense_model(description, build, train, spec.output.cache_dir)
    bad = nonfinite_tensors(dense)
    if bad:  # cached_dense_model and the checks above refuse these already: a last guard
        raise RunFault(f"the dense model holds NaN/Inf weights ({', '.join(bad[:3])}); it cannot be pruned")
    dense.eval()
    for p in dense.parameters():
        p.requires_grad_(False)
    return Prepared(scenario, splits, dense, layout, seeds, cached, init_state, checked.warnings)
