"""Sweeps: zip grids, dry runs, executors (process pool, Dask) agreeing with the local loop,
resuming after kill -9, comparisons, plots and export of a pruned model."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from swap_hw.config import load_scenario, parse_scenario_text
from swap_hw.errors import ConfigError, SwapHwError
from swap_hw.sweep.run import plan_cells, run_scenario
from swap_hw.results.store import Store

ROOT = Path(__file__).resolve().parents[1]

from snippets import TINY  # noqa: E402  (tests/ is on sys.path under pytest)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One folder whose dense-model cache every test of this module reuses (trained once)."""
    return tmp_path_factory.mktemp("sweeps")


def scenario_at(folder: Path, name: str, body: str = TINY, cache: Path | None = None):
    path = folder / f"{name}.yaml"
    cache = cache or folder / "cache"
    path.write_text(body + f"\noutput: {{db: {folder / (name + '.sqlite')}, cache_dir: {cache}}}\n")
    return load_scenario(path)


def values_of(db: str, run_id: str) -> list[tuple]:
    with Store(db) as store:
        return [(r["cell_key"], r["metric"], r["value"], r["drift_time"], r["draw"]) for r in store.records(run_id)]


def digests_of(db: str, run_id: str) -> dict[str, str | None]:
    with Store(db) as store:
        return {c["cell_key"]: (c["prune_log_json"] or {}).get("weights_sha") for c in store.cell_logs(run_id)}


@pytest.fixture(scope="module")
def local_run(shared):
    """The reference: the tiny scenario run by the local in-process loop."""
    scenario = scenario_at(shared, "local")
    summary = run_scenario(scenario)
    assert summary.computed == summary.planned == 6
    return scenario, summary


# --------------------------------------------------------------------------------------------
# grid


def test_zip_pairs_lists_instead_of_crossing_them():
    base = "pruners: [magnitude]\nsparsities: [0.5]\n"
    s = parse_scenario_text(base + "sources: [{name: gaussian, zip: {std: [1, 2], prop: [0.1, 0.25]}}]\n", "s.yaml")
    assert [(m.params.std, m.params.prop) for m in s.sources] == [(1.0, 0.1), (2.0, 0.25)]
    crossed = parse_scenario_text(base + "sources: [{name: gaussian, std: [1, 2], prop: [0.1, 0.25]}]\n", "s.yaml")
    assert len(crossed.sources) == 4
    # zip combines with an ordinary list axis as one more axis of the product
    both = parse_scenario_text(base + "sources: [{name: gaussian, std: [1, 2, 3], zip: {prop: [0.1, 0.2]}}]\n", "s.yaml")
    assert len(both.sources) == 6


@pytest.mark.parametrize("entry, field, words", [
    ("{name: gaussian, zip: {std: [1, 2], prop: [0.1]}}", "sources[0].zip", "std has 2, prop has 1"),
    ("{name: gaussian, zip: {std: 1}}", "sources[0].zip.std", "non-empty list"),
    ("{name: gaussian, std: 1, zip: {std: [1, 2]}}", "sources[0].zip.std", "both inside and outside"),
    ("{name: gaussian, zip: [1, 2]}", "sources[0].zip", "mapping"),
    ("{name: gaussian, zip: {std: [1, -2]}}", "sources[0].std", "greater than or equal to 0"),
])
def test_zip_errors_name_the_field(entry, field, words):
    with pytest.raises(ConfigError) as info:
        parse_scenario_text(f"pruners: [magnitude]\nsparsities: [0.5]\nsources: [{entry}]\n", "s.yaml")
    assert info.value.field == field and words in str(info.value)


def test_dry_run_lists_cells_and_does_no_work(shared, local_run, capsys):
    from swap_hw.cli import main

    scenario, _ = local_run
    fresh_db = shared / "never.sqlite"
    assert main(["run", scenario.file, "--dry-run", "--db", str(fresh_db)]) == 0
    out = capsys.readouterr().out
    assert "total: 6 cells, 0 already done, 6 to compute in 4 work units" in out
    assert out.count("magnitude") == 4 and out.count("dense") == 2 and "replicate" in out and "done?" in out
    assert not fresh_db.exists()  # nothing created
    assert main(["run", scenario.file, "--dry-run"]) == 0
    assert "6 already done, 0 to compute" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# executors


def test_process_pool_gives_the_same_records_as_the_local_loop(shared, local_run):
    from swap_hw.sweep.executors import ProcessPoolExecutor

    scenario, ref = local_run
    pooled = run_scenario(scenario, db=str(shared / "pool.sqlite"), executor=ProcessPoolExecutor(2))
    assert pooled.run_id == ref.run_id and pooled.computed == 6
    assert values_of(pooled.db, pooled.run_id) == values_of(ref.db, ref.run_id)
    digests = digests_of(pooled.db, pooled.run_id)
    assert digests == digests_of(ref.db, ref.run_id) and sum(d is not None for d in digests.values()) == 4


def test_dask_local_cluster_gives_the_same_records_as_the_local_loop(shared, local_run):
    distributed = pytest.importorskip("dask.distributed")
    from swap_hw.sweep.executors import DaskExecutor

    scenario, ref = local_run
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=50) as cluster:
        with DaskExecutor(cluster.scheduler_address) as executor:
            summary = run_scenario(scenario, db=str(shared / "dask.sqlite"), executor=executor)
            workers = executor.connect().scheduler_info()["workers"]
    assert len(workers) == 2
    assert summary.computed == 6
    assert values_of(summary.db, summary.run_id) == values_of(ref.db, ref.run_id)
    assert digests_of(summary.db, summary.run_id) == digests_of(ref.db, ref.run_id)


def test_executor_choice_is_checked():
    from swap_hw.sweep.executors import LocalExecutor, ProcessPoolExecutor, make_executor

    assert isinstance(make_executor("local", 1), LocalExecutor)
    assert isinstance(make_executor("local", 3), ProcessPoolExecutor)
    with pytest.raises(SwapHwError, match="--address"):
        make_executor("dask")
    with pytest.raises(SwapHwError, match="own workers"):
        make_executor("dask", 2, "tcp://127.0.0.1:1")
    with pytest.raises(SwapHwError, match="at least 1"):
        make_executor("local", 0)


def test_a_worker_with_another_dense_model_refuses(shared, local_run):
    from swap_hw.sweep.executors import compute_unit
    from swap_hw.sweep.run import group_cells

    scenario, _ = local_run
    unit = group_cells(plan_cells(scenario))[1]
    records = compute_unit(scenario, unit, [c.key for c in unit.cells])
    assert len(records) == len(unit.cells)
    with pytest.raises(SwapHwError, match="different dense model"):
        compute_unit(scenario, unit, [c.key for c in unit.cells], dense_digest="0" * 16)


# --------------------------------------------------------------------------------------------
# resume after kill -9


def test_sigkill_mid_run_then_rerun_completes_without_duplicates(shared, local_run):
    many = ", ".join(f"{0.02 * i:.2f}" for i in range(40))
    scenario = scenario_at(shared, "killed", TINY.replace("[0.5, 0.8]", f"[{many}]").replace("repeats: 2", "repeats: 3"))
    total = len(plan_cells(scenario))
    assert total == 3 * (1 + 40)
    db = Path(scenario.spec.output.db)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "run", scenario.file, "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline, count = time.monotonic() + 120, 0
        while time.monotonic() < deadline and proc.poll() is None:
            if db.is_file():
                try:
                    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
                        count = conn.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
                except sqlite3.OperationalError:
                    count = 0
                if count >= 5:
                    break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with sqlite3.connect(db) as conn:
        after_kill = conn.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
        # a finished cell is never half-written: each has both its metrics
        partial = conn.execute("SELECT COUNT(*) FROM cells c WHERE (SELECT COUNT(*) FROM measurements m "
                               "WHERE m.cell_key = c.cell_key) != 2").fetchone()[0]
    assert 5 <= after_kill < total and partial == 0

    resumed = run_scenario(scenario)
    assert resumed.skipped == after_kill and resumed.computed == total - after_kill
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM cells").fetchone()[0] == total
        assert conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0] == 2 * total
        dup = conn.execute("SELECT COUNT(*) FROM (SELECT cell_key, metric, draw, grid_json, COUNT(*) n "
                           "FROM measurements GROUP BY 1, 2, 3, 4 HAVING n > 1)").fetchone()[0]
    assert dup == 0
    again = run_scenario(scenario)
    assert again.computed == 0 and again.skipped == total


# --------------------------------------------------------------------------------------------
# compare, plots


def _records(run: str, pruner_values: dict[str, dict[int, float]], condition="digital", drift=None) -> list[dict]:
    out = []
    for pruner, by_seed in pruner_values.items():
        for seed, v in by_seed.items():
            out.append({"run": run, "pruner": pruner, "source": "clean", "sparsity_label": "0.5", "sparsity": 0.5,
                        "seed": seed, "condition": condition, "protocol": "one_shot", "drift_time": drift,
                        "draw": None, "metric": "accuracy", "value": v})
    return out


def test_compare_pairs_replicates_or_falls_back_to_welch():
    from scipy import stats

    from swap_hw.results.compare import compare_records

    a = _records("A", {"magnitude": {0: 0.80, 1: 0.82, 2: 0.78}})
    b = _records("B", {"magnitude": {0: 0.85, 1: 0.86, 2: 0.84}})
    [cell] = compare_records(a, b).cells
    d = [0.05, 0.04, 0.06]
    half = stats.t.ppf(0.975, 2) * stats.tstd(d) / math.sqrt(3)
    assert cell.paired and cell.diff[0] == pytest.approx(0.05) and cell.diff[1] == pytest.approx(half)
    assert cell.significant

    b4 = _records("B", {"magnitude": {0: 0.85, 1: 0.86, 2: 0.84, 3: 0.83}})
    [cell] = compare_records(a, b4).cells
    welch = stats.ttest_ind([0.85, 0.86, 0.84, 0.83], [0.80, 0.82, 0.78], equal_var=False)
    se = (0.845 - 0.80) / welch.statistic
    assert not cell.paired and cell.diff[0] == pytest.approx(0.045)
    assert cell.diff[1] == pytest.approx(stats.t.ppf(0.975, welch.df) * se)

    # numeric condition tags (an attack's eps) are columns of their own, never averaged together
    tagged = [{**r, "tag_eps": eps, "value": r["value"] - eps} for r in a for eps in (0.1, 0.3)]
    cells = compare_records(tagged, tagged).cells
    assert sorted((c.condition, round(c.a[0], 6)) for c in cells) == [("digital eps=0.1", 0.7), ("digital eps=0.3", 0.5)]

    only_a = compare_records(a, _records("B", {"swap": {0: 0.9, 1: 0.9}}))
    assert [(c.pruner, c.a is not None, c.b is not None, c.diff) for c in only_a.cells] == [
        ("magnitude", True, False, None), ("swap", False, True, None)]


def test_report_compare_of_two_real_runs(shared, local_run, capsys):
    from swap_hw.cli import main

    scenario, ref = local_run
    other = run_scenario(scenario_at(shared, "seed3", TINY + "seed: 3\n"), db=ref.db)  # another root seed
    assert other.run_id != ref.run_id
    assert main(["report", "--db", ref.db, "--compare", ref.run_id[:8], other.run_id[:8], "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["pruner"], r["sparsity"]) for r in rows} == {("dense", "0"), ("magnitude", "0.5"), ("magnitude", "0.8")}
    for r in rows:
        assert r["paired"] and r["replicates_a"] == r["replicates_b"] == 2
        assert r["diff"] == pytest.approx(r["mean_b"] - r["mean_a"])
    assert main(["report", "--db", ref.db, "--compare", ref.run_id, other.run_id]) == 0
    assert "Δ (B − A)" in capsys.readouterr().out


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plots_are_written_as_real_pngs(tmp_path):
    from swap_hw.results.plots import write_plots

    records = []
    for drift in (1.0, 3600.0, 86400.0):
        records += _records("R", {"magnitude": {0: 0.80, 1: 0.82, 2: 0.78}, "swap": {0: 0.85, 1: 0.83, 2: 0.86},
                                  "dense": {0: 0.9, 1: 0.91, 2: 0.9}}, condition="analog(pcm)", drift=drift)
    records += _records("R", {"magnitude": {0: 0.9, 1: 0.9, 2: 0.9}, "dense": {0: 0.95, 1: 0.95, 2: 0.95}})
    for r in records:
        if r["pruner"] == "dense":
            r["sparsity_label"], r["source"] = "0", "-"
    for r in list(records):  # a second sparsity, lower accuracy
        if r["pruner"] != "dense":
            records.append({**r, "sparsity_label": "0.9", "sparsity": 0.9, "value": r["value"] - 0.2})
    paths = write_plots(records, tmp_path / "figs", title="test")
    names = sorted(p.name for p in paths)  # short condition labels, no hash (nothing collides)
    assert names == ["accuracy_vs_drift__analog.png", "accuracy_vs_sparsity__analog.png", "accuracy_vs_sparsity__digital.png"]
    for p in paths:
        width, height = _png_size(p)
        assert width >= 600 and height >= 300 and p.stat().st_size > 15_000


def test_report_plot_from_the_cli(local_run, tmp_path, capsys):
    from swap_hw.cli import main

    _, ref = local_run
    assert main(["report", "--db", ref.db, "--run", ref.run_id, "--plot", str(tmp_path / "p")]) == 0
    [png] = (tmp_path / "p").glob("*.png")
    assert png.name == "accuracy_vs_sparsity__digital.png" and _png_size(png)[0] >= 600


# --------------------------------------------------------------------------------------------
# export


def test_export_round_trips_into_a_fresh_model(local_run, tmp_path, capsys):
    from swap_hw.cli import main
    from swap_hw.models import accuracy_and_loss
    from swap_hw.models import apply_weights, build_model
    from swap_hw.pruners import PRUNERS
    from swap_hw.sweep.run import prepare

    scenario, ref = local_run
    out = tmp_path / "pruned.pt"
    assert main(["export", str(out), "--db", ref.db, "--run", ref.run_id, "--pruner", "magnitude",
                 "--sparsity", "0.8", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "layers.1.weight" in printed and "all pruned weights" in printed and "matches" in printed

    bundle = torch.load(out, weights_only=True)
    meta = bundle["meta"]
    assert meta["verified"] and meta["sparsity"] == pytest.approx(0.8, abs=1e-3)
    fresh = build_model(meta["arch"], meta["input_shape"], meta["n_classes"], seed=12345, **meta["options"])
    fresh.load_state_dict(bundle["state_dict"])
    fresh.eval()
    params = dict(fresh.named_parameters())
    for name, mask in bundle["masks"].items():
        assert mask.dtype == torch.bool and torch.all(params[name][~mask] == 0)

    prep = prepare(scenario)
    expected = apply_weights(prep.dense, PRUNERS.get("magnitude")().prune(prep.layout.weights_of(prep.dense), None, 0.8).weights)
    x, y = prep.splits.test
    with torch.no_grad():
        assert torch.equal(fresh(x), expected(x))
    # and it is the model whose accuracy the run stored
    with Store(ref.db) as store:
        stored = [r["value"] for r in store.records(ref.run_id) if r["pruner"] == "magnitude"
                  and r["sparsity_label"] == "0.8" and r["seed"] == 1 and r["metric"] == "accuracy"]
    assert stored == [accuracy_and_loss(fresh, x, y)[0]]


def test_export_refuses_weights_that_differ_from_the_run(local_run, tmp_path):
    from swap_hw.sweep.export import export_pruned

    scenario, ref = local_run
    db = tmp_path / "tampered.sqlite"
    with sqlite3.connect(ref.db) as src, sqlite3.connect(db) as dst:
        src.backup(dst)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT cell_key, prune_log_json FROM cells WHERE pruner='magnitude'").fetchall()
        for key, log in rows:
            log = json.loads(log)
            log["weights_sha"] = "0" * 16
            conn.execute("UPDATE cells SET prune_log_json=? WHERE cell_key=?", (json.dumps(log), key))
    with pytest.raises(SwapHwError, match="differ from the ones the run evaluated"):
        export_pruned(db, ref.run_id, "magnitude", "0.5", 0, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(SwapHwError, match="valid: 0.5, 0.8"):
        export_pruned(ref.db, ref.run_id, "magnitude", "0.7", 0, tmp_path / "x.pt")
    with pytest.raises(SwapHwError, match="valid: 0 to 1"):
        export_pruned(ref.db, ref.run_id, "magnitude", "0.5", 2, tmp_path / "x.pt")
    with pytest.raises(SwapHwError, match="valid: magnitude"):
        export_pruned(ref.db, ref.run_id, "swap", "0.5", 0, tmp_path / "x.pt")
