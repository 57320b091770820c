"""Faults a long sweep meets: `kill -9` at several random points, each resumed, and a Dask worker
killed mid-sweep. Every time the finished records are the uninterrupted run's, each cell once."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from swap_hw.config import load_scenario
from swap_hw.results.store import Store
from swap_hw.sweep.plan import plan_cells
from swap_hw.sweep.run import run_scenario

ROOT = Path(__file__).resolve().parents[1]

BODY = """
repeats: 3
model: {{train: {{epochs: 3}}}}
calibration: {{n: 64}}
pruners: [magnitude, lr]
sparsities: [{sparsities}]
output: {{db: {db}, cache_dir: {cache}}}
"""


def scenario_in(folder: Path, name: str, cache: Path, n_sparsities: int = 10):
    path = folder / f"{name}.yaml"
    sparsities = ", ".join(f"{0.05 * i:.2f}" for i in range(1, n_sparsities + 1))
    path.write_text(BODY.format(sparsities=sparsities, db=folder / f"{name}.sqlite", cache=cache))
    return load_scenario(path)


def records_of(db) -> list[tuple]:
    with Store(db) as store:
        run = store.resolve_run_id(None)
        return [(r["cell_key"], r["metric"], r["value"]) for r in store.records(run)]


def count(db: Path) -> int:
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def duplicates(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM (SELECT cell_key, metric, draw, grid_json, COUNT(*) n "
                            "FROM measurements GROUP BY 1, 2, 3, 4 HAVING n > 1)").fetchone()[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    scenario = scenario_in(folder, "reference", folder / "cache")
    run_scenario(scenario)
    return folder, scenario


def test_kill_9_at_random_points_then_resume_gives_the_uninterrupted_records(reference):
    folder, ref = reference
    scenario = scenario_in(folder, "killed", folder / "cache")
    db = Path(scenario.spec.output.db)
    total = len(plan_cells(scenario))
    rng = random.Random(20261203)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    points = sorted(rng.sample(range(2, total - 2), 3))
    for point in points:
        proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "run", scenario.file, "--quiet"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None and count(db) < point:
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
        assert count(db) <= total and duplicates(db) == 0
    resumed = run_scenario(scenario)
    assert resumed.computed + resumed.skipped == total
    assert records_of(db) == records_of(ref.spec.output.db)
    assert duplicates(db) == 0


def test_a_dask_worker_killed_mid_sweep_does_not_stop_it(reference):
    distributed = pytest.importorskip("dask.distributed")
    from swap_hw.sweep.executors import DaskExecutor

    folder, ref = reference
    scenario = scenario_in(folder, "dask_killed", folder / "cache")
    db = Path(scenario.spec.output.db)
    total = len(plan_cells(scenario))
    outcome: dict = {}
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=50) as cluster:
        with DaskExecutor(cluster.scheduler_address) as executor:
            def sweep():
                try:
                    outcome["summary"] = run_scenario(scenario, executor=executor)
                except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                    outcome["error"] = exc

            thread = threading.Thread(target=sweep)
            thread.start()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and count(db) < 3 and thread.is_alive():
                time.sleep(0.01)
            pids = executor.connect().run(os.getpid)
            killed_at = count(db)
            os.kill(next(iter(pids.values())), signal.SIGKILL)
            thread.join(timeout=300)
    assert killed_at < total  # the worker died mid-sweep, not after it
    assert not thread.is_alive() and "error" not in outcome, outcome.get("error")
    assert outcome["summary"].computed + outcome["summary"].skipped == total
    assert records_of(db) == records_of(ref.spec.output.db) and duplicates(db) == 0
