"""How a weight tensor is cut into crossbar tiles — aihwkit 1.1.0's own rule, without aihwkit.

A prunable weight of shape (out, in, *kernel) sits on a crossbar as the 2-D matrix W ∈ R^{out×c},
c = in·∏kernel (torch's row-major flattening: the columns of one input channel are contiguous).
aihwkit splits it when a side exceeds the tile size T (`mapping.max_input_size` /
`max_output_size`, both T here): a side of length L becomes ⌈L/T⌉ tiles of balanced lengths,
the first L mod ⌈L/T⌉ of them one longer (e.g. L = 40, T = 16 → 14, 13, 13; not 16, 16, 8).
T = 0 means one tile per layer. This module reproduces that split (tests/test_tiles.py checks it
against the tiles aihwkit actually builds), so the pruners can align masks to tiles and the
deployment stage can count them, neither importing aihwkit.
"""

from __future__ import annotations

from dataclasses import dataclass


def split_sizes(length: int, tile: int) -> list[int]:
    """aihwkit's balanced split of one side: ⌈length/tile⌉ parts differing by at most 1, the longer
    first; [length] when tile ≤ 0 or the side fits."""
    if tile <= 0 or length <= tile:
        return [int(length)]
    parts = -(-length // tile)
    base, extra = divmod(length, parts)
    return [base + (i < extra) for i in range(parts)]


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, columns) of the crossbar matrix of a weight of `shape`: (out, in·∏kernel)."""
    if not shape:
        return (1, 1)
    rows = int(shape[0])
    cols = 1
    for s in shape[1:]:
        cols *= int(s)
    return rows, cols


@dataclass(frozen=True)
class Tile:
    """One tile of a layer: output rows [row_start, row_stop) × input columns [col_start, col_stop)
    of the layer's crossbar matrix."""

    row_start: int
    row_stop: int
    col_start: int
    col_stop: int

    @property
    def rows(self) -> int:
        return self.row_stop - self.row_start

    @property
    def cols(self) -> int:
        return self.col_stop - self.col_start

    @property
    def cells(self) -> int:
        return self.rows * self.cols


def tile_grid(shape: tuple[int, ...], tile: int) -> list[Tile]:
    """The tiles of one weight tensor for tile size `tile`, input-split major (aihwkit's order:
    for each input part, every output part)."""
    rows, cols = matrix_shape(shape)
    out: list[Tile] = []
    col = 0
    for width in split_sizes(cols, tile):
        row = 0
        for height in split_sizes(rows, tile):
            out.append(Tile(row, row + height, col, col + width))
            row += height
        col += width
    return out


@dataclass(frozen=True)
class LayerUsage:
    """What one weight tensor occupies on crossbars of tile size T, counted exactly from its zeros.

    tiles:          tiles of the dense mapping (swap_hw.tiles.tile_grid)
    tiles_used:     tiles holding at least one non-zero weight — the ones that must be programmed
                    (an all-zero tile is simply not programmed)
    cells:          crosspoints of the used tiles (each holds one weight; aihwkit's pair converters
                    store it on two devices, G+ and G−)
    nonzero:        non-zero weights (the cells that must be programmed when exact zeros are left
                    unprogrammed, `keep_pruned_zero`)
    input_lines:    per matrix-vector product, the input lines driven: for each used tile, its
                    inputs (columns of W) with at least one non-zero weight in that tile
    output_lines:   per matrix-vector product, the output lines converted: for each used tile, its
                    outputs (rows of W) with at least one non-zero weight in that tile
    A periphery that skips empty lines reads exactly these; a dense one reads every line of every
    used tile (tile rows + columns), which the dense model's counts give.
    """

    name: str
    tiles: int
    tiles_used: int
    cells: int
    nonzero: int
    input_lines: int
    output_lines: int


def layer_usage(name: str, weight, tile: int) -> LayerUsage:
    """Count `weight` (a tensor, any shape with out first) on tiles of size `tile` (0 = one per layer)."""
    nonzero = weight.detach().reshape(weight.shape[0], -1) != 0
    tiles = tile_grid(tuple(weight.shape), tile)
    used = cells = inputs = outputs = 0
    for t in tiles:
        block = nonzero[t.row_start:t.row_stop, t.col_start:t.col_stop]
        if not bool(block.any()):
            continue
        used += 1
        cells += t.cells
        inputs += int(block.any(dim=0).sum())
        outputs += int(block.any(dim=1).sum())
    return LayerUsage(name, len(tiles), used, cells, int(nonzero.sum()), inputs, outputs)
