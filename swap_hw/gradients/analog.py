"""`analog`: per-sample gradients through the model as programmed on simulated analog hardware.

torch.func cannot differentiate through aihwkit tiles, so this source implements the
`gradient_model` hook: the digital model is programmed on simulated tiles (swap_hw.noise.hardware,
one programming draw seeded from the cell's seed), drifted to `drift_time` seconds, and a plain
digital copy is built whose weights are the effective hardware weights

    W_hw = diag(α) · W_tile(t),   W_tile(t) = drift(program(W), t) + read noise accumulated up to t,

with α the drift-compensation factor of each tile: one scalar (`compensation` global or
global_exact), one per output column (per_column), or 1 when compensation is off. The base class then takes exact per-sample gradients through that copy:
X[i] = ∂ CE(f(x_i; W_hw, b), y_i) / ∂W_hw, evaluated at W_hw — the gradients a pruner would
measure by back-propagating through the deployed device (weights frozen at one read).

Included: programming noise, drift to `drift_time`, accumulated 1/f read noise at that time,
drift compensation α, keep_pruned_zero (exact zeros left unprogrammed), stuck cells
(`stuck_fraction`, `stuck_at`: fixed at programming, so in the copy's weights), tile splitting.
Excluded: forward IO non-idealities (out_noise, inp_res, out_res) — they act on activations per
forward pass, not on weights, so a weights-only copy cannot carry them; the source therefore
rejects non-zero IO fields rather than silently ignoring them. Biases are digital (exact).

w̄ handed to pruners is still the DIGITAL weights (what a pruner edits and what is programmed
afterwards); only X comes from the hardware. Provenance records `weight_error`
(‖W_hw − W‖₂/‖W‖₂ over all programmed layers), `alpha` (per layer, per tile; with per_column the
mean over the tile's columns, plus `alpha_column_range`: per layer [min, max] over its columns),
`drift_time`, `pruned_zero_fraction` when the model already has exact zeros, and
`stuck_fraction` (realised stuck cells / cells) when `stuck_fraction` > 0.
"""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator
from torch import nn

from ..noise.hardware import HardwareConfig, Seconds, hardware_config_of, program
from ..seeding import derive_seed
from .base import GRADIENT_SOURCES, GradientSource


@GRADIENT_SOURCES.register("analog")
class AnalogSource(GradientSource):
    """Gradients through a digital copy carrying the programmed-and-drifted hardware weights."""

    stochastic = True

    class Params(HardwareConfig):
        drift_time: Seconds = Field(
            86400.0, ge=0.0, validate_default=True,
            description="seconds between programming and gradient collection"
        )

        @field_validator("out_noise", "inp_res", "out_res")
        @classmethod
        def _weights_only(cls, value: float) -> float:
            if value != 0.0:
                raise ValueError(
                    "the analog gradient source carries weights only; out_noise, inp_res and "
                    "out_res must be 0 here (use them in the analog deployment condition)"
                )
            return value

        @field_validator("drift_time")
        @classmethod
        def _characterised_time(cls, value: float, info: ValidationInfo) -> float:
            # noise_model is declared (in HardwareConfig) before drift_time, so it is in info.data
            # when valid; the error then names drift_time, not the whole entry.
            if "noise_model" in info.data:
                HardwareConfig(noise_model=info.data["noise_model"]).check_drift_time(value)
            return value

    def gradient_model(self, model: nn.Module, seed: int, provenance: dict) -> nn.Module:
        hw = program(model, hardware_config_of(self.params), derive_seed(seed, "analog", "program"))
        hw.drift(self.params.drift_time, derive_seed(seed, "analog", "drift"))
        provenance["drift_time"] = self.params.drift_time
        provenance["weight_error"] = hw.relative_weight_error()
        provenance["alpha"] = hw.alphas()
        if hw.config.compensation_mode == "per_column":
            provenance["alpha_column_range"] = hw.alpha_column_range()
        if hw.config.stuck_fraction > 0:
            provenance["stuck_fraction"] = hw.stuck_fraction()
        zero_fraction = hw.pruned_zero_fraction()
        if zero_fraction is not None:
            provenance["pruned_zero_fraction"] = zero_fraction
        return hw.digital_copy()
