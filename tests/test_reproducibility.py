"""Numbers that can be trusted: cells are computed at a recorded thread count and recomputed at it
(export works on every cell of a run whatever the machine's default), different counts never share
cells, and nothing NaN/Inf is ever stored — the run stops with one line saying where it came from."""

from __future__ import annotations

import sqlite3

import pytest
import torch

from swap_hw.cli import main
from swap_hw.config import load_scenario
from swap_hw.errors import RunFault
from swap_hw.results.store import Store
from swap_hw.sweep.executors import LocalExecutor
from swap_hw.sweep.plan import plan_cells
from swap_hw.sweep.run import run_scenario

SCENARIO = """
repeats: 2
model: {train: {epochs: 3}}
calibration: {n: 64}
pruners: [lr, swap]
sparsities: [0.5, 0.8]
"""


def test_export_recomputes_every_cell_at_the_runs_thread_count(write_scenario, tmp_path, capsys):
    path = write_scenario(SCENARIO)
    assert main(["run", str(path), "--quiet", "--threads", "2"]) == 0
    db = str(tmp_path / "results.sqlite")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # export runs at another default than the run: it must not matter
    try:
        for pruner in ("lr", "swap"):
            for sparsity in ("0.5", "0.8"):
                for seed in ("0", "1"):
                    out = tmp_path / f"{pruner}{sparsity}{seed}.pt"
                    assert main(["export", "--db", db, "--pruner", pruner, "--sparsity", sparsity, "--seed", seed,
                                 str(out)]) == 0, capsys.readouterr().err
                    assert torch.load(out, weights_only=True)["meta"]["verified"]
    finally:
        torch.set_num_threads(previous)
    assert "matches the run's recorded digest" in capsys.readouterr().out


def test_thread_counts_never_share_cells(write_scenario, tmp_path):
    scenario = load_scenario(write_scenario(SCENARIO))
    one, two = {c.key for c in plan_cells(scenario, 1)}, {c.key for c in plan_cells(scenario, 2)}
    assert one == {c.key for c in plan_cells(scenario)} and not one & two
    db = str(tmp_path / "mixed.sqlite")
    first = run_scenario(scenario, db=db, executor=LocalExecutor(1))
    second = run_scenario(scenario, db=db, executor=LocalExecutor(2))
    assert first.computed == second.computed == first.planned  # nothing reused across counts
    with Store(db) as store:
        logs = [c["prune_log_json"] for c in store.cell_logs(second.run_id) if c["prune_log_json"]]
    assert logs and {log["threads"] for log in logs} == {2}


def _cells(db) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM cells").fetchone()[0]


def _finite_everywhere(db) -> bool:
    with sqlite3.connect(db) as conn:
        values = [r[0] for r in conn.execute("SELECT value FROM measurements")]
    return all(v is not None and v == v and abs(v) != float("inf") for v in values)


def test_a_pruner_that_returns_nan_stops_the_run_and_stores_nothing_of_it(write_scenario, tmp_path, monkeypatch, capsys):
    from swap_hw.pruners.base import SolveOutput
    from swap_hw.pruners.lr import LRPruner

    def nan_solve(self, w_bar, grads, k, layout):
        mask = torch.zeros(w_bar.numel(), dtype=torch.bool)
        mask[:k] = True
        return SolveOutput(w=torch.full_like(w_bar, float("nan")), mask=mask)

    monkeypatch.setattr(LRPruner, "_solve", nan_solve)
    path = write_scenario(SCENARIO)
    assert main(["run", str(path), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pruner lr at sparsity 0.5" in err and "NaN/Inf weights" in err
    db = tmp_path / "results.sqlite"
    assert _finite_everywhere(db)
    with Store(db) as store:
        assert all(c["pruner"] != "lr" for c in store.cell_logs(store.resolve_run_id(None)))


def test_nan_gradients_are_named_as_the_cause(write_scenario, monkeypatch):
    from swap_hw.gradients.gaussian import GaussianSource

    monkeypatch.setattr(GaussianSource, "perturb", lambda self, X, seed, provenance: X * float("nan"))
    scenario = load_scenario(write_scenario(SCENARIO.replace("pruners: [lr, swap]", "pruners: [lr]")
                                            + "sources: [{name: gaussian, std: 1.0}]\n"))
    with pytest.raises(RunFault, match=r"gradient source gaussian: 64 of 64 per-sample gradients are NaN/Inf"):
        run_scenario(scenario)
    assert _finite_everywhere(scenario.spec.output.db)


def test_a_condition_that_measures_nan_stops_the_run(write_scenario, monkeypatch):
    from swap_hw.deploy.base import Measurement
    from swap_hw.deploy.digital import DigitalCondition

    monkeypatch.setattr(DigitalCondition, "evaluate",
                        lambda self, model, test, seed: [Measurement("accuracy", float("nan"))])
    scenario = load_scenario(write_scenario(SCENARIO))
    with pytest.raises(RunFault, match=r"dense model, condition digital, replicate 0: the condition measured accuracy = nan"):
        run_scenario(scenario)
    assert _cells(scenario.spec.output.db) == 0
