"""Running a scenario: from a validated Scenario to finished cells in the results store.

The plan (plan.py) lists the cells; the store says which are done; the data and the dense model
are prepared once (prepare.py); an executor (executors.py) computes the work units (cell.py) and
this coordinator writes each finished cell.

Only the coordinating process writes to the store, one transaction per cell, so an interrupted
run loses at most the cells in flight, and running the same scenario again computes only the
missing cells.
"""

from __future__ import annotations

import contextlib
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import Scenario
from ..device import describe_device, resolve_device
from ..results.store import Store
from .executors import Executor, LocalExecutor
from .plan import group_cells, plan_cells
from .plan import run_id as run_id_of
from .prepare import prepare


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
                 executor: Executor | None = None) -> RunSummary:
    """Run (or resume) a scenario; returns counts. `on_event(kind, **info)` reports progress:
    kinds "plan" (total, todo), "prepare" (message), "cell" (record, done, todo), "finish".
    `executor` (swap_hw.sweep.executors; default LocalExecutor) computes the work units; only this
    process writes their records."""
    emit = on_event or (lambda kind, **info: None)
    start = time.perf_counter()
    db_path = db or scenario.spec.output.db
    executor = executor or LocalExecutor()
    cells = plan_cells(scenario, executor.torch_threads)
    run_id = run_id_of(scenario, executor.torch_threads)
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
        if prep is not None:
            # the device asked for and the one it resolves to here (pool and Dask workers resolve
            # `auto` themselves, each to its own GPU or CPU); not in the run id, so recorded here
            device = describe_device(resolve_device(scenario.spec.device), scenario.spec.device)
            store.set_run_info(run_id, {**prep.describe(), "device": device})
        store.plan_cells(run_id, [c.key for c in cells])
        store.relabel_cells((c.key, scenario.pruners[c.pruner].label, scenario.sources[c.source].label,
                             scenario.conditions[c.condition].label)
                            for c in cells if c.key in done and c.pruner is not None)
        computed = 0
        if prep is not None:
            with contextlib.closing(executor.records(prep, group_cells(cells), todo)) as records:
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
