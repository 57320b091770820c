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

    # Columns are a slice of X here, a strided read on disk; matrix-free X has no cheap columns.
    cheap_columns = True

    def columns(self, start: int, stop: int) -> torch.Tensor:
        """Columns start..stop−1 of X as an n×(stop−start) block (a view for a dense X)."""
        return self.X[:, start:stop]

    def iter_rows(self, chunk: int | None = None):
        """(start, stop, rows) blocks covering all n rows, in order."""
        step = int(chunk or max(1, self.n))
        for start in range(0, self.n, step):
            stop = min(start + step, self.n)
            yield start, stop, self.rows(start, stop)

    def mean_square(self, block_mb: float = 64.0) -> float:
        """mean(X²) = tr(F)/d for F = XᵀX/n: the average diagonal curvature per weight (loss²/weight²).

        The scale that makes a ridge λ dimensionless (iht.py). Streams blocks of about `block_mb`
        MiB of rows (so a matrix-free or on-disk X of many GiB costs one pass, not a copy), summed
        in float64.
        """
        total = 0.0
        for _, _, rows in self.iter_rows(rows_per_block(self.d, block_mb)):
            total += float(rows.double().pow(2).sum())
        return total / max(1, self.n * self.d)


def rows_per_block(d: int, block_mb: float) -> int:
    """How many float32 rows of length d fit in `block_mb` MiB (at least one)."""
    return max(1, int(block_mb * 2**20) // max(1, 4 * int(d)))


GRADIENT_SOURCES: Registry["GradientSource"] = Registry("gradient source")

# How X beyond calibration.memory_budget_mb is held: recomputed per product, or spilled to disk.
OVER_BUDGET = ("recompute", "disk")


def per_sample_gradients(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    layout: Layout,
    chunk_size: int = 256,
) -> torch.Tensor:
    """(n, d) matrix of per-example cross-entropy gradients w.r.t. the layout's weights.

    Row i is ∂ CE(f(x_i), y_i) / ∂w (float32), computed in chunks of `chunk_size` examples so
    peak memory stays at about chunk_size·d floats beyond X itself. The model is used in eval mode
    (batch norm uses running statistics, dropout off) and is not modified.

    Two paths give the same numbers:
    - Linear fast path, when every pruned tensor is an `nn.Linear` weight applied once per
      forward and the model is built only from modules that treat examples independently
      (Sequential/MLPNet containers, Linear, element-wise activations, Flatten, Dropout,
      eval-mode BatchNorm1d): one batched forward + backward of Σ_i CE_i gives each layer's
      output gradient δ_i and its input a_i, and row i's block is the outer product δ_i a_iᵀ,
      written straight into X (no per-example graph, no intermediate per-layer copies).
    - General path (any other model, e.g. convolutions): torch.func vmap over grad of a
      single-example loss through `functional_call`.
    """
    was_training = model.training
    model.eval()
    try:
        linears = _independent_linear_layers(model, layout)
        if linears is not None:
            try:
                return _linear_per_sample_gradients(model, x, y, layout, linears, chunk_size)
            except _NotApplicable:
                pass
        return _torch_func_per_sample_gradients(model, x, y, layout, chunk_size)
    finally:
        model.train(was_training)


# Leaf modules that act on each example separately in eval mode.
_PER_EXAMPLE_LEAVES = (
    nn.Linear, nn.Flatten, nn.Identity, nn.Dropout, nn.BatchNorm1d,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid,
    nn.Softplus, nn.Hardtanh,
)


class _NotApplicable(Exception):
    """The Linear fast path found a layer applied more than once; use the general path."""


def _independent_linear_layers(model: nn.Module, layout: Layout) -> dict[str, nn.Linear] | None:
    """layout name → its nn.Linear if the fast path applies to `model`, else None."""
    from ..models import MLPNet

    # Containers whose forward is known to just chain their children (exact type: a subclass
    # may override forward with something that mixes examples).
    containers = (nn.Sequential, MLPNet)
    for module in model.modules():
        if any(True for _ in module.children()):
            if type(module) not in containers:
                return None
        elif not isinstance(module, _PER_EXAMPLE_LEAVES):
            return None
    modules = dict(model.named_modules())
    linears: dict[str, nn.Linear] = {}
    for s in layout.slices:
        owner, _, leaf = s.name.rpartition(".")
        module = modules.get(owner)
        if leaf != "weight" or not isinstance(module, nn.Linear):
            return None
        linears[s.name] = module
    return linears


def _linear_per_sample_gradients(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    layout: Layout,
    linears: dict[str, nn.Linear],
    chunk_size: int,
) -> torch.Tensor:
    n = x.shape[0]
    X = torch.empty((n, layout.d), dtype=torch.float32)
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def recorder(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if name in captured:
                raise _NotApplicable(name)
            captured[name] = (inputs[0], output)

        return hook

    names = list(linears)
    # Blocks are written straight into X, so a chunk only holds activations (about the summed
    # layer widths per example, not d): take as many rows as fit in chunk_size·d floats.
    widths = sum(m.in_features + 2 * m.out_features for m in linears.values())
    rows = max(int(chunk_size), int(chunk_size) * layout.d // max(1, widths))
    handles = [linears[name].register_forward_hook(recorder(name)) for name in names]
    try:
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            captured.clear()
            with torch.enable_grad():
                # The input requires grad so every layer output is in the graph even when the
                # parameters are frozen; only the outputs' gradients are computed.
                xc = x[start:stop].detach().requires_grad_(True)
                loss = nn.functional.cross_entropy(model(xc), y[start:stop], reduction="sum")
                deltas = torch.autograd.grad(loss, [captured[name][1] for name in names])
            for name, delta in zip(names, deltas):
                s = next(sl for sl in layout.slices if sl.name == name)
                a = captured[name][0].detach()
                out_f, in_f = s.shape
                block = X[start:stop, s.offset : s.stop].view(stop - start, out_f, in_f)
                if a.dim() == 2:
                    torch.mul(delta.unsqueeze(2), a.unsqueeze(1), out=block)
                else:  # (n, ..., in): the weight is shared over the middle positions
                    block.copy_(torch.einsum("n...o,n...i->noi", delta, a))
            captured.clear()
        return X
    finally:
        for h in handles:
            h.remove()


def _torch_func_per_sample_gradients(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, layout: Layout, chunk_size: int
) -> torch.Tensor:
    from torch.func import functional_call, grad, vmap

    # functional_call swaps tensors into the module and back; with a module used twice (tied
    # weights) torch 2.x restores plain tensors in place of the Parameters, so work on a copy.
    model = copy.deepcopy(model)
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
        X[start:stop] = torch.cat([g[s.name].reshape(stop - start, -1) for s in layout.slices], dim=1)
    return X


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
        over_budget: str = "recompute",
        spill_dir: str | None = None,
    ) -> GradientSet:
        """Per-sample gradients of `batch`.

        memory_budget_mb: X (n·d·4 bytes) is held dense in memory when it fits this many MiB
                          (None = the default, 2048).
        over_budget:      what happens beyond the budget: "recompute" gives a
                          MatrixFreeGradientSet whose products recompute the gradients (Xv by
                          forward mode, Xᵀu by a backward pass); "disk" writes X once to an
                          unlinked file in `spill_dir` (None = the system temp folder) and streams
                          it per product (on_disk.py). Both give the dense path's numbers.
        """
        from .matrix_free import (DEFAULT_MEMORY_BUDGET_MB, MatrixFreeGradientSet,
                                  PerSampleGradientOperator, fits_budget)

        if over_budget not in OVER_BUDGET:
            raise ValueError(f"over_budget must be one of {', '.join(OVER_BUDGET)}, got {over_budget!r}")
        layout = layout or Layout.from_model(model)
        budget = DEFAULT_MEMORY_BUDGET_MB if memory_budget_mb is None else float(memory_budget_mb)
        x, y = batch
        provenance: dict[str, Any] = {"source": self.describe(), "seed": int(seed), "n": int(x.shape[0])}
        x, y = self.transform_batch(model, x, y, seed, provenance)
        grad_model = self.gradient_model(model, seed, provenance)
        w_bar = layout.flatten(dict(model.named_parameters()))
        if not fits_budget(int(x.shape[0]), layout.d, budget):
            operator = self.perturb_operator(PerSampleGradientOperator(grad_model, x, y, layout), seed, provenance)
            if over_budget == "disk":
                from .on_disk import spill

                provenance.update(gradient_mode="disk", memory_budget_mb=budget)
                operator = spill(operator, spill_dir)
            else:
                provenance.update(gradient_mode="matrix_free", memory_budget_mb=budget)
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

