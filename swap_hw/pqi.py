"""The PQ Index (PQI): a sparsity measure of a weight vector, and the keep bound derived from it.

Source: Diao et al., "Pruning Deep Neural Networks from a Sparsity Perspective", ICLR 2023.
For 0 < p < q and a non-zero w ∈ R^d (dimensionless, the weights' units cancel):

    I_{p,q}(w) = 1 − d^{1/q − 1/p} · ‖w‖_p / ‖w‖_q = 1 − M_p(|w|) / M_q(|w|),
    M_r(|w|)   = ((1/d) Σ_i |w_i|^r)^{1/r}                       (power mean of order r)

Range 0 ≤ I ≤ 1 − d^{1/q − 1/p}: 0 when every |w_i| is equal, the upper end with exactly one
non-zero. Larger means sparser (more compressible). I is scale invariant, clone invariant
(I(w) = I([w, w])) and rises when a zero is appended. Undefined for the all-zero vector, where this
module raises `ParameterError` (the vector functions) or reports "undefined" (None / NaN in the
per-layer and per-neuron functions, documented on each).

PQI is always computed over the SURVIVING entries of a mask (d = their count); a surviving entry
whose value is exactly zero still counts. Defaults p = 0.5, q = 1; the paper's second setting is
p = 1, q = 2.

Keep bound (the paper's theorem, η_r ≥ 0 the allowed relative tail mass, r in weights):

    r = d · (1 + η_r)^{−q/(q−p)} · [1 − I]^{qp/(q−p)}       (p = 0.5, q = 1, η_r = 0: r/d = 1 − I)

Prune count over d_t surviving weights, γ > 0 a step scale, β ∈ (0, 1] a cap on the fraction:

    c_t = floor(d_t · min(γ · (1 − ceil(r_t)/d_t), β)),  clamped at 0.

`auto_sparsity` turns that count into a sparsity target for any pruner (``sparsity: auto``): this
is swap_hw's own extension (one PQI step on the dense weights, global scope), not part of the paper.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from .errors import ParameterError

DEFAULT_P = 0.5
DEFAULT_Q = 1.0

# Relative rounding slack for floor()/ceil(): γ·(d − ceil r) and r are often integers computed in
# floating point (e.g. 0.9·100 = 90.00000000000001, 0.7·100 = 70.00000000000001); without it
# ceil/floor would be off by one.
_FLOOR_SLACK = 1e-9


def check_pq(p: float, q: float) -> tuple[float, float]:
    """Validate 0 < p < q < ∞ and return them as floats."""
    try:
        p, q = float(p), float(q)
    except (TypeError, ValueError):
        raise ParameterError(f"PQI needs numeric p and q, got p={p!r}, q={q!r}") from None
    if not (math.isfinite(p) and math.isfinite(q)):
        raise ParameterError(f"PQI needs finite p and q, got p={p}, q={q}")
    if p <= 0:
        raise ParameterError(f"PQI needs p > 0, got p={p}")
    if p >= q:
        raise ParameterError(f"PQI needs p < q, got p={p}, q={q}")
    return p, q


def pq_index_groups(
    w: torch.Tensor,
    group_ids: torch.Tensor,
    n_groups: int,
    p: float = DEFAULT_P,
    q: float = DEFAULT_Q,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """I_{p,q} of every group of entries of the flat vector `w`, in one vectorised pass.

    w:         (d,) values.
    group_ids: (d,) int64 in [0, n_groups): which group each entry belongs to.
    mask:      (d,) bool, True = surviving; only surviving entries count (None = all survive).
    Returns a float64 tensor (n_groups,) with values in [0, 1 − d_g^{1/q−1/p}], and NaN for a
    group that has no surviving entry or whose surviving entries are all zero (I undefined there).
    """
    p, q = check_pq(p, q)
    a = w.detach().reshape(-1).to(torch.float64).abs()
    gid = group_ids.reshape(-1).to(torch.int64)
    if gid.numel() != a.numel():
        raise ParameterError(f"group_ids has {gid.numel()} entries, w has {a.numel()}")
    if not bool(torch.isfinite(a).all()):
        raise ParameterError("PQI of a vector containing NaN or infinity is undefined")
    alive = torch.ones_like(a, dtype=torch.bool) if mask is None else mask.reshape(-1).to(torch.bool)
    if alive.numel() != a.numel():
        raise ParameterError(f"mask has {alive.numel()} entries, w has {a.numel()}")
    a = torch.where(alive, a, torch.zeros((), dtype=torch.float64))
    count = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, gid, alive.to(torch.float64))
    # Divide by each group's largest magnitude first: the ratio is scale invariant, and this keeps
    # |w|^q from under/overflowing for tiny or huge weights.
    amax = torch.zeros(n_groups, dtype=torch.float64).scatter_reduce(0, gid, a, reduce="amax")
    defined = amax > 0
    scale = torch.where(defined, amax, torch.ones((), dtype=torch.float64))
    a_n = a / scale[gid]
    zero = torch.zeros((), dtype=torch.float64)
    s_p = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, gid, torch.where(alive, a_n**p, zero))
    s_q = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, gid, torch.where(alive, a_n**q, zero))
    n = torch.where(defined, count, torch.ones((), dtype=torch.float64))
    m_p = (s_p / n) ** (1.0 / p)
    m_q = (torch.where(defined, s_q, torch.ones((), dtype=torch.float64)) / n) ** (1.0 / q)
    index = 1.0 - m_p / m_q
    # The power-mean inequality bounds I to [0, 1 − n^{1/q−1/p}]; clamping only removes rounding.
    upper = 1.0 - n ** (1.0 / q - 1.0 / p)
    index = torch.minimum(torch.clamp(index, min=0.0), upper)
    return torch.where(defined, index, torch.full((), float("nan"), dtype=torch.float64))


def pq_index(
    w: torch.Tensor, p: float = DEFAULT_P, q: float = DEFAULT_Q, mask: torch.Tensor | None = None
) -> float:
    """I_{p,q}(w) over the entries of `w` where `mask` is True (all entries if mask is None).

    Raises ParameterError for p ≤ 0, p ≥ q, an empty or all-zero surviving vector, NaN or inf.
    """
    flat = w.reshape(-1)
    gid = torch.zeros(flat.numel(), dtype=torch.int64)
    value = float(pq_index_groups(flat, gid, 1, p, q, mask)[0])
    if math.isnan(value):
        raise ParameterError(
            "PQI of an all-zero (or empty) vector is undefined: no surviving non-zero weight"
        )
    return value


def _maybe(value: float) -> float | None:
    return None if math.isnan(value) else value


def pqi_global(
    weights: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor] | None = None,
    p: float = DEFAULT_P,
    q: float = DEFAULT_Q,
) -> float | None:
    """I_{p,q} of all named tensors concatenated (surviving entries only); None if undefined."""
    names = list(weights)
    if not names:
        return None
    flat = torch.cat([weights[n].detach().reshape(-1) for n in names])
    mask = None if masks is None else torch.cat([masks[n].reshape(-1).to(torch.bool) for n in names])
    gid = torch.zeros(flat.numel(), dtype=torch.int64)
    return _maybe(float(pq_index_groups(flat, gid, 1, p, q, mask)[0]))


def pqi_per_layer(
    weights: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor] | None = None,
    p: float = DEFAULT_P,
    q: float = DEFAULT_Q,
) -> dict[str, float | None]:
    """name → I_{p,q} of that tensor's surviving entries; None where a layer has none non-zero."""
    out: dict[str, float | None] = {}
    for name, t in weights.items():
        flat = t.detach().reshape(-1)
        mask = None if masks is None else masks[name].reshape(-1)
        gid = torch.zeros(flat.numel(), dtype=torch.int64)
        out[name] = _maybe(float(pq_index_groups(flat, gid, 1, p, q, mask)[0]))
    return out


def neuron_group_ids(shape: Sequence[int]) -> tuple[torch.Tensor, int]:
    """Group id of every entry of a weight tensor when grouped by output unit (dim 0).

    For a Linear weight (out, in) that is one group per output row; for a Conv weight
    (out, in, kh, kw) one group per output filter. Returns (ids of length numel, n_groups).
    """
    shape = tuple(int(s) for s in shape)
    n_out = shape[0] if shape else 1
    per = 1
    for s in shape[1:]:
        per *= s
    return torch.arange(n_out, dtype=torch.int64).repeat_interleave(per), n_out


def pqi_per_neuron(
    weights: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor] | None = None,
    p: float = DEFAULT_P,
    q: float = DEFAULT_Q,
) -> dict[str, torch.Tensor]:
    """name → float64 tensor (out_units,) of I_{p,q} per output row / filter; NaN where undefined."""
    out: dict[str, torch.Tensor] = {}
    for name, t in weights.items():
        gid, n_groups = neuron_group_ids(t.shape)
        mask = None if masks is None else masks[name].reshape(-1)
        out[name] = pq_index_groups(t.reshape(-1), gid, n_groups, p, q, mask)
    return out


def keep_bound(
    d: int | float, pqi: float, p: float = DEFAULT_P, q: float = DEFAULT_Q, eta_r: float = 0.0
) -> float:
    """r = d·(1+η_r)^{−q/(q−p)}·[1−I]^{qp/(q−p)}: how many of d weights the PQI says to keep."""
    p, q = check_pq(p, q)
    if eta_r < 0:
        raise ParameterError(f"eta_r must be ≥ 0, got {eta_r}")
    if not (0.0 <= pqi <= 1.0):
        raise ParameterError(f"a PQ index lies in [0, 1], got {pqi}")
    return float(d) * (1.0 + eta_r) ** (-q / (q - p)) * (1.0 - pqi) ** (q * p / (q - p))


def prune_count(d_t: int, r_t: float, gamma: float = 1.0, beta: float = 0.9) -> int:
    """c_t = floor(d_t · min(γ·(1 − ceil(r_t)/d_t), β)), clamped to [0, d_t].

    Evaluated as floor(min(γ·(d_t − ceil r_t), β·d_t)), the same number without the division.
    """
    if gamma <= 0:
        raise ParameterError(f"gamma must be > 0, got {gamma}")
    if not (0.0 < beta <= 1.0):
        raise ParameterError(f"beta must be in (0, 1], got {beta}")
    d_t = int(d_t)
    if d_t <= 0:
        return 0
    keep = math.ceil(r_t - _FLOOR_SLACK * max(1.0, abs(r_t)))
    raw = min(gamma * (d_t - keep), beta * d_t)
    return int(min(max(math.floor(raw + _FLOOR_SLACK * max(1.0, abs(raw))), 0), d_t))


def auto_sparsity(
    weights: Mapping[str, torch.Tensor],
    p: float = DEFAULT_P,
    q: float = DEFAULT_Q,
    eta_r: float = 0.0,
    gamma: float = 1.0,
    beta: float = 0.9,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> float:
    """The sparsity target one PQI step gives on the current weights (swap_hw's ``sparsity: auto``).

    This project's extension, not in the paper: PQI decides HOW MUCH to prune, the chosen pruner
    decides WHICH weights. Global scope: I = I_{p,q} over all surviving entries of `weights` (all
    entries if `masks` is None), r = keep_bound(d_s, I), c = prune_count(d_s, r); the target is
    (already pruned + c) / d_total, capped so that at least one weight survives (sparsity < 1).
    Raises ParameterError when the surviving weights are all zero.
    """
    names = list(weights)
    d_total = sum(weights[n].numel() for n in names)
    if d_total == 0:
        raise ParameterError("auto_sparsity needs at least one weight")
    flat = torch.cat([weights[n].detach().reshape(-1) for n in names])
    mask = None if masks is None else torch.cat([masks[n].reshape(-1).to(torch.bool) for n in names])
    d_s = d_total if mask is None else int(mask.sum())
    index = pq_index(flat, p, q, mask)
    c = prune_count(d_s, keep_bound(d_s, index, p, q, eta_r), gamma, beta)
    pruned = min((d_total - d_s) + c, d_total - 1)
    return pruned / d_total


def pqi_log(
    layout: Any,
    w_before: torch.Tensor,
    w_after: torch.Tensor,
    mask_after: torch.Tensor,
    p: float = DEFAULT_P,
    q: float = DEFAULT_Q,
) -> tuple[dict[str, Any], dict[str, dict[str, float | None]]]:
    """PQI of a pruning step, for PruneResult logs.

    before = over every entry of the dense reference vector `w_before` (flat, layout order);
    after  = over the entries of `w_after` where `mask_after` is True.
    Returns ({"p", "q", "global_before", "global_after"}, {layer name: {"before", "after"}}), with
    None wherever the index is undefined (no non-zero entry), so an emptied layer never crashes.
    """
    n = len(layout.slices)
    gid = torch.empty(layout.d, dtype=torch.int64)
    for i, s in enumerate(layout.slices):
        gid[s.offset : s.stop] = i
    everything = torch.zeros(layout.d, dtype=torch.int64)
    mask_after = mask_after.reshape(-1).to(torch.bool)
    layers_before = pq_index_groups(w_before, gid, n, p, q)
    layers_after = pq_index_groups(w_after, gid, n, p, q, mask_after)
    summary = {
        "p": float(p),
        "q": float(q),
        "global_before": _maybe(float(pq_index_groups(w_before, everything, 1, p, q)[0])),
        "global_after": _maybe(float(pq_index_groups(w_after, everything, 1, p, q, mask_after)[0])),
    }
    per_layer = {
        s.name: {"before": _maybe(float(layers_before[i])), "after": _maybe(float(layers_after[i]))}
        for i, s in enumerate(layout.slices)
    }
    return summary, per_layer
