"""Runner and store: cells are planned, computed once, resumed after interruption, never doubled."""

from __future__ import annotations

import sqlite3

import pytest
import torch

from swap_hw.config import load_scenario
from swap_hw.sweep.run import plan_cells, prepare, run_scenario
from swap_hw.results.store import Store

from snippets import TINY  # noqa: E402  (tests/ is on sys.path under pytest)


def count_rows(db, table):
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def test_run_then_rerun_skips_everything(write_scenario):
    scenario = load_scenario(write_scenario(TINY))
    first = run_scenario(scenario)
    assert first.planned == len(plan_cells(scenario)) == 2 * (1 + 2)
    assert first.computed == first.planned and first.skipped == 0
    second = run_scenario(scenario)
    assert second.computed == 0 and second.skipped == first.planned
    assert count_rows(scenario.spec.output.db, "cells") == first.planned
    with Store(scenario.spec.output.db) as store:
        records = store.records(first.run_id)
        runs = store.runs()
    assert len(runs) == 1 and runs[0]["invocations"] == 2 and runs[0]["status"] == "finished"
    assert {r["metric"] for r in records} == {"accuracy", "loss"}
    assert len(records) == first.planned * 2


def test_reused_cells_take_the_current_label(write_scenario):
    # A cell written when a default differed carries a label like "magnitude(x=1)"; reused by a
    # run whose resolved parameters are the same (same key), it must be reported under the
    # current label, not split off as a second pruner.
    scenario = load_scenario(write_scenario(TINY))
    first = run_scenario(scenario)
    with sqlite3.connect(scenario.spec.output.db) as conn:
        conn.execute("UPDATE cells SET pruner='magnitude(old_default=1)', source='clean(x=2)' WHERE pruner='magnitude'"
                     " AND sparsity_label='0.5'")
    second = run_scenario(scenario)
    assert second.computed == 0
    with Store(scenario.spec.output.db) as store:
        labels = {(r["pruner"], r["source"]) for r in store.records(first.run_id)}
    assert labels == {("dense", "-"), ("magnitude", "clean")}


def test_interrupted_run_resumes_without_duplicates(write_scenario):
    scenario = load_scenario(write_scenario(TINY))
    seen = []

    def stop_after_two(kind, **info):
        if kind == "cell":
            seen.append(info["record"].cell_key)
            if len(seen) == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_scenario(scenario, on_event=stop_after_two)
    db = scenario.spec.output.db
    assert count_rows(db, "cells") == 2
    with Store(db) as store:
        assert store.runs()[0]["status"] == "interrupted"
    resumed = run_scenario(scenario)
    assert resumed.skipped == 2 and resumed.computed == resumed.planned - 2
    assert count_rows(db, "cells") == resumed.planned
    with sqlite3.connect(db) as conn:
        dup = conn.execute("SELECT COUNT(*) FROM (SELECT cell_key, metric, draw, grid_json, COUNT(*) c "
                           "FROM measurements GROUP BY 1,2,3,4 HAVING c > 1)").fetchone()[0]
    assert dup == 0


def test_same_seed_same_results_different_seed_different_calibration(write_scenario, tmp_path):
    a = load_scenario(write_scenario(TINY + "seed: 5\n", "a.yaml"), ["output.db=" + str(tmp_path / "a.sqlite")])
    b = load_scenario(write_scenario(TINY + "seed: 5\n", "b.yaml"), ["output.db=" + str(tmp_path / "b.sqlite"),
                                                                       "output.cache_dir=" + str(tmp_path / "c2")])
    ra, rb = run_scenario(a), run_scenario(b)
    with Store(ra.db) as sa, Store(rb.db) as sb:
        va = [(r["cell_key"], r["metric"], r["value"]) for r in sa.records(ra.run_id)]
        vb = [(r["cell_key"], r["metric"], r["value"]) for r in sb.records(rb.run_id)]
    assert va == vb  # retrained from scratch in another cache: bit-identical


def test_dense_model_is_cached_and_reused(write_scenario):
    scenario = load_scenario(write_scenario(TINY))
    p1 = prepare(scenario)
    p2 = prepare(scenario)
    assert not p1.dense_was_cached and p2.dense_was_cached
    for (n1, t1), (n2, t2) in zip(p1.dense.state_dict().items(), p2.dense.state_dict().items()):
        assert n1 == n2 and torch.equal(t1, t2)


def test_pruned_zeros_stay_zero_when_applied(write_scenario):
    from swap_hw.layout import Layout
    from swap_hw.models import apply_weights
    from swap_hw.pruners import PRUNERS

    scenario = load_scenario(write_scenario(TINY))
    prep = prepare(scenario)
    weights = prep.layout.weights_of(prep.dense)
    result = PRUNERS.get("magnitude")().prune(weights, None, 0.8)
    pruned = apply_weights(prep.dense, result.weights)
    params = dict(pruned.named_parameters())
    for name, mask in result.masks.items():
        assert torch.all(params[name][~mask] == 0)
    assert abs(float((Layout.from_model(pruned).flatten(params) == 0).float().mean()) - 0.8) < 1e-3
    # the dense model is untouched
    assert float((prep.layout.flatten(dict(prep.dense.named_parameters())) == 0).float().mean()) < 0.01


def test_checkpoint_is_loaded_instead_of_training(write_scenario, tmp_path):
    scenario = load_scenario(write_scenario(TINY))
    prep = prepare(scenario)
    ckpt = tmp_path / "mine.pt"
    torch.save(prep.dense.state_dict(), ckpt)
    with_ckpt = load_scenario(write_scenario(TINY + f"model: {{checkpoint: {ckpt}}}\n", "c.yaml"))
    prep2 = prepare(with_ckpt)
    assert all(torch.equal(a, b) for a, b in zip(prep.dense.state_dict().values(), prep2.dense.state_dict().values()))


def test_iterative_pruners_run_through_the_runner_and_plot_their_pqi_curve(write_scenario, tmp_path):
    from swap_hw.cli.sweeps import report_plot

    scenario = load_scenario(write_scenario("""
repeats: 1
model: {train: {epochs: 3}}
pruners: [{name: sap, iterations: 2, epochs: 1}, {name: lottery, iterations: 3, epochs: 1}]
sparsities: [0.3, auto]
"""))
    summary = run_scenario(scenario)
    with Store(summary.db) as store:
        logs = store.cell_logs(summary.run_id)
        records = store.records(summary.run_id)
    lottery = [c for c in logs if c["pruner"].startswith("lottery") and c["sparsity_label"] == "0.3"][0]
    its = lottery["prune_log_json"]["iterations"]
    # 20 % of survivors per round until 0.3 is reached: 1.0 → 0.8 → 0.7 (last round cut to the target)
    assert [round(i["remaining_fraction"], 2) for i in its] == [1.0, 0.8, 0.7]
    assert abs(lottery["sparsity"] - 0.3) < 1e-3
    assert all("pqi_global" in i and "test_accuracy" in i.get("metrics", i) for i in its)
    report_plot(records, str(tmp_path / "fig"), "accuracy", "t", logs)
    pngs = sorted((tmp_path / "fig").glob("pqi_*.png"))
    assert len(pngs) == 4 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000 for p in pngs)
