"""Transport plans: the exact sort plan against POT's LP solvers, the entropic solver against POT's
log-domain Sinkhorn, barycentric targets and the cost identity, warm starts, and fallbacks."""

from __future__ import annotations

import math

import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from swap_hw.transport import (
    EntropicPlans,
    IdentityPlans,
    cost_matrix,
    cost_scale,
    entropic_plan,
    exact_potentials,
    identity_plan,
    independent_plan,
    sort_plan,
    transport_plan,
)


def clouds(seed: int, n: int = 40, heavy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=gen, dtype=torch.float64)
    b = 1.5 * torch.randn(n, generator=gen, dtype=torch.float64) + 0.3
    if heavy:  # like per-sample outputs of a trained model: a bulk near 0 and a few far points
        a = a * 0.05
        a[:3] = torch.tensor([6.0, -4.0, 9.0], dtype=torch.float64)
        b = a + 0.3 * torch.randn(n, generator=gen, dtype=torch.float64)
    return a, b


def uniform(n: int) -> torch.Tensor:
    return torch.full((n,), 1.0 / n, dtype=torch.float64)


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=1, max_value=30))
def test_sort_plan_is_pot_emd_1d_and_emd(seed, n):
    a, b = clouds(seed, n)
    ours = sort_plan(a, b)
    P1 = ot.emd_1d(a, b)  # uniform weights, squared Euclidean cost
    P2 = ot.emd(uniform(n), uniform(n), cost_matrix(a, b), numItermax=int(1e7))
    # distinct values (continuous draws): the optimal plan is unique, a permutation / n
    assert torch.allclose(ours.dense(), P1, atol=1e-12)
    assert torch.allclose(ours.dense(), P2, atol=1e-12)
    assert torch.allclose(ours.targets, n * P2.T @ a, atol=1e-9)
    assert ours.fit_cost(b) == pytest.approx(0.5 * n * float((P2 * cost_matrix(a, b)).sum()), rel=1e-9, abs=1e-12)


def test_sort_plan_with_ties_is_optimal_and_a_permutation():
    a = torch.tensor([1.0, 0.0, 1.0, 1.0, -2.0, 0.0], dtype=torch.float64)
    b = torch.tensor([0.5, 0.5, 0.5, -1.0, 3.0, 3.0], dtype=torch.float64)
    ours = sort_plan(a, b)
    assert sorted(ours.matching.tolist()) == list(range(6))
    lp = ot.emd2(uniform(6), uniform(6), cost_matrix(a, b), numItermax=int(1e7))
    assert float((ours.dense() * cost_matrix(a, b)).sum()) == pytest.approx(float(lp), abs=1e-12)
    assert torch.equal(sort_plan(a, b).matching, ours.matching)  # deterministic tie-breaking


def test_identity_and_independent_plans():
    a, b = clouds(1, 25)
    ident = identity_plan(a)
    assert torch.equal(ident.targets, a) and ident.spread == 0.0
    assert torch.equal(ident.barycentric(b), b)
    assert ident.fit_cost(b) == pytest.approx(0.5 * float(((a - b) ** 2).sum()))
    assert IdentityPlans(a)(b).method == "identity"
    ind = transport_plan(a, b, math.inf)
    assert ind.method == "independent"
    assert torch.allclose(ind.targets, torch.full_like(a, float(a.mean())))
    assert ind.spread == pytest.approx(25 * float(a.var(unbiased=False)))
    assert torch.allclose(ind.dense(), torch.full((25, 25), 1 / 625, dtype=torch.float64))
    assert transport_plan(a, b, 0.0).method == "sort"
    with pytest.raises(ValueError):
        transport_plan(a, b, -0.1)


@pytest.mark.parametrize("epsilon", [1.0, 0.1, 0.01])
@pytest.mark.parametrize("heavy", [False, True])
def test_entropic_plan_matches_pot_sinkhorn_log(epsilon, heavy):
    a, b = clouds(2, 40, heavy)
    n = a.numel()
    ours = transport_plan(a, b, epsilon, tol=1e-5, max_iter=20000)
    assert ours.method == "sinkhorn" and ours.warning is None
    reg = epsilon * cost_scale(a, b)
    ref = ot.bregman.sinkhorn_log(uniform(n), uniform(n), cost_matrix(a, b), reg, numItermax=100_000, stopThr=1e-13)
    assert ours.epsilon_abs == pytest.approx(reg)
    assert float((ours.plan - ref).abs().max()) < 1e-4 / n
    assert torch.allclose(ours.targets, n * ref.T @ a, atol=1e-3 * float(a.abs().max()))
    # marginals: rows within the requested tolerance, columns exact
    assert ours.row_rms <= 1e-5
    assert torch.allclose(ours.plan.sum(dim=0) * n, torch.ones(n, dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("epsilon", [0.5, 0.05])
def test_pot_solver_agrees(epsilon):
    a, b = clouds(3, 30, heavy=True)
    sor = transport_plan(a, b, epsilon, tol=1e-6, max_iter=20000)
    pot = transport_plan(a, b, epsilon, tol=1e-6, max_iter=20000, solver="pot")
    assert pot.method.startswith("pot_")
    assert torch.allclose(sor.targets, pot.targets, atol=1e-3 * float(a.abs().max()))


def test_fit_cost_identity_for_dense_plans():
    # (n/2)<Π, M(a, b)> = ½‖ỹ − b‖² + ½ spread whenever the columns have mass 1/n
    a, b = clouds(4, 30)
    n = a.numel()
    M = cost_matrix(a, b)
    for plan in (transport_plan(a, b, 0.2, tol=1e-6), independent_plan(a), sort_plan(a, b)):
        P = plan.dense()
        assert plan.fit_cost(b) == pytest.approx(0.5 * n * float((P * M).sum()), rel=1e-6)
        c = b + 0.7  # the identity holds for any b with the same plan
        assert plan.fit_cost(c) == pytest.approx(0.5 * n * float((P * cost_matrix(a, c)).sum()), rel=1e-6)


def test_exact_potentials_are_dual_optimal():
    a, b = clouds(5, 50, heavy=True)
    f, g = exact_potentials(a, b)
    M = cost_matrix(a, b)
    assert float((f[:, None] + g[None, :] - M).max()) <= 1e-9 * float(M.max())
    plan = sort_plan(a, b)
    n = a.numel()
    primal = float((plan.dense() * M).sum())
    assert (float(f.sum()) + float(g.sum())) / n == pytest.approx(primal, rel=1e-9, abs=1e-12)


def test_warm_started_provider_agrees_with_cold_solves():
    a, b = clouds(6, 60, heavy=True)
    plans = EntropicPlans(a, 0.1, tol=1e-6, max_iter=20000)
    assert plans.describe["epsilon_abs"] == pytest.approx(0.1 * 2 * float(a.var(unbiased=False)))
    first = plans(b)
    moved = b + 0.05 * (a - b)
    warm = plans(moved)
    cold = transport_plan(a, moved, 0.1, scale=plans.scale, tol=1e-6, max_iter=20000)
    assert warm.warning is None and cold.warning is None and first.warning is None
    assert torch.allclose(warm.targets, cold.targets, atol=1e-4 * float(a.abs().max()))


def test_failure_falls_back_to_the_sort_plan_with_a_warning():
    a, b = clouds(7, 40, heavy=True)
    starved = transport_plan(a, b, 1e-4, max_iter=1, tol=1e-9)
    assert starved.method == "sort" and starved.warning and "sort plan" in starved.warning
    assert torch.equal(starved.targets, sort_plan(a, b).targets)
    nan = b.clone()
    nan[3] = float("nan")
    broken = transport_plan(a, nan, 0.1)  # never raises
    assert broken.method == "sort" and broken.warning
    flat = transport_plan(torch.ones(5), torch.ones(5), 0.1)  # zero cost scale
    assert flat.method == "sort" and flat.warning


def test_entropic_plan_validates_arguments():
    a, b = clouds(8, 10)
    with pytest.raises(ValueError):
        entropic_plan(a, b, 0.0)
    with pytest.raises(ValueError):
        entropic_plan(a, b[:5], 1.0)
    with pytest.raises(ValueError):
        entropic_plan(a, b, 1.0, omega=2.5)
