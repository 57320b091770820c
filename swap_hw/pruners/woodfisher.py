"""`woodfisher`: Optimal Brain Surgeon with the empirical Fisher inverted by Woodbury (specs/swap.md §7).

Empirical Fisher of the n per-sample gradients (rows of X, n×d), dampened:

    F = XᵀX/n + δI                 (δ > 0, units of F: loss² per weight²; default 1e-3)

F⁻¹ never exists as a d×d matrix. Woodbury through the n×n system C = nδI + XXᵀ = LLᵀ:

    F⁻¹ = (1/δ)·(I − Xᵀ C⁻¹ X),        [F⁻¹]_qq = (1/δ)·(1 − ‖L⁻¹ x_q‖²)   (x_q = column q of X)

Score of weight q (the loss increase, to second order, of removing it alone and letting the others
compensate): ρ_q = w̄_q² / (2[F⁻¹]_qq); the d − k lowest scores are pruned (globally, or per layer).

OBS update for the pruned set P, all at once (exact multi-weight form):

    δw = −F⁻¹ E_P (E_Pᵀ F⁻¹ E_P)⁻¹ w̄_P         (then w_P = 0 exactly)

computed without any |P|×|P| or d×d matrix: with Z_P = L⁻¹ X_P, (E_Pᵀ F⁻¹ E_P) = (1/δ)(I − Z_PᵀZ_P)
and by Woodbury again (I − Z_PᵀZ_P)⁻¹ = I + Z_Pᵀ (I_n − Z_P Z_Pᵀ)⁻¹ Z_P, an n×n system whose
matrix L⁻¹ (X_P X_Pᵀ) L⁻ᵀ needs the Gram matrix of the pruned columns only. So the exact joint
update always fits (O(n²) memory, O(n²d) time, like the scores); no block-diagonal or iterative
approximation is used. It equals minimising (w − w̄)ᵀF(w − w̄) subject to w_P = 0, i.e. LR's
backsolve with λ = δ on the kept support.

X enters through `grads.xv` / `grads.xtu` and, for the Gram matrices, diag(F⁻¹) and the column
norms, through blocks of its columns whenever those are cheap (a dense X, or X spilled to disk:
one pass over the file each), else through row blocks and products (a recomputed, matrix-free X:
works, but slowly, about 3n products). Linear algebra in float64, products in X's float32.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from ..gradients.gradient_set import GradientSet
from ..layout import Layout
from .base import PRUNERS, Pruner, SolveOutput
from .structure import StructureParams, make_budget


class WoodburyFisher:
    """F = XᵀX/n + δI of a GradientSet, with F⁻¹ products, diag(F⁻¹) and the OBS update via the
    n×n Cholesky factor of C = nδI + XXᵀ. `block` = columns per streamed product."""

    def __init__(self, grads: GradientSet, delta: float, block: int = 256):
        if not (delta > 0 and math.isfinite(delta)):
            raise ValueError(f"delta must be a positive finite number, got {delta}")
        self.grads, self.delta, self.block = grads, float(delta), int(block)
        self.n, self.d = grads.n, grads.d
        self.dense_x = None if getattr(grads, "matrix_free", False) else grads.dense()
        self.cheap_columns = bool(getattr(grads, "cheap_columns", False))
        # column slabs of ≈ 32 MiB in float64 (n × width)
        self.slab_width = max(1, (1 << 22) // max(1, self.n))
        self.gram_all = self.gram(None)
        self.chol = torch.linalg.cholesky(self.gram_all + self.n * self.delta * torch.eye(self.n, dtype=torch.float64))

    # -- products with X ---------------------------------------------------------------------

    def _xv(self, v: torch.Tensor) -> torch.Tensor:
        return self.grads.xv(v.to(torch.float32)).to(torch.float64)

    def _xtu(self, u: torch.Tensor) -> torch.Tensor:
        return self.grads.xtu(u.to(torch.float32)).to(torch.float64)

    def gram(self, columns: torch.Tensor | None) -> torch.Tensor:
        """X_c X_cᵀ (n×n, float64) over the columns where the bool mask `columns` is True (all if None)."""
        if self.dense_x is not None:
            # float64: C = nδI + XXᵀ can be ill-conditioned (a few dominant rows, small δ) and its
            # Cholesky factor carries every later solve
            x = (self.dense_x if columns is None else self.dense_x[:, columns]).to(torch.float64)
            return x @ x.T
        if self.cheap_columns:  # X spilled to disk: one pass over it in column slabs
            out = torch.zeros((self.n, self.n), dtype=torch.float64)
            for start, stop, slab in self._slabs():
                x = slab if columns is None else slab[:, columns[start:stop]]
                out.addmm_(x, x.T)
            return 0.5 * (out + out.T)
        out = torch.empty((self.n, self.n), dtype=torch.float64)
        chunk = max(1, min(self.block, self.n))
        for start, stop, rows in self.grads.iter_rows(chunk):
            r = rows if columns is None else rows * columns.to(rows.dtype)
            out[:, start:stop] = self._xv(r.T.contiguous())  # X (rows)ᵀ: columns start..stop of the Gram
        return 0.5 * (out + out.T)

    def _slabs(self):
        """(start, stop, X[:, start:stop] in float64) over all d columns, ≈ 32 MiB each."""
        for start in range(0, self.d, self.slab_width):
            stop = min(start + self.slab_width, self.d)
            yield start, stop, self.grads.columns(start, stop).to(torch.float64)

    def _solve_c(self, u: torch.Tensor) -> torch.Tensor:
        """C⁻¹ u for u of shape (n,) or (n, m)."""
        u2 = u.reshape(self.n, -1)
        return torch.cholesky_solve(u2, self.chol).reshape(u.shape)

    def _l_inv(self, u: torch.Tensor) -> torch.Tensor:
        """L⁻¹ u for u of shape (n,) or (n, m)."""
        u2 = u.reshape(self.n, -1)
        return torch.linalg.solve_triangular(self.chol, u2, upper=False).reshape(u.shape)

    def _l_inv_t(self, u: torch.Tensor) -> torch.Tensor:
        """L⁻ᵀ u for u of shape (n,) or (n, m)."""
        u2 = u.reshape(self.n, -1)
        return torch.linalg.solve_triangular(self.chol.T, u2, upper=True).reshape(u.shape)

    # -- F⁻¹ -------------------------------------------------------------------------------------

    def inverse_times(self, v: torch.Tensor) -> torch.Tensor:
        """F⁻¹ v = (1/δ)(v − Xᵀ C⁻¹ X v) for v of length d (float64 result)."""
        v = v.to(torch.float64)
        return (v - self._xtu(self._solve_c(self._xv(v)))) / self.delta

    def inverse_diagonal(self) -> torch.Tensor:
        """[F⁻¹]_qq = (1/δ)(1 − ‖L⁻¹ x_q‖²), q = 1..d (float64).

        With cheap columns (dense or on-disk X): L⁻¹ applied to each column slab, squared norms
        summed per column. Otherwise ‖L⁻¹x_q‖² = Σ_r (Xᵀ L⁻ᵀ e_r)_q², accumulated over blocks of r:
        each block is one product Xᵀ U with U = L⁻ᵀ[:, block] (n×m).
        """
        if self.cheap_columns:
            norms = torch.empty(self.d, dtype=torch.float64)
            for start, stop, slab in self._slabs():
                z = self._l_inv(slab)
                norms[start:stop] = (z * z).sum(dim=0)
        else:
            l_inv_t = self._l_inv_t(torch.eye(self.n, dtype=torch.float64))
            norms = torch.zeros(self.d, dtype=torch.float64)
            for start in range(0, self.n, self.block):
                cols = self._xtu(l_inv_t[:, start : start + self.block].contiguous())
                norms += (cols.reshape(self.d, -1) ** 2).sum(dim=1)
        # 1 − ‖L⁻¹x_q‖² = δ[F⁻¹]_qq ≥ δ/(δ + ‖x_q‖²/n) > 0 in exact arithmetic; keep rounding from
        # making it zero or negative
        floor = self.delta / (self.delta + self.column_sq_norms() / self.n)
        return torch.maximum(1.0 - norms, 1e-3 * floor) / self.delta

    def column_sq_norms(self) -> torch.Tensor:
        if self.cheap_columns:  # dense or on-disk X: slab by slab, never a float64 copy of all of X
            # written into one preallocated vector: keeping a small tensor per slab grew resident
            # memory by about one slab per slab (the allocator could not give the slabs back),
            # 24 GiB and an OOM kill at MobileNetV1 size
            out = torch.empty(self.d, dtype=torch.float64)
            for start, stop, slab in self._slabs():
                out[start:stop] = (slab * slab).sum(dim=0)
            return out
        out = torch.zeros(self.d, dtype=torch.float64)
        for _, _, rows in self.grads.iter_rows(max(1, min(self.block, self.n))):
            out += (rows.to(torch.float64) ** 2).sum(dim=0)
        return out

    def obs_update(self, w: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
        """δw = −F⁻¹ E_P (E_Pᵀ F⁻¹ E_P)⁻¹ w_P for the bool mask `pruned` (float64, length d)."""
        w = w.to(torch.float64)
        P = pruned.to(torch.bool)
        if not bool(P.any()):
            return torch.zeros_like(w)
        kept = ~P
        # X_P X_Pᵀ from whichever side has fewer columns
        gram_p = self.gram_all - self.gram(kept) if int(kept.sum()) < int(P.sum()) else self.gram(P)
        zz = self._l_inv(self._l_inv(gram_p).T)  # L⁻¹ G_P L⁻ᵀ = Z_P Z_Pᵀ (symmetric)
        t_mat = torch.eye(self.n, dtype=torch.float64) - 0.5 * (zz + zz.T)
        w_p = torch.where(P, w, torch.zeros((), dtype=torch.float64))
        z_w = self._l_inv(self._xv(w_p))  # Z_P w_P
        try:
            t_chol = torch.linalg.cholesky(t_mat)
            t_sol = torch.cholesky_solve(z_w.reshape(-1, 1), t_chol).reshape(-1)
        except RuntimeError:  # I − Z_P Z_Pᵀ is PD in exact arithmetic; rounding may break Cholesky
            t_sol = torch.linalg.lstsq(t_mat, z_w.reshape(-1, 1)).solution.reshape(-1)
        back = self._xtu(self._l_inv_t(t_sol))  # Xᵀ L⁻ᵀ t, restricted to P below: Z_Pᵀ t
        u = self.delta * torch.where(P, w_p + back, torch.zeros((), dtype=torch.float64))
        return -self.inverse_times(u)


@PRUNERS.register("woodfisher")
class WoodFisherPruner(Pruner):
    """Prune the lowest OBS scores w̄_q²/(2[F⁻¹]_qq); exact joint OBS update of the survivors."""

    class Params(StructureParams):
        delta: float = Field(
            1e-3, gt=0, description="dampening δ > 0 of F = XᵀX/n + δI (units of F: loss²/weight²)"
        )
        update: Literal["obs", "none"] = Field(
            "obs", description="exact joint OBS update of the surviving weights (obs) or keep their values (none)"
        )
        scope: Literal["global", "layer"] = Field(
            "global", description="one ranking over all pruned layers (global) or the target sparsity per layer"
        )
        block: int = Field(256, ge=1, le=65536, description="columns per streamed product with X (memory vs speed)")

    def _solve(self, w_bar: torch.Tensor, grads: GradientSet | None, k: int, layout: Layout) -> SolveOutput:
        assert grads is not None
        p = self.params
        fisher = WoodburyFisher(grads, p.delta, p.block)
        w = w_bar.reshape(-1).to(torch.float64)
        inv_diag = fisher.inverse_diagonal()
        scores = w * w / (2.0 * inv_diag)
        sparsity = 1.0 - k / layout.d if layout.d else 0.0
        # the saliencies are the per-weight scores; a structured unit's score is their sum (pruners/structure.py)
        mask = make_budget(layout, k, sparsity, p.scope, p.structure).mask_scores(scores)
        log = {"scope": p.scope, "score_min_kept": float(scores[mask].min()) if bool(mask.any()) else None}
        if p.update == "obs":
            delta_w = fisher.obs_update(w, ~mask)
            new_w = w + delta_w
            pruned = ~mask
            # δw_P = −w_P exactly in exact arithmetic; the residual says how well the n×n solves went
            log["obs_residual"] = float((new_w[pruned].abs().max()) / (w[pruned].abs().max() + 1e-30)) if bool(pruned.any()) else 0.0
            loss_increase = 0.5 * float(delta_w @ (fisher._xtu(fisher._xv(delta_w)) / grads.n + p.delta * delta_w))
            log["obs_quadratic"] = loss_increase  # ½ δwᵀ F δw: the predicted loss increase
            w = new_w
        return SolveOutput(w=w.to(torch.float32), mask=mask, log=log)
