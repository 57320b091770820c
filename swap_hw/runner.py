"""From a validated Scenario to finished cells in the results store.

A cell is one (gradient source, replicate, pruner, sparsity, deployment condition) combination —
plus, per replicate and condition, a `dense` reference cell for the unpruned model. Work is
shared: the dataset is loaded and the dense model trained (or read from the cache) once per run;
the calibration gradients are collected once per (source, replicate) work unit and reused by every
pruner and sparsity in it; each pruned model is evaluated under every condition.

Seeds: the scenario's root seed; every draw derives its own seed from it and from what the draw
is for (see `Seeds`). Conditions use one seed per replicate for every pruner, so all pruned
models of a replicate meet the same simulated hardware draws (common random numbers).

Only the coordinating process writes to the store, one transaction per cell, so an interrupted
run loses at most the cells in flight, and running the same scenario again computes only the
missing cells.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .config import Scenario
from .errors import ConfigError, SwapHwError
from .data import DataSplits, load_splits
from .digest import tensors_digest
from .deploy.base import Condition
from .gradients.base import GradientSet, GradientSource
from .layout import Layout
from .models import apply_weights, build_model, cached_dense_model, load_checkpoint, train_model
from .pruners.base import Pruner
from .protocols import prune_staged
from .seeding import derive_seed
from .store import CellRecord, Store

# Bump when a change to the code changes what a cell computes, so old cached cells are not reused.
CELL_VERSION = 1
DENSE = "dense"


@dataclass(frozen=True)
class Seeds:
    """Every seed of a run, derived from the root seed and the purpose of the draw."""

    root: int

    @property
    def split(self) -> int:
        return derive_seed(self.root, "split")

    @property
    def init(self) -> int:
        return derive_seed(self.root, "init")

    @property
    def train(self) -> int:
        return derive_seed(self.root, "train")

    def calibration(self, replicate: int) -> int:
        return derive_seed(self.root, "calibration", replicate)

    def source(self, replicate: int) -> int:
        return derive_seed(self.root, "source", replicate)

    def prune(self, replicate: int) -> int:
        return derive_seed(self.root, "prune", replicate)

    def condition(self, replicate: int) -> int:
        return derive_seed(self.root, "condition", replicate)


@dataclass(frozen=True)
class CellSpec:
    key: str
    replicate: int
    source: int | None  # index into scenario.sources; None for the dense reference
    pruner: int | None  # index into scenario.pruners; None for the dense reference
    sparsity: float | str  # a number in [0, 1) or "auto"; 0.0 for dense
    condition: int  # index into scenario.conditions


@dataclass(frozen=True)
class WorkUnit:
    """Cells that share one set of calibration gradients (or the dense model, for source None)."""

    replicate: int
    source: int | None
    cells: tuple[CellSpec, ...]


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def common_description(scenario: Scenario) -> dict[str, Any]:
    """Everything shared by all cells of a scenario that determines their values."""
    spec = scenario.spec
    model = spec.model.model_dump(mode="json")
    if spec.model.checkpoint:
        model["checkpoint_sha"] = _file_digest(spec.model.checkpoint) if Path(spec.model.checkpoint).is_file() else None
    return {
        "cell_version": CELL_VERSION,
        "root_seed": spec.seed,
        "data": spec.data.model_dump(mode="json"),
        "model": model,
        # where X over the budget is kept changes speed, not values (each mode is tested equal to
        # the dense one), so it stays out of the keys: a run resumes after switching it
        "calibration": spec.calibration.model_dump(mode="json", exclude={"over_budget", "spill_dir"}),
        "protocol": spec.protocol,
        **({"finetune": spec.finetune.model_dump(mode="json")} if spec.protocol == "gradual" else {}),
        **({"multi_stage": spec.multi_stage.model_dump(mode="json")} if spec.protocol == "multi_stage" else {}),
    }


def _key(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


def plan_cells(scenario: Scenario) -> list[CellSpec]:
    """All cells of a scenario, in execution order (grouped by replicate, then source)."""
    common = common_description(scenario)
    cells: list[CellSpec] = []
    for r in range(scenario.spec.repeats):
        for c, cond in enumerate(scenario.conditions):
            key = _key({**common, "kind": DENSE, "replicate": r, "condition": cond.describe()})
            cells.append(CellSpec(key, r, None, None, 0.0, c))
        for si, src in enumerate(scenario.sources):
            for pi, pruner in enumerate(scenario.pruners):
                for s in scenario.spec.sparsities:
                    for c, cond in enumerate(scenario.conditions):
                        key = _key({**common, "kind": "pruned", "replicate": r, "source": src.describe(),
                                    "pruner": pruner.describe(), "sparsity": s, "condition": cond.describe()})
                        cells.append(CellSpec(key, r, si, pi, s, c))
    return cells


def group_cells(cells: list[CellSpec]) -> list[WorkUnit]:
    groups: dict[tuple, list[CellSpec]] = {}
    for cell in cells:
        groups.setdefault((cell.replicate, cell.source), []).append(cell)
    return [WorkUnit(r, s, tuple(cs)) for (r, s), cs in groups.items()]


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
    from .zoo import prunable_names

    try:
        include = prunable_names(dense, spec.model.prune_layers)
    except SwapHwError as exc:  # layer names are known only once the model is built
        raise SwapHwError(f"{scenario.file}: {exc}") from None
    layout = Layout.from_model(dense, include=include)
    return Prepared(scenario, splits, dense, layout, seeds, cached, init_state)


def _measurements_to_dicts(ms) -> list[dict]:
    return [{"metric": m.metric, "value": m.value, "tags": dict(m.tags)} for m in ms]


def _cell_record(scenario: Scenario, cell: CellSpec, measurements, seconds: float, *, realised: float,
                 prune_log: dict | None = None, provenance: dict | None = None) -> CellRecord:
    cond: Condition = scenario.conditions[cell.condition]
    if cell.pruner is None:
        pruner_label, pruner_json, source_label, source_json = DENSE, None, "-", None
    else:
        pruner = scenario.pruners[cell.pruner]
        src = scenario.sources[cell.source]
        pruner_label, pruner_json = pruner.label, pruner.describe()
        source_label, source_json = src.label, src.describe()
    label = "auto" if cell.sparsity == "auto" else f"{float(cell.sparsity):g}"
    return CellRecord(
        cell_key=cell.key, pruner=pruner_label, source=source_label, sparsity_label=label,
        sparsity=realised, seed=cell.replicate, condition=cond.label,
        protocol=(prune_log or {}).get("protocol", scenario.spec.protocol),
        measurements=_measurements_to_dicts(measurements), pruner_json=pruner_json, source_json=source_json,
        condition_json=cond.describe(), prune_log=prune_log, provenance=provenance, seconds=seconds,
    )


def _sparsity_of(model: nn.Module, layout: Layout) -> float:
    w = layout.flatten(dict(model.named_parameters()))
    return float((w == 0).float().mean())


def execute_unit(prep: Prepared, unit: WorkUnit, todo: set[str]) -> Iterator[CellRecord]:
    """Compute the unfinished cells of one work unit, yielding each as soon as it is done."""
    scenario, seeds = prep.scenario, prep.seeds
    test = prep.splits.test
    cond_seed = seeds.condition(unit.replicate)
    cells = [c for c in unit.cells if c.key in todo]
    if not cells:
        return
    if unit.source is None:  # dense reference
        for cell in cells:
            t0 = time.perf_counter()
            ms = scenario.conditions[cell.condition].evaluate(prep.dense, test, cond_seed)
            yield _cell_record(scenario, cell, ms, time.perf_counter() - t0, realised=_sparsity_of(prep.dense, prep.layout))
        return

    spec = scenario.spec
    source: GradientSource = scenario.sources[unit.source]
    pruners_needed = {c.pruner for c in cells}
    grads: GradientSet | None = None
    batch = None
    grad_seconds = 0.0
    if any(scenario.pruners[p].needs_gradients for p in pruners_needed):
        t0 = time.perf_counter()
        batch = prep.splits.calibration(spec.calibration.n, seeds.calibration(unit.replicate))
        grads = source.collect(prep.dense, batch, seeds.source(unit.replicate), prep.layout,
                               **spec.calibration.storage())
        grad_seconds = time.perf_counter() - t0
    weights = prep.layout.weights_of(prep.dense)

    staged = spec.protocol in ("multi_stage", "gradual")
    if spec.protocol == "gradual":
        stages, staged_kw = spec.finetune.stages, {"finetune": spec.finetune,
                                                   "train_split": (prep.splits.x_train, prep.splits.y_train)}
    else:
        stages, staged_kw = spec.multi_stage.stages, {}

    by_prune: dict[tuple[int, Any], list[CellSpec]] = {}
    for cell in cells:
        by_prune.setdefault((cell.pruner, cell.sparsity), []).append(cell)
    for (pi, sparsity), group in by_prune.items():
        pruner: Pruner = scenario.pruners[pi]
        t0 = time.perf_counter()
        if staged and not hasattr(pruner, "prune_iterative"):
            target = _resolve_sparsity(sparsity, weights)
            pruned, result = prune_staged(
                pruner, prep.dense, source, batch, target, stages, seeds.source(unit.replicate), prep.layout,
                first_grads=grads, **spec.calibration.storage(), **staged_kw)
        else:
            result, target = run_pruner(prep, pruner, sparsity, weights, grads, unit.replicate)
            pruned = apply_weights(prep.dense, result.weights)
            if result.buffers:  # iterative pruners retrain, so batch-norm statistics change too
                pruned.load_state_dict(result.buffers, strict=False)
        prune_seconds = time.perf_counter() - t0
        log = dict(result.log)
        log.setdefault("protocol", "iterative" if hasattr(pruner, "prune_iterative") else "one_shot")
        log["gradient_seconds"] = grad_seconds
        log["prune_seconds"] = prune_seconds  # the whole prune() call; "seconds" is the solver alone
        log["weights_sha"] = tensors_digest(result.weights)  # export checks its recomputation against it
        if sparsity == "auto":
            log["auto_target"] = target
        for cell in group:
            t1 = time.perf_counter()
            ms = scenario.conditions[cell.condition].evaluate(pruned, test, cond_seed)
            yield _cell_record(scenario, cell, ms, prune_seconds + time.perf_counter() - t1,
                               realised=result.sparsity, prune_log=log,
                               provenance=grads.provenance if grads is not None else None)


def run_pruner(prep: Prepared, pruner: Pruner, sparsity: float | str, weights: dict[str, torch.Tensor],
               grads: GradientSet | None, replicate: int):
    """One pruning call → (PruneResult, the sparsity target used; None when a pruner's own rule decides).

    One-shot pruners get (weights, grads, target). Iterative pruners (sap, lottery) rewind to the
    model's initial weights and retrain, so they get a TrainingContext built from the scenario's
    training settings; with `sparsity: auto` SAP's own PQI rule decides how far to go. Their
    per-iteration test accuracy is recorded for the PQI plots only: no checkpoint is ever chosen on
    the test split (the last epoch of every iteration is used).
    """
    from .pruners.iterative import IterativePruner, TrainingContext

    if isinstance(pruner, IterativePruner):
        t = prep.scenario.spec.model.train
        x_test, y_test = prep.splits.test

        def test_accuracy(model: nn.Module, iteration: int) -> dict[str, float]:
            from .deploy.base import accuracy_and_loss

            return {"test_accuracy": accuracy_and_loss(model, x_test, y_test)[0]}

        ctx = TrainingContext(initial_state=prep.init_state, x_train=prep.splits.x_train,
                              y_train=prep.splits.y_train, lr=t.lr, batch_size=t.batch_size,
                              weight_decay=t.weight_decay, seed=prep.seeds.prune(replicate),
                              evaluate=test_accuracy)
        target = None if sparsity == "auto" else float(sparsity)
        return pruner.prune_iterative(prep.dense, ctx, target, layout=prep.layout), target
    target = _resolve_sparsity(sparsity, weights)
    return pruner.prune(weights, grads if pruner.needs_gradients else None, target), target


def _resolve_sparsity(sparsity: float | str, weights: dict[str, torch.Tensor]) -> float:
    if sparsity != "auto":
        return float(sparsity)
    from .pqi import auto_sparsity

    return float(auto_sparsity(weights))


def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("swap_hw", "torch", "aihwkit", "torchattacks", "POT", "numpy", "pydantic"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


@dataclass
class RunSummary:
    run_id: str
    db: str
    planned: int
    skipped: int
    computed: int
    seconds: float
    dense_was_cached: bool | None


Event = Callable[..., None]


def run_scenario(scenario: Scenario, db: str | None = None, on_event: Event | None = None,
                 executor=None) -> RunSummary:
    """Run (or resume) a scenario; returns counts. `on_event(kind, **info)` reports progress:
    kinds "plan" (total, todo), "prepare" (message), "cell" (record, done, todo), "finish".
    `executor` (swap_hw.executors; default LocalExecutor) computes the work units; only this
    process writes their records."""
    emit = on_event or (lambda kind, **info: None)
    start = time.perf_counter()
    db_path = db or scenario.spec.output.db
    cells = plan_cells(scenario)
    run_id = scenario.config_hash()
    store = Store(db_path)
    try:
        done = store.done_keys(c.key for c in cells)
        todo = {c.key for c in cells} - done
        emit("plan", total=len(cells), todo=len(todo), run_id=run_id)
        prep = None
        if todo:
            emit("prepare", message="loading data and the dense model")
            prep = prepare(scenario)
        store.start_run(run_id, scenario.name, scenario.file, scenario.text, scenario.resolved(),
                        scenario.spec.seed, package_versions(), git_commit())
        store.plan_cells(run_id, [c.key for c in cells])
        store.relabel_cells((c.key, scenario.pruners[c.pruner].label, scenario.sources[c.source].label,
                             scenario.conditions[c.condition].label)
                            for c in cells if c.key in done and c.pruner is not None)
        computed = 0
        if prep is not None:
            from .executors import LocalExecutor

            with contextlib.closing((executor or LocalExecutor()).records(prep, group_cells(cells), todo)) as records:
                for record in records:
                    if store.write_cell(record):
                        computed += 1
                    emit("cell", record=record, done=computed, todo=len(todo))
        store.finish_run(run_id)
        emit("finish")
        return RunSummary(run_id, str(db_path), len(cells), len(done), computed,
                          time.perf_counter() - start, prep.dense_was_cached if prep else None)
    except BaseException:
        try:
            store.finish_run(run_id, status="interrupted")
        except Exception:  # noqa: BLE001 - the store may be the thing that failed
            pass
        raise
    finally:
        store.close()
