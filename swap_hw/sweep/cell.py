"""Computing cells: `prune_cell` gives the pruned model of one (source, pruner, sparsity,
replicate); `execute_unit` computes the unfinished cells of a work unit and yields their records.

Work is shared inside a unit: the calibration gradients are collected once per (source, replicate)
and reused by every pruner and sparsity; each pruned model is evaluated under every condition.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from ..config import Scenario, sparsity_label
from ..deploy import Condition, Measurement
from ..device import device_scope, resolve_device
from ..digest import tensors_digest
from ..errors import RunFault
from ..gradients import GradientSet
from ..layout import Layout
from ..models import accuracy_and_loss
from ..protocols import PruneJob
from ..pruners import PruneResult, TrainingContext
from ..registry import DENSE
from ..results.store import CellRecord
from .plan import CellSpec, WorkUnit
from .prepare import Prepared


@contextlib.contextmanager
def compute_threads(n: int) -> Iterator[None]:
    """Compute with `n` torch intra-op threads, restoring the previous count after. A cell's
    floating-point result depends on the thread count (BLAS splits sums differently), so every cell
    is computed at a known count, recorded in its log, and recomputed at that same count."""
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@dataclass
class PrunedCell:
    """One cell's pruned model (what its conditions evaluate), its PruneResult, and the prune log
    stored with the cell (the result's log plus timings and the weights' digest)."""

    model: nn.Module
    result: PruneResult
    log: dict[str, Any]


def training_context(prep: Prepared, replicate: int) -> TrainingContext:
    """The TrainingContext of a replicate, for pruners that rewind and retrain (sap, lottery).

    They retrain with the scenario's dense-training settings on the training split. Their
    per-iteration test accuracy is recorded for the PQI plots only: no checkpoint is ever chosen
    on the test split (the last epoch of every iteration is used).
    """
    t = prep.scenario.spec.model.train
    x_test, y_test = prep.splits.test

    def test_accuracy(model: nn.Module, iteration: int) -> dict[str, float]:
        return {"test_accuracy": accuracy_and_loss(model, x_test, y_test)[0]}

    return TrainingContext(model=prep.dense, initial_state=prep.init_state, x_train=prep.splits.x_train,
                           y_train=prep.splits.y_train, lr=t.lr, batch_size=t.batch_size,
                           weight_decay=t.weight_decay, optimizer=t.optimizer, momentum=t.momentum,
                           seed=prep.seeds.prune(replicate), evaluate=test_accuracy)


def calibration_batch(prep: Prepared, replicate: int) -> tuple[torch.Tensor, torch.Tensor]:
    return prep.splits.calibration(prep.scenario.spec.calibration.n, prep.seeds.calibration(replicate))


def prune_cell(prep: Prepared, source: int, pruner: int, sparsity: float | str, replicate: int, *,
               batch: tuple[torch.Tensor, torch.Tensor] | None = None, grads: GradientSet | None = None,
               gradient_seconds: float = 0.0) -> PrunedCell:
    """The pruned model of cell (source, pruner, sparsity, replicate) of `prep`'s scenario.

    `source` and `pruner` index the scenario's members, `sparsity` is one of its sparsities. The
    scenario's protocol schedules the pruner; every seed derives from the run's root seed, so the
    same cell gives the same model in any process. `batch` / `grads`: the replicate's calibration
    batch and the gradients at the dense model, when the caller already has them (a work unit
    shares them); otherwise drawn and collected here when the pruner needs them.
    """
    scenario = prep.scenario
    member = scenario.pruners[pruner]
    if member.needs_gradients and batch is None:
        batch = calibration_batch(prep, replicate)
    job = PruneJob(model=prep.dense, layout=prep.layout, source=scenario.sources[source], calibration=batch,
                   seed=prep.seeds.source(replicate), grads=grads,
                   storage=scenario.spec.calibration.storage(prep.device),
                   training=training_context(prep, replicate) if member.needs_training else None,
                   train_split=(prep.splits.x_train, prep.splits.y_train))
    where = (f"pruner {member.label} at sparsity {sparsity_label(sparsity)}, source {scenario.sources[source].label}, "
             f"replicate {replicate}")
    t0 = time.perf_counter()
    try:
        model, result = scenario.protocol.run(member, job, sparsity)
    except RunFault as exc:  # say which cell, and whether its gradients were the cause
        _check_finite_gradients(job, where)
        raise RunFault(f"{where}: {exc}; nothing of this cell was stored") from None
    if any(not bool(torch.isfinite(w).all()) for w in result.weights.values()):
        _check_finite_gradients(job, where)
        raise RunFault(f"{where}: the pruner produced NaN/Inf weights; nothing of this cell was stored")
    log = dict(result.log)
    log["gradient_seconds"] = gradient_seconds
    log["prune_seconds"] = time.perf_counter() - t0  # the whole protocol; "seconds" is the solver alone
    log["weights_sha"] = tensors_digest(result.weights)  # export checks its recomputation against it
    log["threads"] = torch.get_num_threads()  # what the weights' last bits depend on; export reuses it
    if sparsity == "auto":
        log["auto_target"] = result.log.get("sparsity_target")
    return PrunedCell(model, result, log)


def _check_finite_gradients(job: PruneJob, where: str) -> None:
    """Nothing NaN is stored: when a cell's weights came out NaN/Inf, say whether the gradients it
    was given were already non-finite (a dense X is checked; a matrix-free one is not read again)."""
    grads = job.grads
    if grads is not None and not grads.matrix_free and not bool(torch.isfinite(grads.X).all()):
        raise RunFault(f"{where}: the per-sample gradients are NaN/Inf, so the pruned weights are too; check the "
                       "gradient source's noise settings and the dense model; nothing of this cell was stored")


def _check_finite_measurements(measurements: list[Measurement], where: str) -> None:
    bad = next((m for m in measurements if m.value is None or not math.isfinite(float(m.value))), None)
    if bad is not None:
        raise RunFault(f"{where}: the condition measured {bad.metric} = {bad.value} {dict(bad.tags) or ''}".rstrip()
                       + "; nothing of this cell was stored")


def _sparsity_of(model: nn.Module, layout: Layout) -> float:
    w = layout.flatten(dict(model.named_parameters()))
    return float((w == 0).float().mean())


def _cell_record(scenario: Scenario, cell: CellSpec, measurements: list[Measurement], seconds: float, *,
                 realised: float, prune_log: dict | None = None, provenance: dict | None = None) -> CellRecord:
    cond: Condition = scenario.conditions[cell.condition]
    if cell.pruner is None:
        pruner_label, pruner_json, source_label, source_json = DENSE, None, "-", None
    else:
        pruner = scenario.pruners[cell.pruner]
        src = scenario.sources[cell.source]
        pruner_label, pruner_json = pruner.label, pruner.describe()
        source_label, source_json = src.label, src.describe()
    return CellRecord(
        cell_key=cell.key, pruner=pruner_label, source=source_label, sparsity_label=sparsity_label(cell.sparsity),
        sparsity=realised, seed=cell.replicate, condition=cond.label,
        protocol=(prune_log or {}).get("protocol", scenario.protocol.name),
        measurements=[{"metric": m.metric, "value": m.value, "tags": dict(m.tags)} for m in measurements],
        pruner_json=pruner_json, source_json=source_json, condition_json=cond.describe(), prune_log=prune_log,
        provenance=provenance, seconds=seconds,
    )


def in_device_scope(steps: Iterator[CellRecord], device: torch.device) -> Iterator[CellRecord]:
    """The items of `steps`, each computed inside `device_scope(device)`. The scope is left at every
    yield: it is a mode on torch's (thread-wide) stack, and the caller's code between two records
    (writing them to the store, reporting progress) must neither run in it nor push modes over it."""
    while True:
        with device_scope(device):
            try:
                item = next(steps)
            except StopIteration:
                return
        yield item


def execute_units(prep: Prepared, units: Iterable[WorkUnit], todo: set[str]) -> Iterator[CellRecord]:
    """The records of the unfinished cells of `units`, computed on the scenario's device: the dense
    model and the data are moved there once (`Prepared.on_device`) and every step runs in its
    `device_scope`. `auto` is resolved here, in the process doing the work."""
    device = resolve_device(prep.scenario.spec.device)
    on_device = prep.on_device(device)
    for unit in units:
        yield from in_device_scope(execute_unit(on_device, unit, todo), device)


def execute_unit(prep: Prepared, unit: WorkUnit, todo: set[str]) -> Iterator[CellRecord]:
    """Compute the unfinished cells of one work unit, yielding each as soon as it is done."""
    scenario = prep.scenario
    test = prep.splits.test
    cond_seed = prep.seeds.condition(unit.replicate)
    cells = [c for c in unit.cells if c.key in todo]
    if not cells:
        return
    if unit.source is None:  # dense reference: the dense model as the protocol compares with it
        t0 = time.perf_counter()
        reference = scenario.protocol.reference(PruneJob(
            model=prep.dense, layout=prep.layout, seed=prep.seeds.source(unit.replicate),
            train_split=(prep.splits.x_train, prep.splits.y_train)))
        reference_seconds = time.perf_counter() - t0
        for cell in cells:
            t0 = time.perf_counter() - reference_seconds
            reference_seconds = 0.0  # counted once, in the first cell's time
            ms = scenario.conditions[cell.condition].evaluate(reference, test, cond_seed)
            _check_finite_measurements(ms, f"dense model, condition {scenario.conditions[cell.condition].label}, "
                                           f"replicate {unit.replicate}")
            yield _cell_record(scenario, cell, ms, time.perf_counter() - t0, realised=_sparsity_of(reference, prep.layout))
        return

    batch, grads, grad_seconds = None, None, 0.0
    if any(scenario.pruners[c.pruner].needs_gradients for c in cells):
        t0 = time.perf_counter()
        batch = calibration_batch(prep, unit.replicate)
        grads = scenario.sources[unit.source].collect(prep.dense, batch, prep.seeds.source(unit.replicate),
                                                      prep.layout, **scenario.spec.calibration.storage(prep.device))
        grad_seconds = time.perf_counter() - t0

    by_prune: dict[tuple[int, Any], list[CellSpec]] = {}
    for cell in cells:
        by_prune.setdefault((cell.pruner, cell.sparsity), []).append(cell)
    for (pi, sparsity), group in by_prune.items():
        pruned = prune_cell(prep, unit.source, pi, sparsity, unit.replicate, batch=batch, grads=grads,
                            gradient_seconds=grad_seconds)
        prune_seconds = pruned.log["prune_seconds"]
        for cell in group:
            t1 = time.perf_counter()
            ms = scenario.conditions[cell.condition].evaluate(pruned.model, test, cond_seed)
            _check_finite_measurements(ms, f"pruner {scenario.pruners[pi].label} at sparsity "
                                           f"{sparsity_label(sparsity)}, condition {scenario.conditions[cell.condition].label}, "
                                           f"replicate {unit.replicate}")
            yield _cell_record(scenario, cell, ms, prune_seconds + time.perf_counter() - t1,
                               realised=pruned.result.sparsity, prune_log=pruned.log,
                               provenance=grads.provenance if grads is not None else None)
