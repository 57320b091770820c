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
    # tol 1e-5, the float32 solver's documented floor (entropic_plan): at 1e-6 (as here before
    # issue 20) whether the float64 row error of the plan gets below tol is down to rounding
    a, b = clouds(6, 60, heavy=True)
    plans = EntropicPlans(a, 0.1, tol=1e-5, max_iter=20000)
    assert plans.describe["epsilon_abs"] == pytest.approx(0.1 * 2 * float(a.var(unbiased=False)))
    first = plans(b)
    moved = b + 0.05 * (a - b)
    warm = plans(moved)
    cold = transport_plan(a, moved, 0.1, scale=plans.scale, tol=1e-5, max_iter=20000)
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


# --- the "sor" solver on SWAP-like clouds (issue 20: faster starts and iterations, same plans) -----


def swap_like_clouds(seed: int, n: int = 120) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, b0, b1) as SWAP meets them: y = X w̄ with heavy-tailed rows (a dense bulk and far points,
    max|y| ≈ 4–9 sd), b0 = X·(w̄ with its 70 % smallest weights zeroed), b1 = b0 moved 30 % of the
    way back toward y (an IHT step)."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 4, generator=gen, dtype=torch.float64) @ torch.randn(4, 60, generator=gen, dtype=torch.float64)
    X = X * torch.exp(1.2 * torch.randn(n, 1, generator=gen, dtype=torch.float64)) / 8
    w = torch.randn(60, generator=gen, dtype=torch.float64)
    keep = w.abs() >= w.abs().quantile(0.7)
    y, b0 = X @ w, X @ (w * keep)
    return y, b0, b0 + 0.3 * (y - b0)


def newton_plan(a: torch.Tensor, b: torch.Tensor, eps_abs: float) -> torch.Tensor:
    """The entropic plan to float64 precision, independently of transport.py's iteration: Newton's
    method with backtracking on the concave semi-dual max_f mean(f) − (ε/n) Σ_j logsumexp_i((f_i −
    M_ij)/ε) (its plan Π_ij = softmax_i((f_i − M_ij)/ε)/n has exact columns; the gradient is the
    row error). Converges in a few dozen steps where Sinkhorn needs thousands."""
    n = a.numel()
    M = cost_matrix(a, b)
    f, _ = exact_potentials(a, b)

    def value(f):
        return float(f.mean()) - eps_abs / n * float(torch.logsumexp((f[:, None] - M) / eps_abs, dim=0).sum())

    for _ in range(200):
        P = torch.softmax((f[:, None] - M) / eps_abs, dim=0)
        grad = (1.0 - P.sum(dim=1)) / n
        if float(grad.abs().max()) * n < 1e-12:
            break
        H = (torch.diag(P.sum(dim=1)) - P @ P.T) / (n * eps_abs) + 1.0 / n  # −Hessian, + gauge fix
        step, t, base = torch.linalg.solve(H, grad), 1.0, value(f)
        while value(f + t * step) < base and t > 1e-10:
            t /= 2
        f = f + t * step
    assert float(grad.abs().max()) * n < 1e-9, "the Newton reference did not converge"
    return torch.softmax((f[:, None] - M) / eps_abs, dim=0) / n


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_sor_plans_match_a_newton_reference_on_swap_like_clouds(seed):
    # cold call at b0, then the (shifted) warm-started call at b1, as SWAP's provider makes them
    a, b0, b1 = swap_like_clouds(seed)
    n, amax = a.numel(), float(a.abs().max())
    for tol, bound in ((1e-3, 1e-2), (2e-5, 5e-4)):
        # bound: at the default tol the targets sit up to ~5e-3·max|a| from the exact plan's (the
        # solver before issue 20 gave the same cold plans, and warm ones as far or farther)
        plans = EntropicPlans(a, 0.1, tol=tol, max_iter=20000)
        for b in (b0, b1):
            got = plans(b)
            assert got.method == "sinkhorn" and got.warning is None
            assert got.row_rms <= tol * 1.01  # rechecked in float64 on the returned plan
            ref = newton_plan(a, b, got.epsilon_abs)
            assert float((got.targets - n * ref.T @ a).abs().max()) <= bound * amax
            assert got.spread == pytest.approx(float((n * ref.T @ (a * a) - (n * ref.T @ a) ** 2).sum()), rel=20 * bound)


def test_shifted_warm_start_needs_fewer_iterations_than_the_plain_one():
    # EntropicPlans passes the previous b (warm_b): the start is the previous scalings moved by the
    # change of the exact potentials. Without warm_b the plain warm start (or the exact potentials,
    # whichever starts with the lower error) is used, as before issue 20.
    shifted = plain = 0
    for seed in range(6):
        a, b0, b1 = swap_like_clouds(seed)
        plans = EntropicPlans(a, 0.1)
        first = plans(b0)
        warm = plans(b1)
        alone = transport_plan(a, b1, 0.1, scale=plans.scale, warm_start=first.log_scalings)
        assert warm.iterations <= alone.iterations
        shifted, plain = shifted + warm.iterations, plain + alone.iterations
        assert torch.allclose(warm.targets, alone.targets, atol=1e-2 * float(a.abs().max()))
        # a warm_b of the wrong size is ignored (plain warm start), never an error
        odd = transport_plan(a, b1, 0.1, scale=plans.scale, warm_start=first.log_scalings, warm_b=b0[:-1])
        assert odd.iterations == alone.iterations
    assert shifted < 0.8 * plain  # measured 82 against 118


@pytest.mark.parametrize("seed", [0, 3])
def test_row_error_gate_keeps_the_stopping_iteration(seed, monkeypatch):
    # the costly row error is measured only once the free column error is below CHECK_FACTOR·tol;
    # measuring it at every iteration must give the very same solve
    from swap_hw import transport

    a, b0, b1 = swap_like_clouds(seed)
    runs = []
    for factor in (transport.CHECK_FACTOR, math.inf):
        monkeypatch.setattr(transport, "CHECK_FACTOR", factor)
        plans = EntropicPlans(a, 0.05, tol=1e-4)
        runs.append([plans(b0), plans(b1)])
    for gated, every in zip(*runs):
        assert gated.iterations == every.iterations
        assert torch.equal(gated.plan, every.plan)


def test_rows_that_underflow_at_the_start_are_normalised_in_the_log_domain():
    # a far point of a: from zero scalings every kernel entry of its row is below float32's range,
    # so the start redoes that row with float64 logsumexps; the plan must stay finite, consistent
    # with the returned log-scalings, and converge to the exact entropic plan
    from swap_hw.transport import _sor_sinkhorn

    n = 31
    a = torch.cat([torch.linspace(0, 1, n - 1, dtype=torch.float64), torch.tensor([20.0], dtype=torch.float64)])
    b = torch.linspace(-0.2, 1.3, n, dtype=torch.float64)
    eps = 0.05
    assert float(((20.0 - b) ** 2).min() - ((a[:-1, None] - b[None, :]) ** 2).max()) / eps > 104  # underflows
    plan, (lu, lv), _, _ = _sor_sinkhorn(a, b, eps, [torch.zeros(n, dtype=torch.float64)], 1, 1e-3, 1.8)
    assert bool(torch.isfinite(plan).all()) and float(plan[-1].sum()) > 0
    rebuilt = torch.exp(lu[:, None] - cost_matrix(a, b) / eps + lv[None, :])
    big = plan > 1e-6 / n
    assert torch.allclose(rebuilt[big], plan[big], rtol=1e-5)
    plan, _, _, note = _sor_sinkhorn(a, b, eps, [torch.zeros(n, dtype=torch.float64)], 50000, 1e-5, 1.8)
    assert note is None
    assert float((plan - newton_plan(a, b, eps)).abs().max()) < 1e-4 / n


@pytest.mark.parametrize("omega", [1.3, 1.8, 1.95])
def test_sure_relaxation_range_guarantees_the_gain_test(omega):
    # inside the range the over-relaxed step always gains ≥ 5 % of the plain one (so skipping the
    # test changes no decision); just past its upper end a single point can make it fail
    from swap_hw.transport import _sure_relaxation_range

    low, high = _sure_relaxation_range(omega)
    assert low <= 0.0 <= high

    def gain(w, d):
        return w * d * torch.exp(d) - torch.expm1(w * d)

    gen = torch.Generator().manual_seed(int(omega * 100))
    for _ in range(200):
        m = torch.rand(50, generator=gen, dtype=torch.float64)
        d = low + (high - low) * torch.rand(50, generator=gen, dtype=torch.float64)
        assert float((m * gain(omega, d)).sum()) >= 0.05 * float((m * gain(1.0, d)).sum())
    if high > 0:
        past = torch.tensor([1.02 * high / 0.9], dtype=torch.float64)  # the range is the root shrunk by 10 %
        assert float(gain(omega, past)) < 0.05 * float(gain(1.0, past))


def test_denormal_flushing_is_scoped():
    from swap_hw.transport import _denormals_flushed, _flushing_denormals

    before = _flushing_denormals()
    with _denormals_flushed():
        inside = _flushing_denormals()
    assert inside  # flush-to-zero is supported on x86 (SSE3) and ARM, where tests run
    assert _flushing_denormals() == before  # restored: other code in this thread sees no change
