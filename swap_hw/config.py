"""Scenario files: YAML → validated, resolved `Scenario`, before any work starts.

A scenario is validated whole: the top-level shape by pydantic models (unknown keys rejected), then
every component entry (gradient source, pruner, deployment condition) against the `Params` model
of the member it names. Any problem raises `ConfigError(file, field, message)`; the CLI prints it as
one line and exits 2.

Component entries take three forms::

    pruners:
      - magnitude                       # a bare name: default parameters
      - {name: swap, epsilon: 0.05}     # name + parameters
      - {name: swap, epsilon: [0, 0.1]} # a list on a scalar parameter expands into one member each
      - {name: gaussian, zip: {std: [1, 2], prop: [0.1, 0.25]}}  # paired lists: 2 members, not 4

A source entry may also be a chain, applied in order: ``- [label_noise, analog]``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .registry import ADDED_LATER, CLEAN, DIGITAL, ONE_SHOT, Component, LaterDefaultsOmitted
from .data import DataSplits
from .device import AUTO, check_device, free_memory_mb
from .digest import file_digest, tensors_digest
from .errors import ConfigError, ParameterError, validation_problem
from .models import ARCHITECTURES, factory
from .models.zoo import options_problem


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Strict):
    name: Literal["digits", "mnist", "fashion_mnist", "cifar10", "npz"] = Field(
        "digits", description="dataset; digits ships with scikit-learn and works offline"
    )
    root: str = Field("data", description="folder for torchvision datasets")
    download: bool = Field(False, description="let torchvision download the dataset into root")
    path: str | None = Field(None, description="the .npz file (x_train, y_train, x_test, y_test) for name: npz")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="digits only: fraction held out for testing")
    limit_train: int | None = Field(None, gt=0, description="use only the first N training examples")
    limit_test: int | None = Field(None, gt=0, description="use only the first N test examples")


class TrainConfig(LaterDefaultsOmitted, Strict):
    """Dense training (also the retraining of sap and lottery): cross-entropy, masks kept."""

    epochs: int = Field(30, ge=0, description="dense training epochs (0 = prune the initialised model)")
    lr: float = Field(3e-3, gt=0, description="learning rate")
    batch_size: int = Field(64, gt=0, description="minibatch size")
    weight_decay: float = Field(0.0, ge=0, description="weight decay (L2, the optimiser's own)")
    optimizer: Literal["adam", "sgd"] = Field(
        "adam", json_schema_extra=ADDED_LATER,
        description="adam, or sgd with `momentum` (the SWAP authors' dense epochs: SGD, lr 1e-3, momentum 0.5)",
    )
    momentum: float = Field(0.0, ge=0, lt=1, json_schema_extra=ADDED_LATER, description="SGD momentum (sgd only)")

    @model_validator(mode="after")
    def _momentum_needs_sgd(self) -> "TrainConfig":
        if self.momentum and self.optimizer != "sgd":
            raise ValueError("momentum applies to optimizer: sgd only")
        return self


class ModelConfig(Strict):
    arch: str = Field("mlpnet", description="built-in architecture: mlpnet, cnn, resnet20, mobilenetv1")
    factory: str | None = Field(
        None, description="your own model instead of arch: 'module:Name' (importable) or 'path/file.py:Name', "
        "a torch.nn.Module class or a function returning one, called with `options` (see swap_hw/models/factory.py)"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="keyword options of the architecture or factory")
    checkpoint: str | None = Field(None, description="a state_dict file to load instead of training")
    trusted: bool = Field(
        False, description="read a checkpoint that is a pickled model object (torch.save(model)); unpickling "
        "runs code from the file, so only for files you trust"
    )
    train: TrainConfig = Field(default_factory=TrainConfig)
    prune_layers: Union[Literal["all", "default"], list[str]] = Field(
        "default",
        description="weights to prune: all conv/linear weights, the architecture's default (see "
        "swap_hw/zoo.py), or a list of parameter names / globs such as layer3.*",
    )

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_exists(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).is_file():
            raise ValueError(f"checkpoint file not found: {v}")
        return v

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        if v not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {v!r}; valid: {', '.join(sorted(ARCHITECTURES))}")
        return v

    @field_validator("factory")
    @classmethod
    def _importable_factory(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                factory.resolve(v)
            except ParameterError as exc:
                raise ValueError(str(exc)) from None
        return v

    @model_validator(mode="after")
    def _known_options(self) -> "ModelConfig":
        if self.factory is not None:
            if "arch" in self.model_fields_set:
                raise ValueError("give model.arch or model.factory, not both")
            return self  # a factory's options are checked when it is called, before any training
        # zoo architectures declare their options (swap_hw/zoo.py): check them before any work
        options_model = getattr(ARCHITECTURES.get(self.arch), "Options", None)
        if options_model is not None:
            try:
                options_model(**self.options)
            except ValidationError as exc:
                raise ValueError(options_problem(exc, self.arch, options_model)) from None
        return self


class CalibrationConfig(Strict):
    n: int = Field(1000, gt=0, description="calibration examples whose per-sample gradients pruners see")
    memory_budget_mb: float = Field(
        2048.0, gt=0, description="largest gradient matrix X (n·d·4 bytes, in MiB) held in memory; beyond "
        "it, over_budget decides"
    )
    over_budget: Literal["recompute", "disk"] = Field(
        "recompute", description="X over the budget: recompute = matrix-free (Xv by forward mode, Xᵀu by a "
        "backward pass, per product); disk = written once to spill_dir and read back per product (much "
        "faster for large models whose forward pass is slow, needs n·d·4 bytes of free disk)"
    )
    spill_dir: str | None = Field(
        None, description="folder for over_budget: disk (default: the system temp folder); the file is "
        "unlinked at once, so it never outlives the run"
    )

    @field_validator("spill_dir")
    @classmethod
    def _spill_dir_exists(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).is_dir():
            raise ValueError(f"spill_dir is not a directory: {v}")
        return v

    def storage(self, device: Any = None) -> dict[str, Any]:
        """Keyword arguments of GradientSource.collect saying how X is held on `device` (a
        torch.device; None = the CPU). On a CUDA device X lives in the device's memory, so a budget
        the user did not set is derived from what the device has free (`gpu_memory_budget_mb`)."""
        budget = self.memory_budget_mb
        if device is not None and "memory_budget_mb" not in self.model_fields_set:
            budget = gpu_memory_budget_mb(device) or budget
        return {"memory_budget_mb": budget, "over_budget": self.over_budget, "spill_dir": self.spill_dir}


# Share of a GPU's free memory a dense X may take when calibration.memory_budget_mb is not set: the
# rest holds what is made from X while a cell runs (a noisy copy of it, Gram blocks, the model).
GPU_BUDGET_SHARE = 0.25


def gpu_memory_budget_mb(device: Any) -> float | None:
    """The default gradient-matrix budget on a CUDA device: GPU_BUDGET_SHARE of its free memory
    (MiB) when the cell starts; None for the CPU, whose default stays the fixed 2048 MiB."""
    free = free_memory_mb(device)
    return None if free is None else GPU_BUDGET_SHARE * free


class OutputConfig(Strict):
    db: str = Field("results/swap_hw.sqlite", description="SQLite results database")
    cache_dir: str = Field("results/cache", description="where trained dense models are cached")


Sparsity = Union[float, Literal["auto"]]


def sparsity_label(sparsity: float | str) -> str:
    """How a sparsity is named in records, reports and on the command line: "0.9", "auto"."""
    return "auto" if sparsity == "auto" else f"{float(sparsity):g}"


class ScenarioFile(Strict):
    """The top-level shape of a scenario file (components are checked separately)."""

    name: str | None = Field(None, description="display name; defaults to the file name")
    seed: int = Field(0, ge=0, description="root seed; every draw's seed derives from it")
    repeats: int = Field(3, ge=1, description="independent replicates (calibration draw, noise, hardware draws)")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    sources: list[Any] = Field(default_factory=lambda: [CLEAN], min_length=1)
    pruners: list[Any] = Field(min_length=1)
    sparsities: list[Sparsity] = Field(min_length=1)
    conditions: list[Any] = Field(default_factory=lambda: [DIGITAL], min_length=1)
    protocol: Any = Field(
        ONE_SHOT, description="how each pruner is scheduled: one_shot (prune once, no retraining), "
        "multi_stage (stages, gradients re-collected before each, no retraining) or gradual (stages, "
        "fine-tuning after each), as a name or {name: ..., its settings} (swap_hw/protocols/)"
    )
    # The settings of multi_stage and gradual, as scenarios wrote them before protocols were a
    # family; still read (into the protocol's settings) so that old scenarios and stored runs load.
    multi_stage: dict[str, Any] | None = Field(None, description="settings of protocol multi_stage (older form)")
    finetune: dict[str, Any] | None = Field(None, description="settings of protocol gradual (older form)")
    output: OutputConfig = Field(default_factory=OutputConfig)
    device: str = Field(
        AUTO, description="where the cells are computed: auto (the first CUDA device when torch sees one, "
        "else the CPU; decided in each worker), cpu, cuda or cuda:N. Not part of the cell keys or the "
        "run id; recorded with the run (docs/gpu.md)"
    )

    @field_validator("device")
    @classmethod
    def _device_available(cls, v: str) -> str:
        return check_device(v)  # a ParameterError is a ValueError: reported as "file: device: ..."


@dataclass(frozen=True)
class InlineInputs:
    """A Python study's in-memory model and data, carried by its Scenario and known by digests of
    their contents (the model's class and weights, the data's tensors)."""

    model: Any = None  # a torch.nn.Module, used as the dense model as it is (no training)
    data: DataSplits | None = None
    model_class: str | None = None
    model_sha: str | None = None
    data_sha: str | None = None

    @classmethod
    def of(cls, model: Any = None, data: DataSplits | None = None) -> "InlineInputs":
        model_class = model_sha = data_sha = None
        if model is not None:
            model_class = f"{type(model).__module__}.{type(model).__qualname__}"
            model_sha = tensors_digest(model.state_dict())
        if data is not None:
            data_sha = tensors_digest({"x_train": data.x_train, "y_train": data.y_train,
                                       "x_test": data.x_test, "y_test": data.y_test})
        return cls(model, data, model_class, model_sha, data_sha)

    def describe(self) -> dict[str, Any]:
        return {"model": None if self.model is None else {"class": self.model_class, "weights_sha": self.model_sha},
                "data_sha": self.data_sha}


@dataclass(frozen=True)
class Scenario:
    """A validated scenario with its component lists expanded into instances."""

    file: str
    text: str
    spec: ScenarioFile
    sources: tuple[Component, ...]
    pruners: tuple[Component, ...]
    conditions: tuple[Component, ...]
    protocol: Component
    # The user files the scenario reads, known by content: field → (path, sha256 digest), read once
    # at validation (data.path, model.checkpoint, model.factory's source file).
    files: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    # In-memory inputs of a Python `Study` (its model object and data tensors), known by the
    # digests they carry; None for a scenario file.
    inline: Any = None

    @property
    def name(self) -> str:
        return self.spec.name or Path(self.file).stem

    def resolved(self) -> dict[str, Any]:
        """The fully resolved configuration: defaults filled, lists expanded. Saved with results."""
        # where the cells are computed is not what they are: `device` is recorded with the run instead
        out = self.spec.model_dump(mode="json", exclude={"multi_stage", "finetune", "device"})
        out["name"] = self.name
        out["protocol"] = self.protocol.describe()
        if self.spec.model.factory is not None:  # the factory stands in for the architecture
            out["model"].pop("arch")
        out["sources"] = [s.describe() for s in self.sources]
        out["pruners"] = [p.describe() for p in self.pruners]
        out["conditions"] = [c.describe() for c in self.conditions]
        if self.files:
            out["files"] = {field: sha for field, (_, sha) in sorted(self.files.items())}
        if self.inline is not None:
            out["inline"] = self.inline.describe()
        return out

    def data_description(self) -> dict[str, Any]:
        """What determines the data, by content: the data block with a user file's path replaced by
        the digest of its bytes (an in-memory dataset by the digest of its tensors)."""
        out = self.spec.data.model_dump(mode="json")
        if self.inline is not None and self.inline.data is not None:
            return {"name": "inline", "content_sha": self.inline.data_sha}
        if "data.path" in self.files:
            out.pop("path")
            out["content_sha"] = self.files["data.path"][1]
        return out

    def model_description(self) -> dict[str, Any]:
        """What determines the model, by content: the model block with the checkpoint's and the
        factory file's paths replaced by their digests (an in-memory model by its weights' digest)."""
        out = self.spec.model.model_dump(mode="json", exclude={"factory", "trusted"})
        if self.inline is not None and self.inline.model is not None:
            out.pop("arch")
            out["inline"] = {"class": self.inline.model_class, "weights_sha": self.inline.model_sha}
        if self.spec.model.factory is not None:
            out.pop("arch")
            out["factory"] = self.spec.model.factory.rpartition(":")[2]
            out["factory_sha"] = self.files["model.factory"][1]
        if self.spec.model.checkpoint is not None:
            out.pop("checkpoint")
            out["checkpoint_sha"] = self.files["model.checkpoint"][1]
        return out

    def config_hash(self) -> str:
        """The run id: a hash of the resolved configuration, less where results are written (the
        same study run into another database, or from Python, is the same run)."""
        text = json.dumps({k: v for k, v in self.resolved().items() if k != "output"}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# loading


def _raise_first(file: str, exc: ValidationError, prefix: tuple = ()) -> None:
    raise ConfigError(file, *validation_problem(exc, prefix)) from None


def _is_list_annotation(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, set, frozenset) or annotation in (list, tuple):
        return True
    if origin in (Union, types.UnionType):
        return any(_is_list_annotation(a) for a in typing.get_args(annotation))
    if origin is typing.Annotated:
        return _is_list_annotation(typing.get_args(annotation)[0])
    return False


def _expand_entry(params_cls: type, raw: dict, zipped: dict[str, list] | None = None) -> list[dict]:
    """Expand list values given for scalar fields into the cartesian product of members.

    `zipped` (the entry's ``zip:`` mapping, lists of equal length m, checked by the caller) adds
    one more axis of m members whose i-th member takes the i-th value of every zipped list.
    """
    axes: list[tuple[str, list]] = []
    fixed: dict[str, Any] = {}
    fields = params_cls.model_fields
    by_alias = {f.alias: name for name, f in fields.items() if f.alias}
    for key, value in raw.items():
        fname = by_alias.get(key, key)
        field = fields.get(fname)
        if isinstance(value, list) and field is not None and not _is_list_annotation(field.annotation):
            if not value:  # an empty list expands to nothing: let validation reject it
                fixed[key] = value
            else:
                axes.append((key, value))
        else:
            fixed[key] = value
    zip_rows = [dict(zip(zipped, values)) for values in zip(*zipped.values())] if zipped else [{}]
    keys = [k for k, _ in axes]
    return [{**fixed, **dict(zip(keys, combo)), **paired}
            for combo in itertools.product(*(v for _, v in axes)) for paired in zip_rows]


def _zipped_lists(raw: dict, params_cls: type, file: str, path: str) -> dict[str, list] | None:
    """Take the ``zip:`` mapping out of `raw` (paired lists of one length) and check it."""
    if "zip" not in raw or "zip" in params_cls.model_fields:
        return None
    zipped = raw.pop("zip")
    if not isinstance(zipped, dict) or not zipped:
        raise ConfigError(file, f"{path}.zip", "expected a mapping of parameter names to lists of equal length")
    lengths = {}
    for key, values in zipped.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(file, f"{path}.zip.{key}", f"expected a non-empty list, got {values!r}")
        if key in raw:
            raise ConfigError(file, f"{path}.zip.{key}", "given both inside and outside zip")
        lengths[key] = len(values)
    if len(set(lengths.values())) > 1:
        sizes = ", ".join(f"{k} has {n}" for k, n in lengths.items())
        raise ConfigError(file, f"{path}.zip", f"zipped lists must have the same length: {sizes}")
    return zipped


def build_component(registry, entry: Any, file: str, path: str) -> list[Component]:
    """Validate one component entry (name or mapping) and return the member instance(s)."""
    if isinstance(entry, str):
        name, raw = entry, {}
    elif isinstance(entry, dict):
        if "name" not in entry:
            raise ConfigError(file, f"{path}.name", f"required; valid: {', '.join(registry.names())}")
        raw = {k: v for k, v in entry.items() if k != "name"}
        name = entry["name"]
    else:
        raise ConfigError(file, path, f"expected a {registry.family} name or a mapping with 'name', got {entry!r}")
    if not isinstance(name, str) or name not in registry:
        raise ConfigError(file, f"{path}.name" if isinstance(entry, dict) else path,
                          f"unknown {registry.family} {name!r}; valid: {', '.join(registry.names())}")
    cls = registry.get(name)
    zipped = _zipped_lists(raw, cls.Params, file, path)
    members = []
    for params in _expand_entry(cls.Params, raw, zipped):
        try:
            member = cls(cls.Params.model_validate(params))
            member.config_path = path
            members.append(member)
        except ValidationError as exc:
            _raise_first(file, exc, (path,))
    return members


def _build_sources(entries: list, file: str) -> list[Component]:
    from .gradients import GRADIENT_SOURCES
    from .gradients.chain import ChainedSource

    out: list[Component] = []
    for i, entry in enumerate(entries):
        if isinstance(entry, list):
            if not entry:
                raise ConfigError(file, f"sources[{i}]", "an empty chain; list at least one source")
            parts = [build_component(GRADIENT_SOURCES, e, file, f"sources[{i}][{j}]") for j, e in enumerate(entry)]
            for combo in itertools.product(*parts):
                chain = ChainedSource(list(combo))
                chain.config_path = f"sources[{i}]"
                out.append(chain)
        else:
            out.extend(build_component(GRADIENT_SOURCES, entry, file, f"sources[{i}]"))
    return out


def _build_protocol(registry, spec: ScenarioFile, file: str) -> Component:
    """The scenario's one protocol. The older top-level settings blocks (`multi_stage:`,
    `finetune:` for gradual) are checked against their protocol's settings whichever protocol is
    chosen (errors name the block), and become the chosen protocol's settings when it owns one."""
    built = build_component(registry, spec.protocol, file, "protocol")
    if len(built) != 1:
        raise ConfigError(file, "protocol", "one protocol per scenario (a list expands into several)")
    protocol = built[0]
    for block in _LEGACY_PROTOCOL_BLOCKS:
        settings = getattr(spec, block)
        if settings is None:
            continue
        owner = next(name for name in registry.names()
                     if (registry.get(name).settings_block or name) == block)
        checked = build_component(registry, {"name": owner, **settings}, file, block)[0]
        if owner == protocol.name and settings:
            if isinstance(spec.protocol, dict) and len(spec.protocol) > 1:
                raise ConfigError(file, block, "settings given both here and under protocol; keep one")
            checked.config_path = "protocol"
            protocol = checked
    return protocol


# top-level scenario keys that held protocol settings before protocols were a family
_LEGACY_PROTOCOL_BLOCKS = ("multi_stage", "finetune")


def set_override(data: dict, dotted: str, value_text: str, file: str) -> None:
    """Apply one ``--set a.b[0].c=value`` (or ``a.b.0.c=value``) override to raw YAML data."""
    try:
        value = yaml.safe_load(value_text) if value_text != "" else ""
    except yaml.YAMLError as exc:
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(file, dotted, f"--set value {value_text!r} is not valid YAML ({problem}); write a YAML "
                                        "value, e.g. 0.05, [0.5, 0.9], {name: swap} or quoted text") from None
    parts: list[Any] = []
    for token in dotted.replace("[", ".").replace("]", "").split("."):
        if token == "":
            raise ConfigError(file, dotted, "empty path component in --set")
        parts.append(int(token) if token.isdigit() else token)
    node: Any = data
    for depth, key in enumerate(parts[:-1]):
        nxt = parts[depth + 1]
        if isinstance(node, list):
            if not isinstance(key, int) or key >= len(node):
                raise ConfigError(file, dotted, f"--set: index {key!r} is not in a list of {len(node)}")
            if isinstance(node[key], str) and not isinstance(nxt, int):
                node[key] = {"name": node[key]}  # bare component name → mapping, to add a parameter
            node = node[key]
        elif isinstance(node, dict):
            if key not in node or node[key] is None:
                node[key] = [] if isinstance(nxt, int) else {}
            elif isinstance(node[key], str) and not isinstance(nxt, int):
                node[key] = {"name": node[key]}
            node = node[key]
        else:
            raise ConfigError(file, dotted, "--set: path goes through a scalar value")
    last = parts[-1]
    if isinstance(node, list):
        if not isinstance(last, int) or last >= len(node):
            raise ConfigError(file, dotted, f"--set: index {last!r} is not in a list of {len(node)}")
    elif not isinstance(node, dict):
        raise ConfigError(file, dotted, "--set: path goes through a scalar value")
    node[last] = value


def parse_scenario_text(text: str, file: str, overrides: list[str] | None = None) -> Scenario:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(file, "", f"invalid YAML: {where}{problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(file, "", f"a scenario must be a YAML mapping, got {type(data).__name__}")
    data = copy.deepcopy(data)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(file, item, "--set takes path.to.field=value")
        key, value = item.split("=", 1)
        set_override(data, key.strip(), value.strip(), file)
    try:
        spec = ScenarioFile.model_validate(data)
    except ValidationError as exc:
        _raise_first(file, exc)
    for i, s in enumerate(spec.sparsities):
        if s != "auto" and not (0.0 <= float(s) < 1.0):
            raise ConfigError(file, f"sparsities[{i}]", f"{s!r} is outside [0, 1); allowed: numbers in [0, 1) or 'auto'")

    from .deploy import CONDITIONS
    from .protocols import PROTOCOLS
    from .pruners import PRUNERS

    protocol = _build_protocol(PROTOCOLS, spec, file)
    sources = _build_sources(spec.sources, file)
    pruners = [m for i, e in enumerate(spec.pruners) for m in build_component(PRUNERS, e, file, f"pruners[{i}]")]
    conditions = [m for i, e in enumerate(spec.conditions) for m in build_component(CONDITIONS, e, file, f"conditions[{i}]")]
    for family, members in (("sources", sources), ("pruners", pruners), ("conditions", conditions)):
        labels = [m.label for m in members]
        dup = {x for x in labels if labels.count(x) > 1}
        if dup:
            raise ConfigError(file, family, f"listed twice: {', '.join(sorted(dup))}")
    scenario = Scenario(file, text, spec, tuple(sources), tuple(pruners), tuple(conditions), protocol,
                        _user_files(spec, file))
    check_members(scenario)
    return scenario


def _user_files(spec: ScenarioFile, file: str) -> dict[str, tuple[str, str]]:
    """field → (path, content digest) of every user file the scenario reads."""
    out = {}
    paths = {"data.path": spec.data.path if spec.data.name == "npz" else None,
             "model.checkpoint": spec.model.checkpoint}
    if spec.model.factory is not None:
        try:
            paths["model.factory"] = factory.source_file(spec.model.factory)
        except ParameterError as exc:
            raise ConfigError(file, "model.factory", str(exc)) from None
    for field, path in paths.items():
        if path is None:
            continue
        try:
            out[field] = (str(path), file_digest(path))
        except OSError as exc:
            raise ConfigError(file, field, f"cannot read {path}: {exc.strerror or exc}") from None
    return out


def check_members(scenario: Scenario) -> None:
    """Cross-field checks each member may ask for (a hook: `validate_scenario(scenario, file, path)`)."""
    for family, members in (("sources", scenario.sources), ("pruners", scenario.pruners),
                            ("conditions", scenario.conditions), ("protocol", (scenario.protocol,))):
        for i, member in enumerate(members):
            check = getattr(member, "validate_scenario", None)
            if check is not None:
                # the entry's own place in the file (members expanded from one entry share it)
                check(scenario, scenario.file, member.config_path or f"{family}[{i}]")


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    """Read and validate a scenario file; raise ConfigError naming file and field on any problem."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(str(path), "", "file not found" if not p.exists() else "not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc}") from None
    return parse_scenario_text(text, str(path), overrides)
