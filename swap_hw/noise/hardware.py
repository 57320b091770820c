"""Simulated analog in-memory hardware (aihwkit 1.1.0, pure-PyTorch inference tiles).

The only module that imports aihwkit; it does so lazily (the import costs ~2 s), inside functions.

What is simulated
-----------------
A digital model is copied onto analog crossbar tiles (`convert_to_analog`, one
`TorchInferenceTile` per Linear/Conv layer, split into several tiles when a layer has more than
`tile_size` inputs or outputs). Biases, normalisation layers and grouped/depthwise convolutions
(aihwkit maps only groups = 1) stay digital. Each tile maps its weights to device
conductances G (µS) scaled so that the tile's largest |w| sits at `g_max`, then:

1. programming (`program`): G_prog = G_target + σ_prog(G_target)·ξ, clipped to G ≥ 0, with σ_prog
   the noise model's fitted polynomial (PCM: 0.26 µS at G = 0 up to ~1 µS at g_max) times
   `prog_noise_scale`. Drift coefficients ν are drawn once here, per device.
2. drift to time t seconds after programming (`AnalogModel.drift`): PCM-like models give
   G(t) = G_prog·((t + t0)/t0)^(−ν) (t0 = 20 s) plus 1/f read noise accumulated up to t (fresh
   draw per call, scaled by `read_noise_scale`). Every call drifts from the *programmed* state,
   so one programming draw can be drifted to increasing times without reprogramming.
3. global drift compensation (`drift_compensation`, default on): after programming each tile
   reads out the mean |output| for unit inputs (baseline); after drift it reads them out again
   and multiplies every later output by the scalar α = baseline / current (≈ 1 at t ≈ 0, ≈ 2 for
   PCM after a year). Without compensation α = 1.

The effective weights the hardware computes with are W_hw = α·W_tile (per tile), where W_tile is
`get_weights()` of the tile after programming and drift (digital mapping scales applied).
`AnalogModel.digital_copy()` is a plain torch model carrying W_hw, used for per-sample gradients.

Noise models (`noise_model`)
----------------------------
- "pcm": aihwkit's `PCMLikeNoiseModel` (Nandakumar et al. 2019), g_max = 25 µS by default. All
  drift times t ≥ 0 allowed.
- "reram_wan2022": `ReRamWan2022NoiseModel` (Wan et al., Nature 2022): deviations fitted only at
  t ∈ {1, 86400, 172800} s; other drift times raise an error. aihwkit gives it a single noise
  scale, set here by `prog_noise_scale` (read_noise_scale and drift_scale must stay 1).
- "reram_cmo": `ReRamCMONoiseModel` (CMO/HfOx ReRAM, IBM Zurich), one device per cross-point,
  g_min = 9 µS, g_max = 88.2 µS by default; conductance relaxation ∝ log t, so t must be > 0
  (t = 0 means "right after programming" and skips relaxation).
- "custom": `StateIndependentNoiseModel`: programming noise σ = `custom_prog_noise_us` µS
  (state-independent) × prog_noise_scale, drift ν ~ |N(custom_drift_nu_mean,
  custom_drift_nu_std²)| × drift_scale, multiplicative 1/f read noise × read_noise_scale.

Measured facts (aihwkit 1.1.0, trained digits MLPNet magnitude-pruned to 70 % / 90 %, 5 draws;
`python bench/noise_costs.py --only zeros`, see docs/noise_worlds.md): a pruned weight does NOT
stay zero after programming. Its two devices (target 0 µS) each receive programming noise, clipped
at 0 µS, so a pair is exactly 0 only when both draws clip: ~25 % of pruned weights for PCM,
ReRAM-Wan and the custom model; ReRAM-CMO 0 % (one device at a mid conductance). Drift keeps an
exact-zero PCM pair at zero, and PCM's read noise (relative σ ≈ 1 at low conductance after a
day, clipped at 0) zeroes more pairs: ~35 % after one day. With `keep_pruned_zero=True` a cell whose target weight is exactly
zero is left unprogrammed (contributes exactly 0) through programming and every drift; this is
implemented by wrapping the tile's noise model so the mask is applied to the programmed and
drifted weights *before* aihwkit computes its drift-compensation baseline and α, so α stays
consistent (editing tile weights after the fact would not be: `program_weights` keeps its
reference from the first `set_weights`, and α would be computed on unmasked weights).
`AnalogModel.pruned_zero_fraction()` reports the fraction of exactly-zero targets still exactly
zero in W_hw.

Forward (IO) non-idealities
---------------------------
Default: perfect periphery (`out_noise = inp_res = out_res = 0`), so that the `analog` gradient
source — which can only carry weights — and the `analog` deployment condition simulate the same
device, and the digital copy reproduces the analog forward exactly. aihwkit's own defaults are
out_noise = 0.06, inp_res = 1/126 (7-bit DAC), out_res = 1/510 (9-bit ADC); set them for a
realistic periphery (then aihwkit's noise management ABS_MAX, iterative bound management,
inp_bound = 1, out_bound = 12 apply). Short-term weight read noise (`forward.w_noise`) is not
offered: aihwkit's torch tiles raise ConfigError("forward.w_noise not supported in torch tile").
Other torch-tile limits found: only AnalogMVType.ONE_PASS (others raise NotImplementedError /
ConfigError), no IR drop, no analog bias, no S-shaped output non-linearity.
A scenario naming one of these features (`TORCH_TILE_UNSUPPORTED`, e.g. `w_noise: 0.02`) fails
validation with a message saying aihwkit's torch tiles cannot simulate it, instead of a generic
"unknown key" or a crash mid-run.

Randomness: aihwkit draws from torch's global RNG; every call here runs inside
`torch_global_seed(seed)` so results depend only on the seeds passed in.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from typing import Annotated, Any, Literal, Optional

import torch
from pydantic import BeforeValidator, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from torch import nn

from ..registry import Params
from ..errors import ParameterError
from ..seeding import torch_global_seed

NoiseModelName = Literal["pcm", "reram_wan2022", "reram_cmo", "custom"]

# Times (s) at which aihwkit's ReRamWan2022NoiseModel has fitted deviation data.
WAN2022_TIMES: tuple[float, ...] = (1.0, 86400.0, 172800.0)

# Default conductance ranges (µS) of each noise model's converter in aihwkit 1.1.0.
_DEFAULT_G_RANGE: dict[str, tuple[float, float]] = {
    "pcm": (0.0, 25.0),
    "reram_wan2022": (0.0, 25.0),
    "reram_cmo": (9.0, 88.199997),
    "custom": (0.0, 25.0),
}


# Features of aihwkit's RPU configurations that its pure-PyTorch tiles refuse (aihwkit 1.1.0,
# TorchSimulatorTile / AnalogMVM.check_support / TorchInferenceTile): key a user might write →
# (what it is, what aihwkit raises). Only the torch tiles work under this torch, so none is offered.
TORCH_TILE_UNSUPPORTED: dict[str, tuple[str, str]] = {
    "w_noise": ("short-term weight read noise on every forward pass", "forward.w_noise not supported in torch tile"),
    "w_noise_type": ("short-term weight read noise on every forward pass", "forward.w_noise not supported in torch tile"),
    "ir_drop": ("IR drop along the crossbar lines", "IR drop not supported in torch tile"),
    "mv_type": ("multi-pass (bit-sliced / split) matrix-vector products", "Only AnalogMVType.ONE_PASS supported as forward.mv_type"),
    "out_nonlinearity": ("an S-shaped output non-linearity", "S-shaped non-linearity not supported in torch tile"),
    "slope_calibration": ("output slope calibration", "Slope calibration not supported in torch tile"),
    "v_offset_std": ("voltage offsets", "Voltage offset or R-series not supported in torch tile"),
    "v_offset_w_min": ("voltage offsets", "Voltage offset or R-series not supported in torch tile"),
    "r_series": ("series resistance", "Voltage offset or R-series not supported in torch tile"),
    "w_read_asymmetry_dtod": ("device polarity read asymmetry", "Device polarity read dependence is not supported in torch tile"),
    "analog_bias": ("biases stored on the crossbar (they stay digital here)", "Analog bias is not supported for the torch tile"),
}



_UNITS = {"s": 1.0, "sec": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}


def parse_seconds(value: Any) -> Any:
    """A time after programming in seconds: a number, or text with a unit — "1s", "30min", "1h",
    "1d", "1w", "1y" (365 days). Anything else is left for the field's own validation to refuse."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-z]+)?\s*", value)
        if match and (match.group(2) or "s") in _UNITS:
            return float(match.group(1)) * _UNITS[match.group(2) or "s"]
        raise ValueError(f"{value!r} is not a time; give seconds or a number with a unit: "
                         f"{', '.join(_UNITS)} (e.g. 3600, '1h', '1d', '1y')")
    return value


# seconds after programming; YAML and Python may also write "1h", "1d", "1y"
Seconds = Annotated[float, BeforeValidator(parse_seconds)]

def _reject_torch_tile_features(data: Any) -> None:
    """Raise a ValidationError located at the first key of `data` the torch tiles cannot simulate."""
    if not isinstance(data, dict):
        return
    for key in data:
        if key in TORCH_TILE_UNSUPPORTED:
            what, raised = TORCH_TILE_UNSUPPORTED[key]
            message = (
                f"not supported: aihwkit's pure-PyTorch inference tiles cannot simulate {what} "
                f"(aihwkit raises {raised!r}), and its C++ tiles do not run under this torch"
            )
            raise ValidationError.from_exception_data(
                "HardwareConfig",
                [InitErrorDetails(
                    type=PydanticCustomError("torch_tile_unsupported", "{message}", {"message": message}),
                    loc=(key,),
                    input=data[key],
                )],
            )


class HardwareConfig(Params):
    """The simulated analog device and periphery; see the module docstring for the physics."""

    @model_validator(mode="before")
    @classmethod
    def _torch_tiles_can_simulate(cls, data: Any) -> Any:
        _reject_torch_tile_features(data)
        return data

    noise_model: NoiseModelName = Field(
        "pcm",
        description="device noise model: pcm (PCMLikeNoiseModel), reram_wan2022, reram_cmo, "
        "custom (StateIndependentNoiseModel)",
    )
    prog_noise_scale: float = Field(
        1.0, ge=0.0, description="multiplier of the programming noise (0 = exact programming)"
    )
    read_noise_scale: float = Field(
        1.0, ge=0.0, description="multiplier of the accumulated 1/f read noise (not reram_wan2022)"
    )
    drift_scale: float = Field(
        1.0, ge=0.0, description="multiplier of the drift coefficients ν (not reram_wan2022)"
    )
    custom_prog_noise_us: float = Field(
        0.2, ge=0.0, description="custom model only: programming noise std, µS, state-independent"
    )
    custom_drift_nu_mean: float = Field(
        0.1, ge=0.0, description="custom model only: mean of the drift exponent ν"
    )
    custom_drift_nu_std: float = Field(
        0.05, ge=0.0, description="custom model only: device-to-device std of ν"
    )
    g_max: Optional[float] = Field(
        None, gt=0.0, description="conductance (µS) the largest |w| of a tile maps to; None = model default"
    )
    g_min: Optional[float] = Field(
        None, ge=0.0, description="conductance (µS) of the logical zero; None = model default"
    )
    drift_compensation: bool = Field(
        True, description="global drift compensation: scale each tile's outputs by α = baseline/current readout"
    )
    keep_pruned_zero: bool = Field(
        False,
        description="leave cells whose target weight is exactly 0 unprogrammed (they stay exactly 0 "
        "through programming and drift); False = program them like any other target",
    )
    out_noise: float = Field(
        0.0, ge=0.0, le=10.0, description="additive output (ADC) noise std, in units of the tile's normalised output; aihwkit default 0.06"
    )
    inp_res: float = Field(
        0.0, ge=0.0, lt=1.0, description="input DAC step as a fraction of the input range, 0 = ideal; aihwkit default 1/126"
    )
    out_res: float = Field(
        0.0, ge=0.0, lt=1.0, description="output ADC step as a fraction of the output range, 0 = ideal; aihwkit default 1/510"
    )
    tile_size: int = Field(
        512, ge=0, description="max rows and columns of one crossbar tile (larger layers are split); 0 = one tile per layer"
    )

    @model_validator(mode="after")
    def _check_model_specific(self) -> "HardwareConfig":
        if self.noise_model == "reram_wan2022" and (self.read_noise_scale != 1.0 or self.drift_scale != 1.0):
            raise ValueError(
                "reram_wan2022 has one noise scale in aihwkit: set prog_noise_scale; "
                "read_noise_scale and drift_scale must stay 1"
            )
        defaults = HardwareConfig.model_fields
        if self.noise_model != "custom":
            changed = [
                k
                for k in ("custom_prog_noise_us", "custom_drift_nu_mean", "custom_drift_nu_std")
                if getattr(self, k) != defaults[k].default
            ]
            if changed:
                raise ValueError(f"{', '.join(changed)} only apply to noise_model 'custom'")
        g_min, g_max = self.g_range
        if g_min >= g_max:
            raise ValueError(f"g_min ({g_min} µS) must be below g_max ({g_max} µS)")
        return self

    @property
    def g_range(self) -> tuple[float, float]:
        """(g_min, g_max) in µS after applying the noise model's defaults."""
        d_min, d_max = _DEFAULT_G_RANGE[self.noise_model]
        return (d_min if self.g_min is None else self.g_min, d_max if self.g_max is None else self.g_max)

    @property
    def perfect_io(self) -> bool:
        return self.out_noise == 0.0 and self.inp_res == 0.0 and self.out_res == 0.0

    def check_drift_time(self, t: float) -> None:
        """Raise ValueError if this noise model cannot be evaluated at t seconds."""
        if not math.isfinite(t) or t < 0:
            raise ValueError(f"drift time must be a finite number of seconds ≥ 0, got {t}")
        if self.noise_model == "reram_wan2022" and float(t) not in WAN2022_TIMES:
            raise ValueError(
                f"reram_wan2022 is characterised only at t ∈ {list(WAN2022_TIMES)} s, got {t}"
            )


def hardware_config_of(params: Params) -> HardwareConfig:
    """The HardwareConfig fields of a member's Params that extends HardwareConfig."""
    return HardwareConfig(**{k: getattr(params, k) for k in HardwareConfig.model_fields})


# --- aihwkit objects (lazy) -------------------------------------------------------------------


def _noise_model(config: HardwareConfig) -> Any:
    from aihwkit.inference import (
        PCMLikeNoiseModel,
        ReRamCMONoiseModel,
        ReRamWan2022NoiseModel,
        SinglePairConductanceConverter,
        StateIndependentNoiseModel,
    )

    g_min, g_max = config.g_range
    if config.noise_model == "reram_cmo":
        return ReRamCMONoiseModel(
            g_max=g_max,
            g_min=g_min,
            prog_noise_scale=config.prog_noise_scale,
            read_noise_scale=config.read_noise_scale,
            drift_scale=config.drift_scale,
        )
    converter = SinglePairConductanceConverter(g_max=g_max, g_min=g_min)
    if config.noise_model == "pcm":
        return PCMLikeNoiseModel(
            g_converter=converter,
            prog_noise_scale=config.prog_noise_scale,
            read_noise_scale=config.read_noise_scale,
            drift_scale=config.drift_scale,
        )
    if config.noise_model == "reram_wan2022":
        return ReRamWan2022NoiseModel(g_converter=converter, noise_scale=config.prog_noise_scale)
    return StateIndependentNoiseModel(
        g_converter=converter,
        prog_coeff=[config.custom_prog_noise_us, 0.0, 0.0],
        prog_noise_scale=config.prog_noise_scale,
        drift_nu_mean=config.custom_drift_nu_mean,
        drift_nu_std=config.custom_drift_nu_std,
        drift_scale=config.drift_scale,
        read_noise_scale=config.read_noise_scale,
    )


@functools.lru_cache(maxsize=1)
def _unprogrammed_zeros_class() -> type:
    """A noise-model wrapper leaving exactly-zero target weights unprogrammed (built lazily)."""
    from aihwkit.inference.noise.base import BaseNoiseModel

    class UnprogrammedZeros(BaseNoiseModel):
        """Delegates to `base`, then forces cells whose target weight is exactly 0 to 0.

        The mask is taken from the target weights at programming time and carried with the
        drift parameters, so every later drift of the same programming draw applies it too.
        """

        def __init__(self, base: Any):
            super().__init__(base.g_converter)
            self.base = base

        @torch.no_grad()
        def apply_programming_noise(self, weights: torch.Tensor) -> tuple[torch.Tensor, Any]:
            keep = weights != 0
            programmed, drift_params = self.base.apply_programming_noise(weights)
            return programmed * keep, (drift_params, keep)

        @torch.no_grad()
        def apply_drift_noise(self, weights: torch.Tensor, drift_noise_parameters: Any, t_inference: float) -> torch.Tensor:
            drift_params, keep = drift_noise_parameters
            return self.base.apply_drift_noise(weights, drift_params, t_inference) * keep

        def apply_noise(self, weights: torch.Tensor, t_inference: float) -> torch.Tensor:
            return self.base.apply_noise(weights, t_inference) * (weights != 0)

    return UnprogrammedZeros


def build_rpu_config(config: HardwareConfig) -> Any:
    """The aihwkit `TorchInferenceRPUConfig` for `config` (pure-PyTorch tiles)."""
    from aihwkit.inference import GlobalDriftCompensation
    from aihwkit.simulator.configs import TorchInferenceRPUConfig
    from aihwkit.simulator.parameters.io import IOParameters

    rpu = TorchInferenceRPUConfig()
    rpu.noise_model = _noise_model(config)
    rpu.drift_compensation = GlobalDriftCompensation() if config.drift_compensation else None
    if config.perfect_io:
        rpu.forward = IOParameters(is_perfect=True)
    else:
        rpu.forward = IOParameters(out_noise=config.out_noise, inp_res=config.inp_res, out_res=config.out_res)
    rpu.mapping.max_input_size = config.tile_size
    rpu.mapping.max_output_size = config.tile_size
    return rpu


# --- the programmed model -----------------------------------------------------------------------


def _analog_layers(analog: nn.Module) -> list[tuple[str, nn.Module]]:
    """(module name, aihwkit layer) for every converted Linear/Conv layer."""
    return [(name, m) for name, m in analog.named_modules() if hasattr(m, "analog_module")]


def _tile_grid(analog_module: nn.Module) -> list[tuple[slice, slice, nn.Module]]:
    """(output rows, input columns, tile) of each tile making up one layer's 2-D weight."""
    if not hasattr(analog_module, "array"):  # a single tile
        return [(slice(None), slice(None), analog_module)]
    grid, in_start = [], 0
    for in_size, in_tiles in zip(analog_module.in_sizes, analog_module.array):
        out_start = 0
        for out_size, tile in zip(analog_module.out_sizes, in_tiles):
            grid.append((slice(out_start, out_start + out_size), slice(in_start, in_start + in_size), tile))
            out_start += out_size
        in_start += in_size
    return grid


class AnalogModel:
    """A digital model programmed onto simulated analog tiles (one programming draw).

    Build with `program(model, config, seed)`; then `drift(t, seed)` any number of times (each
    from the programmed state), read `effective_weights()`, evaluate with `accuracy_and_loss`.
    """

    def __init__(self, digital: nn.Module, analog: nn.Module, config: HardwareConfig, seed: int):
        self._digital = digital  # private deep copy of the caller's model (targets)
        self.analog = analog
        self.config = config
        self.seed = int(seed)
        self.drift_time: Optional[float] = None  # None = right after programming, not drifted

    def drift(self, t: float, seed: int) -> "AnalogModel":
        """Drift every tile to t seconds after programming (fresh read noise), seeded; returns self."""
        from aihwkit.inference import drift_analog_weights

        try:
            self.config.check_drift_time(float(t))
        except ValueError as exc:
            raise ParameterError(str(exc)) from None
        with torch_global_seed(seed):
            drift_analog_weights(self.analog, float(t))
        self.drift_time = float(t)
        return self

    @torch.no_grad()
    def effective_weights(self) -> dict[str, torch.Tensor]:
        """name → W_hw = α·W_tile (shaped like the digital parameter) of every analog layer."""
        digital_params = dict(self._digital.named_parameters())
        out: dict[str, torch.Tensor] = {}
        for name, layer in _analog_layers(self.analog):
            pname = f"{name}.weight" if name else "weight"
            weight2d = layer.get_weights()[0].detach().clone().float()
            if self.config.drift_compensation:
                for rows, cols, tile in _tile_grid(layer.analog_module):
                    weight2d[rows, cols] *= tile.alpha.detach().float().reshape(-1)[0]
            out[pname] = weight2d.reshape(digital_params[pname].shape)
        return out

    def target_weights(self) -> dict[str, torch.Tensor]:
        """name → the digital weights that were programmed (the caller's model at `program`)."""
        params = dict(self._digital.named_parameters())
        return {
            (f"{n}.weight" if n else "weight"): params[f"{n}.weight" if n else "weight"].detach().clone()
            for n, _ in _analog_layers(self.analog)
        }

    def alphas(self) -> dict[str, list[float]]:
        """name → drift-compensation scalar α of each tile of that layer (1.0 when compensation is off)."""
        out = {}
        for name, layer in _analog_layers(self.analog):
            vals = []
            for _, _, tile in _tile_grid(layer.analog_module):
                vals.append(float(tile.alpha.reshape(-1)[0]) if self.config.drift_compensation else 1.0)
            out[f"{name}.weight" if name else "weight"] = vals
        return out

    def digital_copy(self) -> nn.Module:
        """A plain torch model (eval mode) computing with W_hw and the digital biases."""
        from ..models import apply_weights

        return apply_weights(self._digital, self.effective_weights())

    def relative_weight_error(self) -> float:
        """‖W_hw − W‖₂ / ‖W‖₂ over all analog layers' weights (dimensionless, ≥ 0)."""
        hw, target = self.effective_weights(), self.target_weights()
        num = sum(float((hw[k] - target[k]).pow(2).sum()) for k in target)
        den = sum(float(target[k].pow(2).sum()) for k in target)
        return math.sqrt(num / den) if den > 0 else math.inf

    def pruned_zero_fraction(self) -> Optional[float]:
        """Fraction (in [0, 1]) of exactly-zero target weights still exactly zero in W_hw.

        None when the programmed model has no exactly-zero weight.
        """
        hw, target = self.effective_weights(), self.target_weights()
        zeros = sum(int((target[k] == 0).sum()) for k in target)
        if zeros == 0:
            return None
        kept = sum(int(((target[k] == 0) & (hw[k] == 0)).sum()) for k in target)
        return kept / zeros

    @torch.no_grad()
    def accuracy_and_loss(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[float, float]:
        """Top-1 accuracy (fraction) and mean cross-entropy (nats) of the analog forward pass.

        Seeded because IO noise (out_noise) draws from the global RNG on every forward.
        """
        from ..models.evaluate import accuracy_and_loss

        with torch_global_seed(seed):
            return accuracy_and_loss(self.analog, x, y)


def program(model: nn.Module, config: HardwareConfig, seed: int) -> AnalogModel:
    """Copy `model` onto analog tiles and program them once (programming noise + ν draws), seeded.

    Every Linear and Conv layer goes on tiles except grouped / depthwise convolutions (e.g.
    MobileNet's), which aihwkit cannot map and which therefore stay digital (exact). The caller's
    model is not modified. The result is in eval mode, not yet drifted (`drift_time is None`;
    call `drift(t, seed)` before reading drift-dependent figures).
    """
    from aihwkit.inference import program_analog_weights
    from aihwkit.nn.conversion import convert_to_analog

    digital = copy.deepcopy(model).eval()
    rpu = build_rpu_config(config)
    # aihwkit's analog convolutions support groups = 1 only: grouped / depthwise ones stay digital.
    grouped = [
        name
        for name, m in digital.named_modules()
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and m.groups != 1
    ]
    analog = convert_to_analog(digital, rpu, inplace=False, exclude_modules=grouped)
    analog.eval()
    if config.keep_pruned_zero:
        wrap = _unprogrammed_zeros_class()
        for tile in analog.analog_tiles():
            tile.rpu_config.noise_model = wrap(tile.rpu_config.noise_model)
    with torch_global_seed(seed):
        program_analog_weights(analog, None)
    return AnalogModel(digital, analog, config, seed)
