"""`gaussian`: the SWAP paper's synthetic gradient noise (specs/swap.md §5).

For every per-sample gradient row g ∈ R^d (exact gradients, as from `clean`), a fresh random set
S of exactly m = round(prop·d) coordinates (uniform without replacement, independently per row;
at least 1 coordinate when d ≥ 1) receives Gaussian noise:

    g̃_j = g_j + std · σ(g) · ξ_j,   ξ_j ~ N(0, 1),  j ∈ S;   g̃_j = g_j otherwise,

with σ(g) = sqrt(mean_j (g_j − ḡ)²) the population standard deviation of the row's d
coordinates (so noise is relative to each row's own spread; a constant row gets no noise).
`std` ≥ 0 (paper: 1, 2, 4), `prop` ∈ (0, 1] (paper: 0.1, 0.25, 0.5, 1.0). Exactly-m (not
Bernoulli) selection makes the noisy fraction m/d identical for every row, which provenance
records as `noisy_fraction`, together with `noise_to_signal` = ‖G̃ − G‖_F / ‖G‖_F.

Draws come from a torch.Generator seeded by the cell's seed: same seed → identical X.
"""

from __future__ import annotations

import torch
from pydantic import Field

from ..component import Params
from ..seeding import derive_seed, torch_generator
from .base import GRADIENT_SOURCES, GradientSource


def add_gaussian_gradient_noise(
    X: torch.Tensor, std: float, prop: float, seed: int, chunk_rows: int = 256
) -> tuple[torch.Tensor, int]:
    """(X̃, m): X with the noise above added on m = round(prop·d) random coordinates per row.

    X is (n, d) float; it is not modified. Work memory is chunk_rows·d floats beyond X̃.
    """
    n, d = X.shape
    m = min(d, max(1, int(round(prop * d)))) if d else 0
    gen = torch_generator(seed)
    out = X.clone()
    if m == 0 or std == 0.0:
        return out, m
    for start in range(0, n, chunk_rows):
        rows = out[start : start + chunk_rows]
        scale = std * rows.std(dim=1, correction=0, keepdim=True)
        # m smallest of d uniform keys = a uniform m-subset, fresh per row.
        keys = torch.rand(rows.shape, generator=gen)
        idx = keys.topk(m, dim=1, largest=False).indices
        noise = torch.randn((rows.shape[0], m), generator=gen, dtype=rows.dtype) * scale
        rows.scatter_add_(1, idx, noise)
    return out, m


@GRADIENT_SOURCES.register("gaussian")
class GaussianSource(GradientSource):
    """Exact per-sample gradients plus the paper's std/prop Gaussian noise."""

    stochastic = True

    class Params(Params):
        std: float = Field(1.0, ge=0.0, description="noise std in units of each row's own std σ(g)")
        prop: float = Field(
            0.25, gt=0.0, le=1.0, description="fraction of each row's coordinates that get noise (exactly round(prop·d))"
        )

    def perturb(self, X: torch.Tensor, seed: int, provenance: dict) -> torch.Tensor:
        noisy, m = add_gaussian_gradient_noise(
            X, self.params.std, self.params.prop, derive_seed(seed, "gaussian")
        )
        d = X.shape[1]
        provenance["noisy_fraction"] = m / d if d else 0.0
        provenance["noisy_per_row"] = m
        ref = float(X.norm())
        provenance["noise_to_signal"] = float((noisy - X).norm()) / ref if ref > 0 else 0.0
        return noisy
