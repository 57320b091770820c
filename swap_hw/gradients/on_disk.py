"""X written to disk once and streamed per product: the third way to hold per-sample gradients.

specs/swap.md §4 allows two forms of X beyond the memory budget: matrix-free (matrix_free.py,
every product recomputes the per-sample gradients by a forward- or reverse-mode pass) or "row
chunks on disk". Which is faster depends on the model. A product from disk costs one sequential
read of n·d·4 bytes plus a block matrix-vector product; a matrix-free product costs about 2–3
forward passes over the n calibration examples. For MobileNetV1 at 224×224 (d ≈ 4.2·10⁶, n = 1000,
15.7 GiB of X) one matrix-free Xv measured 106 s on this project's CPU, while reading it runs
at 0.9 GB/s from this machine's disk and several GB/s from the page cache. A solver needs one to a few
hundred products, so `calibration.over_budget: disk` turns hours into minutes there (measured, README).
On 32×32 inputs the same network recomputes a product as fast as it reads one (about 4 s either
way) and skips the write, so recomputing stays the default.

The file is created in `calibration.spill_dir` (the system temp folder by default) and unlinked at
once: the data lives while the operator holds the open file and the operating system frees it when
the operator is dropped or the process dies, even by SIGKILL, so an interrupted sweep leaves no
16 GiB files behind. Rows are written in the dense layout (row-major float32), so `rows`,
products and everything streamed from them see the same numbers the source produced — noise
included, since the rows are taken from the (possibly noisy) operator once.

On a GPU (swap_hw.device) the file is read into host memory as here and each block is moved to
the device of the vector it multiplies; `rows` and `columns` come back on the device X was
collected on.

Resident memory stays at one block of rows (`block_mb`, 256 MiB by default, one buffer reused by
every product) plus the vectors; reads go through `os.preadv` into that buffer, not `mmap`, so the
page cache the reads warm is not counted against the process.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Iterator

import torch

from ..errors import SwapHwError
from .matrix_free import GradientOperator, dense_bytes, iter_row_blocks

# Room left on the file system beyond X itself, so spilling never fills a disk to the last byte.
_FREE_SPACE_MARGIN = 512 * 2**20


class SpillError(SwapHwError):
    """X cannot be written to the spill directory (missing, not writable, or too little space)."""


class OnDiskRows(GradientOperator):
    """An n×d float32 matrix held in an unlinked file, read block by block for every product.

        (X v)_i = Σ_j X_ij v_j      one pass over the file, a (rows × d)·v product per block
        Xᵀ u    = Σ_i u_i X_i       the same pass, blocks' transposed products summed

    Built by `spill(operator, directory)`, which streams `operator.rows` once.
    """

    def __init__(self, handle, n: int, d: int, block_mb: float = 256.0, device: torch.device | str = "cpu"):
        self._file = handle  # the open, already unlinked file; closing it frees the disk space
        self.n, self.d = int(n), int(d)
        self.device = torch.device(device)  # where `rows` / `columns` are handed out (X's device)
        self._block_rows = int(max(1, min(self.n or 1, (block_mb * 2**20) // max(1, 4 * self.d))))
        # Products read every block into this one buffer: a fresh 256 MiB tensor per block costs
        # its page faults each time, which measured 3–4× slower than reading from the page cache.
        self._buffer: torch.Tensor | None = None

    def row_chunk(self) -> int:
        return self._block_rows

    def _blocks(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(start, stop, rows) over all rows for products; `rows` is a view of the reused buffer,
        valid until the next step."""
        if self._buffer is None:
            # host memory: the file is read into it through numpy's buffer (a GPU tensor has none)
            self._buffer = torch.empty((self._block_rows, self.d), dtype=torch.float32, device="cpu")
        view = memoryview(self._buffer.numpy()).cast("B")
        for start in range(0, self.n, self._block_rows):
            stop = min(start + self._block_rows, self.n)
            self._read(view[: (stop - start) * self.d * 4], start * self.d * 4)
            yield start, stop, self._buffer[: stop - start]

    def rows(self, start: int, stop: int) -> torch.Tensor:
        start, stop = max(0, int(start)), min(int(stop), self.n)
        block = torch.empty((max(0, stop - start), self.d), dtype=torch.float32, device="cpu")
        self._read(memoryview(block.numpy()).cast("B"), start * self.d * 4)
        return block.to(self.device)

    cheap_columns = True

    def columns(self, start: int, stop: int) -> torch.Tensor:
        """X[:, start:stop]: one read of (stop − start)·4 bytes per row, n reads in all."""
        start, stop = max(0, int(start)), min(int(stop), self.d)
        block = torch.empty((self.n, max(0, stop - start)), dtype=torch.float32, device="cpu")
        width = block.shape[1] * 4
        view = memoryview(block.numpy()).cast("B")
        for i in range(self.n):
            self._read(view[i * width : (i + 1) * width], (i * self.d + start) * 4)
        return block.to(self.device)

    def _read(self, view: memoryview, offset: int) -> None:
        """Fill `view` from the file at byte `offset` (preadv may return fewer bytes than asked)."""
        done = 0
        while done < len(view):
            got = os.preadv(self._file.fileno(), [view[done:]], offset + done)
            if got <= 0:
                raise SpillError(f"gradient file ended {len(view) - done} bytes early (byte {offset + done})")
            done += got

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """X v for v of length d, or X V for V of d×m: one pass over the file either way."""
        v2 = v.reshape(self.d, -1).to(torch.float32)
        out = torch.empty((self.n, v2.shape[1]), dtype=torch.float32, device=v2.device)
        for start, stop, block in self._blocks():
            torch.mm(block.to(v2.device), v2, out=out[start:stop])  # .to: nothing on the CPU
        return out.reshape(self.n) if v.dim() == 1 else out

    def rmatvec(self, u: torch.Tensor) -> torch.Tensor:
        """Xᵀ u for u of length n, or Xᵀ U for U of n×m: one pass over the file either way."""
        u2 = u.reshape(self.n, -1).to(torch.float32)
        total = torch.zeros((self.d, u2.shape[1]), dtype=torch.float32, device=u2.device)
        for start, stop, block in self._blocks():
            total.addmm_(block.to(u2.device).T, u2[start:stop])
        return total.reshape(self.d) if u.dim() == 1 else total


def spill(operator: GradientOperator, directory: str | os.PathLike | None = None,
          block_mb: float = 256.0) -> OnDiskRows:
    """Write every row of `operator` to a new unlinked file in `directory` and return it as an
    `OnDiskRows` operator. `directory` None means the system temp folder. Raises SpillError naming
    `calibration.spill_dir` if the folder is missing, not writable, or has less free space than X
    (n·d·4 bytes) plus a 512 MiB margin."""
    where = str(directory) if directory is not None else tempfile.gettempdir()
    if not os.path.isdir(where):
        raise SpillError(f"calibration.spill_dir: {where!r} is not a directory")
    needed = dense_bytes(operator.n, operator.d)
    free = shutil.disk_usage(where).free
    if free < needed + _FREE_SPACE_MARGIN:
        raise SpillError(
            f"calibration.spill_dir: {where!r} has {free / 2**30:.1f} GiB free; X needs "
            f"{needed / 2**30:.1f} GiB ({operator.n}×{operator.d} float32) plus 0.5 GiB of margin — "
            "choose a larger spill_dir, lower calibration.n, or use calibration.over_budget: recompute"
        )
    try:
        handle = tempfile.TemporaryFile(dir=where, prefix="swap_hw-X-")  # unlinked on creation (POSIX)
    except OSError as exc:
        raise SpillError(f"calibration.spill_dir: cannot create a file in {where!r}: {exc.strerror}") from None
    device = torch.device("cpu")
    try:
        for _, _, block in iter_row_blocks(operator):
            device = block.device  # X's device: rows read back are handed out there
            handle.write(memoryview(block.detach().contiguous().cpu().numpy()).cast("B"))
        handle.flush()
    except OSError as exc:  # e.g. the disk filled up under another writer
        handle.close()
        raise SpillError(f"calibration.spill_dir: writing X to {where!r} failed: {exc.strerror}") from None
    except BaseException:
        handle.close()
        raise
    return OnDiskRows(handle, operator.n, operator.d, block_mb=block_mb, device=device)
