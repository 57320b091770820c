"""`swap`: sparse entropic Wasserstein regression pruning (You & Cheng, ICLR 2024; specs/swap.md).

The outputs y = X w̄ of the dense model and Xw of the candidate are two 1-D clouds (mass 1/n per
sample, cost M_ij = (y_i − (Xw)_j)²) and the fit is their entropic transport cost:

    minimise  Q_EWR(w) = (n/2)⟨Π, M(w)⟩ + (nλ/2)‖w − w̄‖²   subject to ‖w‖₀ ≤ k,
    Π = argmin_{Π1 = Πᵀ1 = 1/n} ⟨Π, M(w)⟩ − ε_abs H(Π)

For a frozen plan this is LR toward the barycentric targets ỹ = n·Πᵀy (each target replaced by
an average of the targets whose values sit near it: the paper's "neighbourhood interpolation"),
so it runs the shared IHT + CG solver (iht.py) with an entropic plan provider (transport.py),
recomputed at the current Xw every `plan_every` IHT steps and before each backsolve.

ε semantics (reported in every result's log["plan"]): ε is relative, ε_abs = ε · mean_ij (y_i −
y_j)² = ε · 2·Var(y), fixed per pruning call (the cost scale of the dense model's outputs), so the
blur does not drift as w moves. ε = 0 is the exact plan (monotone sort matching), ε = "inf" the
independent plan (every ỹ_i = mean(y)). With Π = I/n (not reachable through ε; see the tests) the
solver is LR's, bit for bit.
"""

from __future__ import annotations

import math
from typing import Literal, Union

import torch
from pydantic import Field, field_validator

from ..registry import ADDED_LATER
from ..transport import EntropicPlans
from .base import PRUNERS
from .iht import PlanProvider, RegressionParams, RegressionPruner


@PRUNERS.register("swap")
class SwapPruner(RegressionPruner):
    """IHT + CG backsolve on the entropic-Wasserstein regression objective."""

    class Params(RegressionParams):
        # Larger than lr's default 1: with a weak ridge and n < k the backsolve fits the blurred
        # targets ỹ exactly and moves far from w̄ (MLPNet / MNIST s = 0.9, 10 stages: λ = 1 →
        # 88.7 %, λ = 10 → 90.3 %; docs/pruners.md).
        lambda_: float = Field(
            10.0, ge=0, alias="lambda",
            description="ridge λ ≥ 0, relative to mean(diag F) unless lambda_units is 'absolute' (see lr); "
            "default 10, stronger than lr's because the targets are blurred",
        )
        epsilon: Union[float, Literal["inf"]] = Field(
            0.1,
            description="entropic ε relative to the cost scale 2·Var(Xw̄) (ε_abs = ε·scale); ≥ 0; "
            "0 = exact sort plan; 'inf' = independent plan",
        )
        epsilon_units: Literal["relative", "absolute"] = Field(
            "relative", json_schema_extra=ADDED_LATER,
            description="'relative': ε_abs = ε·2Var(Xw̄), so ε carries across models (default); 'absolute': ε is "
            "ε_abs itself, in the cost's units (loss²) — the authors' code uses ε = 1.0 absolute (specs/swap.md §9)",
        )
        direction: Literal["consistent", "reference"] = Field(
            "consistent",
            description="step direction: the gradient of the frozen-plan objective (consistent) or the "
            "authors' direction Xᵀ·nΠ(Xw − y) + nλ(w − w̄), Π's rows indexing the dense cloud Xw̄ and no "
            "transpose (reference; specs/swap.md §9)",
        )
        plan_every: int = Field(
            10, ge=1, le=100000,
            description="recompute Π (warm-started) every this many IHT steps; also before each backsolve",
        )
        sinkhorn_iters: int = Field(1000, ge=1, le=1000000, description="Sinkhorn iterations per plan at most")
        sinkhorn_tol: float = Field(
            1e-3, gt=0, lt=1, description="Sinkhorn stops at this relative RMS error of the plan's row masses"
        )
        solver: Literal["sor", "pot"] = Field(
            "sor",
            description="entropic solver: own over-relaxed stabilised Sinkhorn (sor) or POT's "
            "sinkhorn / sinkhorn_log (pot)",
        )
        warm_start: bool = Field(True, description="start each Sinkhorn solve from the previous plan's scalings")

        @field_validator("epsilon", mode="before")
        @classmethod
        def _epsilon(cls, value):
            if isinstance(value, str) and value.strip().lower() in ("inf", "infinity", ".inf", "+inf"):
                return "inf"
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if math.isinf(value) and value > 0:
                    return "inf"
                if not math.isfinite(value) or value < 0:
                    raise ValueError(f"epsilon must be ≥ 0 or 'inf', got {value}")
            return value

        @property
        def epsilon_value(self) -> float:
            return math.inf if self.epsilon == "inf" else float(self.epsilon)

    def make_plans(self, y: torch.Tensor) -> PlanProvider:
        p = self.params
        return EntropicPlans(y, p.epsilon_value, scale=1.0 if p.epsilon_units == "absolute" else None,
                             max_iter=p.sinkhorn_iters, tol=p.sinkhorn_tol, solver=p.solver, warm_start=p.warm_start)
