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
3. drift compensation (`compensation`, aihwkit.inference.compensation.drift): after programming
   each tile reads out its outputs for the unit inputs e_1 … e_n (baseline); after drift it
   reads them out again and multiplies every later output by α = baseline / current:
   - "global" (the default, = `drift_compensation: true`): one scalar α per tile from the mean
     |output| over all columns (≈ 1 at t ≈ 0, ≈ 2 for PCM after a year);
   - "global_exact": one scalar α per tile whose baseline is computed from the exact target
     weights (aihwkit's GlobalDriftCompensationWithExactReference), so α also undoes the mean
     gain error of programming, not only drift;
   - "per_column": one α_j per output column j of the tile, each from that column's mean
     |output| (PerColumnDriftCompensation);
   - "none" (= `drift_compensation: false`): α = 1.
   aihwkit 1.1.0 has no per-column variant with an exact reference; none is offered.
   `drift_compensation` (bool) stays the field old scenarios use; `compensation` (added later)
   refines it. `compensation: global` and `none` are rewritten to `drift_compensation: true /
   false` alone at validation, so they describe (and key) exactly like the old settings.

The effective weights the hardware computes with are W_hw = diag(α)·W_tile per tile (α a scalar
except per_column, where it scales row j of the tile's weight block, i.e. output j), W_tile being
`get_weights()` of the tile after programming and drift (digital mapping scales applied).
`AnalogModel.digital_copy()` is a plain torch model carrying W_hw, used for per-sample gradients.

Stuck-at faults (`stuck_fraction`, `stuck_at`)
----------------------------------------------
A fraction of the cells (one cell = one weight, i.e. its device pair) is stuck from programming
on. Per analog layer, exactly round(stuck_fraction·N) of its N weight cells (Python's round,
half to even) are drawn uniformly without replacement from a torch.Generator seeded by
derive_seed(programming seed, "stuck-at", layer weight name): the same seed gives the same
defect map under any noise model. The count is exact per layer (not per tile), so the tiles of a
split layer hold hypergeometric shares of it. `stuck_at`: "zero" → the cell reads weight 0;
"max" → the cell reads s·max|w| with max|w| the largest |target| on its tile (its pair at g_max /
g_min) and s the sign of its own target weight (+1 for a zero target); "both" → of the m drawn
cells the first ⌈m/2⌉ (in draw order) read 0 and the other ⌊m/2⌋ read ±max. Stuck cells neither
drift nor get read noise; the wrapper that fixes them sits inside the tile's noise model and
carries the mask with the drift parameters (like keep_pruned_zero below), so every drift of the
same programming draw keeps the same cells stuck and α is read with them in place. Healthy cells
evolve exactly as on the fault-free chip of the same seed. α then multiplies stuck cells too (it
is applied to the tile's outputs). `AnalogModel.stuck_fraction()` reports the realised fraction
over all analog cells, `stuck_cells()` the masks.

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
- "pcm_hermes": `HermesNoiseModel`, PCM fitted on IBM's HERMES project chip (Le Gallo et al.,
  Nat. Electron. 2023): state-dependent programming noise, drift ν and 1/f read noise from
  fitted branch functions; t0 = 300 s (200 s with one device). `hermes_devices` 2 (default,
  multi-device programming, g_max ≤ 20.7 µS, default 20.7) or 1 (g_max ≤ 10.35 µS, default
  10.35); g_min 0. Any t ≥ 0. aihwkit 1.1.0 indexes with `x[[mask]]`, which torch 2.14 still
  reads as a mask (with a deprecation warning, silenced here); a torch that no longer does is
  refused at validation with a one-line reason.

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

import contextlib
import copy
import functools
import math
import re
import warnings
from typing import Annotated, Any, Iterator, Literal, Optional

import torch
from pydantic import (
    BeforeValidator,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError
from torch import nn

from ..registry import ADDED_LATER, LaterDefaultsOmitted, Params
from ..errors import ParameterError
from ..seeding import derive_seed, torch_generator, torch_global_seed

NoiseModelName = Literal["pcm", "reram_wan2022", "reram_cmo", "custom", "pcm_hermes"]

# Drift compensation (aihwkit.inference.compensation.drift, 1.1.0): GlobalDriftCompensation,
# GlobalDriftCompensationWithExactReference, PerColumnDriftCompensation, or none. aihwkit 1.1.0
# has no per-column variant with an exact reference, so none is offered.
CompensationName = Literal["global", "global_exact", "per_column", "none"]

# Largest g_max (µS) aihwkit's HermesNoiseModel is characterised for (it asserts), per
# devices per weight.
HERMES_G_MAX: dict[int, float] = {2: 20.7, 1: 10.35}

# Times (s) at which aihwkit's ReRamWan2022NoiseModel has fitted deviation data.
WAN2022_TIMES: tuple[float, ...] = (1.0, 86400.0, 172800.0)

# Default conductance ranges (µS) of each noise model's converter in aihwkit 1.1.0.
_DEFAULT_G_RANGE: dict[str, tuple[float, float]] = {
    "pcm": (0.0, 25.0),
    "reram_wan2022": (0.0, 25.0),
    "reram_cmo": (9.0, 88.199997),
    "custom": (0.0, 25.0),
    "pcm_hermes": (0.0, HERMES_G_MAX[2]),  # 10.35 µS with hermes_devices = 1 (see g_range)
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


def _field_error(key: str, message: str, value: Any) -> ValidationError:
    """A ValidationError located at `key` (so the config layer names that field) saying `message`."""
    return ValidationError.from_exception_data(
        "HardwareConfig",
        [InitErrorDetails(
            type=PydanticCustomError("hardware_config", "{message}", {"message": message}),
            loc=(key,),
            input=value,
        )],
    )


_BOOL = TypeAdapter(bool)


def _canonical_compensation(data: Any) -> Any:
    """Fold `compensation` into `drift_compensation` where the two say the same thing.

    `compensation: global` is what `drift_compensation: true` always meant, and `compensation:
    none` what `drift_compensation: false` meant; both are rewritten to the old field alone (with
    `compensation` left at its default, None), so each physical setting has one description and
    one cell key. `global_exact` and `per_column` are kept (they need drift_compensation true,
    its default). A `drift_compensation` written next to a `compensation` it contradicts is an
    error located at `compensation`.
    """
    if not isinstance(data, dict) or data.get("compensation") is None:
        return data
    mode = data["compensation"]
    if mode not in ("global", "global_exact", "per_column", "none"):
        return data  # the Literal field refuses it, listing what is allowed
    written = None
    if "drift_compensation" in data:
        try:
            written = _BOOL.validate_python(data["drift_compensation"])
        except ValidationError:
            return data  # the bool field refuses it
    if mode == "none":
        if written is True:
            raise _field_error("compensation", "compensation 'none' contradicts drift_compensation: "
                               "true; give only compensation", mode)
        return {**data, "drift_compensation": False, "compensation": None}
    if written is False:
        raise _field_error("compensation", f"compensation {mode!r} contradicts drift_compensation: "
                           "false (no compensation); give only compensation", mode)
    if mode == "global":
        return {**data, "compensation": None}
    return data


@functools.lru_cache(maxsize=1)
def _torch_reads_list_of_masks() -> bool:
    """Whether this torch still reads `x[[mask]]` as `x[mask]`.

    aihwkit 1.1.0's HermesNoiseModel indexes that way; torch ≥ 2.9 warns that it may later read
    it as an integer index (which would silently compute something else).
    """
    x = torch.arange(6.0).reshape(2, 3)
    mask = x > 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return bool(torch.equal(x[[mask]], x[mask]))
        except Exception:  # noqa: BLE001 — any failure means Hermes cannot run here
            return False


@contextlib.contextmanager
def _hermes_indexing_quiet() -> Iterator[None]:
    """Silence torch's deprecation warning for HermesNoiseModel's `x[[mask]]` indexing.

    Only entered after `_torch_reads_list_of_masks()` confirmed (at validation) that this torch
    still computes the intended mask selection, so the warning carries no information here.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
        yield


class HardwareConfig(LaterDefaultsOmitted, Params):
    """The simulated analog device and periphery; see the module docstring for the physics."""

    # LaterDefaultsOmitted: fields added later are left out at their default also where this config
    # is nested (the adversarial condition's `hardware` block), so existing keys stay identical.

    @model_validator(mode="before")
    @classmethod
    def _torch_tiles_can_simulate(cls, data: Any) -> Any:
        _reject_torch_tile_features(data)
        return _canonical_compensation(data)

    noise_model: NoiseModelName = Field(
        "pcm",
        description="device noise model: pcm (PCMLikeNoiseModel), reram_wan2022, reram_cmo, "
        "custom (StateIndependentNoiseModel), pcm_hermes (HermesNoiseModel, IBM HERMES chip PCM)",
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
    compensation: Optional[CompensationName] = Field(
        None,
        json_schema_extra=ADDED_LATER,
        description="drift compensation: global (one α per tile, = drift_compensation true), "
        "global_exact (one α per tile, baseline read from the exact target weights), per_column "
        "(one α per output column of each tile), none (= drift_compensation false); "
        "None = follow drift_compensation",
    )
    hermes_devices: Literal[2, 1] = Field(
        2,
        json_schema_extra=ADDED_LATER,
        description="pcm_hermes only: PCM devices per weight on the HERMES chip, 2 (multi-device "
        "programming, g_max ≤ 20.7 µS) or 1 (g_max ≤ 10.35 µS)",
    )
    stuck_fraction: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        json_schema_extra=ADDED_LATER,
        description="fraction of each analog layer's cells stuck from programming on (exactly "
        "round(stuck_fraction·cells) per layer, seeded); 0 = no faults",
    )
    stuck_at: Literal["zero", "max", "both"] = Field(
        "zero",
        json_schema_extra=ADDED_LATER,
        description="what a stuck cell reads: zero (weight 0), max (± the tile's largest |target|, "
        "sign of its target, + for a zero target), both (half each)",
    )

    @field_validator("noise_model")
    @classmethod
    def _hermes_runs_here(cls, value: str) -> str:
        if value == "pcm_hermes" and not _torch_reads_list_of_masks():
            raise ValueError(
                f"pcm_hermes cannot run under torch {torch.__version__}: aihwkit 1.1.0's "
                "HermesNoiseModel indexes with x[[mask]], which this torch no longer reads as a mask"
            )
        return value

    @field_validator("g_max")
    @classmethod
    def _hermes_characterised_g_max(cls, value: Optional[float], info: ValidationInfo) -> Optional[float]:
        if value is not None and info.data.get("noise_model") == "pcm_hermes" and value > HERMES_G_MAX[2]:
            raise ValueError(
                f"pcm_hermes is characterised up to g_max {HERMES_G_MAX[2]} µS "
                f"({HERMES_G_MAX[1]} µS with hermes_devices 1); got {value}"
            )
        return value

    @field_validator("hermes_devices")
    @classmethod
    def _hermes_only(cls, value: int, info: ValidationInfo) -> int:
        if value != 2 and "noise_model" in info.data and info.data["noise_model"] != "pcm_hermes":
            raise ValueError("hermes_devices only applies to noise_model 'pcm_hermes'")
        g_max = info.data.get("g_max")
        if info.data.get("noise_model") == "pcm_hermes" and g_max is not None and g_max > HERMES_G_MAX[value]:
            raise ValueError(
                f"with hermes_devices {value}, pcm_hermes is characterised up to g_max "
                f"{HERMES_G_MAX[value]} µS; got g_max {g_max}"
            )
        return value

    @field_validator("stuck_at")
    @classmethod
    def _stuck_at_needs_faults(cls, value: str, info: ValidationInfo) -> str:
        if value != "zero" and info.data.get("stuck_fraction") == 0.0:
            raise ValueError("stuck_at applies only with stuck_fraction > 0")
        return value

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
        if self.noise_model == "pcm_hermes":
            d_max = HERMES_G_MAX[self.hermes_devices]
        return (d_min if self.g_min is None else self.g_min, d_max if self.g_max is None else self.g_max)

    @property
    def compensation_mode(self) -> str:
        """The drift compensation in force: "global", "global_exact", "per_column" or "none"."""
        if not self.drift_compensation:
            return "none"
        return self.compensation or "global"

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
    if config.noise_model == "pcm_hermes":
        from aihwkit.inference.noise.hermes import HermesNoiseModel

        return HermesNoiseModel(
            g_converter=converter,
            num_devices=config.hermes_devices,
            g_max=g_max,
            prog_noise_scale=config.prog_noise_scale,
            read_noise_scale=config.read_noise_scale,
            drift_scale=config.drift_scale,
        )
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


# Stuck-cell codes in the masks `program` draws (int8): healthy, stuck at weight 0, stuck at ±max.
HEALTHY, STUCK_ZERO, STUCK_MAX = 0, 1, 2


def stuck_cell_codes(shape: tuple[int, ...], fraction: float, stuck_at: str, seed: int) -> torch.Tensor:
    """An int8 tensor of `shape`: exactly round(fraction·N) of its N cells stuck, the rest HEALTHY.

    The stuck cells are the first round(fraction·N) entries of a uniform random permutation of
    the N cells (so drawn uniformly without replacement) from a torch.Generator seeded by `seed`;
    round is Python's (half to even). stuck_at "zero" → all STUCK_ZERO, "max" → all STUCK_MAX,
    "both" → the first ⌈m/2⌉ of the m drawn cells STUCK_ZERO and the other ⌊m/2⌋ STUCK_MAX.
    """
    n_cells = math.prod(shape)
    m = int(round(fraction * n_cells))
    # on the CPU whatever the default device: the defect map must not depend on the device
    # (StuckCells moves the codes to each tile's device when it applies them)
    chosen = torch.randperm(n_cells, generator=torch_generator(seed), device="cpu")[:m]
    codes = torch.zeros(n_cells, dtype=torch.int8, device="cpu")
    if stuck_at == "zero":
        codes[chosen] = STUCK_ZERO
    elif stuck_at == "max":
        codes[chosen] = STUCK_MAX
    else:
        n_zero = m - m // 2
        codes[chosen[:n_zero]] = STUCK_ZERO
        codes[chosen[n_zero:]] = STUCK_MAX
    return codes.reshape(shape)


@functools.lru_cache(maxsize=1)
def _stuck_cells_class() -> type:
    """A noise-model wrapper fixing stuck cells at programming and every drift (built lazily)."""
    from aihwkit.inference.noise.base import BaseNoiseModel

    class StuckCells(BaseNoiseModel):
        """Delegates to `base`, then overwrites this tile's stuck cells (`codes`, tile-shaped).

        A STUCK_ZERO cell reads weight 0; a STUCK_MAX cell reads s·max|target of the tile| with s
        the sign of its target weight (+1 for a zero target), i.e. one device of its pair at the
        converter's g_max and the other at g_min. Stuck cells neither drift nor get read noise.
        The healthy cells evolve exactly as without faults: the base model drifts its own
        unmasked programming result (kept in the drift parameters), so the conductance scale it
        derives from max|programmed| is the fault-free one. The overwrite happens inside the
        noise model, before aihwkit reads the drift-compensation baseline and α.
        """

        def __init__(self, base: Any, codes: torch.Tensor):
            super().__init__(base.g_converter)
            self.base = base
            self.codes = codes

        def _stuck_values(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if tuple(target.shape) != tuple(self.codes.shape):
                raise RuntimeError(f"stuck-cell mask {tuple(self.codes.shape)} does not fit tile {tuple(target.shape)}")
            codes = self.codes.to(target.device)
            sign = torch.where(target < 0, -1.0, 1.0).to(target.dtype)
            values = torch.where(codes == STUCK_MAX, sign * target.abs().max(), torch.zeros_like(target))
            return codes != HEALTHY, values

        @torch.no_grad()
        def apply_programming_noise(self, weights: torch.Tensor) -> tuple[torch.Tensor, Any]:
            stuck, values = self._stuck_values(weights)
            programmed, drift_params = self.base.apply_programming_noise(weights)
            return torch.where(stuck, values, programmed), (drift_params, programmed, stuck, values)

        @torch.no_grad()
        def apply_drift_noise(self, weights: torch.Tensor, drift_noise_parameters: Any, t_inference: float) -> torch.Tensor:
            drift_params, programmed, stuck, values = drift_noise_parameters
            drifted = self.base.apply_drift_noise(programmed, drift_params, t_inference)
            return torch.where(stuck, values, drifted)

        def apply_noise(self, weights: torch.Tensor, t_inference: float) -> torch.Tensor:
            stuck, values = self._stuck_values(weights)
            return torch.where(stuck, values, self.base.apply_noise(weights, t_inference))

    return StuckCells


def build_rpu_config(config: HardwareConfig) -> Any:
    """The aihwkit `TorchInferenceRPUConfig` for `config` (pure-PyTorch tiles)."""
    from aihwkit.inference import GlobalDriftCompensation
    from aihwkit.inference.compensation.drift import (
        GlobalDriftCompensationWithExactReference,
        PerColumnDriftCompensation,
    )
    from aihwkit.simulator.configs import TorchInferenceRPUConfig
    from aihwkit.simulator.parameters.io import IOParameters

    rpu = TorchInferenceRPUConfig()
    rpu.noise_model = _noise_model(config)
    rpu.drift_compensation = {
        "global": GlobalDriftCompensation,
        "global_exact": GlobalDriftCompensationWithExactReference,
        "per_column": PerColumnDriftCompensation,
        "none": lambda: None,
    }[config.compensation_mode]()
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

    def __init__(
        self,
        digital: nn.Module,
        analog: nn.Module,
        config: HardwareConfig,
        seed: int,
        stuck: Optional[dict[str, torch.Tensor]] = None,
    ):
        self._digital = digital  # private deep copy of the caller's model (targets)
        self.analog = analog
        self.config = config
        self.seed = int(seed)
        self.drift_time: Optional[float] = None  # None = right after programming, not drifted
        # layer weight name → int8 stuck-cell codes in the layer's 2-D tile coordinates
        self._stuck = stuck or {}

    def drift(self, t: float, seed: int) -> "AnalogModel":
        """Drift every tile to t seconds after programming (fresh read noise), seeded; returns self."""
        from aihwkit.inference import drift_analog_weights

        try:
            self.config.check_drift_time(float(t))
        except ValueError as exc:
            raise ParameterError(str(exc)) from None
        with torch_global_seed(seed), _hermes_indexing_quiet():
            drift_analog_weights(self.analog, float(t))
        self.drift_time = float(t)
        return self

    def _tile_alpha(self, tile: nn.Module) -> Optional[torch.Tensor]:
        """The tile's compensation factors, 1-D: one α (global) or one per output row of its
        weight block (per_column, once drifted); None when compensation is off."""
        if self.config.compensation_mode == "none":
            return None
        return tile.alpha.detach().float().reshape(-1)

    @torch.no_grad()
    def effective_weights(self) -> dict[str, torch.Tensor]:
        """name → W_hw = diag(α)·W_tile per tile (shaped like the digital parameter), every analog layer.

        α is one scalar per tile (global, global_exact) or one factor per output column of the
        tile (per_column: aihwkit scales output j of the tile, i.e. row j of its weight block).
        """
        digital_params = dict(self._digital.named_parameters())
        out: dict[str, torch.Tensor] = {}
        for name, layer in _analog_layers(self.analog):
            pname = f"{name}.weight" if name else "weight"
            weight2d = layer.get_weights()[0].detach().clone().float()
            for rows, cols, tile in _tile_grid(layer.analog_module):
                alpha = self._tile_alpha(tile)
                if alpha is None:
                    continue
                block = weight2d[rows, cols]
                if alpha.numel() == 1:
                    weight2d[rows, cols] = block * alpha[0]
                elif alpha.numel() == block.shape[0]:
                    weight2d[rows, cols] = block * alpha.view(-1, 1)
                else:
                    raise RuntimeError(f"{pname}: {alpha.numel()} compensation factors for a {tuple(block.shape)} tile")
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
        """name → drift-compensation α of each tile of that layer (dimensionless, > 0).

        global / global_exact: the tile's scalar α; per_column: the mean of the tile's per-column
        α's (`alpha_column_range` gives their spread); 1.0 when compensation is off.
        """
        out = {}
        for name, layer in _analog_layers(self.analog):
            vals = []
            for _, _, tile in _tile_grid(layer.analog_module):
                alpha = self._tile_alpha(tile)
                vals.append(1.0 if alpha is None else float(alpha.mean()))
            out[f"{name}.weight" if name else "weight"] = vals
        return out

    def alpha_column_range(self) -> dict[str, list[float]]:
        """name → [min, max] of the compensation factors over all tiles and columns of that layer.

        The spread of the per-column α's (per_column); a single value twice for one-tile layers
        under global compensation; [1.0, 1.0] when compensation is off.
        """
        out = {}
        for name, layer in _analog_layers(self.analog):
            factors = [self._tile_alpha(tile) for _, _, tile in _tile_grid(layer.analog_module)]
            values = torch.cat([f for f in factors if f is not None]) if any(f is not None for f in factors) else torch.ones(1)
            out[f"{name}.weight" if name else "weight"] = [float(values.min()), float(values.max())]
        return out

    def stuck_cells(self) -> dict[str, torch.Tensor]:
        """name → int8 codes shaped like the digital weight: HEALTHY (0), STUCK_ZERO (1), STUCK_MAX (2).

        All HEALTHY when `stuck_fraction` is 0. Fixed at programming: every drift keeps them.
        """
        params = dict(self._digital.named_parameters())
        out = {}
        for name, _ in _analog_layers(self.analog):
            pname = f"{name}.weight" if name else "weight"
            codes = self._stuck.get(pname)
            shape = params[pname].shape
            healthy = torch.zeros(shape, dtype=torch.int8, device="cpu")  # where the drawn codes live
            out[pname] = healthy if codes is None else codes.reshape(shape).clone()
        return out

    def stuck_fraction(self) -> float:
        """Realised fraction (in [0, 1)) of all analog cells that are stuck: stuck cells / cells.

        Each layer holds exactly round(stuck_fraction·cells) stuck cells, so this is the
        cell-weighted mean of those per-layer counts; 0.0 without faults.
        """
        codes = list(self.stuck_cells().values())
        total = sum(c.numel() for c in codes)
        return sum(int((c != HEALTHY).sum()) for c in codes) / total if total else 0.0

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


def on_device_of(analog: nn.Module, digital: nn.Module) -> nn.Module:
    """`analog` on the device of `digital`'s parameters. aihwkit's convert_to_analog already moves
    each analog layer to its digital layer's device; this makes it explicit for the pure-PyTorch
    tiles (which follow `.to`), and is nothing at all on the CPU, where the tiles are made."""
    device = next((p.device for p in digital.parameters()), torch.device("cpu"))
    return analog if device.type == "cpu" else analog.to(device)


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
    analog = on_device_of(convert_to_analog(digital, rpu, inplace=False, exclude_modules=grouped), digital)
    analog.eval()
    if config.keep_pruned_zero:
        wrap = _unprogrammed_zeros_class()
        for tile in analog.analog_tiles():
            tile.rpu_config.noise_model = wrap(tile.rpu_config.noise_model)
    stuck: dict[str, torch.Tensor] = {}
    if config.stuck_fraction > 0:
        # Outermost wrapper: a stuck device is stuck whether or not its cell is programmed. The
        # cells are drawn per layer from their own generator (not the global RNG the noise draws
        # use), so a seed picks the same defect map under every noise model and noise scale.
        stuck_wrap = _stuck_cells_class()
        for name, layer in _analog_layers(analog):
            pname = f"{name}.weight" if name else "weight"
            shape = tuple(layer.get_weights()[0].shape)  # 2-D: (outputs, inputs·kernel)
            codes = stuck_cell_codes(shape, config.stuck_fraction, config.stuck_at,
                                     derive_seed(seed, "stuck-at", pname))
            for rows, cols, tile in _tile_grid(layer.analog_module):
                tile.rpu_config.noise_model = stuck_wrap(tile.rpu_config.noise_model, codes[rows, cols].clone())
            stuck[pname] = codes
    with torch_global_seed(seed), _hermes_indexing_quiet():
        program_analog_weights(analog, None)
    return AnalogModel(digital, analog, config, seed, stuck)
