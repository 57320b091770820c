"""The IHT solver shared by the regression pruners `lr` and `swap` (specs/swap.md §1–2, §8).

Notation (units: X's rows are per-sample loss gradients, so Xw has the units of a loss):

    w̄ ∈ R^d   dense reference weights (flat, layout order);  y = X w̄ ∈ R^n the targets
    k          surviving weights; H_k keeps the k entries of largest |·| (ties → lower index)
    Π          a transport plan between the clouds y (rows) and Xw (columns), mass 1/n each,
               supplied by a plan provider (transport.py): Π = I/n for LR, Π_ε for SWAP
    ỹ          barycentric targets of Π (ỹ = y for Π = I/n);  s(Π) ≥ 0 its spread (a constant)
    anchor     the ridge centre: w̄ (anchor "fixed", default) or the previous stage's w ("moving")

Frozen-plan objective and its gradient (an exact quadratic in w, so every line has a closed form):

    Q(w) = ½‖ỹ − Xw‖² + ½ s(Π) + (nλ/2)‖w − anchor‖²      (= (n/2)⟨Π, M(w)⟩ + ridge, loss²)
    ∇Q(w) = Xᵀ(Xw − ỹ) + nλ(w − anchor)

With Π = I/n, Q is LR's objective ½‖y − Xw‖² + (nλ/2)‖w − w̄‖² exactly, and since LR and SWAP
run this one function with different plan providers, SWAP with the identity plan IS LR (same
arithmetic, identical weights).

Algorithm. Stages t = 1..T on the cubic schedule s_t = s_T + (s_0 − s_T)(1 − (t−1)/(T−1))³,
s_0 = 0 (T = 1: one shot to s_T); a stage whose k_t keeps every weight is skipped. Each stage:

1. w ← H_{k_t}(w) (the previous stage's w; w̄ at the first), Π at Xw;
2. IHT steps w ← H_k(w − τ b), with b = ∇Q ("consistent", default) or the authors'
   direction b = Xᵀ·nΠ(Xw − y) + nλ(w − anchor) ("reference", specs/swap.md §9: Π's rows index
   the dense cloud, no transpose; equal to ∇Q when Π = I/n;
   a step where it is not a descent direction uses ∇Q instead). Step size:
     τ* = ⟨∇Q, b⟩ / (‖Xb‖² + nλ‖b‖²)                    the exact minimiser of Q along −b;
     τ_c = min_{i∈S} |w_i| / (b_i·sign(w_i) + max_{j∉S}|b_j|)  (terms with a non-positive
           denominator never cross)  — the largest step keeping the top-k support S, per group;
   take τ* if τ* ≤ τ_c; otherwise start at τ_c and double (at most `max_growth` times) while Q
   AFTER thresholding keeps falling. A step that does not lower Q is halved (at most
   `max_growth` times); if none does, IHT stops. The plan is recomputed every `plan_every`
   steps (warm-started). IHT continues while its steps move the support; a step that keeps the
   support is steepest descent on the restricted quadratic, which step 3 finishes exactly;
3. backsolve: with Π recomputed at Xw, minimise Q over w_S with the support S fixed, i.e. solve
       (X_Sᵀ X_S + nλ I) w_S = X_Sᵀ ỹ + nλ·anchor_S
   by conjugate gradients from the current w_S, matrix-free (each iteration is one Xv and one
   Xᵀu); never a dense |S|×|S| system. At most `cg_iters` iterations, stopping at relative
   residual `cg_tol`. If the IHT pass moved the support, back to 2 from the re-fitted point;
   the stage ends after a pass that keeps the support, or when `iht_steps` (the stage's step
   budget) is spent. Without `backsolve`, IHT runs until a support-keeping step lowers Q by
   less than `tol`·Q;
4. anchor "moving": anchor ← w; "moving_all": anchor ← w, the targets y ← Xw and the plan
   provider rebuilt for them (the SWAP paper's Algorithm 1 moves w̄ itself).

Ridge units. With `lambda_units: relative` (default) the λ above is λ_abs = λ·mean(diag F), F =
XᵀX/n, computed from X once per call, so a λ carries across models and calibration sizes; the
log records `lambda_abs`. Why: on MLPNet / MNIST mean(diag F) ≈ 2e-4, and an absolute λ = 0.01
made the ridge ~50× the data term (docs/pruners.md). `absolute` takes λ in F's units.

Per-stage log entry: stage, sparsity, kept, objective_before (at H_k(w), under the stage's first
plan), objective_after_iht (after the first IHT pass), objective_after (after the last backsolve,
under the plan it used; for LR simply Q_LR), iht_iterations, support_changes, tau_last,
seconds_per_step (IHT only), backsolves, cg_iterations (summed), cg_relative_residual (last),
and for entropic plans: plans (solves), sinkhorn_iterations, max_marginal_error; seconds.
Objectives are in loss² (X w has the units of a loss).

Only `grads.xv` and `grads.xtu` touch X, so a matrix-free GradientSet works unchanged. Products
are in X's float32; vectors, reductions and CG scalars in float64. One option, for speed:
`cg_columns: support` makes a backsolve on a dense in-memory X copy X's support columns X_S (n×|S|
float32, at most SUPPORT_COPY_MAX_MB MiB) once and run its CG products on them, X_S v_s and X_Sᵀ u,
instead of X·embed(v_s) and (Xᵀu)[S] over all d columns — the same sums without the zero terms,
|S|/d of the memory traffic (the products are memory-bound: on MNIST MLPNet they were 90 % of a
one-shot lr prune, bench/sweep_profile.py). The BLAS kernel then sums in another order, so the
products agree with the full ones to float32 rounding (tests/test_sweep_profile_results.py), not
bit for bit, and where the solve amplifies rounding a pruned model moves by more (CG stopped at
cg_tol on an ill-conditioned X, then a magnitude selection at high sparsity: multi-stage lr at
s = 0.98 on MNIST moved 12 accuracy points on one replicate; under one-ulp changes of the dense
weights both arithmetics give 71.7–75.1 % there; docs/sweeps.md, "Where a sweep's time goes").
That is why it is an option, part of the cell keys when set, and not the default: `cg_columns: all`
is the arithmetic every stored record and published figure was computed with, bit for bit. The
solver log's `cg_columns` says which ran.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
from pydantic import ConfigDict, Field

from ..gradients.gradient_set import GradientSet
from ..layout import Layout
from ..registry import ADDED_LATER, Params
from ..transport import TransportResult
from .base import Pruner, SolveOutput
from .schedule import cubic_schedule
from .selection import Budget, kept_count
from .structure import UNSTRUCTURED, StructureParams, make_budget

PlanProvider = Callable[[torch.Tensor], TransportResult]
Direction = Literal["consistent", "reference"]


class RegressionParams(StructureParams):
    """Parameters shared by `lr` and `swap` (YAML key `lambda` for λ)."""

    # YAML, describe() and labels say `lambda` (a Python keyword, hence the field name lambda_)
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    # Default 1: robust one-shot (T = 1) on both MLPNets measured; multi-stage runs gain from a
    # smaller ridge (MNIST, 10 stages: 0.01 is best), so tune it per model (docs/pruners.md).
    lambda_: float = Field(
        1.0, ge=0, alias="lambda",
        description="ridge λ ≥ 0 of (nλ_abs/2)‖w − w̄‖²; with lambda_units 'relative' λ_abs = λ·mean(diag F), "
        "F = XᵀX/n, so λ is dimensionless and carries across models (0.01–10 measured on MLPNet)",
    )
    lambda_units: Literal["relative", "absolute"] = Field(
        "relative",
        description="'relative': λ is a multiple of mean(diag F) (default); 'absolute': λ is in F's own "
        "units, loss²/weight² (the CHITA papers' convention)",
    )
    stages: int = Field(1, ge=1, le=1000, description="T stages of the cubic sparsity schedule (1 = one-shot)")
    iht_steps: int = Field(
        50, ge=0, le=100000, description="IHT steps per stage at most (0: magnitude support, then backsolve)"
    )
    tol: float = Field(
        1e-5, gt=0, lt=1, description="a stage stops when a step keeps the support and lowers Q by < tol·Q"
    )
    max_growth: int = Field(
        8, ge=0, le=60, description="step doublings beyond τ_c (and halvings of a failed step) at most"
    )
    backsolve: bool = Field(True, description="re-fit w on the support after each stage (matrix-free CG)")
    cg_iters: int = Field(200, ge=1, le=100000, description="conjugate-gradient iterations per backsolve at most")
    cg_tol: float = Field(1e-5, gt=0, lt=1, description="CG stops at relative residual ‖r‖/‖rhs‖ below this")
    cg_columns: Literal["all", "support"] = Field(
        "all", json_schema_extra=ADDED_LATER,
        description="which columns of X the backsolve's CG products read: all d (X·embed(v_S), (Xᵀu)_S; the "
        "arithmetic of every record before 2026-12) or support (a copy of X's |S| support columns, the same "
        "sums without the zero terms in another order: lr/swap solves 2.6–3.7× faster on MNIST MLPNet, "
        "products equal to float32 rounding; needs an in-memory X and n·|S|·4 bytes ≤ SUPPORT_COPY_MAX_MB, "
        "else all)",
    )
    anchor: Literal["fixed", "moving", "moving_all"] = Field(
        "fixed", description="what stages are anchored at: the dense w̄ (fixed); the previous stage's weights as "
        "the ridge centre only (moving); or the previous stage's weights for the targets y = Xw, the plan and the "
        "ridge together (moving_all: the SWAP paper's Algorithm 1, w̄ ← w^(t+1))"
    )
    step_rule: Literal["descent", "always"] = Field(
        "descent", json_schema_extra=ADDED_LATER,
        description="descent: IHT from the thresholded point, a step kept only if Q falls (default); always: the "
        "authors' rule — one step per stage from the un-thresholded weights, τ* (the exact minimiser along −b) "
        "grown ×1.05 while Q after thresholding falls, always taken, then thresholded (their τ comes from Adam "
        "steps; here it is the closed form)",
    )
    update_weights: bool = Field(
        True, description="return the solver's weights (true) or the dense values on the chosen support (false)"
    )
    scope: Literal["global", "layer"] = Field(
        "global", description="one top-k over all pruned layers (global) or the target sparsity per layer (layer)"
    )


# --- the solver --------------------------------------------------------------------------------


@dataclass
class _State:
    """The iterate and what is cached about it under the current plan."""

    w: torch.Tensor  # (d,) float64, zero off `support`
    support: torch.Tensor  # (d,) bool
    xw: torch.Tensor  # (n,) float64, X w
    q: float  # Q(w) under `plan`


@dataclass
class _Problem:
    grads: GradientSet
    y: torch.Tensor  # (n,) float64 targets X w̄
    nlam: float  # n·λ
    anchor: torch.Tensor  # (d,) float64
    products: int = 0
    support_columns: bool = False  # backsolves multiply with a copy of X's support columns (cg_columns)

    def xv(self, v: torch.Tensor) -> torch.Tensor:
        self.products += 1
        return self.grads.xv(v.to(torch.float32)).to(torch.float64)

    def xtu(self, u: torch.Tensor) -> torch.Tensor:
        self.products += 1
        return self.grads.xtu(u.to(torch.float32)).to(torch.float64)

    def objective(self, plan: TransportResult, w: torch.Tensor, xw: torch.Tensor) -> float:
        diff = w - self.anchor
        return plan.fit_cost(xw) + 0.5 * self.nlam * float(diff @ diff)

    def gradient(self, plan: TransportResult, w: torch.Tensor, xw: torch.Tensor) -> torch.Tensor:
        return self.xtu(xw - plan.targets) + self.nlam * (w - self.anchor)

    def on_support(self, support: torch.Tensor) -> _SupportProducts:
        """Products with X_S, the columns of X on `support` (see _SupportProducts)."""
        grads = self.grads
        kept = int(support.sum())
        copy = (self.support_columns and not getattr(grads, "matrix_free", False)
                and getattr(grads, "cheap_columns", False) and grads.n * kept * 4 <= SUPPORT_COPY_MAX_MB * 2**20)
        # index_select copies the same values as X[:, support], in about half the time
        columns = grads.dense().index_select(1, support.nonzero().reshape(-1)) if copy else None
        return _SupportProducts(self, support, columns)


# With `cg_columns: support` a backsolve copies X's support columns when the copy takes at most this
# many MiB (n·|S|·4 bytes); above it (and for a matrix-free or on-disk X) its products run over all
# d columns of X, and the solver log's `cg_columns` says so.
SUPPORT_COPY_MAX_MB = 1024.0


@dataclass
class _SupportProducts:
    """X_S v_s (length n) and X_Sᵀ u (length |S|) for the support S of one backsolve, counted in
    `prob.products` as the full products are. With `XS` (X's columns on S, n×|S| float32, in
    layout order) they read only those columns; without, they embed v_s into R^d and index Xᵀu."""

    prob: _Problem
    support: torch.Tensor  # (d,) bool
    XS: torch.Tensor | None

    def xv(self, v_s: torch.Tensor) -> torch.Tensor:
        if self.XS is None:
            z = torch.zeros(self.support.numel(), dtype=torch.float64)
            z[self.support] = v_s
            return self.prob.xv(z)
        self.prob.products += 1
        return (self.XS @ v_s.to(torch.float32)).to(torch.float64)

    def xtu(self, u: torch.Tensor) -> torch.Tensor:
        if self.XS is None:
            return self.prob.xtu(u)[self.support]
        self.prob.products += 1
        return (self.XS.T @ u.to(torch.float32)).to(torch.float64)


@dataclass
class _PlanLog:
    calls: int = 0
    iterations: int = 0
    max_marginal_error: float = 0.0
    methods: set = field(default_factory=set)
    warnings: list = field(default_factory=list)
    seconds: float = 0.0

    def record(self, plan: TransportResult, seconds: float) -> None:
        self.calls += 1
        self.iterations += plan.iterations
        self.max_marginal_error = max(self.max_marginal_error, plan.marginal_error)
        self._stage_max = max(getattr(self, "_stage_max", 0.0), plan.marginal_error)
        self.methods.add(plan.method)
        self.seconds += seconds
        if plan.warning and plan.warning not in self.warnings:
            self.warnings.append(plan.warning)

    def mark(self) -> tuple[int, int]:
        self._stage_max = 0.0
        return self.calls, self.iterations

    def since(self, mark: tuple[int, int]) -> dict[str, Any]:
        """This stage's plan solves: count, Sinkhorn iterations, largest marginal error."""
        if self.calls == mark[0]:
            return {}
        return {"plans": self.calls - mark[0], "sinkhorn_iterations": self.iterations - mark[1],
                "max_marginal_error": self._stage_max}

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "sinkhorn_iterations": self.iterations,
            "max_marginal_error": self.max_marginal_error,
            "methods": sorted(self.methods),
            "seconds": self.seconds,
            "warnings": list(self.warnings),
        }


def _plan_at(plans: PlanProvider, xw: torch.Tensor, log: _PlanLog) -> TransportResult:
    t0 = time.perf_counter()
    plan = plans(xw)
    log.record(plan, time.perf_counter() - t0)
    return plan


def reference_direction(prob: _Problem, plan: TransportResult, w: torch.Tensor, xw: torch.Tensor) -> torch.Tensor:
    """The authors' direction (specs/swap.md §9): Xᵀ·nΠ(Xw − y) + nλ(w − anchor), with Π as
    computed — rows the dense cloud y = Xw̄, columns the current cloud Xw — and no transpose:
    (nΠr)_i = Σ_j nΠ_ij r_j averages the residuals r = Xw − y of the samples that dense sample i is
    transported to, and weights X's row i with it. Equal to ∇Q when Π = I/n."""
    return prob.xtu(plan.row_average(xw - prob.y)) + prob.nlam * (w - prob.anchor)


def _iht_step(
    prob: _Problem,
    plan: TransportResult,
    state: _State,
    budget: Budget,
    direction: Direction,
    max_growth: int,
) -> tuple[_State | None, dict[str, Any]]:
    """One IHT step from `state` under a frozen plan; None if no step size lowers Q."""
    grad_q = prob.gradient(plan, state.w, state.xw)
    info: dict[str, Any] = {"fallback": False}
    b = grad_q
    if direction == "reference":
        b = reference_direction(prob, plan, state.w, state.xw)
    xb = prob.xv(b)
    curvature = float(xb @ xb) + prob.nlam * float(b @ b)
    slope = float(grad_q @ b)
    if direction == "reference" and not slope > 0:  # not a descent direction for Q
        info["fallback"] = True
        b = grad_q
        xb = prob.xv(b)
        curvature = float(xb @ xb) + prob.nlam * float(b @ b)
        slope = float(grad_q @ b)
    if not (slope > 0 and curvature > 0 and math.isfinite(slope) and math.isfinite(curvature)):
        return None, info
    tau_star = slope / curvature
    tau_c = budget.tau_c(state.w, b, state.support)

    def candidate(tau: float) -> _State:
        v = state.w - tau * b
        mask = budget.mask(v)
        v = torch.where(mask, v, torch.zeros((), dtype=v.dtype))
        xv = prob.xv(v)
        return _State(v, mask, xv, prob.objective(plan, v, xv))

    best: _State | None = None
    if tau_star <= tau_c:
        best, tau = candidate(tau_star), tau_star
        info["rule"] = "closed_form"
    else:
        tau = tau_c if tau_c > 0 else tau_star
        best = candidate(tau)
        info["rule"] = "grow"
        for _ in range(max_growth):
            trial = candidate(2.0 * tau)
            if trial.q >= best.q:
                break
            best, tau = trial, 2.0 * tau
    halvings = 0
    # `not q < state.q` rather than `q >= state.q`: a NaN/Inf objective (overflow) is no descent
    while not best.q < state.q and halvings < max_growth:
        tau *= 0.5
        halvings += 1
        best = candidate(tau)
    info.update(tau=tau, tau_star=tau_star, tau_c=tau_c, halvings=halvings)
    if not best.q < state.q:
        return None, info
    return best, info


def _authors_step(
    prob: _Problem, plan: TransportResult, state: _State, budget: Budget, direction: Direction, max_growth: int
) -> tuple[_State, dict[str, Any]]:
    """The authors' step (specs/swap.md §9): from `state` as it is (not thresholded first), along
    −b with τ* = ⟨∇Q, b⟩ / (‖Xb‖² + nλ‖b‖²) grown ×1.05 while Q after thresholding falls (at most
    `max_growth`·10 times), then H_k — always taken, with no descent test and no fallback."""
    grad_q = prob.gradient(plan, state.w, state.xw)
    b = reference_direction(prob, plan, state.w, state.xw) if direction == "reference" else grad_q
    xb = prob.xv(b)
    curvature = float(xb @ xb) + prob.nlam * float(b @ b)
    slope = float(grad_q @ b)
    tau = slope / curvature if curvature > 0 and math.isfinite(slope / curvature) else 0.0

    def candidate(t: float) -> _State:
        v = state.w - t * b
        mask = budget.mask(v)
        v = torch.where(mask, v, torch.zeros((), dtype=v.dtype))
        xv = prob.xv(v)
        return _State(v, mask, xv, prob.objective(plan, v, xv))

    best, growths = candidate(tau), 0
    while growths < 10 * max_growth:
        trial = candidate(tau * 1.05)
        if not trial.q < best.q:
            break
        best, tau, growths = trial, tau * 1.05, growths + 1
    return best, {"tau": tau, "growths": growths}


def _backsolve(
    prob: _Problem, plan: TransportResult, state: _State, cg_iters: int, cg_tol: float
) -> tuple[_State, dict[str, Any]]:
    """CG on (X_Sᵀ X_S + nλ I) w_S = X_Sᵀ ỹ + nλ·anchor_S from the current w_S (matrix-free;
    on X's support columns when they can be copied, `_Problem.on_support`)."""
    S = state.support
    d = state.w.numel()
    on_s = prob.on_support(S)

    def embed(v_s: torch.Tensor) -> torch.Tensor:
        z = torch.zeros(d, dtype=torch.float64)
        z[S] = v_s
        return z

    def apply(v_s: torch.Tensor) -> torch.Tensor:
        return on_s.xtu(on_s.xv(v_s)) + prob.nlam * v_s

    rhs = on_s.xtu(plan.targets) + prob.nlam * prob.anchor[S]
    x = state.w[S].clone()
    r = rhs - apply(x)
    rhs_norm = float(rhs.norm()) or 1.0
    p = r.clone()
    rr = float(r @ r)
    iters = 0
    while iters < cg_iters and math.sqrt(rr) > cg_tol * rhs_norm:
        ap = apply(p)
        pap = float(p @ ap)
        if not pap > 0:  # singular direction (λ = 0 and |S| > n): the residual is as small as it gets
            break
        alpha = rr / pap
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = float(r @ r)
        p = r + (rr_new / rr) * p
        rr = rr_new
        iters += 1
    w = embed(x)
    xw = on_s.xv(x)
    new = _State(w, S.clone(), xw, prob.objective(plan, w, xw))
    info = {"cg_iterations": iters, "cg_relative_residual": math.sqrt(rr) / rhs_norm,
            "cg_columns": "support" if on_s.XS is not None else "all"}
    # CG cannot raise Q in exact arithmetic; float32 products might, and an overflow gives NaN
    if not new.q <= state.q or not bool(torch.isfinite(new.w).all()):
        info["rejected"] = True
        return state, info
    return new, info


@dataclass(frozen=True)
class Settings:
    """The solver's knobs (see RegressionParams for meanings and ranges). Built from a pruner's
    Params, which hold the defaults; only the two knobs `lr` does not expose have their own."""

    lambda_: float
    lambda_units: str
    stages: int
    iht_steps: int
    tol: float
    max_growth: int
    backsolve: bool
    cg_iters: int
    cg_tol: float
    anchor: str
    update_weights: bool
    scope: str
    step_rule: str = "descent"
    cg_columns: str = "all"
    structure: str = UNSTRUCTURED
    direction: Direction = "consistent"  # swap only: lr's gradient is the consistent one
    plan_every: int = 10  # swap only: lr's identity plan never changes

    @classmethod
    def from_params(cls, params: Params) -> "Settings":
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in params.model_dump(by_alias=False).items() if k in names})


def solve_regression(
    grads: GradientSet,
    w_bar: torch.Tensor,
    k: int,
    layout: Layout,
    settings: Settings,
    make_plans: Callable[[torch.Tensor], PlanProvider],
    anchor: torch.Tensor | None = None,
) -> SolveOutput:
    """Prune w̄ to k survivors by multi-stage IHT + CG backsolve on the plan-weighted regression.

    `anchor`: weights other than w̄ to anchor the objective at (targets y = X·anchor, the ridge
    centre); the iterate still starts from w̄, and `update_weights: false` keeps w̄'s values.

    make_plans(y) returns the plan provider for the targets y = X w̄ (float64, length n); it is
    called once, and the provider once per plan update with the current Xw. Returns the flat
    weights (float32), the support and a log: {"scope", "objective" (LR/SWAP objective at the end,
    loss²), "stages": [per-stage entries], "plan": Sinkhorn summary, "products": Xv/Xᵀu count,
    "cg_columns": "support" / "all" / "mixed" — which columns the backsolves' products read
    (`_Problem.on_support`; absent when no backsolve ran, and in logs written before the copy)}.
    """
    t_all = time.perf_counter()
    d, n = layout.d, grads.n
    w_start = w_bar.reshape(-1).to(torch.float64)
    w_ref = w_start if anchor is None else anchor.reshape(-1).to(torch.float64)
    fisher_scale = grads.mean_square() if settings.lambda_units == "relative" else 1.0
    lambda_abs = settings.lambda_ * fisher_scale
    prob = _Problem(grads, torch.zeros(0), n * lambda_abs, w_ref.clone(),
                    support_columns=settings.cg_columns == "support")
    prob.y = prob.xv(w_ref)
    plans = make_plans(prob.y)
    plan_log = _PlanLog()
    s_target = 1.0 - k / d if d else 0.0
    sparsities = cubic_schedule(s_target, settings.stages)
    w = w_start.clone()
    support = torch.ones(d, dtype=torch.bool)
    stage_logs: list[dict[str, Any]] = []
    cg_columns: set[str] = set()  # which products the backsolves ran on (_Problem.on_support)
    final_q: float | None = None
    for t, s_t in enumerate(sparsities, start=1):
        t_stage = time.perf_counter()
        k_t = k if t == len(sparsities) else kept_count(d, s_t)
        budget = make_budget(layout, k_t, s_t if t < len(sparsities) else s_target, settings.scope, settings.structure)
        entry: dict[str, Any] = {"stage": t, "sparsity": s_t, "kept": budget.kept}
        if budget.keeps_all:
            entry["skipped"] = "keeps every weight"
            stage_logs.append(entry)
            continue
        authors = settings.step_rule == "always"
        if not authors:  # the authors' step starts from the weights as they are
            support = budget.mask(w)
            w = torch.where(support, w, torch.zeros((), dtype=w.dtype))
        xw = prob.xv(w)
        plan_mark = plan_log.mark()
        plan = _plan_at(plans, xw, plan_log)
        state = _State(w, support, xw, prob.objective(plan, w, xw))
        entry["objective_before"] = state.q
        steps = support_changes = fallbacks = rounds = 0
        last_tau = None
        cg_log: dict[str, Any] = {}
        iht_seconds = 0.0
        if authors:
            t_iht = time.perf_counter()
            new, info = _authors_step(prob, plan, state, budget, settings.direction, settings.max_growth)
            support_changes = int(not torch.equal(new.support, state.support))
            state, steps, last_tau = new, 1, info["tau"]
            iht_seconds = time.perf_counter() - t_iht
            entry.update(objective_after_iht=state.q, growths=info["growths"])
            if settings.backsolve:  # the authors write the mask only (update_weights false); a re-fit is optional
                if plan.method not in ("identity", "independent"):
                    plan = _plan_at(plans, state.xw, plan_log)
                    state.q = prob.objective(plan, state.w, state.xw)
                state, cg = _backsolve(prob, plan, state, settings.cg_iters, settings.cg_tol)
                cg_columns.add(cg["cg_columns"])
                cg_log.update(cg_iterations=cg["cg_iterations"], cg_relative_residual=cg["cg_relative_residual"])
                rounds = 1
        while not authors:
            # IHT while it moves the support. A step that keeps the support is steepest descent on
            # the restricted quadratic, which the backsolve finishes exactly (and far faster on an
            # ill-conditioned X); after a pass that moved it, IHT tries again from the re-fit.
            rounds += 1
            moved = False
            t_iht = time.perf_counter()
            while steps < settings.iht_steps:
                if steps and steps % settings.plan_every == 0 and plan.method not in ("identity", "independent"):
                    plan = _plan_at(plans, state.xw, plan_log)
                    state.q = prob.objective(plan, state.w, state.xw)
                new, info = _iht_step(prob, plan, state, budget, settings.direction, settings.max_growth)
                fallbacks += int(info.get("fallback", False))
                if new is None:
                    break
                steps += 1
                last_tau = info["tau"]
                changed = not torch.equal(new.support, state.support)
                support_changes += int(changed)
                moved = moved or changed
                decrease = state.q - new.q
                state = new
                if not changed and (settings.backsolve or decrease < settings.tol * abs(state.q)):
                    break
            iht_seconds += time.perf_counter() - t_iht
            if rounds == 1:
                entry.update(objective_after_iht=state.q)
            if not settings.backsolve:
                break
            if plan.method not in ("identity", "independent"):
                plan = _plan_at(plans, state.xw, plan_log)
                state.q = prob.objective(plan, state.w, state.xw)
            state, cg = _backsolve(prob, plan, state, settings.cg_iters, settings.cg_tol)
            cg_columns.add(cg["cg_columns"])
            cg_log["cg_iterations"] = cg_log.get("cg_iterations", 0) + cg["cg_iterations"]
            cg_log["cg_relative_residual"] = cg["cg_relative_residual"]
            if cg.get("rejected"):
                cg_log["cg_rejected"] = cg_log.get("cg_rejected", 0) + 1
            # A pass that kept the support ends the stage. From the re-fitted point only steps past
            # τ_c could change anything; retrying them was tried on MLPNet / MNIST and moved the
            # support at most once per prune (docs/pruners.md), so it is not done.
            if not moved or steps >= settings.iht_steps:
                break
        entry.update(iht_iterations=steps, support_changes=support_changes, tau_last=last_tau,
                     seconds_per_step=iht_seconds / max(steps, 1), **cg_log)
        if settings.backsolve:
            entry["backsolves"] = rounds
        if settings.direction == "reference":
            entry["reference_fallbacks"] = fallbacks
        entry["objective_after"] = state.q
        entry.update(plan_log.since(plan_mark))
        entry["seconds"] = time.perf_counter() - t_stage
        stage_logs.append(entry)
        w, support, final_q = state.w, state.support, state.q
        if settings.anchor in ("moving", "moving_all"):
            prob.anchor = w.clone()
        if settings.anchor == "moving_all":  # the next stage regresses on this stage's outputs
            prob.y = prob.xv(w)
            plans = make_plans(prob.y)
    if settings.update_weights:
        w_out = w.to(torch.float32)
    else:
        w_out = w_start.to(torch.float32)
    log = {
        "scope": settings.scope,
        "lambda_abs": lambda_abs,
        "objective": final_q,
        "stages": stage_logs,
        "plan": {**getattr(plans, "describe", {}), **plan_log.as_dict()},
        "products": prob.products,
        "solver_seconds": time.perf_counter() - t_all,
    }
    if cg_columns:  # absent from logs written before the support copy (they ran on all columns)
        log["cg_columns"] = cg_columns.pop() if len(cg_columns) == 1 else "mixed"
    warnings = plan_log.warnings
    if warnings:
        log["warnings"] = list(warnings)
    return SolveOutput(w=w_out, mask=support, log=log)


class RegressionPruner(Pruner):
    """Base of `lr` and `swap`: one solver, the plan provider is the only difference."""

    Params = RegressionParams
    uses_anchor_weights = True

    def settings(self) -> Settings:
        return Settings.from_params(self.params)

    def make_plans(self, y: torch.Tensor) -> PlanProvider:
        raise NotImplementedError

    def _solve(self, w_bar: torch.Tensor, grads: GradientSet | None, k: int, layout: Layout,
               anchor: torch.Tensor | None = None) -> SolveOutput:
        assert grads is not None  # Pruner.prune refuses None for pruners that need gradients
        return solve_regression(grads, w_bar, k, layout, self.settings(), self.make_plans, anchor)
