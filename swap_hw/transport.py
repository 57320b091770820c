"""Transport plans between two 1-D point clouds of equal size with uniform masses (SWAP's Π).

The only module of swap_hw that imports POT (``ot``), lazily.

Two clouds of n points each, mass 1/n per point:

    a ∈ R^n   the targets' cloud,     a = X w̄  (the dense model's per-sample outputs y)
    b ∈ R^n   the candidate's cloud,  b = X w
    M_ij = (a_i − b_j)²               squared-distance cost (units of a², e.g. loss²)

A plan Π ∈ R^{n×n}, Π ≥ 0, Π1 = 1/n (rows, a side), Πᵀ1 = 1/n (columns, b side) solves

    Π_ε = argmin_Π ⟨Π, M⟩ − ε_abs H(Π),      H(Π) = −Σ Π_ij (log Π_ij − 1)

with ε given RELATIVE to the cost scale: ε_abs = ε · scale, scale = mean_ij M_ij by default (the
caller may fix another scale, e.g. the cost at the dense weights, so ε_abs stays constant while b
moves). Special values:

    ε = 0    the exact plan: in 1-D with equal uniform masses it is the monotone matching (sort
             both clouds, pair rank to rank), O(n log n), stored as a permutation, never n×n;
    ε = inf  the independent plan 11ᵀ/n²;
    identity Π = I/n (point i ↔ point i), which is what LR uses: it makes SWAP's objective LR's.

Every plan is returned as a `TransportResult` whose central output is the barycentric map

    bary(v)_j = Σ_i Π_ij v_i / Σ_i Π_ij      (= n·(Πᵀv)_j when the columns have mass exactly 1/n)

and in particular the barycentric targets ỹ = bary(a). Normalising by the actual column mass makes
bary exact for the identity / sort / independent plans and insensitive to the residual marginal
error of an iterative solve. With it, for any b,

    (n/2)·⟨Π̂, M(a, b)⟩ = ½‖ỹ − b‖² + ½·spread,     spread = Σ_j (bary(a²)_j − ỹ_j²) ≥ 0

where Π̂ is Π with its columns rescaled to mass exactly 1/n (Π̂ = Π for an exact solve); `spread`
does not depend on b. That identity is what lets SWAP's frozen-plan step be an LR step toward ỹ.

Entropic solver, `solver="sor"` (default): Sinkhorn's alternating scalings, over-relaxed and
stabilised (details in `_sor_sinkhorn`). The log-scalings are folded into a float32 kernel that
holds plan-sized entries (no underflow whatever ε is), each half-step is over-relaxed by ω = 1.8
when that still raises the dual objective (so it cannot diverge), and the iteration starts from
the best of: the previous call's scalings (warm start), the exact plan's Kantorovich potentials
(`exact_potentials`), and zeros on a cold call. Measured on MLPNet/digits clouds (n = 1000,
heavy-tailed per-sample outputs; bench/prune_time.py --sinkhorn), to a 1e-3 row error: ε = 0.1 →
41 iterations cold, ~12 warm after a small move of b, 20–40 ms per call; POT's plain Sinkhorn
needs ~750 iterations for the same error and its log-domain solver (needed there, since ε_abs <
max(M)/500) takes seconds. `solver="pot"` still offers POT (torch backend, `warmstart`):
`ot.sinkhorn` (method "sinkhorn") while ε_abs ≥ max(M)/KERNEL_RANGE, else
`ot.bregman.sinkhorn_log`, starting from the same potentials.

Convergence and failure: the "sor" iteration stops when the relative RMS error of the row masses
of the plan it returns, sqrt(mean_i (n·(Π1)_i − 1)²), is below `tol` (its columns are exact); POT
stops on its own column criterion at the same relative level. Every plan is then checked: a plan
with non-finite entries, an empty column, or a row error above `MARGINAL_ACCEPT` is a failure; the
next solver is tried ("pot": the log-domain one after the kernel one) and if none succeeds the
exact sort plan is returned with `warning` set. A solve that stops at `max_iter` above `tol` but
within `MARGINAL_ACCEPT` is used, with a warning. Nothing here raises on a numerical failure.
Memory: the entropic solvers hold a few n×n matrices (n = 1000: ~30 MB).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

# A plan whose rows miss their mass by more than this (relative RMS) is a failed solve.
MARGINAL_ACCEPT = 1e-2
# Relative log-scalings are folded into the stabilised kernel when they leave [−ABSORB, ABSORB];
# after folding more than REBUILD in total the kernel is rebuilt from M (float32 entries below
# e^−103 underflow at a build; after at most REBUILD of rescaling they are still below e^−43).
ABSORB = 30.0
REBUILD = 60.0
# POT's kernel-form Sinkhorn is used while exp(−M/ε) has no entry below exp(−KERNEL_RANGE).
KERNEL_RANGE = 500.0
DEFAULT_OMEGA = 1.8

Solver = Literal["sor", "pot"]


@dataclass(frozen=True)
class TransportResult:
    """One plan between clouds a (rows) and b (columns), n points each, mass 1/n per point.

    method:         "identity", "sort" (exact, ε = 0), "independent" (ε = inf), "sinkhorn" /
                    "sinkhorn_log" (entropic, own over-relaxed iteration in kernel / log form),
                    "pot_sinkhorn" / "pot_sinkhorn_log" (entropic, POT's solvers).
    targets:        ỹ = bary(a) (float64, length n): the barycentric targets.
    spread:         Σ_j (bary(a²)_j − ỹ_j²) ≥ 0, units of a²: what the plan's blur costs.
    epsilon:        ε relative to the scale (0, a positive float, inf; None for the identity).
    epsilon_abs:    ε_abs = ε·scale in units of a² (None for identity/sort/independent).
    iterations:     Sinkhorn iterations used (0 for closed-form plans).
    marginal_error: max over points of |n·(mass) − 1| over rows and columns (0 for exact plans).
    row_rms:        relative RMS row-mass error, the quantity the iteration drives below tol.
    warning:        None, or what went wrong (non-convergence, fallback to the sort plan, ...).
    matching:       for permutation plans (identity, sort): matching[j] = the a-index paired with
                    b-point j; None otherwise.
    plan:           the dense n×n plan for entropic solves; None otherwise.
    log_scalings:   (log u, log v) of an entropic solve, to warm-start the next one.
    """

    method: str
    targets: torch.Tensor
    spread: float
    epsilon: float | None = None
    epsilon_abs: float | None = None
    iterations: int = 0
    marginal_error: float = 0.0
    row_rms: float = 0.0
    warning: str | None = None
    matching: torch.Tensor | None = None
    plan: torch.Tensor | None = field(default=None, repr=False)
    log_scalings: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)
    _a: torch.Tensor | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return int(self.targets.numel())

    def barycentric(self, v: torch.Tensor) -> torch.Tensor:
        """bary(v)_j = Σ_i Π_ij v_i / Σ_i Π_ij for v on the a side (length n); float64 result."""
        v = v.reshape(-1).to(torch.float64)
        if self.matching is not None:
            return v[self.matching]
        if self.plan is not None:
            return (self.plan.T @ v) / self.plan.sum(dim=0)
        if self.method == "independent":
            return torch.full_like(v, float(v.mean()))
        raise RuntimeError(f"transport result of method {self.method!r} holds no plan")

    def row_average(self, v: torch.Tensor) -> torch.Tensor:
        """(Π v)_i / Σ_j Π_ij = n·(Π v)_i for v on the b side (length n), i on the a side; float64.

        The rows of Π index the a cloud (the dense outputs y = Xw̄), its columns the b cloud (Xw):
        this averages v over the b samples each a sample is transported to. `barycentric` is the
        other way round (Πᵀ): the two differ whenever Π is not symmetric."""
        v = v.reshape(-1).to(torch.float64)
        if self.matching is not None:  # Π[matching[j], j] = 1/n
            out = torch.empty_like(v)
            out[self.matching] = v
            return out
        if self.plan is not None:
            return (self.plan @ v) / self.plan.sum(dim=1)
        if self.method == "independent":
            return torch.full_like(v, float(v.mean()))
        raise RuntimeError(f"transport result of method {self.method!r} holds no plan")

    def fit_cost(self, b: torch.Tensor) -> float:
        """(n/2)·⟨Π̂, M(a, b)⟩ = ½‖ỹ − b‖² + ½·spread (see the module docstring), units of a²."""
        r = self.targets - b.reshape(-1).to(torch.float64)
        return 0.5 * float(r @ r) + 0.5 * self.spread

    def dense(self) -> torch.Tensor:
        """The n×n plan (float64, mass 1/n per row and column up to the solve's error)."""
        n = self.n
        if self.plan is not None:
            return self.plan.clone()
        out = torch.zeros((n, n), dtype=torch.float64)
        if self.matching is not None:
            out[self.matching, torch.arange(n)] = 1.0 / n
            return out
        if self.method == "independent":
            return out.fill_(1.0 / (n * n))
        raise RuntimeError(f"transport result of method {self.method!r} holds no plan")


# --- closed-form plans ---------------------------------------------------------------------------


def _as_cloud(x: torch.Tensor, name: str) -> torch.Tensor:
    x = torch.as_tensor(x).detach().reshape(-1).to(torch.float64)
    if x.numel() == 0:
        raise ValueError(f"cloud {name} is empty")
    return x


def identity_plan(a: torch.Tensor) -> TransportResult:
    """Π = I/n: point i of a is paired with point i of b. ỹ = a exactly, spread 0."""
    a = _as_cloud(a, "a")
    match = torch.arange(a.numel())
    return TransportResult("identity", targets=a.clone(), spread=0.0, matching=match, _a=a)


def sort_plan(a: torch.Tensor, b: torch.Tensor) -> TransportResult:
    """The exact (ε = 0) plan: the monotone rank-to-rank matching of the sorted clouds.

    In 1-D with equal uniform masses and a convex cost (|·|², here) the optimal plan pairs the
    r-th smallest a with the r-th smallest b. Ties are broken by index (stable sort), so the
    result is deterministic. O(n log n) time, O(n) memory.
    """
    a, b = _as_cloud(a, "a"), _as_cloud(b, "b")
    if a.numel() != b.numel():
        raise ValueError(f"clouds differ in size: {a.numel()} vs {b.numel()}")
    order_a = torch.sort(a, stable=True).indices
    order_b = torch.sort(b, stable=True).indices
    match = torch.empty_like(order_a)
    match[order_b] = order_a
    return TransportResult("sort", targets=a[match], spread=0.0, epsilon=0.0, matching=match, _a=a)


def independent_plan(a: torch.Tensor) -> TransportResult:
    """Π = 11ᵀ/n² (ε = inf): every ỹ_j is mean(a); spread = n·Var(a)."""
    a = _as_cloud(a, "a")
    n = a.numel()
    mean = float(a.mean())
    spread = float(((a - mean) ** 2).sum())
    return TransportResult("independent", targets=torch.full((n,), mean, dtype=torch.float64),
                           spread=spread, epsilon=math.inf, _a=a)


def cost_scale(a: torch.Tensor, b: torch.Tensor) -> float:
    """mean_ij (a_i − b_j)² = Var(a) + Var(b) + (mean a − mean b)², in O(n) (population variances)."""
    a, b = _as_cloud(a, "a"), _as_cloud(b, "b")
    return float(a.var(unbiased=False) + b.var(unbiased=False) + (a.mean() - b.mean()) ** 2)


def cost_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """M_ij = (a_i − b_j)² as an n×n float64 matrix."""
    a, b = _as_cloud(a, "a"), _as_cloud(b, "b")
    return (a[:, None] - b[None, :]).square_()


# --- entropic plans ------------------------------------------------------------------------------


def exact_potentials(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Kantorovich potentials (f, g) of the exact plan (units of a²): f_i + g_j ≤ M_ij for all
    pairs, with equality on the pairs of the monotone matching. O(n log n).

    With a and b sorted, a_(r) matched to b_(r): f_(1) = 0, f_(r+1) = f_(r) + M(a_(r+1), b_(r+1)) −
    M(a_(r), b_(r+1)), g_(r) = M(a_(r), b_(r)) − f_(r). This makes every matched pair and every
    pair (a_(r), b_(r+1)) tight; the squared cost's Monge property makes all other pairs feasible.
    They start the entropic iteration (lu = f/ε − log n, lv = g/ε), which then needs no long
    ramp-up of the scalings of isolated points (a 10–20× saving at ε ≤ 0.05 on heavy-tailed
    clouds, see bench/prune_time.py).
    """
    a, b = _as_cloud(a, "a"), _as_cloud(b, "b")
    order_a = torch.sort(a, stable=True).indices
    order_b = torch.sort(b, stable=True).indices
    sa, sb = a[order_a], b[order_b]
    step = (sa[1:] - sb[1:]) ** 2 - (sa[:-1] - sb[1:]) ** 2
    f_sorted = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(step, dim=0)])
    g_sorted = (sa - sb) ** 2 - f_sorted
    f, g = torch.empty_like(a), torch.empty_like(b)
    f[order_a], g[order_b] = f_sorted, g_sorted
    return f, g



def _sor_sinkhorn(
    M: torch.Tensor,
    eps_abs: float,
    starts: list[torch.Tensor],
    max_iter: int,
    tol: float,
    omega: float,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], int, str | None]:
    """Over-relaxed, stabilised Sinkhorn; returns (plan, (lu, lv), iterations, note).

    `starts` are candidate a-side log-scalings (e.g. the previous call's and the exact plan's
    potentials); each is built (below) and the one whose plan has the smaller row error is kept.

    Uniform marginals μ = ν = 1/n; log-scalings lu, lv define Π_ij = exp(lu_i − M_ij/ε + lv_j).

    Start (and rebuild): one log-domain iteration from the a-side scalings lu (lv = log ν −
    logsumexp_i(lu_i − M_ij/ε), then lu likewise from lv: exact rows, so no row can underflow),
    then the stabilised kernel K̃_ij = exp(lu_i − M_ij/ε + lv_j) — a plan, entries ≤ 1/n, held in
    float32 (every entry that matters is representable; products cost half). The
    iteration then runs in kernel form on relative log-scalings (su, sv):

        sv ← sv + ω_v·(log ν − log(e^sv ⊙ K̃ᵀ e^su)),   su ← su + ω_u·(log μ − log(e^su ⊙ K̃ e^sv))

    Each half-step takes ω_· = ω only if that raises the dual objective by at least 5 % of what
    the plain step (ω = 1, the exact block maximiser) gains, else 1: the dual rises monotonically
    and over-relaxation cannot diverge. When a relative scaling leaves [−ABSORB, ABSORB] it is
    folded into K̃ by rescaling its rows and columns (one float32 pass); once the scalings folded
    in that way total more than REBUILD (entries underflowed at the last build could matter
    again) or turn non-finite, K̃ is rebuilt from M in the log domain. Each iteration measures
    the relative RMS row error of the plan it would return (exact columns), stops below tol and
    returns the best such plan seen.
    Cost: O(n²) memory; per call two logsumexp and one exp pass over n², then three float32
    matrix-vector products per iteration.
    """
    n_a, n_b = M.shape
    log_mu, log_nu = -math.log(n_a), -math.log(n_b)
    mu_t, nu_t = 1.0 / n_a, 1.0 / n_b
    neg = M.mul(-1.0 / eps_abs)

    def build(lu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # One Sinkhorn iteration from lu (columns, then rows) in the log domain: every row of K̃
        # then has mass exactly 1/n, so none can underflow. Fast form: shift each column by its
        # max, exponentiate once in float32 (entries ≤ 1), normalise columns then rows by their
        # sums; if a row underflowed to zero there, redo it with float64 logsumexps.
        work = neg + lu[:, None]
        col_max = work.amax(dim=0)
        kernel = work.sub_(col_max[None, :]).to(torch.float32).exp_()
        col_sum = (kernel.T @ torch.ones(n_a, dtype=torch.float32)).to(torch.float64)  # BLAS, not a strided sum
        row_sum = kernel @ (nu_t / col_sum).to(torch.float32)
        if bool((row_sum > 0).all()) and bool(torch.isfinite(row_sum).all()):
            kernel.mul_((nu_t / col_sum).to(torch.float32)[None, :]).mul_((mu_t / row_sum)[:, None])
            lv = log_nu - col_max - torch.log(col_sum)
            return lu + torch.log(mu_t / row_sum.to(torch.float64)), lv, kernel
        work = neg + lu[:, None]
        lv = log_nu - torch.logsumexp(work, dim=0)
        work.add_(lv[None, :])
        shift = log_mu - torch.logsumexp(work, dim=1)  # = new lu − old lu
        work.add_(shift[:, None])
        return lu + shift, lv, work.exp_().to(torch.float32)

    f32 = torch.float32

    def start_error(lu, lv, Kt) -> float:
        v_exact = nu_t / (Kt.T @ torch.ones(n_a, dtype=Kt.dtype))
        return float(torch.sqrt(torch.mean(((Kt @ v_exact) * n_a - 1.0) ** 2)))

    candidates = [build(lu0.to(torch.float64)) for lu0 in starts] or [build(torch.zeros(n_a, dtype=torch.float64))]
    errors = [start_error(*c) for c in candidates]
    errors = [e if math.isfinite(e) else math.inf for e in errors]
    lu, lv, Kt = candidates[errors.index(min(errors))]
    del candidates
    # Relative scalings U = e^su, V = e^sv (float32, kept within e^±ABSORB by folding).
    U = torch.ones(n_a, dtype=f32)
    V = torch.ones(n_b, dtype=f32)
    folded = 0.0  # Σ of the largest |log scalings| folded into K̃ since it was built
    fresh = True  # no successful step since the last build
    best = (math.inf, lu, lv, Kt, U, V)
    relaxed = 0
    it = 0
    note = None

    def relax(mass: torch.Tensor, target: float) -> torch.Tensor:
        """The multiplicative update e^{ωΔ} (or e^Δ), Δ = log(target/mass).

        The dual objective along s + w·Δ is φ(w) = w·t·ΣΔ − Σ m(e^{wΔ} − 1) + const (t = target
        mass per point, m = current masses); w = 1 maximises it.
        """
        nonlocal relaxed
        if omega != 1.0:
            # in float64 and in the form Σ m_i·(wΔ_i e^{Δ_i} − (e^{wΔ_i} − 1)) (t = m_i e^{Δ_i}),
            # which has no cancellation between large sums near convergence
            m64 = mass.to(torch.float64)
            delta = torch.log(target / m64)
            gain_omega = float((m64 * (omega * delta * torch.exp(delta) - torch.expm1(omega * delta))).sum())
            gain_one = float((m64 * (delta * torch.exp(delta) - torch.expm1(delta))).sum())
            if gain_omega >= 0.05 * gain_one:
                relaxed += 1
                return torch.exp(omega * delta).to(mass.dtype)
        return target / mass

    for it in range(1, max_iter + 1):
        ktu = Kt.T @ U
        v_exact = nu_t / ktu  # the plain column step: exact columns
        # the row error of the plan this call would return if it stopped here
        err = float(torch.sqrt(torch.mean((U * (Kt @ v_exact) * n_a - 1.0) ** 2)))
        if math.isfinite(err) and err < best[0]:
            best = (err, lu, lv, Kt, U, v_exact)
        if err < tol:
            break
        V_new = V * relax(V * ktu, nu_t)
        U_new = U * relax(U * (Kt @ V_new), mu_t)
        if bool(torch.isfinite(U_new).all() and torch.isfinite(V_new).all()) and \
                float(torch.minimum(U_new.min(), V_new.min())) > 0:
            U, V = U_new, V_new
            fresh = False
            log_u, log_v = torch.log(U), torch.log(V)
            big_u, big_v = float(log_u.abs().max()), float(log_v.abs().max())
            if max(big_u, big_v) <= ABSORB:
                continue
            if folded + big_u + big_v <= REBUILD:
                folded += big_u + big_v
                Kt = Kt * U[:, None] * V[None, :]
                lu, lv = lu + log_u.to(torch.float64), lv + log_v.to(torch.float64)
                U = torch.ones(n_a, dtype=f32)
                V = torch.ones(n_b, dtype=f32)
                continue
        # non-finite or zero (a column of K̃ underflowed) or folded too far: rebuild from M
        if fresh:  # a rebuilt kernel fails again at once: no progress possible here
            note = "kernel underflow right after a rebuild"
            break
        lu, lv, Kt = build(lu + torch.log(U).to(torch.float64))
        folded, fresh = 0.0, True
        U = torch.ones(n_a, dtype=f32)
        V = torch.ones(n_b, dtype=f32)
    _, lu, lv, Kt, U, _ = best
    plan = Kt.to(torch.float64).mul_(U.to(torch.float64)[:, None])
    col_scale = nu_t / (plan.T @ torch.ones(n_a, dtype=torch.float64))  # exact column step (the best point's V)
    plan.mul_(col_scale[None, :])
    if note is None and not relaxed and omega != 1.0 and it > 1:
        note = f"over-relaxation (ω={omega:g}) never accepted"
    return plan, (lu + torch.log(U).to(torch.float64), lv + torch.log(col_scale)), it, note


def _pot_sinkhorn(
    M: torch.Tensor,
    eps_abs: float,
    log_form: bool,
    warm: tuple[torch.Tensor, torch.Tensor] | None,
    max_iter: int,
    tol: float,
) -> tuple[torch.Tensor, torch.Tensor, int, str | None]:
    """POT's Sinkhorn (torch backend); returns (plan, (lu, lv) stacked, iterations, note)."""
    import warnings

    import ot

    n = M.shape[0]
    mu = torch.full((n,), 1.0 / n, dtype=torch.float64)
    # POT stops on ‖Πᵀ1 − ν‖₂ < stopThr; the relative RMS of the column masses is √n times that.
    stop = tol / math.sqrt(n)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if log_form:
            plan, log = ot.bregman.sinkhorn_log(mu, mu, M, eps_abs, numItermax=max_iter, stopThr=stop,
                                                log=True, warn=True, warmstart=warm)
            lu, lv = log["log_u"], log["log_v"]
        else:
            plan, log = ot.sinkhorn(mu, mu, M, eps_abs, method="sinkhorn", numItermax=max_iter,
                                    stopThr=stop, log=True, warn=True, warmstart=warm)
            lu, lv = torch.log(log["u"]), torch.log(log["v"])
    note = "; ".join(sorted({str(w.message).split(".")[0] for w in caught})) or None
    return plan, torch.stack([lu, lv]), int(log["niter"]) + 1, note


def _marginal_errors(plan: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """(max relative error over rows and columns, relative RMS error of the rows, column masses)."""
    n_a, n_b = plan.shape
    # matrix-vector products instead of sums over a dimension: BLAS speed on the n×n plan
    col_mass = plan.T @ torch.ones(n_a, dtype=plan.dtype)
    rows = (plan @ torch.ones(n_b, dtype=plan.dtype)) * n_a
    cols = col_mass * n_b
    worst = float(torch.maximum((rows - 1).abs().max(), (cols - 1).abs().max()))
    rms = float(torch.sqrt(torch.mean((rows - 1.0) ** 2)))
    return worst, rms, col_mass


def _entropic_from_plan(method: str, a: torch.Tensor, plan: torch.Tensor, epsilon: float, eps_abs: float,
                        iterations: int, scalings, warning: str | None,
                        errors: tuple[float, float, torch.Tensor]) -> TransportResult:
    worst, rms, col_mass = errors
    moments = plan.T @ torch.stack([a, a * a], dim=1)  # one pass over the plan for both
    targets = moments[:, 0] / col_mass
    second = moments[:, 1] / col_mass
    spread = float((second - targets * targets).clamp_min(0.0).sum())
    return TransportResult(method, targets=targets, spread=spread, epsilon=epsilon, epsilon_abs=eps_abs,
                           iterations=iterations, marginal_error=worst, row_rms=rms, warning=warning,
                           plan=plan, log_scalings=scalings, _a=a)


def _check(plan: torch.Tensor | None) -> tuple[str | None, tuple[float, float, torch.Tensor | None]]:
    """(why the plan is unusable or None, (max relative marginal error, relative RMS row error,
    column masses))."""
    if plan is None:
        return "no plan", (math.nan, math.nan, None)
    errors = _marginal_errors(plan)  # NaN/inf anywhere in the plan shows up in these sums
    worst, rms, col_mass = errors
    if not (math.isfinite(worst) and math.isfinite(rms)):
        return "non-finite plan", errors
    if not rms <= MARGINAL_ACCEPT or not bool((col_mass > 0).all()):
        return f"marginals violated (relative RMS row error {rms:.2e} > {MARGINAL_ACCEPT:g})", errors
    return None, errors


def entropic_plan(
    a: torch.Tensor,
    b: torch.Tensor,
    epsilon_abs: float,
    *,
    epsilon: float | None = None,
    warm_start: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_iter: int = 1000,
    tol: float = 1e-3,
    solver: Solver = "sor",
    omega: float = DEFAULT_OMEGA,
) -> TransportResult:
    """The entropic plan for an ABSOLUTE ε_abs > 0 (units of a²), with checks and fallbacks.

    a, b:        the two clouds (length n each).
    warm_start:  (log u, log v) from a previous result's `log_scalings` (same n).
    max_iter:    Sinkhorn iterations at most (per solver tried), ≥ 1.
    tol:         target relative RMS row-mass error, in (0, 1); "sor" works in float32, so
                 below ~1e-5 it may stop at max_iter (with a warning).
    solver:      "sor" (own over-relaxed stabilised iteration, any ε) or "pot" (POT: kernel form
                 while ε_abs ≥ max(M)/KERNEL_RANGE, else log form, then log form on failure).
    omega:       over-relaxation factor in [1, 2) for "sor".
    On failure (non-finite plan, empty column, rows off by more than MARGINAL_ACCEPT) the exact
    sort plan is returned with `warning` set.
    """
    a, b = _as_cloud(a, "a"), _as_cloud(b, "b")
    if a.numel() != b.numel():
        raise ValueError(f"clouds differ in size: {a.numel()} vs {b.numel()}")
    if not (epsilon_abs > 0 and math.isfinite(epsilon_abs)):
        raise ValueError(f"epsilon_abs must be a positive finite number, got {epsilon_abs}")
    if not (1.0 <= omega < 2.0):
        raise ValueError(f"omega must be in [1, 2), got {omega}")
    eps_rel = epsilon if epsilon is not None else math.nan
    M = cost_matrix(a, b)
    n = a.numel()
    notes: list[str] = []
    usable = warm_start is not None and warm_start[0].numel() == n and warm_start[1].numel() == n and bool(
        torch.isfinite(warm_start[0]).all() and torch.isfinite(warm_start[1]).all())
    f, g = exact_potentials(a, b)
    exact_start = (f / epsilon_abs - math.log(n), g / epsilon_abs)
    if solver == "sor":
        attempts = ["sinkhorn"]
    else:
        kernel_ok = epsilon_abs >= float(M.max()) / KERNEL_RANGE
        attempts = ["pot_sinkhorn", "pot_sinkhorn_log"] if kernel_ok else ["pot_sinkhorn_log"]
    for method in attempts:
        try:
            if method == "sinkhorn":
                # Candidate starts, the best by initial error is kept: the previous solve's scalings;
                # the exact plan's potentials (far better than zeros for small ε / far outliers);
                # zeros on a cold call (better when well-separated groups of points make the
                # exact potentials' relative offsets between groups a slow mode to undo).
                zero = torch.zeros(n, dtype=torch.float64)
                starts = [warm_start[0], exact_start[0]] if usable else [exact_start[0], zero]
                plan, scalings, iters, note = _sor_sinkhorn(M, epsilon_abs, starts, max_iter, tol, omega)
            else:
                plan, stacked, iters, note = _pot_sinkhorn(M, epsilon_abs, method == "pot_sinkhorn_log",
                                                           warm_start if usable else exact_start, max_iter, tol)
                scalings = (stacked[0], stacked[1])
        except (RuntimeError, ValueError, FloatingPointError) as exc:  # numerical trouble
            plan, iters, note, scalings = None, 0, f"{type(exc).__name__}: {exc}", None
        failure, errors = _check(plan)
        if note:
            notes.append(f"{method}: {note}")
        if failure is None:
            if errors[1] > tol:
                notes.append(f"{method}: stopped at row error {errors[1]:.1e} > tol {tol:g} after {iters} iterations")
            return _entropic_from_plan(method, a, plan, eps_rel, epsilon_abs, iters, scalings,
                                       "; ".join(notes) or None, errors)
        notes.append(f"{method}: {failure}")
    fallback = sort_plan(a, b)
    message = "entropic plan failed (" + "; ".join(notes) + "); used the exact sort plan"
    return TransportResult("sort", targets=fallback.targets, spread=0.0, epsilon=eps_rel,
                           epsilon_abs=epsilon_abs, warning=message, matching=fallback.matching, _a=a)


def transport_plan(
    a: torch.Tensor,
    b: torch.Tensor,
    epsilon: float,
    *,
    scale: float | None = None,
    warm_start: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_iter: int = 1000,
    tol: float = 1e-3,
    solver: Solver = "sor",
    omega: float = DEFAULT_OMEGA,
) -> TransportResult:
    """The plan for a RELATIVE ε ≥ 0 (or inf): 0 → sort plan, inf → independent plan, else
    entropic with ε_abs = ε·scale, scale = `scale` or mean_ij M_ij (a zero scale gives the sort
    plan). See `entropic_plan` for the other arguments."""
    epsilon = float(epsilon)
    if math.isnan(epsilon) or epsilon < 0:
        raise ValueError(f"epsilon must be ≥ 0 or inf, got {epsilon}")
    if epsilon == 0:
        return sort_plan(a, b)
    if math.isinf(epsilon):
        return independent_plan(a)
    s = cost_scale(a, b) if scale is None else float(scale)
    if not (s > 0 and math.isfinite(s)):
        result = sort_plan(a, b)
        return TransportResult("sort", targets=result.targets, spread=0.0, epsilon=epsilon, epsilon_abs=0.0,
                               warning=f"cost scale {s:g} is not positive; used the exact sort plan",
                               matching=result.matching, _a=result._a)
    return entropic_plan(a, b, epsilon * s, epsilon=epsilon, warm_start=warm_start, max_iter=max_iter, tol=tol,
                         solver=solver, omega=omega)


# --- plan providers for iterative solvers ---------------------------------------------------------


class IdentityPlans:
    """Π = I/n at every call: the provider that makes a regression pruner LR."""

    def __init__(self, a: torch.Tensor):
        self.a = _as_cloud(a, "a")
        self._result = identity_plan(self.a)
        self.describe = {"plan": "identity"}

    def __call__(self, b: torch.Tensor) -> TransportResult:
        return self._result


class EntropicPlans:
    """Π_ε between the fixed targets a and each new b, warm-started from the previous call.

    ε is relative to a scale fixed at construction (default mean_ij (a_i − a_j)² = 2·Var(a), the
    cost of the dense model's outputs against themselves), so ε_abs does not drift as b moves.
    """

    def __init__(
        self,
        a: torch.Tensor,
        epsilon: float,
        *,
        scale: float | None = None,
        max_iter: int = 1000,
        tol: float = 1e-3,
        solver: Solver = "sor",
        omega: float = DEFAULT_OMEGA,
        warm_start: bool = True,
    ):
        self.a = _as_cloud(a, "a")
        self.epsilon = float(epsilon)
        self.warm_start = bool(warm_start)
        self.scale = cost_scale(self.a, self.a) if scale is None else float(scale)
        self.max_iter, self.tol, self.solver, self.omega = int(max_iter), float(tol), solver, float(omega)
        self._warm: tuple[torch.Tensor, torch.Tensor] | None = None
        finite = math.isfinite(self.epsilon)
        self.describe = {  # JSON-safe: an infinite ε is written "inf", its ε_abs None
            "plan": "entropic" if finite and self.epsilon > 0 else ("independent" if not finite else "sort"),
            "epsilon": self.epsilon if finite else "inf",
            "epsilon_abs": self.epsilon * self.scale if finite else None,
            "scale": self.scale,
            "scale_definition": ("mean_ij (y_i − y_j)² = 2·Var(y), y = X w̄" if scale is None
                                 else "given (1 = ε is absolute, in the cost's units)"),
            "solver": solver,
            "warm_start": self.warm_start,
        }

    def __call__(self, b: torch.Tensor) -> TransportResult:
        result = transport_plan(self.a, b, self.epsilon, scale=self.scale, warm_start=self._warm,
                                max_iter=self.max_iter, tol=self.tol, solver=self.solver, omega=self.omega)
        if result.log_scalings is not None and self.warm_start:
            self._warm = result.log_scalings
        return result
