"""Structured sparsity: which patterns of survivors a mask may have, and the selection under them.

On a crossbar an isolated zero saves nothing — a tile is programmed, read and converted whole — so
a hardware engineer needs masks whose zeros come in shapes the hardware can skip. Every weight
tensor is seen as its crossbar matrix W ∈ R^{out×c} (swap_hw.tiles: c = in·∏kernel, row-major).
A `structure` setting (shared by magnitude, lr, swap and woodfisher; sap and lottery take the unit
structures, `remove_smallest_units`) constrains the mask:

    unstructured   any k weights (the default; selection.py's Budget)
    channel        whole output rows: a Linear row / a Conv output filter survives or goes whole
    block:RxC      R×C blocks of W from its top-left corner (edge blocks smaller) go whole
    tile:T         the tiles aihwkit makes for tile size T (swap_hw.tiles: balanced split) go whole,
                   so a pruned unit is exactly one crossbar tile that need not be programmed
    N:M            at most N survivors in every M consecutive weights of a row of W (along the
                   input dimension; a row's last group may be shorter and keeps at most N)

Selection. Every pruner reduces its choice to per-weight scores e_q ≥ 0 (|v_q|² for the IHT
projections of lr / swap and for magnitude, the OBS saliency ρ_q for woodfisher) and the structure
picks the survivors:

  units (channel, block, tile): a unit's score is Σ_{q∈u} e_q; the kept units are the K of largest
    score (ties → the lower unit index), K = floor(U·(1 − s)) over all U units (scope global) or
    per layer (scope layer). With e = |v|² this is the exact Euclidean projection of v onto "at most
    K units non-zero" (group hard thresholding), whatever the unit sizes. Every layer keeps at least
    its best unit, so no layer is cut off (a network with an empty layer has constant output).
    Units differ in size (edge blocks, rows of different layers), so the realised weight sparsity
    differs from s; the result's log reports both.
  N:M: the survivors are the k = floor(d·(1 − s)) largest e_q among those ranked < N in their
    group — the greedy of a partition matroid, so again the exact projection onto "≤ N per group
    of M, ≤ k in all" (or per layer). It needs s ≥ 1 − N/M (the pattern keeps at most N/M).

The IHT's support-keeping step bound τ_c (selection.Budget.tau_c) has no closed form for groups,
so structured budgets return 0 and the IHT starts its step search at the exact minimiser τ*.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import Field, field_validator

from ..errors import ParameterError
from ..layout import Layout
from ..registry import ADDED_LATER, Params
from ..tiles import matrix_shape, tile_grid
from .selection import Budget, kept_count

UNSTRUCTURED = "unstructured"
KINDS = ("unstructured", "channel", "block:RxC", "tile:T", "N:M")
_FORMS = "unstructured, channel, block:RxC (e.g. block:16x16), tile:T (e.g. tile:512) or N:M (e.g. 2:4)"


@dataclass(frozen=True)
class Structure:
    """A parsed `structure` setting; `str()` gives its canonical text (what describe() stores)."""

    kind: str  # "unstructured" | "channel" | "block" | "tile" | "n:m"
    a: int = 0  # block rows R | tile size T | N
    b: int = 0  # block columns C | M

    @classmethod
    def parse(cls, text: Any) -> "Structure":
        """Read one of the forms in the module docstring; ValueError naming the allowed forms."""
        if isinstance(text, Structure):
            return text
        if not isinstance(text, str):
            raise ValueError(f"structure must be text, one of {_FORMS}; got {text!r}")
        t = text.strip().lower().replace(" ", "")
        if t in ("unstructured", "channel"):
            return cls(t)
        if m := re.fullmatch(r"block:(\d+)x(\d+)", t):
            rows, cols = int(m.group(1)), int(m.group(2))
            if rows < 1 or cols < 1:
                raise ValueError(f"block sides must be ≥ 1, got {text!r}")
            return cls("block", rows, cols)
        if m := re.fullmatch(r"tile:(\d+)", t):
            if int(m.group(1)) < 1:
                raise ValueError(f"tile size must be ≥ 1, got {text!r}")
            return cls("tile", int(m.group(1)))
        if m := re.fullmatch(r"(\d+):(\d+)", t):
            n, mm = int(m.group(1)), int(m.group(2))
            if not 1 <= n < mm:
                raise ValueError(f"N:M needs 1 ≤ N < M, got {text!r}")
            return cls("n:m", n, mm)
        raise ValueError(f"structure must be one of {_FORMS}; got {text!r}")

    def __str__(self) -> str:
        if self.kind == "block":
            return f"block:{self.a}x{self.b}"
        if self.kind == "tile":
            return f"tile:{self.a}"
        if self.kind == "n:m":
            return f"{self.a}:{self.b}"
        return self.kind

    @property
    def unstructured(self) -> bool:
        return self.kind == UNSTRUCTURED

    @property
    def max_density(self) -> float:
        """The largest fraction of weights the pattern can keep (N/M for N:M, else 1)."""
        return self.a / self.b if self.kind == "n:m" else 1.0

    def check_sparsity(self, sparsity: float) -> None:
        """ParameterError if the pattern cannot reach `sparsity` (N:M keeps at most N/M)."""
        if self.kind == "n:m" and sparsity < 1.0 - self.max_density - 1e-9:
            raise ParameterError(
                f"structure {self} keeps at most {self.a} of every {self.b} weights, so sparsity must be "
                f"≥ {1.0 - self.max_density:g}; got {sparsity:g}"
            )

    def groups(self, layout: Layout) -> "Groups":
        """The grouping of the flat weight vector (layout order) this structure works on."""
        return Groups.build(self, layout)


@dataclass(frozen=True)
class Groups:
    """group id of every flat weight (units, or the N:M groups), the layer of every group, sizes."""

    structure: Structure
    gid: torch.Tensor  # (d,) int64
    layer: torch.Tensor  # (G,) int64: index of the layout slice each group belongs to
    size: torch.Tensor  # (G,) int64: weights per group

    @classmethod
    def build(cls, structure: Structure, layout: Layout) -> "Groups":
        ids, layers, sizes = [], [], []
        next_id = 0
        for li, s in enumerate(layout.slices):
            rows, cols = matrix_shape(s.shape)
            local = _local_groups(structure, rows, cols)  # (rows, cols) int64, 0..g-1 in first-seen order
            count = int(local.max()) + 1 if local.numel() else 0
            ids.append(local.reshape(-1) + next_id)
            layers.append(torch.full((count,), li, dtype=torch.int64))
            sizes.append(torch.bincount(local.reshape(-1), minlength=count))
            next_id += count
        cat = lambda xs: torch.cat(xs) if xs else torch.zeros(0, dtype=torch.int64)  # noqa: E731
        return cls(structure, cat(ids), cat(layers), cat(sizes))

    @property
    def count(self) -> int:
        return int(self.size.numel())


def _local_groups(structure: Structure, rows: int, cols: int) -> torch.Tensor:
    """Group index of every cell of one rows×cols crossbar matrix, numbered in first-seen
    (row-major) order; for N:M, group = (row, column // M)."""
    r = torch.arange(rows, dtype=torch.int64).reshape(-1, 1)
    c = torch.arange(cols, dtype=torch.int64).reshape(1, -1)
    kind = structure.kind
    if kind == "channel":
        raw = r.expand(rows, cols)
    elif kind == "n:m":
        per_row = -(-cols // structure.b)
        raw = r * per_row + c // structure.b
    elif kind == "block":
        per_row = -(-cols // structure.b)
        raw = (r // structure.a) * per_row + c // structure.b
    elif kind == "tile":
        raw = torch.empty((rows, cols), dtype=torch.int64)
        for i, t in enumerate(tile_grid((rows, cols), structure.a)):
            raw[t.row_start:t.row_stop, t.col_start:t.col_stop] = i
    else:
        raise AssertionError(f"no groups for {kind!r}")
    # renumber in order of first appearance so ids are dense and follow the flat order
    flat = raw.reshape(-1)
    first = torch.full((int(flat.max()) + 1 if flat.numel() else 0,), -1, dtype=torch.int64)
    order = torch.arange(flat.numel(), dtype=torch.int64)
    first.scatter_reduce_(0, flat, order, reduce="amin", include_self=False)
    present = first >= 0
    rank = torch.empty_like(first)
    rank[present] = torch.argsort(torch.argsort(first[present]))
    return rank[flat].reshape(rows, cols)


@dataclass
class StructuredBudget:
    """The Budget interface (mask, tau_c, kept, keeps_all) under a structure other than unstructured."""

    groups: Groups
    sparsity: float
    scope: str
    k: int  # the nominal weight budget floor(d·(1 − s)) (N:M uses it; unit structures report it)
    _unit_keep: torch.Tensor | None = field(default=None, repr=False)

    @classmethod
    def make(cls, layout: Layout, k: int, sparsity: float, scope: str, structure: Structure) -> "StructuredBudget":
        if scope not in ("global", "layer"):
            raise ParameterError(f"structured selection takes scope global or layer, got {scope!r}")
        structure.check_sparsity(sparsity)
        return cls(structure.groups(layout), float(sparsity), scope, int(k))

    @property
    def structure(self) -> Structure:
        return self.groups.structure

    @property
    def kept(self) -> int:
        return self.k

    @property
    def keeps_all(self) -> bool:
        return self.sparsity <= 0.0

    def tau_c(self, w: torch.Tensor, b: torch.Tensor, support: torch.Tensor) -> float:
        """The largest τ ≥ 0 for which the kept units of w − τb are still those of `support`.

        Units: a kept unit i (w zero off the support) first ties the best pruned unit of its scope,
        m = max_{j pruned} ‖b_j‖, where ‖w_i − τb_i‖² = τ²m², i.e. at the smallest positive root of
        (‖b_i‖² − m²)τ² − 2⟨w_i, b_i⟩τ + ‖w_i‖² = 0 (for one-weight units this is selection.Budget's
        |w_i| / (b_i·sign(w_i) + m)). N:M: 0 (no closed form; the IHT then starts at τ*)."""
        if self.structure.kind == "n:m":
            return 0.0
        g = self.groups
        w64, b64 = w.reshape(-1).to(torch.float64), b.reshape(-1).to(torch.float64)
        zeros = lambda: torch.zeros(g.count, dtype=torch.float64)  # noqa: E731
        bb = zeros().index_add_(0, g.gid, b64 * b64)
        wb = zeros().index_add_(0, g.gid, w64 * b64)
        ww = zeros().index_add_(0, g.gid, w64 * w64)
        kept = torch.zeros(g.count, dtype=torch.bool).index_fill_(0, g.gid[support.reshape(-1)], True)
        b_norm = torch.where(kept, torch.zeros((), dtype=torch.float64), bb.sqrt())
        if self.scope == "global":
            m = b_norm.max().expand(g.count) if g.count else b_norm
        else:
            layers = int(g.layer.max()) + 1
            per_layer = torch.zeros(layers, dtype=torch.float64).scatter_reduce_(0, g.layer, b_norm, reduce="amax")
            m = per_layer[g.layer]
        a, lin, c = bb - m * m, -2.0 * wb, ww
        tau = torch.full((g.count,), float("inf"), dtype=torch.float64)
        disc = lin * lin - 4.0 * a * c
        real = kept & (c > 0) & (disc >= 0)
        root = disc.clamp(min=0).sqrt()
        # the two roots in the cancellation-free form: q = −(lin + sign(lin)·√disc)/2, roots q/a and c/q
        q = -0.5 * (lin + torch.where(lin >= 0, root, -root))
        for r in (q / a, c / q):
            ok = real & torch.isfinite(r) & (r > 0)
            tau = torch.where(ok, torch.minimum(tau, r), tau)
        return float(tau.min()) if g.count else float("inf")

    def mask(self, v: torch.Tensor) -> torch.Tensor:
        """The survivors of the projection of v: scores e = v²."""
        v64 = v.reshape(-1).to(torch.float64)
        return self.mask_scores(v64 * v64)

    def mask_scores(self, e: torch.Tensor) -> torch.Tensor:
        """Bool mask of the survivors for per-weight scores e ≥ 0 (module docstring)."""
        e = e.reshape(-1).to(torch.float64)
        g = self.groups
        if self.structure.kind == "n:m":
            return self._n_of_m(e)
        score = torch.zeros(g.count, dtype=torch.float64).index_add_(0, g.gid, e)
        keep_unit = torch.zeros(g.count, dtype=torch.bool)
        layers = int(g.layer.max()) + 1 if g.count else 0
        # every layer's best unit first (ties → lower unit index), so no layer is emptied
        order = _descending(score)
        position = torch.empty_like(order)
        position[order] = torch.arange(order.numel())
        first = torch.full((layers,), g.count, dtype=torch.int64)
        first.scatter_reduce_(0, g.layer, position, reduce="amin")
        keep_unit[order[first]] = True
        if self.scope == "global":
            budgets = [(torch.ones(g.count, dtype=torch.bool), kept_count(g.count, self.sparsity))]
        else:
            budgets = [(g.layer == li, kept_count(int((g.layer == li).sum()), self.sparsity)) for li in range(layers)]
        for members, quota in budgets:
            quota -= int((keep_unit & members).sum())
            if quota <= 0:
                continue
            candidates = order[(members & ~keep_unit)[order]]
            keep_unit[candidates[:quota]] = True
        return keep_unit[g.gid]

    def _n_of_m(self, e: torch.Tensor) -> torch.Tensor:
        """≤ N per group, the k largest of the eligible (rank < N in their group), per scope."""
        g = self.groups
        n = self.structure.a
        order = _descending(e)
        # rank of each weight inside its group, by descending score (stable: lower index first)
        by_group = order[torch.sort(g.gid[order], stable=True).indices]
        starts = torch.cumsum(g.size, 0) - g.size
        rank = torch.empty_like(by_group)
        rank[by_group] = torch.arange(by_group.numel())
        rank = rank - starts[g.gid]
        eligible = rank < n
        keep = torch.zeros_like(eligible)
        weight_layer = g.layer[g.gid]
        if self.scope == "global":
            scopes = [(torch.ones_like(eligible), self.k)]
        else:
            layers = int(g.layer.max()) + 1 if g.count else 0
            scopes = [(weight_layer == li, kept_count(int((weight_layer == li).sum()), self.sparsity))
                      for li in range(layers)]
        for members, quota in scopes:
            candidates = order[(members & eligible)[order]]
            keep[candidates[:quota]] = True
        return keep


def _descending(score: torch.Tensor) -> torch.Tensor:
    """Indices by descending score, ties to the lower index."""
    return torch.sort(-score, stable=True).indices


def realised(structure: Structure, layout: Layout, mask: torch.Tensor) -> dict[str, Any]:
    """What a mask realises under `structure`, checked exactly: raises RuntimeError if any unit is
    partly kept or any N:M group keeps more than N. Returns {"structure", "units", "kept_units",
    "weight_sparsity"} (N:M: "groups", "max_kept_per_group" instead of units)."""
    mask = mask.reshape(-1).to(torch.bool)
    d = mask.numel()
    out: dict[str, Any] = {"structure": str(structure),
                           "weight_sparsity": 1.0 - float(mask.sum()) / d if d else 0.0}
    if structure.unstructured:
        return out
    g = structure.groups(layout)
    kept = torch.zeros(g.count, dtype=torch.int64).index_add_(0, g.gid, mask.to(torch.int64))
    if structure.kind == "n:m":
        worst = int(kept.max()) if g.count else 0
        if worst > structure.a:
            raise RuntimeError(f"mask keeps {worst} weights in a group of {structure.b}, more than {structure.a}")
        out.update(groups=g.count, max_kept_per_group=worst)
        return out
    partial = (kept > 0) & (kept < g.size)
    if bool(partial.any()):
        raise RuntimeError(f"mask keeps part of {int(partial.sum())} {structure.kind} units")
    out.update(units=g.count, kept_units=int((kept > 0).sum()))
    return out


def make_budget(layout: Layout, k: int, sparsity: float, scope: str, structure: Structure | str = UNSTRUCTURED):
    """The selection for one prune: selection.Budget when unstructured, else a StructuredBudget."""
    structure = Structure.parse(structure)
    if structure.unstructured:
        return Budget.make(layout, k, sparsity, scope)
    return StructuredBudget.make(layout, k, sparsity, scope, structure)


class StructureParams(Params):
    """The `structure` setting every one-shot pruner shares (module docstring of pruners/structure.py)."""

    structure: str = Field(
        UNSTRUCTURED, json_schema_extra=ADDED_LATER,
        description="pattern of the survivors: unstructured (default), channel (whole output rows), block:RxC, "
        "tile:T (the crossbar tiles aihwkit makes for tile size T) or N:M (≤ N of every M along the input "
        "dimension; sparsity ≥ 1 − N/M); see swap_hw/pruners/structure.py",
    )

    @field_validator("structure", mode="before")
    @classmethod
    def _canonical(cls, value: Any) -> str:
        return str(Structure.parse(value))


def remove_smallest_units(w: torch.Tensor, mask: torch.Tensor, groups: Groups, unit_scope: torch.Tensor,
                          counts: torch.Tensor) -> torch.Tensor:
    """The prune step of the iterative pruners (sap, lottery) under a unit structure: in each scope
    group g, surviving units are removed in increasing Σ_{q∈u} w_q² (ties → the lower unit index)
    until at least counts[g] weights are gone (a unit goes whole, so the last may overshoot); a
    layer's last surviving unit is never removed. `unit_scope`: the scope group of every unit."""
    if groups.structure.kind == "n:m":
        raise ParameterError("the iterative pruners take unit structures (channel, block, tile), not N:M")
    w64 = w.reshape(-1).to(torch.float64)
    alive = torch.zeros(groups.count, dtype=torch.bool).index_fill_(0, groups.gid[mask.reshape(-1)], True)
    score = torch.zeros(groups.count, dtype=torch.float64).index_add_(0, groups.gid, w64 * w64)
    layers = int(groups.layer.max()) + 1 if groups.count else 0
    left = torch.bincount(groups.layer[alive], minlength=layers)
    remove = torch.zeros(groups.count, dtype=torch.bool)
    removed = torch.zeros(int(counts.numel()), dtype=torch.int64)
    for u in _descending(-score).tolist():  # ascending score
        g, li = int(unit_scope[u]), int(groups.layer[u])
        if not alive[u] or removed[g] >= counts[g] or left[li] <= 1:
            continue
        remove[u] = True
        removed[g] += int(groups.size[u])
        left[li] -= 1
    return mask & ~remove[groups.gid]
