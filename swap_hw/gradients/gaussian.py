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

Draws come from a torch.Generator seeded by the cell's seed: same seed → identical X. Row i draws
from its own generator (seed derived from the cell's seed and i), so any block of rows can be
regenerated alone: the matrix-free GradientSet (matrix_free.py) adds bit-identical noise chunk by
chunk without ever holding X (`perturb_operator`).
"""

from __future__ import annotations

import torch
from pydantic import Field

from ..registry import Params
from ..seeding import derive_seed, torch_generator
from .base import GRADIENT_SOURCES, GradientSource


def add_gaussian_gradient_noise(
    X: torch.Tensor, std: float, prop: float, seed: int, chunk_rows: int = 256
) -> tuple[torch.Tensor, int]:
    """(X̃, m): X with the noise above added on m = round(prop·d) random coordinates per row.

    X is (n, d) float; it is not modified. Work memory is chunk_rows·d floats beyond X̃.
    """
    n, d = X.shape
    m = noisy_count(d, prop)
    out = X.clone()
    if m == 0 or std == 0.0:
        return out, m
    for start in range(0, n, chunk_rows):
        rows = out[start : start + chunk_rows]
        scale = std * rows.std(dim=1, correction=0, keepdim=True)
        idx, xi = gaussian_noise_draws(seed, start, start + rows.shape[0], d, m, device=rows.device)
        rows.scatter_add_(1, idx, xi.to(rows.dtype) * scale)
    return out, m


def noisy_count(d: int, prop: float) -> int:
    """m = round(prop·d) noisy coordinates per row, at least 1 when d ≥ 1."""
    return min(d, max(1, int(round(prop * d)))) if d else 0


def gaussian_noise_draws(seed: int, start: int, stop: int, d: int, m: int,
                         device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(index, ξ), each (stop−start, m): the noisy coordinates and standard-normal draws of rows
    start..stop−1, on `device`. Row i uses only its own generator, seeded by
    derive_seed(seed, "row", i). Drawn on the CPU whatever `device` is, then moved: a CUDA
    generator gives other numbers for the same seed, and the noise must not depend on the device."""
    index = torch.empty((stop - start, m), dtype=torch.long, device="cpu")
    xi = torch.empty((stop - start, m), dtype=torch.float32, device="cpu")
    for r, i in enumerate(range(start, stop)):
        gen = torch_generator(derive_seed(seed, "row", i))
        # m smallest of d uniform keys = a uniform m-subset, fresh per row.
        index[r] = torch.rand(d, generator=gen, device="cpu").topk(m, largest=False).indices
        xi[r] = torch.randn(m, generator=gen, device="cpu")
    return index.to(device), xi.to(device)


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

    def perturb_operator(self, operator, seed: int, provenance: dict):
        """The same noise as `perturb`, as an operator X + N whose rows are redrawn per chunk."""
        from .matrix_free import SparseRowNoise, row_statistics

        seed, d = derive_seed(seed, "gaussian"), operator.d
        m = noisy_count(d, self.params.prop)
        provenance["noisy_fraction"] = m / d if d else 0.0
        provenance["noisy_per_row"] = m
        if m == 0 or self.params.std == 0.0:
            provenance["noise_to_signal"] = 0.0
            return operator
        sigma, sq_norm = row_statistics(operator)
        scale = self.params.std * sigma

        def draw(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
            idx, xi = gaussian_noise_draws(seed, start, stop, d, m, device=scale.device)
            return idx, xi * scale[start:stop, None]

        noisy = SparseRowNoise(operator, draw, per_row=m)
        noise_sq = sum(float(v.pow(2).sum()) for _, _, _, v in noisy.noise_blocks())
        ref = float(sq_norm.sum()) ** 0.5
        provenance["noise_to_signal"] = noise_sq**0.5 / ref if ref > 0 else 0.0
        return noisy
