"""Gradient sources: per-sample gradients of the calibration loss under a scenario's noise.

Contract: ``source.collect(model, batch, seed) -> GradientSet``. The pipeline is fixed here and
members override narrow hooks (aihwkit's noise-model pattern):

1. `transform_batch(model, x, y, seed)`  — change the calibration data (label noise, attacks);
2. `gradient_model(model, seed)`        — the model the gradients are taken through (analog
                                          hardware gives a copy carrying the programmed weights);
3. per-sample gradients through that model with torch.func (never a Python loop over samples);
4. `perturb(X, seed)`                   — noise added to the gradients themselves (the paper's).

Row i of X is ∂ loss(f(x_i), y_i) / ∂w for the prunable weights w, with the model in eval mode;
w̄ (the reference weights handed to pruners) is always the DIGITAL model's weights, because those
are what a pruner edits and what is then programmed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..component import Component
from ..layout import Layout
from ..registry import Registry


@dataclass
class GradientSet:
    """What pruners need from the calibration data.

    X:          (n, d) float32 per-sample gradient matrix, row i = gradient of example i's loss.
    w_bar:      (d,) reference weights (flat, in `layout` order).
    layout:     name, shape and offset of each pruned tensor inside the flat vector.
    provenance: how it was made: source description, seed, realised noise figures.
    """

    X: torch.Tensor
    w_bar: torch.Tensor
    layout: Layout
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def d(self) -> int:
        return int(self.X.shape[1])

    def xv(self, v: torch.Tensor) -> torch.Tensor:
        """X v for v of length d (or d×m), result length n (or n×m)."""
        return self.X @ v

    def xtu(self, u: torch.Tensor) -> torch.Tensor:
        """Xᵀ u for u of length n (or n×m), result length d (or d×m)."""
        return self.X.T @ u

    def dense(self) -> torch.Tensor:
        """The dense X, for solvers that need columns or the Gram matrix."""
        return self.X

    # A MatrixFreeGradientSet (matrix_free.py) has the same interface but no dense X; solvers
    # that need more than xv / xtu stream row blocks, which works for both kinds.
    matrix_free = False

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows start..stop−1 of X as a dense (stop−start)×d block."""
        return self.X[start:stop]

    def iter_rows(self, chunk: int | None = None):
        """(start, stop, rows) blocks covering all n rows, in order."""
        step = int(chunk or max(1, self.n))
        for start in range(0, self.n, step):
            stop = min(start + step, self.n)
            yield start, stop, self.rows(start, stop)


GRADIENT_SOURCES: Registry["GradientSource"] = Registry("gradient source")


def per_sample_gradients(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    layout: Layout,
    chunk_size: int = 256,
) -> torch.Tensor:
    """(n, d) matrix of per-example cross-entropy gradients w.r.t. the layout's weights.

    vmap over grad of a single-example loss through `functional_call`, in chunks of `chunk_size`
    examples so peak memory stays at chunk_size·d floats beyond X itself. The model is used in
    eval mode (batch norm uses running statistics, dropout off) and is not modified.
    """
    from torch.func import functional_call, grad, vmap

    was_training = model.training
    model.eval()
    try:
        params = {k: v.detach() for k, v in model.named_parameters()}
        buffers = {k: v.detach() for k, v in model.named_buffers()}
        pruned = {s.name: params[s.name] for s in layout.slices}
        frozen = {k: v for k, v in params.items() if k not in pruned}

        def loss_one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            out = functional_call(model, ({**frozen, **p}, buffers), (xi.unsqueeze(0),))
            return nn.functional.cross_entropy(out, yi.unsqueeze(0))

        per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))
        n = x.shape[0]
        X = torch.empty((n, layout.d), dtype=torch.float32)
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            g = per_sample(pruned, x[start:stop], y[start:stop])
            X[start:stop] = torch.cat(
                [g[s.name].reshape(stop - start, -1) for s in layout.slices], dim=1
            )
        return X
    finally:
        model.train(was_training)


class GradientSource(Component):
    """Base of all gradient sources; see the module docstring for the fixed pipeline."""

    # Whether `perturb` / `transform_batch` / `gradient_model` use randomness (for provenance).
    stochastic: ClassVar[bool] = False

    def collect(
        self,
        model: nn.Module,
        batch: tuple[torch.Tensor, torch.Tensor],
        seed: int,
        layout: Layout | None = None,
        memory_budget_mb: float | None = None,
    ) -> GradientSet:
        """Per-sample gradients of `batch`; dense X if n·d·4 bytes fits `memory_budget_mb` (MiB,
        default 2048; None = the default), else a MatrixFreeGradientSet computing Xv and Xᵀu."""
        from .matrix_free import (DEFAULT_MEMORY_BUDGET_MB, MatrixFreeGradientSet,
                                  PerSampleGradientOperator, fits_budget)

        layout = layout or Layout.from_model(model)
        budget = DEFAULT_MEMORY_BUDGET_MB if memory_budget_mb is None else float(memory_budget_mb)
        x, y = batch
        provenance: dict[str, Any] = {"source": self.describe(), "seed": int(seed), "n": int(x.shape[0])}
        x, y = self.transform_batch(model, x, y, seed, provenance)
        grad_model = self.gradient_model(model, seed, provenance)
        w_bar = layout.flatten(dict(model.named_parameters()))
        if not fits_budget(int(x.shape[0]), layout.d, budget):
            provenance.update(gradient_mode="matrix_free", memory_budget_mb=budget)
            operator = self.perturb_operator(PerSampleGradientOperator(grad_model, x, y, layout), seed, provenance)
            return MatrixFreeGradientSet(operator, w_bar, layout, provenance)
        X = per_sample_gradients(grad_model, x, y, layout)
        X = self.perturb(X, seed, provenance)
        return GradientSet(X=X, w_bar=w_bar, layout=layout, provenance=provenance)

    # --- hooks: the identity by default -------------------------------------------------------

    def transform_batch(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, provenance: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def gradient_model(self, model: nn.Module, seed: int, provenance: dict) -> nn.Module:
        return model

    def perturb(self, X: torch.Tensor, seed: int, provenance: dict) -> torch.Tensor:
        return X

    def perturb_operator(self, operator, seed: int, provenance: dict):
        """`perturb` for a matrix-free X (a matrix_free.GradientOperator): must add exactly the
        noise `perturb` adds to the dense X. Identity by default; a source that overrides
        `perturb` must override this too, or it refuses the matrix-free mode."""
        if type(self).perturb is not GradientSource.perturb:
            from ..errors import SwapHwError

            raise SwapHwError(
                f"gradient source {self.label!r} adds noise to a dense gradient matrix and has no "
                "matrix-free form; raise calibration.memory_budget_mb or lower calibration.n"
            )
        return operator


def digital_copy_with_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    """A deep copy of `model` whose named parameters are replaced by `weights` (for hooks)."""
    clone = copy.deepcopy(model)
    params = dict(clone.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    return clone
