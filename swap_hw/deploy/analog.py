"""`analog`: the (pruned) model deployed on simulated analog in-memory hardware (aihwkit).

For each of `draws` independent programming draws k (seed derived from (seed, k)) the model is
programmed once (swap_hw.noise.hardware.program), then drifted to every time in `drift_times`
(seconds after programming, increasing). aihwkit drifts from the programmed state: the drift
exponents ν are fixed at programming, the accumulated read noise is drawn afresh for each time
(seed derived from (seed, k, t), so a measurement at time t does not depend on which other times
are listed). At each (k, t) the test split is evaluated through the analog forward pass
(including IO noise / quantisation if configured, seeded from (seed, k, t)).

Measurements, each tagged {"drift_time": t (s), "draw": k}:
- "accuracy": top-1 fraction in [0, 1];
- "loss": mean cross-entropy, nats;
- "weight_error": ‖W_hw − W‖₂/‖W‖₂ over all programmed layers (W_hw = diag(α)·W_tile per tile:
  one α per tile, or one per output column with `compensation: per_column`);
- "pruned_zero_fraction": fraction of exactly-zero weights still exactly zero on hardware, in
  [0, 1] — emitted only when the model has exact zeros (a dense model has nothing to report);
- "stuck_fraction": realised fraction of analog cells stuck (stuck cells / cells, in [0, 1)),
  fixed per draw at programming, so the same value at every drift time of that draw — emitted
  only when `stuck_fraction` > 0.
Mean ± CI over draws is the report's job.

Hardware accounting (deploy/accounting.py), untagged because it depends on the mask alone: the
crossbar tiles of size `tile_size` the model programs ("tiles") and frees ("tiles_freed"), the cells
programmed, and the input / output lines read per inference ("row_reads", "column_reads"); per
layer as `layer_<metric>` with the text tag "layer" (shown by `report --layers`).

Cost: `draws` conversions + programmings, and draws·len(drift_times) drifts and test passes.
"""

from __future__ import annotations

import torch
from pydantic import Field, ValidationInfo, field_validator
from torch import nn

from ..noise.hardware import HardwareConfig, Seconds, hardware_config_of, program
from ..seeding import derive_seed
from .accounting import tile_measurements
from .base import CONDITIONS, Condition, Measurement


@CONDITIONS.register("analog")
class AnalogCondition(Condition):
    """Accuracy and loss on simulated analog hardware, per drift time and programming draw."""

    class Params(HardwareConfig):
        drift_times: list[Seconds] = Field(
            [1.0, 3600.0, 86400.0, 31536000.0],
            min_length=1,
            validate_default=True,  # the default times are not all valid for every noise model
            description="seconds after programming at which to evaluate (1 s, 1 h, 1 day, 1 year)",
        )
        draws: int = Field(5, ge=1, le=10000, description="independent programming draws per drift time")

        @field_validator("drift_times")
        @classmethod
        def _check_times(cls, times: list[float], info: ValidationInfo) -> list[float]:
            # noise_model (declared in HardwareConfig, before drift_times) is in info.data when
            # valid; checking here makes the error name drift_times.
            if "noise_model" in info.data:
                device = HardwareConfig(noise_model=info.data["noise_model"])
                for t in times:
                    device.check_drift_time(t)
            if len(set(times)) != len(times):
                raise ValueError(f"drift_times has repeated entries: {times}")
            return times

    def evaluate(
        self, model: nn.Module, test: tuple[torch.Tensor, torch.Tensor], seed: int
    ) -> list[Measurement]:
        x, y = test
        config = hardware_config_of(self.params)
        times = sorted(float(t) for t in self.params.drift_times)
        out: list[Measurement] = []
        for k in range(self.params.draws):
            hw = program(model, config, derive_seed(seed, "analog-condition", "program", k))
            for t in times:
                hw.drift(t, derive_seed(seed, "analog-condition", "drift", k, t))
                acc, loss = hw.accuracy_and_loss(x, y, derive_seed(seed, "analog-condition", "forward", k, t))
                tags = {"drift_time": t, "draw": k}
                out.append(Measurement("accuracy", acc, tags))
                out.append(Measurement("loss", loss, tags))
                out.append(Measurement("weight_error", hw.relative_weight_error(), tags))
                zero_fraction = hw.pruned_zero_fraction()
                if zero_fraction is not None:
                    out.append(Measurement("pruned_zero_fraction", zero_fraction, tags))
                if config.stuck_fraction > 0:
                    out.append(Measurement("stuck_fraction", hw.stuck_fraction(), tags))
        # what the mask frees on this chip's tiles: exact counts, the same for every draw and time
        out.extend(tile_measurements(model, x, config.tile_size, config.keep_pruned_zero))
        return out
