"""`sap`: Sparsity-informed Adaptive Pruning (Diao et al., ICLR 2023), prune–rewind–retrain.

After each training, every group g of the scope (global / layer / neuron) with d_g surviving
weights gets its PQ index I_g = I_{p,q}(surviving w_g), its keep bound and its prune count

    r_g = d_g · (1 + η_r)^{−q/(q−p)} · [1 − I_g]^{qp/(q−p)}
    c_g = floor(d_g · min(γ · (1 − ceil(r_g)/d_g), β)),  clamped at 0,

and the c_g surviving weights of smallest |w| in g are pruned; then all weights rewind to w_0 ⊙ m
and train again (see `iterative.py` for the loop and the stopping rules). A sparse, compressible
model (large I) is pruned hard; a model whose surviving weights are near-uniform in magnitude
(I → 0) is left alone, so the rule finds its own stopping point. A group whose survivors are all
exactly zero has no defined I and is not pruned further.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field, model_validator

from ..pqi import keep_bound, pq_index_groups, prune_count
from .base import PRUNERS
from .iterative import IterativeParams, IterativePruner


@PRUNERS.register("sap")
class SapPruner(IterativePruner):
    """Prune by the PQ-index bound each iteration; rewind to w_0 and retrain."""

    class Params(IterativeParams):
        p: float = Field(0.5, gt=0, description="PQ index order p of the rule (0 < p < q)")
        q: float = Field(1.0, gt=0, description="PQ index order q of the rule (q > p, finite)")
        eta_r: float = Field(0.0, ge=0, description="η_r ≥ 0: allowed relative tail mass; larger keeps fewer")
        gamma: float = Field(1.0, gt=0, description="γ > 0: scale of the prune step (1 = prune to the bound)")
        beta: float = Field(
            0.9, gt=0, le=1, description="β ∈ (0, 1]: most fraction of a group's survivors pruned in one step"
        )

        @model_validator(mode="after")
        def _p_below_q(self) -> "SapPruner.Params":
            if not self.p < self.q:
                raise ValueError(f"p must be smaller than q, got p={self.p}, q={self.q}")
            if not math.isfinite(self.q):
                raise ValueError("q must be finite")
            return self

    def _group_prune_counts(
        self, w: torch.Tensor, mask: torch.Tensor, gid: torch.Tensor, n_groups: int
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        prm = self.params
        index = pq_index_groups(w, gid, n_groups, prm.p, prm.q, mask)
        survivors = torch.bincount(gid[mask], minlength=n_groups)
        counts = torch.zeros(n_groups, dtype=torch.int64)
        bounds: list[float | None] = []
        for g in range(n_groups):
            d_g, i_g = int(survivors[g]), float(index[g])
            if d_g == 0 or math.isnan(i_g):
                bounds.append(None)
                continue
            r_g = keep_bound(d_g, i_g, prm.p, prm.q, prm.eta_r)
            bounds.append(r_g)
            counts[g] = prune_count(d_g, r_g, prm.gamma, prm.beta)
        extra: dict[str, Any] = {}
        if prm.scope == "global":
            extra = {"rule_pqi": None if math.isnan(float(index[0])) else float(index[0]), "keep_bound": bounds[0]}
        elif prm.scope == "layer":
            extra = {
                "rule_pqi": [None if math.isnan(float(v)) else float(v) for v in index],
                "keep_bound": bounds,
            }
        return counts, extra
