"""Hardware-aware (HWA) fine-tuning with aihwkit 1.1.0's pure-PyTorch inference tiles.

The second module allowed to import aihwkit (after noise/hardware.py); it does so lazily, inside
functions (the import costs ~2 s).

What is computed
----------------
`hwa_train_model(model, x, y, config=HWAConfig(...), ...)` copies the digital model onto analog
tiles (`convert_to_analog` with a `TorchInferenceRPUConfig`: one `TorchInferenceTile` per
Linear/Conv layer, split into several when a layer has more than `tile_size` inputs or outputs;
biases, normalisation layers and grouped convolutions stay digital), trains the copy with the
digital fine-tuner's own loop (`models.train_model`: same optimiser, batches, seeds), and returns a
plain digital model carrying the trained weights read back from the tiles. On every training
forward each tile computes with perturbed weights (aihwkit's weight "modifier"), the gradient is
taken through the perturbed forward and applied to the unperturbed weights (straight-through):

- ``add_normal``:  W̃ = W + σ·max|W_tile|·ξ,  ξ ~ N(0, 1) per weight, fresh every minibatch —
  noise relative to the tile's largest |w|, like programming noise on hardware whose conductance
  range g_max is set by that weight (a pruned weight is perturbed too: on the chip its cells are
  programmed to 0 µS and receive programming noise unless the deployment keeps them unprogrammed;
  see hardware.py, `keep_pruned_zero`).
- ``mult_normal``: W̃ = W·(1 + σ·ξ) — relative to each weight; a zero weight stays exactly 0 (the
  training-side counterpart of `keep_pruned_zero: true`).
- ``none``:        W̃ = W (IO non-idealities and clipping only, if set).

Optionally the forward pass also sees the periphery's non-idealities (`out_noise`, `inp_res`,
`out_res`, the same meaning and defaults as HardwareConfig's: 0 = ideal; aihwkit's own values are
0.06, 1/126, 1/510), and after every optimiser step each tile's weights are clipped to
±`clip_sigma`·std(W_tile) (aihwkit's LAYER_GAUSSIAN clip), which shrinks max|w| and so the noise
relative to it. Eval-mode forwards are exact (no modifier noise).

Masks: `masks` (digital parameter name → bool, True = survives) are carried onto the tiles (each
tile gets its slice of its layer's mask) and enforced after every optimiser step and clip, exactly
as the digital fine-tuner does; the returned model's pruned weights are exactly 0.

Measured (tests/test_hwa.py, aihwkit 1.1.0, torch 2.14, CPU): with `noise_type: none` (or σ = 0)
and an ideal periphery the result is bit-identical to digital fine-tuning with the same seed on
MLPNet with one tile per layer (aihwkit's ideal forward is the same matmul), and equal up to float
rounding (6e-8) with layers split over several tiles or on a small CNN (partial sums in another
order); with the default σ = 0.1 it differs. Cost (bench/hwa_cost.py, digits MLPNet): 1.7× digital
fine-tuning per epoch, 3.5× with aihwkit's periphery non-idealities on.

What aihwkit's torch tiles cannot do (`TORCH_TILE_UNSUPPORTED_MODIFIERS`): the PCM_NOISE, POLY,
PROG_NOISE, DOREFA and DISCRETIZE_ADD_NORMAL modifiers, drop-connect (`pdrop`), short-term weight
read noise (`w_noise`) and modifier noise at test time; a config naming one of them is refused at
validation with a one-line reason (the C++ tiles that have them do not run under this torch).

Randomness: the batch order comes from `seed` (as in the digital fine-tuner, so σ = 0 reproduces
it), the injected noise from torch's global RNG, seeded with derive_seed(seed, "hwa-noise") and
restored afterwards (`torch_global_seed`).
"""

from __future__ import annotations

import copy
from typing import Any, Literal, Mapping, Optional

import torch
from pydantic import Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from torch import nn

from ..errors import ParameterError
from ..models import enforce_masks, train_model
from ..registry import Params
from ..seeding import derive_seed, torch_global_seed
from .hardware import HardwareConfig, _analog_layers, _tile_grid, build_rpu_config, on_device_of

HWANoiseType = Literal["add_normal", "mult_normal", "none"]

# What a user might ask of aihwkit's HWA that its pure-PyTorch tiles refuse (aihwkit 1.1.0,
# TorchSimulatorTile.check_rpu_config_support / modify_weight): key → (value that is refused or None
# for any value, what it is, what aihwkit raises).
TORCH_TILE_UNSUPPORTED_MODIFIERS: dict[str, tuple[Any, str, str]] = {
    "pdrop": (None, "drop-connect", "The drop-connect is not supported in the torch tile"),
    "drop_connect": (None, "drop-connect", "The drop-connect is not supported in the torch tile"),
    "w_noise": (None, "short-term weight read noise on every forward pass", "forward.w_noise not supported in torch tile"),
    "enable_during_test": (None, "modifier noise in eval mode", "Modifier noise is currently always off in the torch tile"),
}
_UNSUPPORTED_NOISE_TYPES = ("pcm_noise", "poly", "prog_noise", "dorefa", "discretize_add_normal")


def _located_error(key: str, value: Any, message: str) -> ValidationError:
    return ValidationError.from_exception_data(
        "HWAConfig",
        [InitErrorDetails(type=PydanticCustomError("torch_tile_unsupported", "{message}", {"message": message}),
                          loc=(key,), input=value)],
    )


class HWAConfig(Params):
    """Hardware-aware fine-tuning: the weight noise injected on every training forward, the
    periphery's non-idealities and the clipping (see the module docstring for the formulas).

    Defaults: additive Gaussian noise of std 0.1 × the tile's max|w|, ideal periphery, no clipping
    — the noise type and level of aihwkit's HWA preset (`WebComposerWeightModifierParameter`:
    ADD_NORMAL, std_dev 0.1, relative to the actual max|w|); aihwkit's bare
    `WeightModifierParameter` defaults to no noise at all.
    """

    @model_validator(mode="before")
    @classmethod
    def _torch_tiles_can_do(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for key, value in data.items():
            if key in TORCH_TILE_UNSUPPORTED_MODIFIERS:
                _, what, raised = TORCH_TILE_UNSUPPORTED_MODIFIERS[key]
                raise _located_error(key, value, f"not supported: aihwkit's pure-PyTorch tiles cannot train with {what} "
                                                 f"(aihwkit raises {raised!r}), and its C++ tiles do not run under this torch")
        kind = data.get("noise_type")
        if isinstance(kind, str) and kind.lower() in _UNSUPPORTED_NOISE_TYPES:
            raise _located_error("noise_type", kind, f"not supported: aihwkit's pure-PyTorch tiles cannot inject {kind!r} "
                                                     "noise (aihwkit raises 'The given modifier noise type is not supported "
                                                     "in the torch tile'); allowed: 'add_normal', 'mult_normal' or 'none'")
        return data

    noise_type: HWANoiseType = Field(
        "add_normal",
        description="weight noise on every training forward: add_normal (σ × the tile's max|w|, every weight), "
        "mult_normal (σ × |w|, zeros stay 0) or none",
    )
    std_dev: float = Field(
        0.1, ge=0.0, le=1.0,
        description="σ of the injected noise, dimensionless: relative to the tile's max|w| (add_normal) or to each "
        "weight (mult_normal); 0 = no noise",
    )
    out_noise: float = Field(
        0.0, ge=0.0, le=10.0,
        description="additive output (ADC) noise std on every training forward, in units of the tile's normalised "
        "output; 0 = off (aihwkit's value 0.06)",
    )
    inp_res: float = Field(
        0.0, ge=0.0, lt=1.0, description="input DAC step as a fraction of the input range, 0 = ideal (aihwkit's 1/126)"
    )
    out_res: float = Field(
        0.0, ge=0.0, lt=1.0, description="output ADC step as a fraction of the output range, 0 = ideal (aihwkit's 1/510)"
    )
    clip_sigma: Optional[float] = Field(
        None, gt=0.0, le=100.0,
        description="after every optimiser step clip each tile's weights to ±clip_sigma·std(W_tile) (aihwkit's "
        "LAYER_GAUSSIAN clip); None = no clipping",
    )
    tile_size: int = Field(
        512, ge=0,
        description="max rows and columns of one crossbar tile (larger layers are split, each tile with its own "
        "max|w|); 0 = one tile per layer; use the deployment's tile_size",
    )

    @property
    def io_noise(self) -> bool:
        """Whether the training forward sees any periphery non-ideality."""
        return self.out_noise > 0.0 or self.inp_res > 0.0 or self.out_res > 0.0


def build_hwa_rpu_config(config: HWAConfig) -> Any:
    """The aihwkit `TorchInferenceRPUConfig` for HWA training with `config` (noise model and drift
    compensation are hardware.py's defaults; they act only at programming, not in training)."""
    from aihwkit.simulator.parameters.enums import WeightClipType, WeightModifierType

    rpu = build_rpu_config(HardwareConfig(out_noise=config.out_noise, inp_res=config.inp_res,
                                          out_res=config.out_res, tile_size=config.tile_size))
    kind = {"add_normal": WeightModifierType.ADD_NORMAL, "mult_normal": WeightModifierType.MULT_NORMAL,
            "none": WeightModifierType.NONE}[config.noise_type]
    if config.std_dev == 0.0:
        kind = WeightModifierType.NONE
    rpu.modifier.type = kind
    rpu.modifier.std_dev = float(config.std_dev)
    rpu.modifier.rel_to_actual_wmax = True
    if config.clip_sigma is not None:
        rpu.clip.type = WeightClipType.LAYER_GAUSSIAN
        rpu.clip.sigma = float(config.clip_sigma)
    return rpu


def _to_analog(model: nn.Module, config: HWAConfig) -> nn.Module:
    """A trainable analog copy of `model` (grouped / depthwise convolutions stay digital, as in
    hardware.program, since aihwkit maps only groups = 1)."""
    from aihwkit.nn.conversion import convert_to_analog

    grouped = [name for name, m in model.named_modules()
               if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and m.groups != 1]
    try:
        analog = convert_to_analog(copy.deepcopy(model), build_hwa_rpu_config(config), inplace=True,
                                   exclude_modules=grouped)
    except Exception as exc:  # noqa: BLE001 - say in one line that aihwkit cannot map this model
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ParameterError(f"HWA fine-tuning cannot put {type(model).__name__} on aihwkit's analog tiles "
                             f"({type(exc).__name__}: {first}); use digital fine-tuning (leave out hwa)") from None
    analog = on_device_of(analog, model)
    for p in analog.parameters():
        p.requires_grad_(True)
    return analog


def _tile_masks(analog: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The digital masks as masks of the analog model's parameters: an analog layer's weight mask
    split into each tile's block (rows = outputs, columns = inputs, a conv's kernel flattened as
    aihwkit does); any other parameter keeps its name."""
    names = {id(p): n for n, p in analog.named_parameters()}
    layers = dict(_analog_layers(analog))
    out: dict[str, torch.Tensor] = {}
    for pname, mask in masks.items():
        module_name, _, attr = pname.rpartition(".")
        layer = layers.get(module_name)
        if layer is None:
            if pname not in names.values():
                raise ParameterError(f"mask {pname!r} names no parameter of the model")
            out[pname] = mask
            continue
        if attr != "weight":
            raise ParameterError(f"mask {pname!r}: only the weights of an analog layer can be masked in HWA training")
        mask2d = mask.reshape(mask.shape[0], -1).to(torch.bool)
        for rows, cols, tile in _tile_grid(layer.analog_module):
            out[names[id(tile.tile.weight)]] = mask2d[rows, cols].clone()
    return out


@torch.no_grad()
def _digital_from_analog(model: nn.Module, analog: nn.Module) -> nn.Module:
    """A copy of the digital `model` carrying the analog model's weights, biases and every other
    parameter and buffer (eval mode)."""
    out = copy.deepcopy(model)
    layers = {name: layer.get_weights() for name, layer in _analog_layers(analog)}
    analog_state = analog.state_dict()
    state = {}
    for key, value in out.state_dict().items():
        module_name, _, attr = key.rpartition(".")
        if module_name in layers and attr in ("weight", "bias"):
            weight, bias = layers[module_name]
            state[key] = (weight if attr == "weight" else bias).reshape(value.shape).to(value.dtype)
        else:
            state[key] = analog_state[key]
    out.load_state_dict(state)
    out.eval()
    return out


def hwa_train_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    config: HWAConfig,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    weight_decay: float = 0.0,
    masks: Mapping[str, torch.Tensor] | None = None,
    optimizer: str = "adam",
    momentum: float = 0.0,
) -> nn.Module:
    """`model` fine-tuned `epochs` epochs on (x, y) with hardware-aware training (see the module
    docstring), returned as a new plain digital model in eval mode; `model` is not modified.

    The optimiser settings mean what they mean in `models.train_model` (cross-entropy, Adam or SGD
    with momentum, minibatches of `batch_size` in an order drawn from `seed`), which runs the loop.
    With `masks` (parameter name → bool, True = survives) pruned weights are exactly 0 after every
    optimiser step and in the result. The injected noise is drawn from torch's global RNG seeded
    with derive_seed(seed, "hwa-noise"); the caller's global RNG state is restored.
    """
    with torch_global_seed(derive_seed(seed, "hwa-noise")):
        analog = _to_analog(model, config)  # out_noise's per-line stds are drawn here
        analog_masks = _tile_masks(analog, masks) if masks is not None else None
        tiles = list(analog.analog_tiles())

        def clip() -> None:
            for tile in tiles:
                tile.post_update_step()

        train_model(analog, x, y, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                    weight_decay=weight_decay, masks=analog_masks, optimizer=optimizer, momentum=momentum,
                    after_step=clip if config.clip_sigma is not None else None)
    tuned = _digital_from_analog(model, analog)
    if masks is not None:  # the tiles' pruned weights are exact zeros already: this multiplies by 1
        enforce_masks(tuned, masks)
    return tuned
