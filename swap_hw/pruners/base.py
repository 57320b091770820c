"""Pruners: (reference weights, gradients, sparsity) → PruneResult. Pure: nothing is mutated.

Contract: ``pruner.prune(weights, grads, sparsity) -> PruneResult`` where `weights` maps parameter
names to tensors (the layout's prunable weights), `grads` is a GradientSet (None is allowed only
for pruners with ``needs_gradients = False``) and `sparsity` s ∈ [0, 1) is the fraction of weights
set to zero: k = floor(d·(1 − s)) survive.

The base class fixes the pipeline — validate, flatten, call the `_solve` hook, check the support,
unflatten, log — so members implement only `_solve(w_bar, grads, k, layout) -> SolveOutput`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch

from ..component import Component
from ..errors import ParameterError
from ..gradients.base import GradientSet
from ..layout import Layout
from ..pqi import DEFAULT_P, DEFAULT_Q, pqi_log
from ..registry import Registry

PRUNERS: Registry["Pruner"] = Registry("pruner")


@dataclass
class PruneResult:
    """The outcome of one pruning call.

    masks:   name → bool tensor, True where the weight survives.
    weights: name → float tensor, the new weights, already zero wherever the mask is False.
    log:     per-layer sparsity and PQI before/after ("layers"), global PQI before/after ("pqi"),
             solver stages (objective, step, time), warnings, total time.
    """

    masks: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor]
    log: dict[str, Any] = field(default_factory=dict)
    # Non-parameter state of a RETRAINED network (BatchNorm running statistics), name → tensor, to
    # load next to `weights`; empty for one-shot pruners, which leave buffers as they were.
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def sparsity(self) -> float:
        total = sum(m.numel() for m in self.masks.values())
        kept = sum(int(m.sum()) for m in self.masks.values())
        return 1.0 - kept / total if total else 0.0


@dataclass
class SolveOutput:
    """What a pruner's `_solve` hook returns: the flat new weights and their support."""

    w: torch.Tensor  # (d,) new weights; entries outside `mask` are ignored (set to 0 by the base)
    mask: torch.Tensor  # (d,) bool support
    log: dict[str, Any] = field(default_factory=dict)


def kept_count(d: int, sparsity: float) -> int:
    """k = floor(d·(1 − s)): the number of surviving weights at sparsity s."""
    # The tiny epsilon keeps e.g. d=100, s=0.7 from flooring 30.000000000000004 → 29.999… → 29.
    return int(math.floor(d * (1.0 - sparsity) + 1e-9))


def hard_threshold_mask(v: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask keeping exactly the k entries of largest |v|; ties go to the lower index."""
    mask = torch.zeros(v.numel(), dtype=torch.bool)
    if k <= 0:
        return mask
    order = torch.sort(v.abs().reshape(-1), descending=True, stable=True).indices
    mask[order[:k]] = True
    return mask


def hard_threshold(v: torch.Tensor, k: int) -> torch.Tensor:
    """H_k(v): v with all but its k largest-magnitude entries set to zero (exactly k kept)."""
    return torch.where(hard_threshold_mask(v, k), v, torch.zeros_like(v))


def check_sparsity(sparsity: float) -> float:
    if not (isinstance(sparsity, (int, float)) and 0.0 <= float(sparsity) < 1.0):
        raise ParameterError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    return float(sparsity)


def result_pqi_log(
    layout: Layout,
    w_before: torch.Tensor,
    w_after: torch.Tensor,
    mask: torch.Tensor,
    masks: Mapping[str, torch.Tensor],
) -> dict[str, Any]:
    """The "layers" and "pqi" entries of a PruneResult log.

    layers: one dict per pruned tensor: name, size, sparsity, pqi_before (over the dense reference
            weights), pqi_after (over the surviving weights; None if none of them is non-zero).
    pqi:    {"p", "q", "global_before", "global_after"} with the defaults p = 0.5, q = 1.
    """
    summary, per_layer = pqi_log(layout, w_before, w_after, mask, DEFAULT_P, DEFAULT_Q)
    layers = [
        {
            "name": s.name,
            "size": s.numel,
            "sparsity": 1.0 - float(masks[s.name].sum()) / s.numel,
            "pqi_before": per_layer[s.name]["before"],
            "pqi_after": per_layer[s.name]["after"],
        }
        for s in layout.slices
    ]
    return {"layers": layers, "pqi": summary}


class Pruner(Component):
    """Base of all pruners; members implement `_solve`."""

    needs_gradients: ClassVar[bool] = True

    def prune(
        self,
        weights: Mapping[str, torch.Tensor],
        grads: GradientSet | None,
        sparsity: float,
    ) -> PruneResult:
        sparsity = check_sparsity(sparsity)
        if grads is not None:
            layout = grads.layout
        else:
            if self.needs_gradients:
                raise ParameterError(f"pruner {self.name!r} needs a GradientSet, got None")
            layout = Layout.from_shapes((n, tuple(t.shape)) for n, t in weights.items())
        w_bar = layout.flatten(weights)
        k = kept_count(layout.d, sparsity)
        start = time.perf_counter()
        out = self._solve(w_bar.clone(), grads, k, layout)
        seconds = time.perf_counter() - start
        mask = out.mask.reshape(-1).to(torch.bool)
        if int(mask.sum()) != k and out.log.get("scope", "global") == "global":
            raise RuntimeError(f"{self.name} kept {int(mask.sum())} weights, expected exactly {k}")
        w = torch.where(mask, out.w.reshape(-1).float(), torch.zeros(()))
        masks = {n: m.clone() for n, m in layout.unflatten(mask).items()}
        new_weights = {n: t.clone() for n, t in layout.unflatten(w).items()}
        log = {
            "pruner": self.describe(),
            "sparsity_target": sparsity,
            "kept": int(mask.sum()),
            "d": layout.d,
            "seconds": seconds,
            **result_pqi_log(layout, w_bar, w, mask, masks),
            **out.log,
        }
        return PruneResult(masks=masks, weights=new_weights, log=log)

    def _solve(
        self, w_bar: torch.Tensor, grads: GradientSet | None, k: int, layout: Layout
    ) -> SolveOutput:
        raise NotImplementedError
