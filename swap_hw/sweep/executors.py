"""Executors: where the work units of a sweep are computed. Results are always written by the caller.

A sweep is a list of `WorkUnit`s (plan.group_cells): the cells of one (replicate, gradient
source) that share one set of calibration gradients, or the dense reference cells of a replicate.
An executor turns units into finished `CellRecord`s; `run_scenario` (the coordinator) writes each
record to the store in its own transaction, so no worker ever touches the database and a unit that
is lost with its worker is simply computed again (by the executor, or by the next `run`).

- `LocalExecutor`: in this process, one unit after another, yielding each cell as it finishes.
- `ProcessPoolExecutor(workers=N)`: a local pool of N processes (forkserver start method where the
  platform has it, else spawn). Each worker calls `prepare()` once per scenario: the coordinator
  has already trained and cached the dense model on disk, so workers only load it. Workers run
  torch with `torch_threads` (default 1) intra-op threads each, so N workers use N cores. If a
  worker process dies (OOM killer, kill -9), the pool is restarted and the unfinished units are
  submitted again (at most `max_restarts` times).
- `DaskExecutor(address)`: the same unit function on a dask.distributed cluster; results come back
  with `as_completed`. A worker that dies has its task recomputed elsewhere by the scheduler.
  The scheduler and every worker need swap_hw installed (the scheduler unpickles each task).
  Workers must see the same files as the coordinator (the dense model cache `output.cache_dir`, a
  `model.checkpoint`, torchvision data roots): use a shared filesystem. Every unit checks that its
  worker's dense model has the same content digest as the coordinator's and fails loudly if not.

Determinism: every draw of a cell is seeded from the scenario's root seed and the cell's purpose
(plan.Seeds), never from the process or the order, so all executors give the same records.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing as mp
import os
import uuid
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from ..config import Scenario
from ..digest import tensors_digest
from ..errors import SwapHwError
from ..registry import DENSE
from ..device import resolve_device
from .cell import compute_threads, execute_units
from .plan import CellSpec, WorkUnit, plan_cells
from .prepare import Prepared, prepare
from ..results.store import CellRecord, Store

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# the unit function: runs in a worker (or in-process for tests)

# One prepared scenario per worker process: loading data and the dense model once per worker, not
# once per unit. Only the newest scenario is kept so a long-lived Dask worker does not accumulate.
_WORKER_STATE: dict[str, tuple[Prepared, str]] = {}


def _prepared_in_worker(scenario: Scenario) -> tuple[Prepared, str]:
    """The worker's prepared scenario, already on the device its cells run on (resolved here, so
    `auto` picks this worker's GPU), and the digest of its dense model as prepare() left it."""
    key = f"{scenario.config_hash()}@{scenario.spec.device}"  # the device is not in the run id
    state = _WORKER_STATE.get(key)
    if state is None:
        _WORKER_STATE.clear()
        prep = prepare(scenario)
        digest = tensors_digest(prep.dense.state_dict())  # on the CPU, before moving: any device agrees
        state = (prep.on_device(resolve_device(scenario.spec.device)), digest)
        _WORKER_STATE[key] = state
    return state


def compute_unit(scenario: Scenario, unit: WorkUnit, keys: Iterable[str], dense_digest: str | None = None,
                 torch_threads: int | None = None) -> list[CellRecord]:
    """Compute the cells of `unit` whose keys are in `keys`; return their records (nothing is written).

    dense_digest: the coordinator's `tensors_digest` of the dense model; a worker whose dense model
    differs (e.g. it could not see the model cache and trained its own on different hardware)
    raises instead of producing results that do not belong to this run.
    """
    if torch_threads is not None and torch.get_num_threads() != torch_threads:
        torch.set_num_threads(int(torch_threads))
    prep, digest = _prepared_in_worker(scenario)
    if dense_digest is not None and digest != dense_digest:
        raise SwapHwError(
            f"worker {os.uname().nodename}:{os.getpid()} has a different dense model ({digest}) than the "
            f"coordinator ({dense_digest}); put output.cache_dir ({scenario.spec.output.cache_dir}) on a "
            "filesystem every worker shares")
    return list(execute_units(prep, [unit], set(keys)))


def _init_pool_worker(torch_threads: int) -> None:
    torch.set_num_threads(int(torch_threads))


def _pending_units(units: Iterable[WorkUnit], todo: set[str]) -> list[tuple[WorkUnit, frozenset[str]]]:
    out = []
    for unit in units:
        keys = frozenset(c.key for c in unit.cells if c.key in todo)
        if keys:
            out.append((unit, keys))
    return out


# --------------------------------------------------------------------------------------------
# executors


class Executor:
    """Turns work units into finished cell records. Use as a context manager (connects/cleans up)."""

    kind = "?"
    torch_threads = 1  # intra-op threads each unit is computed with (part of the cells' keys)

    def describe(self) -> str:
        return self.kind

    def records(self, prep: Prepared, units: list[WorkUnit], todo: set[str]) -> Iterator[CellRecord]:
        """Yield a record for every cell of `units` whose key is in `todo`, in completion order."""
        raise NotImplementedError

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        pass


class LocalExecutor(Executor):
    """In this process, unit after unit (the coordinator's own loop)."""

    kind = "local"

    def __init__(self, torch_threads: int = 1):
        if torch_threads < 1:
            raise SwapHwError(f"torch threads must be at least 1, got {torch_threads}")
        self.torch_threads = int(torch_threads)

    def records(self, prep: Prepared, units: list[WorkUnit], todo: set[str]) -> Iterator[CellRecord]:
        with compute_threads(self.torch_threads):
            yield from execute_units(prep, units, todo)


def _pool_context(start_method: str | None):
    if start_method is None:
        start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(start_method)
    if start_method == "forkserver":
        # import torch, swap_hw and scikit-learn's loaders once in the fork server, not in every worker
        ctx.set_forkserver_preload(["swap_hw.sweep.executors", "sklearn.datasets"])
    return ctx


def _stop_pool(pool: cf.ProcessPoolExecutor, clean: bool) -> None:
    if clean:
        pool.shutdown(wait=True)
        return
    # Interrupted or failed: do not leave workers computing units nobody will write.
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)


class ProcessPoolExecutor(Executor):
    """A local pool of `workers` processes; unit of work = WorkUnit; the caller writes the results."""

    kind = "pool"

    def __init__(self, workers: int, torch_threads: int = 1, start_method: str | None = None,
                 max_restarts: int = 2):
        if workers < 1:
            raise SwapHwError(f"--workers must be at least 1, got {workers}")
        if torch_threads < 1:
            raise SwapHwError(f"torch threads per worker must be at least 1, got {torch_threads}")
        self.workers = int(workers)
        self.torch_threads = int(torch_threads)
        self.start_method = start_method
        self.max_restarts = int(max_restarts)
        self.restarts = 0

    def describe(self) -> str:
        return f"process pool, {self.workers} workers × {self.torch_threads} torch thread(s)"

    def records(self, prep: Prepared, units: list[WorkUnit], todo: set[str]) -> Iterator[CellRecord]:
        pending = dict(enumerate(_pending_units(units, todo)))
        if not pending:
            return
        digest = tensors_digest(prep.dense.state_dict())
        ctx = _pool_context(self.start_method)
        while pending:
            pool = cf.ProcessPoolExecutor(max_workers=min(self.workers, len(pending)), mp_context=ctx,
                                          initializer=_init_pool_worker, initargs=(self.torch_threads,))
            clean = False
            try:
                futures = {pool.submit(compute_unit, prep.scenario, unit, keys, digest, self.torch_threads): i
                           for i, (unit, keys) in pending.items()}
                try:
                    for fut in cf.as_completed(futures):
                        records = fut.result()
                        del pending[futures[fut]]
                        yield from records
                except BrokenProcessPool:
                    # A worker died. Keep every unit that did finish, resubmit the rest.
                    for fut, i in futures.items():
                        if i in pending and fut.done() and not fut.cancelled() and fut.exception() is None:
                            records = fut.result()
                            del pending[i]
                            yield from records
                    self.restarts += 1
                    if self.restarts > self.max_restarts:
                        raise SwapHwError(f"the process pool broke {self.restarts} times (a worker died, "
                                          "e.g. out of memory); finished cells are saved, run again to resume")
                    log.warning("a pool worker died; restarting the pool and resubmitting %d unfinished "
                                "work unit(s)", len(pending))
                    continue
                clean = True
            finally:
                _stop_pool(pool, clean)


class DaskExecutor(Executor):
    """Units as tasks on a dask.distributed cluster (`address` = tcp://HOST:PORT of the scheduler).

    `client`: an existing dask.distributed Client to use instead of connecting (not closed here).
    `retries`: how often Dask reruns a unit that raised (a dying worker is handled by the
    scheduler itself, which recomputes the task on another worker).
    """

    kind = "dask"

    def __init__(self, address: str | None = None, client: Any = None, torch_threads: int = 1,
                 retries: int = 1, connect_timeout: float = 20.0):
        if address is None and client is None:
            raise SwapHwError("--executor dask needs --address tcp://HOST:PORT (the Dask scheduler)")
        self.address = address
        self._client = client
        self._own_client = client is None
        self.torch_threads = int(torch_threads)
        self.retries = int(retries)
        self.connect_timeout = connect_timeout

    def describe(self) -> str:
        where = self.address or getattr(self._client, "scheduler", None) and self._client.scheduler.address
        return f"dask cluster at {where}"

    def connect(self):
        if self._client is None:
            try:
                from dask.distributed import Client
            except ImportError as exc:  # pragma: no cover - dask is a declared dependency
                raise SwapHwError(f"--executor dask needs dask.distributed: {exc}") from None
            try:
                self._client = Client(self.address, timeout=self.connect_timeout)
            except (OSError, TimeoutError) as exc:
                raise SwapHwError(f"cannot reach the Dask scheduler at {self.address}: {exc}") from None
        return self._client

    def __enter__(self) -> "DaskExecutor":
        self.connect()
        return self

    def close(self) -> None:
        if self._own_client and self._client is not None:
            self._client.close()
            self._client = None

    def records(self, prep: Prepared, units: list[WorkUnit], todo: set[str]) -> Iterator[CellRecord]:
        from dask.distributed import as_completed
        from distributed import KilledWorker

        pending = _pending_units(units, todo)
        if not pending:
            return
        client = self.connect()
        digest = tensors_digest(prep.dense.state_dict())
        # The scenario (a few kB) travels inside every task rather than being scattered once: a
        # scattered value is lost with the workers holding it, a task's arguments never are.
        scenario = prep.scenario
        token = uuid.uuid4().hex[:8]
        futures = [client.submit(compute_unit, scenario, unit, keys, digest, self.torch_threads, pure=False,
                                 retries=self.retries,
                                 key=f"swap_hw-unit-{token}-r{unit.replicate}-s{DENSE if unit.source is None else unit.source}")
                   for unit, keys in pending]
        try:
            for fut in as_completed(futures):
                try:
                    records = fut.result()
                except KilledWorker as exc:
                    raise SwapHwError(f"Dask gave up on a unit after it killed several workers ({exc}); "
                                      "finished cells are saved, run again to resume") from None
                except RuntimeError as exc:
                    if "deserializ" not in str(exc):
                        raise
                    # the scheduler unpickles every task, so it needs swap_hw as much as the workers
                    raise SwapHwError(f"the Dask cluster at {self.address or 'the given client'} cannot load "
                                      "swap_hw's tasks: install swap_hw (the same version) on the scheduler "
                                      "and on every worker") from None
                fut.release()
                yield from records
        finally:
            client.cancel([f for f in futures if not f.done()])


def make_executor(kind: str = "local", workers: int = 1, address: str | None = None,
                  torch_threads: int | None = None) -> Executor:
    """The executor the CLI flags ask for: local (workers = 1), a process pool (workers > 1), or Dask."""
    if workers < 1:
        raise SwapHwError(f"--workers must be at least 1, got {workers}")
    if kind == "local":
        if workers == 1:
            return LocalExecutor(torch_threads or 1)
        return ProcessPoolExecutor(workers, torch_threads=torch_threads or 1)
    if kind == "dask":
        if workers != 1:
            raise SwapHwError("--workers sizes the local process pool; a Dask cluster brings its own workers")
        return DaskExecutor(address, torch_threads=torch_threads or 1)
    raise SwapHwError(f"unknown executor {kind!r}; valid: local, dask")


# --------------------------------------------------------------------------------------------
# the plan, for --dry-run


def plan_status(scenario: Scenario, db: str | Path | None = None, threads: int = 1) -> list[tuple[CellSpec, bool]]:
    """Every planned cell with whether the results database already holds it. Reads only: a
    missing database is not created (nothing is done)."""
    cells = plan_cells(scenario, threads)
    path = Path(db or scenario.spec.output.db)
    done: set[str] = set()
    if path.exists():  # a directory or a non-database is refused by the Store, naming it
        with Store(path, read_only=True) as store:
            done = store.done_keys(c.key for c in cells)
    return [(c, c.key in done) for c in cells]
