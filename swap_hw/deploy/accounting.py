"""Hardware accounting of a (pruned) model on crossbar tiles: exact counts from its zeros.

For every analog-mapped layer (Linear, and Conv with groups = 1 — grouped / depthwise convolutions
stay digital, as in swap_hw.noise.hardware.program) and the tile size T of the hardware,
swap_hw.tiles.layer_usage counts the tiles that must be programmed, their cells, the non-zero
weights and the lines read per matrix-vector product (MVM). Per inference, a Linear layer does one
MVM per example and a Conv layer one per output position (H_out·W_out), found by running one test
example through the model; line reads per inference are the per-MVM counts times that.

Measurements (no drift or draw tags: they depend on the mask only), in total under the names
below and per layer under `layer_<name>` with the text tag "layer" (the weight's name), which
`report --layers` lists (a text tag is no report column, so totals and layers never mix):

    tiles                   tiles programmed (holding a non-zero weight)
    tiles_freed             tiles of the dense mapping left unprogrammed (all-zero)
    cells_programmed        cells of the programmed tiles (× 2 devices under a pair converter);
                            only the non-zero weights when `keep_pruned_zero` leaves zeros unprogrammed
    row_reads               input lines driven per inference (per-MVM count × MVMs per inference)
    column_reads            output lines converted per inference
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..tiles import LayerUsage, layer_usage
from .base import Measurement

METRICS = ("tiles", "tiles_freed", "cells_programmed", "row_reads", "column_reads")


def analog_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(module name, module) of the layers aihwkit maps onto tiles, in module order."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) or (isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and m.groups == 1):
            out.append((name, m))
    return out


@torch.no_grad()
def mvms_per_inference(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """module name → matrix-vector products per inference of one example (1 for Linear; the
    number of output positions for a convolution), from one forward pass in eval mode."""
    counts: dict[str, int] = {}
    hooks = []
    for name, m in analog_layers(model):
        def record(module, inputs, output, name=name):
            per_example = output[0] if output.dim() > 1 else output
            # Linear: (…, out) → one MVM per leading position; Conv: (C_out, *spatial) → prod(spatial)
            counts[name] = int(per_example.numel() // (module.out_features if isinstance(module, nn.Linear)
                                                         else module.out_channels))
        hooks.append(m.register_forward_hook(record))
    was_training = model.training
    try:
        model.eval()
        model(example[:1])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return counts


def usage(model: nn.Module, tile_size: int) -> list[LayerUsage]:
    """LayerUsage of every analog-mapped layer's weight (name `<module>.weight`)."""
    return [layer_usage(f"{name}.weight" if name else "weight", m.weight, tile_size)
            for name, m in analog_layers(model)]


def tile_measurements(model: nn.Module, example: torch.Tensor, tile_size: int,
                      keep_pruned_zero: bool) -> list[Measurement]:
    """The accounting measurements (module docstring) per layer and in total."""
    mvms = mvms_per_inference(model, example)
    totals: dict[str, float] = dict.fromkeys(METRICS, 0.0)
    out: list[Measurement] = []
    for (name, _), u in zip(analog_layers(model), usage(model, tile_size)):
        per = mvms.get(name, 1)
        values: dict[str, Any] = {
            "tiles": u.tiles_used,
            "tiles_freed": u.tiles - u.tiles_used,
            "cells_programmed": u.nonzero if keep_pruned_zero else u.cells,
            "row_reads": u.input_lines * per,
            "column_reads": u.output_lines * per,
        }
        for metric, value in values.items():
            out.append(Measurement(f"layer_{metric}", float(value), {"layer": u.name}))
            totals[metric] += value
    out.extend(Measurement(metric, float(value), {}) for metric, value in totals.items())
    return out
