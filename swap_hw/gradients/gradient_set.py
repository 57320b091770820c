"""The GradientSet contract: what a pruner reads of the calibration data.

X (n×d, one per-sample gradient row per calibration example), w̄ (the reference weights, flat in
layout order), the layout, and how it was made. Solvers touch X only through `xv` / `xtu` (and, when
they are cheap, `rows` / `columns`), so the matrix-free and on-disk sets (matrix_free.py,
on_disk.py) are drop-in replacements.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..layout import Layout


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
            # squared in place on a float64 copy (copy=True: a float64 X must not be squared itself):
            # the same bits as pow(2), half the memory traffic
            total += float(rows.to(torch.float64, copy=True).pow_(2).sum())
        return total / max(1, self.n * self.d)


def rows_per_block(d: int, block_mb: float) -> int:
    """How many float32 rows of length d fit in `block_mb` MiB (at least one)."""
    return max(1, int(block_mb * 2**20) // max(1, 4 * int(d)))
