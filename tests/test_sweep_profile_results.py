"""`cg_columns: support` (issue 20's sweep speed-up) leaves every pruner's results as they were,
to float tolerance, and `cg_columns: all` (the default) is the old arithmetic bit for bit.

The largest item of `bench/sweep_profile.py`'s profile was the regression solver's CG backsolve
(lr, swap), whose products run over all d columns of X although only the support's |S| columns
enter them. With `cg_columns: support` a backsolve copies X's support columns once and multiplies
with those (pruners/iht.py, `_Problem.on_support`). The BLAS kernels sum the shorter products in
another order, so the two agree to float32 rounding, not bit for bit; that is why the option is
part of the cell keys when set. What is checked here:

  * the default stays out of every description (no cell key changes) and a set option enters it;
  * the support products equal the full products to float32 rounding, are counted the same, and
    without the copy (the default, also a matrix-free X's path) are the old products exactly;
  * a small fixed sweep (digits MLPNet; magnitude, lr, swap, woodfisher; s ∈ {0.5, 0.9}; clean and
    gaussian gradients; one_shot, multi_stage and gradual) gives the same records both ways: the
    same realised sparsities, top-1 accuracies equal or one test example apart, losses and
    prune-log objectives within float tolerance, product counts within the CG's own spread.
"""

from __future__ import annotations

import math
import sqlite3
import sys
from pathlib import Path

import pytest
import torch

from swap_hw.config import parse_scenario_text
from swap_hw.gradients import GradientSet
from swap_hw.layout import Layout
from swap_hw.pruners import PRUNERS, iht
from swap_hw.results.store import Store
from swap_hw.sweep.executors import LocalExecutor
from swap_hw.sweep.run import run_scenario

SCENARIO = """
name: profile_results
seed: 3
repeats: 1
model: {{train: {{epochs: 3}}}}
calibration: {{n: 128}}
sources: [clean, {{name: gaussian, std: 2, prop: 0.25}}]
pruners: [magnitude, {{name: lr, stages: 3, lambda: 0.01{cg}}}, {{name: swap, stages: 2{cg}}}, woodfisher]
sparsities: [0.5, 0.9]
conditions: [digital]
protocol: {protocol}
multi_stage: {{stages: 3}}
finetune: {{stages: 2, epochs: 1, lr: 0.001, batch_size: 64}}
output: {{db: {db}, cache_dir: {cache}}}
"""


def test_the_default_reads_all_columns_and_stays_out_of_the_cell_keys():
    for name in ("lr", "swap"):
        default = PRUNERS.get(name)()
        assert default.params.cg_columns == "all" and "cg_columns" not in default.describe()
        assert PRUNERS.get(name)(cg_columns="all").describe() == default.describe()
        assert PRUNERS.get(name)(cg_columns="support").describe()["cg_columns"] == "support"


def test_support_products_equal_the_full_products():
    gen = torch.Generator().manual_seed(0)
    n, d = 64, 500
    X = torch.randn(n, d, generator=gen)
    grads = GradientSet(X=X, w_bar=torch.randn(d, generator=gen), layout=Layout.from_shapes([("w", (d,))]))
    prob = iht._Problem(grads, torch.zeros(n, dtype=torch.float64), 0.1, torch.zeros(d, dtype=torch.float64),
                        support_columns=True)
    support = torch.rand(d, generator=gen) < 0.3
    v_s = torch.randn(int(support.sum()), generator=gen, dtype=torch.float64)
    u = torch.randn(n, generator=gen, dtype=torch.float64)
    full_v = torch.zeros(d, dtype=torch.float64)
    full_v[support] = v_s

    on_s = prob.on_support(support)
    assert on_s.XS is not None and tuple(on_s.XS.shape) == (n, int(support.sum()))
    fast_xv, fast_xtu = on_s.xv(v_s), on_s.xtu(u)
    assert prob.products == 2
    ref_xv, ref_xtu = prob.xv(full_v), prob.xtu(u)[support]
    assert fast_xv.dtype == fast_xtu.dtype == torch.float64
    torch.testing.assert_close(fast_xv, ref_xv, rtol=1e-5, atol=1e-5 * float(ref_xv.abs().max()))
    torch.testing.assert_close(fast_xtu, ref_xtu, rtol=1e-5, atol=1e-5 * float(ref_xtu.abs().max()))


def test_without_the_copy_the_products_are_the_old_ones_exactly():
    gen = torch.Generator().manual_seed(1)
    n, d = 32, 200
    grads = GradientSet(X=torch.randn(n, d, generator=gen), w_bar=torch.zeros(d),
                        layout=Layout.from_shapes([("w", (d,))]))
    prob = iht._Problem(grads, torch.zeros(n, dtype=torch.float64), 0.0, torch.zeros(d, dtype=torch.float64))
    support = torch.rand(d, generator=gen) < 0.5
    on_s = prob.on_support(support)  # support_columns=False: the default, cg_columns: all
    assert on_s.XS is None
    v_s = torch.randn(int(support.sum()), generator=gen, dtype=torch.float64)
    u = torch.randn(n, generator=gen, dtype=torch.float64)
    full_v = torch.zeros(d, dtype=torch.float64)
    full_v[support] = v_s
    assert torch.equal(on_s.xv(v_s), (grads.X @ full_v.float()).double())
    assert torch.equal(on_s.xtu(u), (grads.X.T @ u.float()).double()[support])
    assert prob.products == 2


def _sweep(root: Path, cache: Path, protocol: str, cg_columns: str) -> dict[tuple, dict]:
    """Run the fixed scenario under `protocol` into root/db.sqlite, lr and swap at `cg_columns`;
    (pruner name, source, sparsity) → what its cell stored."""
    db = root / "db.sqlite"
    cg = "" if cg_columns == "all" else f", cg_columns: {cg_columns}"
    scenario = parse_scenario_text(SCENARIO.format(protocol=protocol, db=db, cache=cache, cg=cg),
                                   "profile_results.yaml")
    summary = run_scenario(scenario, executor=LocalExecutor(torch_threads=1))
    assert summary.computed == summary.planned == 1 + 4 * 2 * 2
    with Store(db) as store:
        logs = {c["cell_key"]: c for c in store.cell_logs(summary.run_id)}
    with sqlite3.connect(db) as conn:
        for key, metric, value in conn.execute("SELECT cell_key, metric, value FROM measurements"):
            logs[key][metric] = value
    def name(c: dict) -> str:
        return (c["pruner_json"] or {}).get("name", "dense")

    return {(name(c), c["source"], c["sparsity_label"]): c | {"key": key} for key, c in logs.items()}


def _solver_logs(log: dict) -> list[dict]:
    """The regression solver's logs inside a cell's prune log (one per pruner call)."""
    if log.get("protocol") in (None, "one_shot"):  # the dense cell has no log
        return [log] if log else []
    stages = log[log["protocol"]]["stages"]
    return [s["prune"] for s in stages] + [log["final_stage"]]


@pytest.mark.parametrize("protocol", ["one_shot", "multi_stage", "gradual"])
def test_a_fixed_sweep_gives_the_same_records_with_either_cg_columns(tmp_path, monkeypatch, protocol):
    cache = tmp_path / "cache"
    copies: list[bool] = []
    on_support = iht._Problem.on_support

    def spy(self, support):
        out = on_support(self, support)
        copies.append(out.XS is not None)
        return out

    monkeypatch.setattr(iht._Problem, "on_support", spy)
    before = _sweep(tmp_path / "before", cache, protocol, "all")
    assert copies and not any(copies)  # the backsolves ran, over all columns (the old arithmetic)
    copies.clear()
    after = _sweep(tmp_path / "after", cache, protocol, "support")
    assert copies and all(copies)  # every backsolve multiplied with the support's columns

    assert before.keys() == after.keys()
    for where, old in before.items():  # the option is in the keys of lr and swap cells only
        assert (after[where]["key"] == old["key"]) == (where[0] not in ("lr", "swap")), where
    n_test = 359  # digits' test split (20 % of 1,797 images): one example is 1/359 of accuracy
    regression = same_accuracy = 0
    for key, old in before.items():
        new = after[key]
        where = f"{old['pruner']} {old['source']} s={old['sparsity_label']}"
        old_log, new_log = old["prune_log_json"] or {}, new["prune_log_json"] or {}
        solver_logs = [(o, m) for o, m in zip(_solver_logs(old_log), _solver_logs(new_log)) if "products" in o]
        if not solver_logs:  # dense, magnitude, woodfisher: no CG backsolve, so bit for bit the same
            assert new["accuracy"] == old["accuracy"] and new["loss"] == old["loss"], where
            assert new_log.get("weights_sha") == old_log.get("weights_sha"), where
            continue
        assert new["sparsity"] == old["sparsity"], where  # the same supports: the pruned set is exact
        assert new_log.get("kept") == old_log.get("kept"), where
        # a test example on the decision boundary may flip; more would be a real change
        assert abs(new["accuracy"] - old["accuracy"]) <= 1.0 / n_test + 1e-12, where
        same_accuracy += new["accuracy"] == old["accuracy"]
        assert new["loss"] == pytest.approx(old["loss"], rel=1e-3), where
        for o, m in solver_logs:
            regression += 1
            if o.get("objective") is not None:  # a stage that kept every weight runs no backsolve
                assert (o["cg_columns"], m["cg_columns"]) == ("all", "support"), where
            # CG on this ill-conditioned X (λ = 0.01 relative) stops at cg_tol = 1e-5 or after cg_iters,
            # and rounding moves where: the iteration counts and the objective differ within that
            assert m["products"] == pytest.approx(o["products"], rel=0.2), where
            if o["objective"] is None:  # a stage that kept every weight
                assert m["objective"] is None, where
                continue
            assert math.isfinite(m["objective"])
            assert m["objective"] == pytest.approx(o["objective"], rel=1e-3), where
    assert regression >= 8  # lr and swap at 2 sparsities × 2 sources, at least once each
    assert same_accuracy >= 6  # of the 8 lr / swap cells


def test_the_profile_timers_split_nested_calls_exclusively():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from sweep_profile import ExclusiveTimers

    class Work:
        @staticmethod
        def inner():
            t = __import__("time").perf_counter()
            while __import__("time").perf_counter() - t < 0.02:
                pass

        @staticmethod
        def outer():
            Work.inner()
            Work.inner()

    timers = ExclusiveTimers()
    timers.wrap(Work, "inner", "a")
    timers.wrap(Work, "outer", "b")
    try:
        Work.outer()
    finally:
        timers.restore()
    assert timers.calls == {"a": 2, "b": 1}
    assert timers.seconds["a"] >= 0.04
    assert timers.seconds["b"] < 0.02  # outer's own time excludes the two inner calls
    assert Work.__dict__["inner"].__class__ is staticmethod  # restored as it was
