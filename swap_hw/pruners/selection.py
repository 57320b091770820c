"""The one survivor selection: which weights stay, per group of a scope.

A scope splits the flat weight vector (layout order) into contiguous groups:

    global  one group, all d prunable weights
    layer   one group per weight tensor
    neuron  one group per output unit: a Linear row, a Conv output filter (contiguous in memory)

Survivors are chosen inside each group, never across groups. Two selections use that grouping:
`Budget` keeps exactly k_g entries of largest |v| per group (the hard threshold H_k of the
one-shot pruners: magnitude, lr, swap, woodfisher), and `prune_smallest` removes c_g surviving
entries of smallest |w| per group (the prune step of the iterative pruners, sap and lottery).
Ties always go to the lower flat index, so a selection is a function of its inputs alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ParameterError
from ..layout import Layout

SCOPES = ("global", "layer", "neuron")


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


def scope_ranges(layout: Layout, scope: str) -> list[tuple[int, int]]:
    """The (start, stop) of every group of `scope`, in flat order, covering 0..d."""
    if scope == "global":
        return [(0, layout.d)]
    if scope == "layer":
        return [(s.offset, s.stop) for s in layout.slices]
    if scope == "neuron":
        out = []
        for s in layout.slices:
            per = s.numel // s.shape[0] if s.shape and s.shape[0] else s.numel
            out.extend((start, start + per) for start in range(s.offset, s.stop, max(per, 1)))
        return out
    raise ParameterError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")


def scope_groups(layout: Layout, scope: str) -> tuple[torch.Tensor, int]:
    """(group id of each flat weight, number of groups) for a scope."""
    ranges = scope_ranges(layout, scope)
    sizes = torch.tensor([stop - start for start, stop in ranges], dtype=torch.int64)
    return torch.arange(len(ranges), dtype=torch.int64).repeat_interleave(sizes), len(ranges)


@dataclass(frozen=True)
class Budget:
    """Where the k survivors may sit: one top-k per group (start, stop, k) of the flat vector."""

    groups: tuple[tuple[int, int, int], ...]

    @classmethod
    def make(cls, layout: Layout, k: int, sparsity: float, scope: str) -> "Budget":
        """Global: one group (0, d, k). Otherwise each group keeps kept_count(size, sparsity)."""
        if scope == "global":
            return cls(((0, layout.d, int(k)),))
        return cls(tuple((a, b, kept_count(b - a, sparsity)) for a, b in scope_ranges(layout, scope)))

    @property
    def kept(self) -> int:
        return sum(k for _, _, k in self.groups)

    @property
    def keeps_all(self) -> bool:
        return all(k >= stop - start for start, stop, k in self.groups)

    def mask(self, v: torch.Tensor) -> torch.Tensor:
        """Bool mask of H_k(v): exactly k per group, largest |v|, ties to the lower index."""
        out = torch.zeros(v.numel(), dtype=torch.bool)
        for start, stop, k in self.groups:
            out[start:stop] = hard_threshold_mask(v[start:stop], k)
        return out

    def mask_scores(self, e: torch.Tensor) -> torch.Tensor:
        """The same selection from per-weight scores e ≥ 0 (e.g. OBS saliencies): top-k of e per group."""
        return self.mask(e)

    def tau_c(self, w: torch.Tensor, b: torch.Tensor, support: torch.Tensor) -> float:
        """The largest τ ≥ 0 for which the top-k support of w − τb is still `support` (per group).

        Needs w zero off the support. For i ∈ S, |w_i − τ b_i| first meets τ·max_{j∉S}|b_j| at
        τ_i = |w_i| / (b_i sign(w_i) + m) when that denominator is positive (never otherwise).
        """
        tau = math.inf
        for start, stop, _ in self.groups:
            s = support[start:stop]
            bb = b[start:stop]
            off = bb[~s]
            m = float(off.abs().max()) if off.numel() else 0.0
            wi, bi = w[start:stop][s], bb[s]
            denom = bi * torch.sign(wi) + m
            ok = denom > 0
            if bool(ok.any()):
                tau = min(tau, float((wi.abs()[ok] / denom[ok]).min()))
        return tau


def prune_smallest(
    w: torch.Tensor, mask: torch.Tensor, gid: torch.Tensor, counts: torch.Tensor
) -> torch.Tensor:
    """New mask: in each group g, the counts[g] surviving entries of smallest |w| are removed.

    Ties go to the lower flat index. counts[g] must not exceed group g's survivors.
    """
    # Sort by |w| with non-survivors last, then (stably) by group: within each group the survivors
    # come first in increasing |w|, so an entry is pruned when its rank in its group < counts[g].
    score = torch.where(mask, w.abs().to(torch.float64), torch.full((), math.inf, dtype=torch.float64))
    by_score = torch.sort(score, stable=True).indices
    order = by_score[torch.sort(gid[by_score], stable=True).indices]
    group_sizes = torch.bincount(gid, minlength=counts.numel())
    starts = torch.cumsum(group_sizes, 0) - group_sizes
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    rank = rank - starts[gid]
    return mask & ~(rank < counts[gid])


def cut_counts(counts: torch.Tensor, total: int) -> torch.Tensor:
    """Shrink per-group counts so they sum to exactly `total` (< their sum), proportionally.

    Largest-remainder rounding: floor(c_g·total/Σc), then the leftover units go to the groups with
    the largest fractional parts (lower group index first on ties); no group exceeds its c_g.
    """
    counts = counts.to(torch.int64)
    whole = int(counts.sum())
    if total >= whole:
        return counts
    exact = counts.to(torch.float64) * total / whole
    base = torch.floor(exact).to(torch.int64)
    leftover = total - int(base.sum())
    frac = exact - base.to(torch.float64)
    order = torch.sort(-frac, stable=True).indices
    base[order[:leftover]] += 1
    return base
