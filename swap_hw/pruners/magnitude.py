"""`magnitude`: top-k of |w̄|, no weight update. The baseline every pruner must beat.

Keeps the k = floor(d·(1 − s)) weights of largest |w̄| (ties → lower flat index) over all pruned
layers (scope global) or the target fraction in each layer (scope layer); under a `structure`
(pruners/structure.py) the units of largest ‖w̄_u‖² instead. Values are unchanged.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..gradients.gradient_set import GradientSet
from ..layout import Layout
from ..registry import ADDED_LATER
from .base import PRUNERS, Pruner, SolveOutput
from .structure import StructureParams, make_budget


@PRUNERS.register("magnitude")
class MagnitudePruner(Pruner):
    """Keep the weights (or structured units) of largest magnitude; values unchanged."""

    needs_gradients = False

    class Params(StructureParams):
        scope: Literal["global", "layer"] = Field(
            "global", json_schema_extra=ADDED_LATER,
            description="one top-k over all pruned layers (global) or the target sparsity per layer (layer)",
        )

    def _solve(
        self, w_bar: torch.Tensor, grads: GradientSet | None, k: int, layout: Layout
    ) -> SolveOutput:
        p = self.params
        sparsity = 1.0 - k / layout.d if layout.d else 0.0
        mask = make_budget(layout, k, sparsity, p.scope, p.structure).mask(w_bar)
        return SolveOutput(w=w_bar, mask=mask, log={"scope": p.scope} if p.scope != "global" else {})
