"""`lr`: linear-regression pruning (the CHITA formulation; SWAP's baseline, specs/swap.md §1, §7).

    minimise  Q_LR(w) = ½‖y − Xw‖² + (nλ/2)‖w − w̄‖²   subject to ‖w‖₀ ≤ k,   y = X w̄

X (n×d) holds the per-sample loss gradients at w̄, so ½‖X(w − w̄)‖² = (n/2)(w − w̄)ᵀF(w − w̄) with
F = XᵀX/n the empirical Fisher: the OBS/WoodFisher quadratic without a d×d matrix. Solved by the
shared multi-stage IHT + CG backsolve (iht.py) with the identity plan Π = I/n, i.e. exactly SWAP's
solver with ỹ = y.
"""

from __future__ import annotations

import torch

from ..transport import IdentityPlans
from .base import PRUNERS
from .iht import PlanProvider, RegressionParams, RegressionPruner


@PRUNERS.register("lr")
class LRPruner(RegressionPruner):
    """IHT on ½‖y − Xw‖² + (nλ/2)‖w − w̄‖² with a CG re-fit on the support after each stage."""

    class Params(RegressionParams):
        pass

    def make_plans(self, y: torch.Tensor) -> PlanProvider:
        return IdentityPlans(y)
