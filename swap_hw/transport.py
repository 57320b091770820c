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
when that still raises the dual objective (so it cannot diverge). A cold call starts from the
better of the exact plan's Kantorovich potentials (`exact_potentials`) and zeros (EntropicPlans:
the exact potentials alone); a warm call (EntropicPlans: the previous call's scalings and the b
they were solved for) from those scalings shifted by the change of the exact potentials between
the two b (`_starts`). Measured on SWAP's clouds for MLPNet/digits (n = 1000, heavy-tailed
per-sample outputs, ε = 0.1, one thread; bench/prune_time.py), to a 1e-3 row error: 24–55
iterations and 20–40 ms cold, 12–15 iterations and ~16 ms warm after an IHT step moved b (the
unshifted warm start needed up to 141), about 0.5 ms per iteration and 5 ms per kernel build;
POT's plain Sinkhorn needs ~750 iterations for the same error and its log-domain solver (needed
there, since ε_abs < max(M)/500) takes seconds. `solver="pot"` still offers POT (torch backend, `warmstart`):
`ot.sinkhorn` (method "sinkhorn") while ε_abs ≥ max(M)/KERNEL_RANGE, else
`ot.bregman.sinkhorn_log`, starting from the same potentials.

Convergence and failure: the "sor" iteration stops when the relative RMS error of the row masses
of the plan it returns, sqrt(mean_i (n·(Π1)_i − 1)²), is below `tol` (its columns are exact); POT
stops on its own column criterion at the same relative level. Every plan is then checked: a plan
with non-finite entries, an empty column, or a row error above `MARGINAL_ACCEPT` is a failure; the
next solver is tried ("pot": the log-domain one after the kernel one) and if none succeeds the
exact sort plan is returned with `warning` set. A solve that stops at `max_iter` above `tol` but
within `MARGINAL_ACCEPT` is used, with a warning. Nothing here raises on a numerical failure.
Memory: the entropic solvers hold a few n×n matrices (n = 1000: ~20 MB for "sor").
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import torch

# A plan whose rows miss their mass by more than this (relative RMS) is a failed solve.
MARGINAL_ACCEPT = 1e-2
# Relative log-scalings are folded into the stabilised kernel when they leave [−ABSORB, ABSORB];
# after folding more than REBUILD in total the kernel is rebuilt from M (entries below e^−87 of
# their column's largest are zeroed at a build; after at most REBUILD of rescaling they would
# still be below e^−27 of it, together < n·e^−27 ≈ 2e−9 of the column's mass at n = 1000).
ABSORB = 30.0
REBUILD = 60.0
# POT's kernel-form Sinkhorn is used while exp(−M/ε) has no entry below exp(−KERNEL_RANGE).
KERNEL_RANGE = 500.0
DEFAULT_OMEGA = 1.8
# "sor" measures its stopping criterion (the row error) only once the free column error of the
# iterate is below CHECK_FACTOR·tol (see _sor_sinkhorn).
CHECK_FACTOR = 10.0
# Columns of float64 exponents formed at a time when building the kernel (n = 1000: 1 MB).
COLUMN_BLOCK = 128
# log of float32's smallest normal number: kernel exponents below it are set to −inf (exact zeros).
F32_LOG_TINY = math.log(torch.finfo(torch.float32).tiny)
# A row of a freshly built kernel with less mass than this (float32) is normalised in float64.
ROW_UNDERFLOW = 1e-30

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



@lru_cache(maxsize=16)
def _sure_relaxation_range(omega: float) -> tuple[float, float]:
    """An interval [low, high] ∋ 0 of Δ on which h_ω(Δ) − 0.05·h_1(Δ) ≥ 0, h_w(Δ) = wΔe^Δ − (e^{wΔ}
    − 1) (the per-point gain of the dual objective from the step w·Δ, over the mass m ≥ 0): if
    every Δ_i of a half-step lies in it, the over-relaxed step gains at least 5 % of the plain one.

    Found by scanning Δ = ±1e−6·1.01^k out to ±700 and bisecting the first sign change, then shrunk
    by 10 % (ω = 1.8: about [−700, 0.598]; for ω close to 2, where the quadratic term of h_ω
    falls below 0.05·h_1's, it is empty, [0, 0]).
    """

    def ok(d: float) -> bool:
        gain = omega * d * math.exp(d) - math.expm1(omega * d)
        return gain - 0.05 * (d * math.exp(d) - math.expm1(d)) >= 0

    ends = []
    for sign in (1.0, -1.0):
        good, d = 0.0, 1e-6
        while d < 700.0 and ok(sign * d):
            good, d = d, d * 1.01
        if d < 700.0:  # bisect between the last good and the first bad magnitude
            bad = d
            for _ in range(60):
                mid = 0.5 * (good + bad)
                good, bad = (mid, bad) if ok(sign * mid) else (good, mid)
        ends.append(sign * 0.9 * good)
    return ends[1], ends[0]


def _flushing_denormals() -> bool:
    """Whether this thread flushes float denormals to zero now (torch has no getter: probe it)."""
    return bool(torch.tensor(1e-39, dtype=torch.float32) * 1.0 == 0)


@contextmanager
def _denormals_flushed() -> Iterator[None]:
    """Flush denormal floats to zero (FTZ/DAZ) on this thread within the block, then restore.

    The stabilised kernel has entries down to e^−87 of their column's largest, and its products
    with the scalings fall below float32's normal range (1.2e−38) for a few per mille of them;
    denormal arithmetic costs ~15 % of each matrix-vector product (n = 1000, measured). Values that
    small are < 1e−35 of any mass that matters, so flushing them changes no result."""
    was = _flushing_denormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if not was:
            torch.set_flush_denormal(False)


def _sor_sinkhorn(
    a: torch.Tensor,
    b: torch.Tensor,
    eps_abs: float,
    starts: list[torch.Tensor],
    max_iter: int,
    tol: float,
    omega: float,
    first_usable: bool = False,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], int, str | None]:
    """Over-relaxed, stabilised Sinkhorn between clouds a (rows) and b (columns); returns
    (plan (float64 n×n), (lu, lv), iterations, note).

    `starts` are candidate a-side log-scalings in order of preference (see `_starts`); each is
    built (below) and the one whose plan has the smallest row error is kept (the first on a tie),
    or with `first_usable` the first whose plan is finite (later ones are then not built).

    Uniform marginals μ = ν = 1/n; log-scalings lu, lv define Π_ij = exp(lu_i − M_ij/ε + lv_j),
    M_ij = (a_i − b_j)².

    Start (and rebuild): one log-domain iteration from the a-side scalings lu (lv = log ν −
    logsumexp_i(lu_i − M_ij/ε), then lu likewise from lv: exact rows, so no row can underflow),
    then the stabilised kernel K̃_ij = exp(lu_i − M_ij/ε + lv_j) — a plan, entries ≤ 1/n, held in
    float32 (every entry that matters is representable; products cost half; entries below e^−87
    of their column's largest are exact zeros, not float32 denormals). The iteration then runs in
    kernel form on relative log-scalings (su, sv, float64; e^su, e^sv in float32):

        sv ← sv + ω_v·(log ν − log(e^sv ⊙ K̃ᵀ e^su)),   su ← su + ω_u·(log μ − log(e^su ⊙ K̃ e^sv))

    Each half-step takes ω_· = ω only if that raises the dual objective by at least 5 % of what
    the plain step (ω = 1, the exact block maximiser) gains, else 1: the dual rises monotonically
    and over-relaxation cannot diverge. When a relative scaling leaves [−ABSORB, ABSORB] it is
    folded into K̃ by rescaling its rows and columns (one float32 pass); once the scalings folded
    in that way total more than REBUILD (entries underflowed at the last build could matter
    again) or turn non-finite, K̃ is rebuilt from a, b in the log domain.

    Stopping: the quantity driven below tol is the relative RMS row error of the plan this call
    would return at that point (the current su with an exact column step). Its float32 estimate
    costs a third matrix-vector product, so it is measured only where it can be below tol: at the
    first and the last iteration, and whenever the column error of the current iterate, RMS_j
    log(ν/m_j), which comes free with the column step, is below CHECK_FACTOR·tol. On SWAP's clouds
    the row error was 0.13–1.1× that column error (727 measurements in 52 solves), and on those
    solves at tol 1e-3 and 1e-4 the gate stopped at the very iteration that measuring every time
    did; were a stopping point skipped, the iteration would stop at a later, more converged one.
    An estimate below tol is confirmed on the float64 plan itself (which is then returned); if
    that misses tol, the estimate must fall further by the same factor before the next try.
    Without a confirmed stop the best plan measured is returned.
    Cost: O(n²) memory (one or two float32 n×n kernels, the float64 n×n plan returned, an
    n×COLUMN_BLOCK float64 scratch); per candidate start one matrix product forming the
    exponents, one exp pass over n² and four matrix-vector products; per iteration two float32
    matrix-vector products (three near the end).
    """
    n_a, n_b = a.numel(), b.numel()
    log_mu, log_nu = -math.log(n_a), -math.log(n_b)
    mu_t, nu_t = 1.0 / n_a, 1.0 / n_b
    f32, f64 = torch.float32, torch.float64
    # The float64 exponents are formed COLUMN_BLOCK columns at a time in a small scratch array
    # that stays in cache (a full n×n float64 array is written and read five times per build,
    # and page-faulted in first: ~half the build's time at n = 1000).
    width = min(n_b, COLUMN_BLOCK)
    scratch = torch.empty((n_a, width), dtype=f64)
    plan_out: list[torch.Tensor] = []  # the returned plan's float64 array, allocated once

    # lu_i − (a_i − b_j)²/ε = (lu_i − a_i²/ε) + (2a_i/ε)·b_j − b_j²/ε: one rank-3 matrix product
    # writes all exponents in one pass (four passes otherwise). Its rounding error, about
    # 1e−16·R²/ε with R the largest |value| about the clouds' centre, is kept below 1e−9 (the
    # direct form is used otherwise), far below float32's resolution of the kernel.
    centre = 0.5 * (float(torch.cat([a, b]).max()) + float(torch.cat([a, b]).min()))
    a_c, b_c = a - centre, b - centre
    radius2 = max(float(a_c.abs().max()), float(b_c.abs().max())) ** 2
    by_product = radius2 / eps_abs < 1e7
    if by_product:
        right = torch.stack([torch.ones_like(b_c), b_c, b_c * b_c])

    def exponents(lu: torch.Tensor, j0: int = 0, j1: int = n_b, rows: torch.Tensor | None = None) -> torch.Tensor:
        # lu_i − M_ij/ε for columns j0..j1−1: into `scratch` (all rows), or a new array (`rows`
        # only, or all columns of a float64 fallback)
        if rows is not None:
            return (a[rows, None] - b[None, j0:j1]).square_().mul_(-1.0 / eps_abs).add_(lu[rows, None])
        out = scratch[:, : j1 - j0] if j1 - j0 <= width else torch.empty((n_a, j1 - j0), dtype=f64)
        if by_product:
            left = torch.stack([lu - a_c * a_c / eps_abs, a_c * (2.0 / eps_abs),
                                torch.full_like(a_c, -1.0 / eps_abs)], dim=1)
            return torch.mm(left, right[:, j0:j1], out=out)
        torch.sub(a[:, None], b[None, j0:j1], out=out)
        return out.square_().mul_(-1.0 / eps_abs).add_(lu[:, None])

    def build(lu: torch.Tensor, out: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # One Sinkhorn iteration from lu (columns, then rows) in the log domain: every row of K̃
        # then has mass exactly 1/n, so none can underflow. Fast form: shift each column by its
        # max, exponentiate once in float32 (entries ≤ 1), normalise columns then rows by their
        # sums. Exponents below float32's normal range give exact zeros (exp of those is slow,
        # denormal products slower, and their mass is < 1e-38 of the column's). A row whose
        # mass underflowed (below ROW_UNDERFLOW: too small to rescale in float32) is redone with
        # float64 logsumexps, and everything if a sum is not finite.
        kernel = torch.empty((n_a, n_b), dtype=f32) if out is None else out
        col_max = torch.empty(n_b, dtype=f64)
        for j0 in range(0, n_b, width):
            j1 = min(j0 + width, n_b)
            w = exponents(lu, j0, j1)
            col_max[j0:j1] = block_max = w.amax(dim=0)
            w.sub_(block_max[None, :])
            torch.nn.functional.threshold_(w, F32_LOG_TINY, -math.inf)  # w ≤ F32_LOG_TINY → −inf
            kernel[:, j0:j1] = w
        kernel.exp_()
        col_sum = (kernel.T @ torch.ones(n_a, dtype=f32)).to(f64)  # BLAS, not a strided sum
        col_scale = nu_t / col_sum
        row_sum = kernel @ col_scale.to(f32)
        lv = log_nu - col_max - torch.log(col_sum)
        if bool(torch.isfinite(row_sum).all()) and bool(torch.isfinite(col_sum).all()):
            empty = (row_sum < ROW_UNDERFLOW).nonzero().squeeze(1)
            row_scale = mu_t / row_sum.to(f64)
            lu_new = lu + torch.log(row_scale)
            if empty.numel():
                row_scale[empty] = 0.0
            kernel.mul_(col_scale.to(f32)[None, :]).mul_(row_scale.to(f32)[:, None])
            if empty.numel():  # the exact log-domain row step for those rows alone
                z = exponents(lu, rows=empty).add_(lv[None, :])
                shift = log_mu - torch.logsumexp(z, dim=1)
                kernel[empty] = z.add_(shift[:, None]).exp_().to(f32)
                lu_new[empty] = lu[empty] + shift
            return lu_new, lv, kernel
        w = exponents(lu, 0, n_b) if n_b <= width else torch.cat(
            [exponents(lu, j0, min(j0 + width, n_b)).clone() for j0 in range(0, n_b, width)], dim=1)
        lv = log_nu - torch.logsumexp(w, dim=0)
        w.add_(lv[None, :])
        shift = log_mu - torch.logsumexp(w, dim=1)  # = new lu − old lu
        w.add_(shift[:, None])
        return lu + shift, lv, w.exp_().to(f32)

    def rows_error(Kt: torch.Tensor, U: torch.Tensor, ktu: torch.Tensor) -> float:
        # relative RMS row error of the plan diag(U) K̃ diag(v) with the exact column step v
        v_exact = nu_t / ktu
        return float(torch.sqrt(torch.mean((U * (Kt @ v_exact) * n_a - 1.0) ** 2)))

    ones_a = torch.ones(n_a, dtype=f32)
    starts = starts or [torch.zeros(n_a, dtype=f64)]
    # at most two kernels alive at a time: the best start so far and the candidate being built
    buffers: list[torch.Tensor] = []
    chosen = None  # (row error, lu, lv, Kt, K̃ᵀ1)
    for lu0 in starts:
        spare = next((buf for buf in buffers if chosen is None or buf is not chosen[3]), None)
        if spare is None:
            spare = torch.empty((n_a, n_b), dtype=f32)
            buffers.append(spare)
        lu_c, lv_c, K_c = build(lu0.to(f64), spare)
        ktu_c = K_c.T @ ones_a
        err_c = rows_error(K_c, ones_a, ktu_c)
        err_c = err_c if math.isfinite(err_c) else math.inf
        if chosen is None or err_c < chosen[0]:
            chosen = (err_c, lu_c, lv_c, K_c, ktu_c)
        if first_usable and err_c < math.inf:
            break
    err0, lu, lv, Kt, ktu = chosen
    del buffers, chosen
    # Relative log-scalings su, sv (float64) and their exponentials U, V (float32), kept within
    # e^±ABSORB by folding them into K̃.
    su, sv = torch.zeros(n_a, dtype=f64), torch.zeros(n_b, dtype=f64)
    U, V = torch.ones(n_a, dtype=f32), torch.ones(n_b, dtype=f32)
    reach_u = reach_v = 0.0  # bounds on max|su|, max|sv|
    folded = 0.0  # Σ of the largest |log scalings| folded into K̃ since it was built
    fresh = True  # no successful step since the last build
    best = (math.inf, lu, lv, Kt, U, su.clone())
    relaxed = 0
    it = 0
    note = None
    sure = _sure_relaxation_range(omega)
    stop_at = tol  # the float32 row-error estimate below which the stop is confirmed in float64
    done = None  # (plan, column scale, lu, lv) once confirmed

    def finish(Kt: torch.Tensor, U: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # the plan diag(U) K̃ diag(v) with the exact column step v, in float64
        if not plan_out:
            plan_out.append(torch.empty((n_a, n_b), dtype=f64))
        plan = plan_out[0].copy_(Kt).mul_(U.to(f64)[:, None])  # (a mixed-dtype mul is slower)
        col_scale = nu_t / (plan.T @ torch.ones(n_a, dtype=f64))
        return plan.mul_(col_scale[None, :]), col_scale

    def log_ratio(mass: torch.Tensor, target: float) -> tuple[torch.Tensor, torch.Tensor]:
        # (m, Δ = log(target/m)) in float64
        m64 = mass.to(f64)
        return m64, torch.log(target / m64)

    def step(m64: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(the log-scaling step ω·Δ or Δ, in float64; its largest |entry|, NaN if any is).

        The dual objective along s + w·Δ is φ(w) = w·t·ΣΔ − Σ m(e^{wΔ} − 1) + const (t = target
        mass per point, m = current masses); w = 1 maximises it.
        """
        nonlocal relaxed
        low, high = (float(x) for x in torch.aminmax(delta))
        if omega != 1.0:
            # The test below holds whenever every Δ_i lies in `sure` (each term of Σ m_i·(gain_ω −
            # 0.05·gain_1) is then ≥ 0): no need to evaluate it, the common case near convergence.
            if sure[0] <= low and high <= sure[1]:
                relaxed += 1
                return delta.mul_(omega), omega * max(-low, high)
            # in float64 and in the form Σ m_i·(wΔ_i e^{Δ_i} − (e^{wΔ_i} − 1)) (t = m_i e^{Δ_i}),
            # which has no cancellation between large sums near convergence
            e_delta = torch.exp(delta)
            w_delta = delta * omega
            gain_omega = float(torch.dot(m64, (w_delta * e_delta).sub_(torch.expm1(w_delta))))
            gain_one = float(torch.dot(m64, (delta * e_delta).sub_(torch.expm1(delta))))
            if gain_omega >= 0.05 * gain_one:
                relaxed += 1
                return w_delta, omega * max(-low, high)
        return delta, max(-low, high)

    for it in range(1, max_iter + 1):
        if it > 1:  # the first iteration's K̃ᵀU (U = 1) and row error came with the start
            ktu = Kt.T @ U
        m_v, delta_v = log_ratio(V * ktu, nu_t)
        if it == 1:
            err = err0
        else:
            # column error of the current iterate, RMS_j log(ν/m_j) ≈ RMS_j (n·m_j − 1): free, and
            # a gate for the costlier row error
            col_err = float(torch.linalg.vector_norm(delta_v)) / math.sqrt(n_b)
            if it == max_iter or not col_err >= CHECK_FACTOR * tol:  # (a NaN checks too)
                err = rows_error(Kt, U, ktu)
            else:
                err = math.inf
        if err < stop_at:
            # confirm on the plan itself, in float64 (the float32 estimate is off by ~1e−7·√n)
            plan, col_scale = finish(Kt, U)
            err64 = float(torch.sqrt(torch.mean((plan @ torch.ones(n_b, dtype=f64) * n_a - 1.0) ** 2)))
            if err64 < tol:
                done = (plan, col_scale, lu + su, lv)
                break
            # optimistic: ask the estimate for as much more as it was off, and keep iterating
            stop_at = min(stop_at, 0.98 * err * tol / err64) if err64 > 0 else 0.0
            err = err64
        if math.isfinite(err) and err < best[0]:
            best = (err, lu, lv, Kt, U, su.clone())
        step_v, size_v = step(m_v, delta_v)
        sv_new = sv + step_v
        V_new = torch.exp(sv_new).to(f32)
        step_u, size_u = step(*log_ratio(U * (Kt @ V_new), mu_t))
        su_new = su + step_u
        # max|su|, max|sv| ≤ reach_u, reach_v (bounds grown by each step's largest entry): the
        # exact maxima are only needed when a bound passes ABSORB
        if max(reach_u + size_u, reach_v + size_v) <= ABSORB:  # (False for NaN)
            su, sv, V, U = su_new, sv_new, V_new, torch.exp(su_new).to(f32)
            reach_u, reach_v, fresh = reach_u + size_u, reach_v + size_v, False
            continue
        big_u, big_v = float(su_new.abs().max()), float(sv_new.abs().max())
        if max(big_u, big_v) <= ABSORB:  # the common case: finite, positive scalings
            su, sv, V, U = su_new, sv_new, V_new, torch.exp(su_new).to(f32)
            reach_u, reach_v, fresh = big_u, big_v, False
            continue
        if math.isfinite(big_u) and math.isfinite(big_v):
            su, sv, fresh = su_new, sv_new, False
            if folded + big_u + big_v <= REBUILD:
                folded += big_u + big_v
                U, V = torch.exp(su).to(f32), torch.exp(sv).to(f32)
                Kt = Kt * U[:, None] * V[None, :]  # a new array: `best` may hold the old one
                lu, lv = lu + su, lv + sv
                su, sv = torch.zeros(n_a, dtype=f64), torch.zeros(n_b, dtype=f64)
                U, V = torch.ones(n_a, dtype=f32), torch.ones(n_b, dtype=f32)
                reach_u = reach_v = 0.0
                continue
        # non-finite (a column of K̃ underflowed) or folded too far: rebuild from a, b
        if fresh:  # a rebuilt kernel fails again at once: no progress possible here
            note = "kernel underflow right after a rebuild"
            break
        lu, lv, Kt = build(lu + su, None)  # new arrays: `best` may hold the old ones
        folded, fresh = 0.0, True
        su, sv = torch.zeros(n_a, dtype=f64), torch.zeros(n_b, dtype=f64)
        U, V = torch.ones(n_a, dtype=f32), torch.ones(n_b, dtype=f32)
        reach_u = reach_v = 0.0
    if done is None:
        _, lu, lv, Kt, U, su = best
        plan, col_scale = finish(Kt, U)
        done = (plan, col_scale, lu + su, lv)
    plan, col_scale, lu, lv = done
    if note is None and not relaxed and omega != 1.0 and it > 1:
        note = f"over-relaxation (ω={omega:g}) never accepted"
    return plan, (lu, lv + torch.log(col_scale)), it, note


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


def _starts(a: torch.Tensor, f: torch.Tensor, eps_abs: float, warm_lu: torch.Tensor | None,
            warm_b: torch.Tensor | None, zero_start: bool = True) -> tuple[list[torch.Tensor], bool]:
    """Candidate a-side log-scalings for "sor", in order of preference, and whether the first
    usable one is taken (True) or the one whose built plan has the lowest row error (False; see
    `_sor_sinkhorn`).

    f are the exact plan's a-side potentials against the current b (`exact_potentials`).
    Cold call: the exact potentials f/ε − log n (far better than zeros for small ε / far
    outliers), and, with `zero_start`, zeros (better when well-separated groups of points make the
    exact potentials' relative offsets between groups a slow mode to undo, and on clouds b ≈ a +
    noise at large ε).
    Warm call with the b it was solved for (warm_b): the SHIFTED warm start lu_then + (f −
    f_then)/ε, f_then the exact potentials against warm_b — the previous entropic potentials moved
    by as much as the exact ones moved with b. The exact potentials are continuous in b (they
    depend on a and b's order statistics), so this tends to the plain warm start as b stops
    moving; after an IHT step it removes the large coherent shift that the plain warm start
    leaves to a slow mode of the iteration. It is taken unless its plan is not finite (then the
    exact potentials are): on 44 warm calls of SWAP (MLPNet/digits n = 1000, ε = 0.02 and 0.1,
    one to four stages, and the synthetic problem of tests/test_prune_results_stable.py) it
    needed the fewest iterations every time, 441 in all, against 1547 from the exact potentials
    and 3667 from the plain warm start (e.g. one-shot s = 0.7: 15 against 47 and 141).
    Warm call without warm_b: the lower error of the warm start and the exact potentials.
    """
    n = a.numel()
    exact = f / eps_abs - math.log(n)
    if warm_lu is None:
        return ([exact, torch.zeros(n, dtype=torch.float64)] if zero_start else [exact]), False
    warm_lu = warm_lu.reshape(-1).to(torch.float64)
    if warm_b is not None:
        then = _as_cloud(warm_b, "warm_b")
        if then.numel() == n and bool(torch.isfinite(then).all()):
            f_then, _ = exact_potentials(a, then)
            return [warm_lu + (f - f_then) / eps_abs, exact], True
    return [warm_lu, exact], False


def entropic_plan(
    a: torch.Tensor,
    b: torch.Tensor,
    epsilon_abs: float,
    *,
    epsilon: float | None = None,
    warm_start: tuple[torch.Tensor, torch.Tensor] | None = None,
    warm_b: torch.Tensor | None = None,
    max_iter: int = 1000,
    tol: float = 1e-3,
    solver: Solver = "sor",
    omega: float = DEFAULT_OMEGA,
    zero_start: bool = True,
) -> TransportResult:
    """The entropic plan for an ABSOLUTE ε_abs > 0 (units of a²), with checks and fallbacks.

    a, b:        the two clouds (length n each).
    warm_start:  (log u, log v) from a previous result's `log_scalings` (same n).
    warm_b:      the b cloud that warm_start was solved for (same a, same ε_abs), optional. With it
                 "sor" starts from the shifted warm start log u + (f − f_then)/ε_abs, f and f_then
                 the exact plan's a-side potentials against b and warm_b (see `_starts`).
    max_iter:    Sinkhorn iterations at most (per solver tried), ≥ 1.
    tol:         target relative RMS row-mass error, in (0, 1); "sor" works in float32, so
                 below ~1e-5 it may stop at max_iter (with a warning).
    solver:      "sor" (own over-relaxed stabilised iteration, any ε) or "pot" (POT: kernel form
                 while ε_abs ≥ max(M)/KERNEL_RANGE, else log form, then log form on failure).
    omega:       over-relaxation factor in [1, 2) for "sor".
    zero_start:  on a cold "sor" call, also build the start from zero scalings and keep the one of
                 lower row error (see `_starts`); EntropicPlans turns it off.
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
    n = a.numel()
    notes: list[str] = []
    usable = warm_start is not None and warm_start[0].numel() == n and warm_start[1].numel() == n and bool(
        torch.isfinite(warm_start[0]).all() and torch.isfinite(warm_start[1]).all())
    f, g = exact_potentials(a, b)
    exact_start = (f / epsilon_abs - math.log(n), g / epsilon_abs)
    if solver == "sor":
        attempts = ["sinkhorn"]
        M = None  # "sor" forms the cost in its own workspace
    else:
        M = cost_matrix(a, b)
        kernel_ok = epsilon_abs >= float(M.max()) / KERNEL_RANGE
        attempts = ["pot_sinkhorn", "pot_sinkhorn_log"] if kernel_ok else ["pot_sinkhorn_log"]
    for method in attempts:
        try:
            if method == "sinkhorn":
                starts, first = _starts(a, f, epsilon_abs, warm_start[0] if usable else None, warm_b, zero_start)
                with _denormals_flushed():
                    plan, scalings, iters, note = _sor_sinkhorn(a, b, epsilon_abs, starts, max_iter, tol, omega,
                                                                first)
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
    warm_b: torch.Tensor | None = None,
    max_iter: int = 1000,
    tol: float = 1e-3,
    solver: Solver = "sor",
    omega: float = DEFAULT_OMEGA,
    zero_start: bool = True,
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
    return entropic_plan(a, b, epsilon * s, epsilon=epsilon, warm_start=warm_start, warm_b=warm_b,
                         max_iter=max_iter, tol=tol, solver=solver, omega=omega, zero_start=zero_start)


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
    """Π_ε between the fixed targets a and each new b, warm-started from the previous call (its
    scalings, shifted by how the exact plan's potentials moved with b; see `_starts`).

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
        self._warm_b: torch.Tensor | None = None  # the b that self._warm was solved for
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
        # Cold calls start from the exact potentials alone (zero_start=False): on SWAP's clouds the
        # zero start, kept when it starts with the lower row error, never saved iterations (33
        # cold solves on MLPNet/digits, tests/test_prune_results_stable.py's problem and the
        # synthetic gradients of tests/test_pruners.py: 681 iterations with it, 676 without),
        # and building it costs as much as ~8 iterations.
        result = transport_plan(self.a, b, self.epsilon, scale=self.scale, warm_start=self._warm, warm_b=self._warm_b,
                                max_iter=self.max_iter, tol=self.tol, solver=self.solver, omega=self.omega,
                                zero_start=False)
        if result.log_scalings is not None and self.warm_start:
            self._warm = result.log_scalings
            self._warm_b = _as_cloud(b, "b").clone()
        return result
