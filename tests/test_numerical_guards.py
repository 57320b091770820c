"""Numerical guards: solvers never hand back NaN, and a Sinkhorn solve that fails falls back to the
exact sort plan with the warning kept in the cell's log."""

from __future__ import annotations

import pytest
import torch

from swap_hw.config import load_scenario
from swap_hw.gradients import GradientSet
from swap_hw.layout import Layout
from swap_hw.pruners import PRUNERS, kept_count
from swap_hw.results.store import Store
from swap_hw.sweep.run import run_scenario

LAYOUT = Layout.from_shapes([("a.weight", (20, 10))])


@pytest.mark.parametrize("scale", [1e-30, 1e30, 1e37])
@pytest.mark.parametrize("name", ["lr", "swap", "woodfisher"])
def test_solvers_return_finite_weights_at_extreme_gradient_scales(name, scale):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(30, LAYOUT.d, generator=gen) * scale
    w = torch.randn(LAYOUT.d, generator=gen)
    result = PRUNERS.get(name)().prune(LAYOUT.unflatten(w), GradientSet(X=X, w_bar=w, layout=LAYOUT), 0.5)
    assert bool(torch.isfinite(result.weights["a.weight"]).all())
    assert int(result.masks["a.weight"].sum()) == kept_count(LAYOUT.d, 0.5)


def test_a_failed_sinkhorn_falls_back_to_the_sort_plan_and_says_so_in_the_cell_log(write_scenario):
    scenario = load_scenario(write_scenario("""
        repeats: 1
        model: {train: {epochs: 3}}
        calibration: {n: 64}
        pruners: [{name: swap, sinkhorn_iters: 1, epsilon: 0.001, warm_start: false}]
        sparsities: [0.5]
    """))
    summary = run_scenario(scenario)
    with Store(summary.db) as store:
        logs = [c["prune_log_json"] for c in store.cell_logs(summary.run_id) if c["prune_log_json"]]
    assert logs and all("used the exact sort plan" in " ".join(log["warnings"]) for log in logs)
    assert all(log["plan"]["methods"] == ["sort"] for log in logs)
