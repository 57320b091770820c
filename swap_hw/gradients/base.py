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

import math
from typing import Any, ClassVar

import torch
from torch import nn

from ..data import as_tensors
from ..errors import RunFault, SwapHwError
from ..layout import Layout
from ..registry import Component, Registry
from .gradient_set import GradientSet
from .matrix_free import DEFAULT_MEMORY_BUDGET_MB, MatrixFreeGradientSet, PerSampleGradientOperator, fits_budget
from .on_disk import spill
from .per_sample import per_sample_gradients


GRADIENT_SOURCES: Registry["GradientSource"] = Registry("gradient source")

# How X beyond calibration.memory_budget_mb is held: recomputed per product, or spilled to disk.
OVER_BUDGET = ("recompute", "disk")


def _is_pair_of_tensors(batch) -> bool:
    return isinstance(batch, tuple) and len(batch) == 2 and all(isinstance(t, torch.Tensor) for t in batch)


class GradientSource(Component):
    """Base of all gradient sources; see the module docstring for the fixed pipeline."""

    # Whether `collect` draws randomness (noise, attacks, hardware): then its X follows the seed.
    stochastic: ClassVar[bool] = False

    def collect(
        self,
        model: nn.Module,
        batch: tuple[torch.Tensor, torch.Tensor],
        seed: int,
        layout: Layout | None = None,
        memory_budget_mb: float | None = None,
        over_budget: str = "recompute",
        spill_dir: str | None = None,
    ) -> GradientSet:
        """Per-sample gradients of `batch`: (x, y) tensors, or a DataLoader / Dataset of (input,
        label) pairs (all of it; `data.as_tensors`).

        memory_budget_mb: X (n·d·4 bytes) is held dense in memory when it fits this many MiB
                          (None = the default, 2048).
        over_budget:      what happens beyond the budget: "recompute" gives a
                          MatrixFreeGradientSet whose products recompute the gradients (Xv by
                          forward mode, Xᵀu by a backward pass); "disk" writes X once to an
                          unlinked file in `spill_dir` (None = the system temp folder) and streams
                          it per product (on_disk.py). Both give the dense path's numbers.
        """
        if over_budget not in OVER_BUDGET:
            raise ValueError(f"over_budget must be one of {', '.join(OVER_BUDGET)}, got {over_budget!r}")
        layout = layout or Layout.from_model(model)
        budget = DEFAULT_MEMORY_BUDGET_MB if memory_budget_mb is None else float(memory_budget_mb)
        x, y = batch if _is_pair_of_tensors(batch) else as_tensors(batch, "batch")
        provenance: dict[str, Any] = {"source": self.describe(), "seed": int(seed), "n": int(x.shape[0])}
        x, y = self.transform_batch(model, x, y, seed, provenance)
        grad_model = self.gradient_model(model, seed, provenance)
        w_bar = layout.flatten(dict(model.named_parameters()))
        if not fits_budget(int(x.shape[0]), layout.d, budget):
            operator = self.perturb_operator(PerSampleGradientOperator(grad_model, x, y, layout), seed, provenance)
            if over_budget == "disk":
                provenance.update(gradient_mode="disk", memory_budget_mb=budget)
                operator = spill(operator, spill_dir)
            else:
                provenance.update(gradient_mode="matrix_free", memory_budget_mb=budget)
            return MatrixFreeGradientSet(operator, w_bar, layout, provenance)
        chunking: dict[str, Any] = {}
        X = per_sample_gradients(grad_model, x, y, layout, info=chunking)
        provenance.update(chunking)  # which per-sample path ran, and its chunk size
        X = self.perturb(X, seed, provenance)
        # A sum is finite only if every term is (a NaN or ±Inf term makes it NaN or ±Inf; a finite
        # sum cannot hide one), so the cheap sum decides for almost every X; only a non-finite sum
        # (a bad entry, or an overflow of the sum itself) pays for the elementwise check.
        if not math.isfinite(float(X.sum())) and not bool(torch.isfinite(X).all()):
            # a pruner would quietly step around NaN rows
            rows = int((~torch.isfinite(X)).any(dim=1).sum())
            raise RunFault(f"gradient source {self.label}: {rows} of {X.shape[0]} per-sample gradients are NaN/Inf "
                           "(the dense model's outputs or the source's noise settings)")
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
            raise SwapHwError(
                f"gradient source {self.label!r} adds noise to a dense gradient matrix and has no "
                "matrix-free form; raise calibration.memory_budget_mb or lower calibration.n"
            )
        return operator

