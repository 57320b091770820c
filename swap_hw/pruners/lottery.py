"""`lottery`: iterative magnitude pruning with rewinding to initialisation (lottery ticket).

Frankle & Carbin (ICLR 2019), as the SAP paper's baseline: after each training, every group g of
the scope (global by default) loses c_g = floor(rate · d_g) of its d_g surviving weights — those of
smallest |w| — then all weights rewind to w_0 ⊙ m and train again. Rounding is floor, so a group
with fewer than 1/rate survivors stops shrinking. After t steps at the default rate 0.2 the
remaining fraction is about 0.8^t (each step exactly floor'd on the current survivors).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from .base import PRUNERS
from .iterative import IterativeParams, IterativePruner


@PRUNERS.register("lottery")
class LotteryPruner(IterativePruner):
    """Prune a fixed fraction of the survivors each iteration; rewind to w_0 and retrain."""

    class Params(IterativeParams):
        rate: float = Field(
            0.2, gt=0, lt=1, description="fraction of each group's surviving weights pruned per iteration (floor)"
        )

    def _group_prune_counts(
        self, w: torch.Tensor, mask: torch.Tensor, gid: torch.Tensor, n_groups: int
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        survivors = torch.bincount(gid[mask], minlength=n_groups).to(torch.float64)
        # The relative slack keeps e.g. 0.2·1000 = 200.00000000000003 → 200 and 0.29·100 → 29.
        counts = torch.floor(survivors * self.params.rate * (1 + 1e-12) + 1e-9).to(torch.int64)
        return counts, {}
