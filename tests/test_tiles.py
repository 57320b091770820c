"""swap_hw.tiles reproduces the tiles aihwkit 1.1.0 builds (so masks align with real tiles)."""

from __future__ import annotations

import pytest
from torch import nn

from swap_hw.noise.hardware import HardwareConfig, _analog_layers, _tile_grid, build_rpu_config
from swap_hw.tiles import split_sizes, tile_grid


def test_split_is_balanced_like_aihwkit():
    assert split_sizes(40, 16) == [14, 13, 13]
    assert split_sizes(64, 16) == [16, 16, 16, 16]
    assert split_sizes(10, 16) == [10]
    assert split_sizes(10, 0) == [10]


@pytest.mark.parametrize("tile", [0, 7, 16, 512])
def test_tile_grid_equals_the_tiles_aihwkit_builds(tile):
    from aihwkit.nn.conversion import convert_to_analog

    model = nn.Sequential(nn.Conv2d(3, 40, 3), nn.Flatten(), nn.Linear(40 * 4 * 4, 10), nn.ReLU(), nn.Linear(10, 33))
    analog = convert_to_analog(model, build_rpu_config(HardwareConfig(tile_size=tile)))
    shapes = {f"{name}.weight": tuple(m.weight.shape) for name, m in model.named_modules()
              if isinstance(m, (nn.Linear, nn.Conv2d))}
    for name, layer in _analog_layers(analog):
        theirs = {(r.start or 0, r.stop, c.start or 0, c.stop) for r, c, _ in _tile_grid(layer.analog_module)}
        ours = tile_grid(shapes[f"{name}.weight"], tile)
        rows, cols = shapes[f"{name}.weight"][0], 1
        for s in shapes[f"{name}.weight"][1:]:
            cols *= s
        # aihwkit writes a single tile's slices as slice(None): compare with the full extent
        theirs = {(a, rows if b is None else b, c, cols if d is None else d) for a, b, c, d in theirs}
        assert theirs == {(t.row_start, t.row_stop, t.col_start, t.col_stop) for t in ours}
