"""Matrix-free per-sample gradients: Xv and Xᵀu without ever holding X (specs/swap.md §4).

X ∈ R^{n×d} has row i = ∇_w ℓ_i(w̄), the gradient of example i's cross-entropy loss with respect
to the pruned weights w, at the model's weights. Held dense it costs n·d·4 bytes (17 GB for
MobileNetV1, d ≈ 4.2·10⁶, at n = 1000). When that exceeds `calibration.memory_budget_mb`,
`GradientSource.collect` returns a `MatrixFreeGradientSet` instead, which computes

    (X v)_i = d/dt ℓ_i(w̄ + t v) |_{t=0}        one forward-mode pass (torch.func.jvp) of the batch
                                                of per-example losses in the direction v ∈ R^d;
    Xᵀ u    = ∇_w Σ_i u_i ℓ_i(w̄)               one reverse-mode pass (torch.func.vjp), u ∈ R^n;

both in chunks of examples, so memory is O(d + chunk · activations), never O(n·d). Each product
costs about one batched forward + backward of the summed loss over the n calibration examples:
measured at n = 1000 on 1 thread (`python bench/prune_scale.py --products-vs-floor`), Xv 1.3× and
Xᵀu 1.0× that floor at ResNet20, 0.8× and 1.0× at MobileNetV1 on 32×32 inputs.
`rows(start, stop)` materialises a block of rows (per-sample gradients of those examples only), for
solvers that stream X row-block by row-block (Gram matrices, Woodbury, column norms).

Noise stays exactly reproducible. Everything a source does to the data (label noise, adversarial
inputs) or to the model (analog hardware) is held by the operator, so each product recomputes the
same gradients. Noise added to the gradients themselves becomes a second operator, X̃ = X + N,
whose sparse rows are regenerated chunk by chunk from per-row seeds (`SparseRowNoise`), i.e. the
identical draws the dense path adds (see `gaussian.py`). A source that perturbs dense X without
such a form refuses the matrix-free mode with an error instead of silently dropping its noise.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..errors import SwapHwError
from ..layout import Layout
from .gradient_set import GradientSet
from .per_sample import per_sample_gradients

DEFAULT_MEMORY_BUDGET_MB = 2048.0


class MatrixFreeError(SwapHwError):
    """A dense X was asked of a GradientSet that is matrix-free because X exceeds the budget."""


def dense_bytes(n: int, d: int) -> int:
    """Bytes of a dense float32 n×d gradient matrix."""
    return int(n) * int(d) * 4


def fits_budget(n: int, d: int, memory_budget_mb: float | None) -> bool:
    """Whether X (n×d float32) fits `memory_budget_mb` MiB; None means no limit."""
    return memory_budget_mb is None or dense_bytes(n, d) <= memory_budget_mb * 2**20


class GradientOperator:
    """An n×d linear operator with X's interface: products, and dense row blocks on demand."""

    n: int
    d: int

    def matvec(self, v: torch.Tensor) -> torch.Tensor:  # (d,) → (n,)
        raise NotImplementedError

    def rmatvec(self, u: torch.Tensor) -> torch.Tensor:  # (n,) → (d,)
        raise NotImplementedError

    def rows(self, start: int, stop: int) -> torch.Tensor:  # (stop − start, d) float32
        raise NotImplementedError

    def row_chunk(self) -> int:
        """A row-block size whose dense block plus the work to make it stays moderate."""
        return 64

    # Whether `columns` is cheap (a read, not n products): solvers that work column block by
    # column block (woodfisher's Gram matrix and diag(F⁻¹)) then take that path.
    cheap_columns = False

    def columns(self, start: int, stop: int) -> torch.Tensor:  # (n, stop − start) float32
        raise NotImplementedError


def _columns(fn: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor) -> torch.Tensor:
    """Apply a vector map to v (length L) or to each column of v (L×m)."""
    if v.dim() == 1:
        return fn(v)
    return torch.stack([fn(v[:, j]) for j in range(v.shape[1])], dim=1)


class PerSampleGradientOperator(GradientOperator):
    """X of a model on a batch, row i = ∇_w cross_entropy(model(x_i), y_i), never materialised.

    The model is evaluated in eval mode (BatchNorm running statistics, dropout off), which makes
    the per-example losses of a batch independent of each other, so a batched forward gives the
    same ℓ_i as the per-example `vmap` of the dense path (to float rounding). The model and the
    batch are not modified; the weights are read once, at construction.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, layout: Layout,
                 chunk_size: int | None = None, activation_budget_mb: float = 512.0):
        self.model = model
        self.x, self.y = x.detach(), y.detach()
        self.layout = layout
        self.n, self.d = int(x.shape[0]), int(layout.d)
        params = {k: v.detach() for k, v in model.named_parameters()}
        self.buffers = {k: v.detach() for k, v in model.named_buffers()}
        self.pruned = {s.name: params[s.name] for s in layout.slices}
        self.frozen = {k: v for k, v in params.items() if k not in self.pruned}
        self.chunk_size = int(chunk_size) if chunk_size else self._auto_chunk(activation_budget_mb)

    # -- per-example losses as a function of the pruned weights -------------------------------

    def _losses(self, pruned: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call

        out = functional_call(self.model, ({**self.frozen, **pruned}, self.buffers), (xb,))
        return nn.functional.cross_entropy(out, yb, reduction="none")

    @contextlib.contextmanager
    def _eval(self) -> Iterator[None]:
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

    def _auto_chunk(self, activation_budget_mb: float) -> int:
        """Examples per chunk so a chunk's activations (×4 for tangents and saved tensors) stay
        within `activation_budget_mb`; measured by one forward pass of a single example."""
        if self.n == 0:
            return 1
        sizes: list[int] = []
        # leaf modules only: a container's output is its last child's tensor, counted already
        hooks = [m.register_forward_hook(lambda _m, _i, o: sizes.append(o.numel() if torch.is_tensor(o) else 0))
                 for m in self.model.modules() if next(m.children(), None) is None]
        try:
            with self._eval(), torch.no_grad():
                self._losses(self.pruned, self.x[:1], self.y[:1])
        finally:
            for h in hooks:
                h.remove()
        per_example = max(1, sum(sizes)) * 4 * 4
        return int(max(1, min(256, self.n, activation_budget_mb * 2**20 // per_example)))

    def _chunks(self) -> Iterator[tuple[int, int]]:
        for start in range(0, self.n, self.chunk_size):
            yield start, min(start + self.chunk_size, self.n)

    # -- products --------------------------------------------------------------------------------

    def _matvec1(self, v: torch.Tensor) -> torch.Tensor:
        from torch.func import jvp

        tangent = {k: t.to(self.pruned[k].dtype) for k, t in self.layout.unflatten(v.reshape(-1)).items()}
        out = torch.empty(self.n, dtype=torch.float32, device=self.x.device)
        with self._eval():
            for start, stop in self._chunks():
                xb, yb = self.x[start:stop], self.y[start:stop]
                _, directional = jvp(lambda p: self._losses(p, xb, yb), (self.pruned,), (tangent,))
                out[start:stop] = directional.float()
        return out

    def _rmatvec1(self, u: torch.Tensor) -> torch.Tensor:
        from torch.func import vjp

        total = torch.zeros(self.d, dtype=torch.float32, device=self.x.device)
        u = u.reshape(-1)
        with self._eval():
            for start, stop in self._chunks():
                xb, yb = self.x[start:stop], self.y[start:stop]
                _, pullback = vjp(lambda p: self._losses(p, xb, yb), self.pruned)
                (g,) = pullback(u[start:stop].to(torch.float32))
                total += self.layout.flatten(g)
        return total

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return _columns(self._matvec1, v)

    def rmatvec(self, u: torch.Tensor) -> torch.Tensor:
        return _columns(self._rmatvec1, u)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        model = self.model
        return per_sample_gradients(model, self.x[start:stop], self.y[start:stop], self.layout,
                                    chunk_size=self.chunk_size)

    def row_chunk(self) -> int:
        # a block of rows costs rows·d·4 bytes on top of the per-sample work; keep it ≤ ~256 MiB
        return int(max(1, min(self.chunk_size, (256 * 2**20) // max(1, 4 * self.d))))


class SparseRowNoise(GradientOperator):
    """X̃ = X + N, where row i of N has values `values_i` at coordinates `index_i` (m per row).

    `draw(start, stop) -> (index, values)` returns the (stop−start, m) int64 coordinates and
    float32 values of rows start..stop−1 and must depend only on the row numbers (per-row seeds),
    so that every chunk is regenerated bit-identically on every product. When the n·m entries fit
    `cache_mb` they are drawn once and kept (12 bytes per entry); otherwise each product redraws.

        (X̃ v)_i = (X v)_i + Σ_j values_ij · v[index_ij]
        X̃ᵀ u    = Xᵀ u + Σ_i u_i Σ_j values_ij e_{index_ij}
    """

    def __init__(self, base: GradientOperator, draw: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]],
                 per_row: int, cache_mb: float = 256.0, chunk_rows: int = 64):
        self.base, self.draw = base, draw
        self.n, self.d = base.n, base.d
        self.per_row = int(per_row)
        self.chunk_rows = max(1, int(chunk_rows))
        self._cache: list[tuple[int, int, torch.Tensor, torch.Tensor]] | None = None
        if self.n * self.per_row * 12 <= cache_mb * 2**20:
            self._cache = [(s, e, *self.draw(s, e)) for s, e in self._spans()]

    def _spans(self) -> Iterator[tuple[int, int]]:
        for start in range(0, self.n, self.chunk_rows):
            yield start, min(start + self.chunk_rows, self.n)

    def noise_blocks(self) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
        if self._cache is not None:
            yield from self._cache
        else:
            for s, e in self._spans():
                yield (s, e, *self.draw(s, e))

    def _noise_matvec1(self, v: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(self.n, dtype=torch.float32, device=v.device)
        v = v.reshape(-1).float()
        for s, e, index, values in self.noise_blocks():
            out[s:e] = (values * v[index]).sum(dim=1)
        return out

    def _noise_rmatvec1(self, u: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(self.d, dtype=torch.float32, device=u.device)
        u = u.reshape(-1).float()
        for s, e, index, values in self.noise_blocks():
            out.index_add_(0, index.reshape(-1), (values * u[s:e, None]).reshape(-1))
        return out

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.base.matvec(v) + _columns(self._noise_matvec1, v)

    def rmatvec(self, u: torch.Tensor) -> torch.Tensor:
        return self.base.rmatvec(u) + _columns(self._noise_rmatvec1, u)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        block = self.base.rows(start, stop)
        index, values = self.draw(start, stop)
        block.scatter_add_(1, index, values.to(block.dtype))
        return block

    def row_chunk(self) -> int:
        return self.base.row_chunk()


class ColumnMask(GradientOperator):
    """X·diag(keep): `base` with the columns outside `keep` (a bool vector of length d) zeroed."""

    def __init__(self, base: GradientOperator, keep: torch.Tensor):
        self.base, self.keep = base, keep.reshape(-1).to(torch.bool)
        self.n, self.d = base.n, base.d
        self._scale = self.keep.to(torch.float32)

    def _cols(self, t: torch.Tensor) -> torch.Tensor:
        return t * (self._scale if t.dim() == 1 else self._scale[:, None])

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.base.matvec(self._cols(v))

    def rmatvec(self, u: torch.Tensor) -> torch.Tensor:
        return self._cols(self.base.rmatvec(u))

    def rows(self, start: int, stop: int) -> torch.Tensor:
        return self.base.rows(start, stop) * self._scale

    def row_chunk(self) -> int:
        return self.base.row_chunk()

    @property
    def cheap_columns(self) -> bool:  # type: ignore[override]
        return self.base.cheap_columns

    def columns(self, start: int, stop: int) -> torch.Tensor:
        return self.base.columns(start, stop) * self._scale[start:stop]


def mask_gradient_columns(grads: GradientSet, keep: torch.Tensor) -> GradientSet:
    """The same gradients with the columns of pruned weights (keep False) set to zero.

    A pruner then sees no gradient signal on weights that are already pruned (and zero), so
    starting from w̄ with zeros there it has no reason to revive them. Dense sets get a new X
    (n·d floats); matrix-free sets get a wrapping operator.
    """
    keep = keep.reshape(-1).to(torch.bool)
    if bool(keep.all()):
        return grads
    provenance = {**grads.provenance, "masked_columns": int((~keep).sum())}
    if isinstance(grads, MatrixFreeGradientSet):
        return MatrixFreeGradientSet(ColumnMask(grads.operator, keep), grads.w_bar, grads.layout, provenance)
    return GradientSet(X=grads.X * keep.to(grads.X.dtype), w_bar=grads.w_bar, layout=grads.layout,
                       provenance=provenance)


def iter_row_blocks(op: GradientOperator, chunk: int | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(start, stop, rows) blocks covering all n rows of `op`, in order."""
    step = int(chunk or op.row_chunk())
    for start in range(0, op.n, step):
        stop = min(start + step, op.n)
        yield start, stop, op.rows(start, stop)


def row_statistics(op: GradientOperator, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(σ, ‖·‖²) of every row of `op`: population std of the row's d entries and its squared
    norm, from one streaming pass over row blocks (each block recomputed, then dropped)."""
    sigma = sq_norm = None
    for start, stop, block in iter_row_blocks(op, chunk):
        if sigma is None:  # on the device the rows come from
            sigma = torch.empty(op.n, dtype=torch.float32, device=block.device)
            sq_norm = torch.empty(op.n, dtype=torch.float32, device=block.device)
        sigma[start:stop] = block.std(dim=1, correction=0)
        sq_norm[start:stop] = block.pow(2).sum(dim=1)
    if sigma is None:  # no rows at all
        sigma, sq_norm = torch.empty(0, dtype=torch.float32), torch.empty(0, dtype=torch.float32)
    return sigma, sq_norm


class MatrixFreeGradientSet(GradientSet):
    """A GradientSet whose X is an operator: `xv`, `xtu`, `rows` work, `dense()` / `.X` raise.

    Pruners that use only `grads.xv` / `grads.xtu` (lr, swap) run unchanged; pruners that need
    columns or the Gram matrix stream `grads.rows(start, stop)` blocks or raise the error below.
    """

    matrix_free = True

    def __init__(self, operator: GradientOperator, w_bar: torch.Tensor, layout: Layout,
                 provenance: dict[str, Any] | None = None):
        if operator.d != layout.d or w_bar.numel() != layout.d:
            raise ValueError(f"operator d={operator.d}, w̄ {w_bar.numel()}, layout d={layout.d} disagree")
        self.operator = operator
        self.w_bar = w_bar
        self.layout = layout
        self.provenance = provenance if provenance is not None else {}

    def _refuse(self) -> MatrixFreeError:
        gb = dense_bytes(self.n, self.d) / 2**30
        budget = self.provenance.get("memory_budget_mb")
        return MatrixFreeError(
            f"the per-sample gradients are matrix-free: a dense X would be {self.n}×{self.d} float32 "
            f"= {gb:.2f} GiB, over calibration.memory_budget_mb = {budget}; this pruner needs the dense "
            "matrix — raise calibration.memory_budget_mb, lower calibration.n, or use a pruner that "
            "works from Xv / Xᵀu (lr, swap)"
        )

    @property
    def X(self) -> torch.Tensor:  # type: ignore[override]
        raise self._refuse()

    @property
    def n(self) -> int:
        return int(self.operator.n)

    @property
    def d(self) -> int:
        return int(self.operator.d)

    def xv(self, v: torch.Tensor) -> torch.Tensor:
        return self.operator.matvec(v)

    def xtu(self, u: torch.Tensor) -> torch.Tensor:
        return self.operator.rmatvec(u)

    def dense(self) -> torch.Tensor:
        raise self._refuse()

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows start..stop−1 of X as a dense (stop−start)×d block, recomputed on demand."""
        return self.operator.rows(max(0, start), min(stop, self.n))

    def iter_rows(self, chunk: int | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
        return iter_row_blocks(self.operator, chunk)

    @property
    def cheap_columns(self) -> bool:  # type: ignore[override]
        return bool(self.operator.cheap_columns)

    def columns(self, start: int, stop: int) -> torch.Tensor:
        """Columns start..stop−1 of X as a dense n×(stop−start) block (only when `cheap_columns`)."""
        if not self.operator.cheap_columns:
            raise MatrixFreeError("columns of a recomputed X cost one product each; stream rows instead")
        return self.operator.columns(max(0, start), min(stop, self.d))

    def __repr__(self) -> str:
        return f"MatrixFreeGradientSet(n={self.n}, d={self.d}, operator={type(self.operator).__name__})"

    __eq__ = object.__eq__  # the dataclass equality of the base would compare X
    __hash__ = object.__hash__
