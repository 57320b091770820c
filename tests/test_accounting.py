"""Hardware accounting (deploy/accounting.py, swap_hw.tiles): exact counts on hand-built masks."""

from __future__ import annotations

import torch
from torch import nn

from swap_hw.deploy.accounting import mvms_per_inference, tile_measurements
from swap_hw.tiles import layer_usage


def test_counts_on_a_hand_built_mask():
    # 10 × 12 weight, tile 4: rows split 4,3,3 and columns 4,4,4 → 9 tiles
    w = torch.zeros(10, 12)
    w[0, 0] = 1.0  # tile (rows 0–3, cols 0–3): one input line, one output line
    w[5, 5] = 2.0  # tile (rows 4–6, cols 4–7)
    w[6, 7] = -1.0  # same tile: inputs 5 and 7, outputs 5 and 6
    w[9, 11] = 3.0  # tile (rows 7–9, cols 8–11)
    u = layer_usage("w", w, 4)
    assert (u.tiles, u.tiles_used) == (9, 3)
    assert u.cells == 4 * 4 + 3 * 4 + 3 * 4
    assert u.nonzero == 4
    assert u.input_lines == 1 + 2 + 1
    assert u.output_lines == 1 + 2 + 1


def test_dense_and_empty_layers():
    dense = layer_usage("w", torch.ones(5, 7), 0)  # one tile per layer
    assert (dense.tiles, dense.tiles_used, dense.cells, dense.input_lines, dense.output_lines) == (1, 1, 35, 7, 5)
    empty = layer_usage("w", torch.zeros(5, 7), 3)
    assert (empty.tiles, empty.tiles_used, empty.cells, empty.input_lines, empty.output_lines) == (6, 0, 0, 0, 0)


def test_measurements_per_layer_sum_to_the_totals_and_scale_with_conv_positions():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    with torch.no_grad():
        model[3].weight[:, :24] = 0.0  # the first half of the Linear's inputs pruned
    mvms = mvms_per_inference(model, torch.zeros(1, 2, 6, 6))
    assert mvms == {"0": 16, "3": 1}  # 4×4 output positions; one MVM for the Linear
    ms = tile_measurements(model, torch.zeros(7, 2, 6, 6), 8, keep_pruned_zero=False)
    total = {m.metric: m.value for m in ms if not m.tags}
    layers = [m for m in ms if m.tags]
    for metric, value in total.items():
        assert sum(m.value for m in layers if m.metric == f"layer_{metric}") == value
    # Linear 5 × 48 at T = 8 → 6 input parts of 8 × one output part; 3 of them all-zero
    linear = {m.metric: m.value for m in layers if m.tags["layer"] == "3.weight"}
    assert linear["layer_tiles"] == 3 and linear["layer_tiles_freed"] == 3
    assert linear["layer_row_reads"] == 24 and linear["layer_column_reads"] == 15
    conv = {m.metric: m.value for m in layers if m.tags["layer"] == "0.weight"}
    assert conv["layer_tiles"] == 3  # 3 × 18 at T = 8: columns 6, 6, 6 → 3 tiles
    assert conv["layer_row_reads"] == 18 * 16 and conv["layer_column_reads"] == 3 * 3 * 16
    kept_zero = {m.metric: m.value for m in tile_measurements(model, torch.zeros(1, 2, 6, 6), 8, True) if not m.tags}
    assert kept_zero["cells_programmed"] == 3 * 18 + 5 * 24


def test_grouped_convolutions_stay_digital_and_are_not_counted():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    ms = tile_measurements(model, torch.zeros(1, 4, 6, 6), 0, keep_pruned_zero=False)
    assert {m.tags["layer"] for m in ms if m.tags} == {"2.weight"}
