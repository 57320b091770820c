"""`magnitude`: global top-k of |w̄|, no weight update. The baseline every pruner must beat."""

from __future__ import annotations

import torch

from ..gradients.gradient_set import GradientSet
from ..layout import Layout
from .base import PRUNERS, Pruner, SolveOutput
from .selection import hard_threshold_mask


@PRUNERS.register("magnitude")
class MagnitudePruner(Pruner):
    """Keep the k weights of largest magnitude across all pruned layers; values unchanged."""

    needs_gradients = False

    def _solve(
        self, w_bar: torch.Tensor, grads: GradientSet | None, k: int, layout: Layout
    ) -> SolveOutput:
        return SolveOutput(w=w_bar, mask=hard_threshold_mask(w_bar, k))
