"""The model zoo of the SWAP paper's benchmarks: `resnet20`, `mobilenetv1`, and a small `cnn`.

Every builder takes ``(input_shape, n_classes, **options)`` with input_shape = (C, H, W) as the data
module produces it, so the same scenario runs on 8×8 digits, 28×28 MNIST or 32×32 CIFAR; global
average pooling before the classifier makes every network accept any H, W ≥ 1.

Which weights are pruned by default (``model.prune_layers: default``)
--------------------------------------------------------------------
The SWAP paper follows the CHITA/CBS benchmark setup, and CHITA's code prunes EVERY convolution and
linear weight of ResNet20 and MobileNetV1 — the first convolution and the final classifier
included; biases and BatchNorm parameters never. The dimensions the papers report confirm it: ResNet20
d ≈ 2.7·10⁵ (here 268,336 with 10 classes) and MobileNetV1 d ≈ 4.2·10⁶ (here 4,209,088 with 1000
classes; without the 1024×1000 classifier it would be 3.2·10⁶). So the per-architecture default is:

- `resnet20`: all conv and linear weights, except the 1×1 projection shortcuts of `shortcut: B`
  (CHITA selects layers named conv*/fc*, which leaves those projections dense; with the paper's
  default `shortcut: A` the shortcuts have no weights and default = all);
- `mobilenetv1`, `cnn`, `mlpnet`: all conv and linear weights.

A model class announces its default through a ``default_prunable() -> list[str]`` method; models
without one (mlpnet, user checkpoints of other shapes) prune every conv/linear weight.
`prunable_names(model, choice)` resolves the scenario's ``all | default | [names or globs]``.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Annotated, Iterable, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from ..errors import SwapHwError, validation_problem
from ..layout import PRUNABLE_TYPES


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def options_problem(exc: ValidationError, arch: str, cls: type[BaseModel]) -> str:
    """One line for bad architecture options: ``options.depth: unknown option (options of resnet20:
    width)``."""
    where, msg = validation_problem(exc, ("options",))
    msg = "unknown option" if msg == "unknown key" else msg
    return f"{where}: {msg} (options of {arch}: {', '.join(cls.model_fields)})"


def _options(cls: type[_Options], arch: str, given: dict) -> _Options:
    try:
        return cls(**given)
    except ValidationError as exc:
        raise SwapHwError(f"model.{options_problem(exc, arch, cls)}") from None


def _channels(c: int, width: float) -> int:
    """Channel count c scaled by a width multiplier, at least 1."""
    return max(1, int(round(c * width)))


def _image_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """(C, H, W) from the data module's input shape; a flat (F,) input becomes a 1×1×F image."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        return shape  # type: ignore[return-value]
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) == 1:
        return (1, 1, shape[0])
    raise SwapHwError(f"convolutional models need (C, H, W) inputs, got shape {shape}")


def _kaiming_init(model: nn.Module) -> None:
    """He-normal conv/linear weights (fan-in, ReLU gain), zero biases, BatchNorm γ = 1, β = 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def all_prunable(model: nn.Module) -> list[str]:
    """Names of every conv/linear weight with more than one dimension, in module order."""
    return [
        f"{name}.weight" if name else "weight"
        for name, module in model.named_modules()
        if isinstance(module, PRUNABLE_TYPES) and module.weight.dim() > 1
    ]


def prunable_names(model: nn.Module, choice: str | Iterable[str] = "default") -> list[str]:
    """The weights to prune, in module order, for ``model.prune_layers`` = `choice`.

    "all": every conv/linear weight; "default": the architecture's own `default_prunable()` (see
    the module docstring) or all; a list: parameter names or shell-style globs (``layer3.*``),
    each of which must match at least one prunable weight.
    """
    everything = all_prunable(model)
    if choice == "all":
        return everything
    if choice == "default":
        hook = getattr(model, "default_prunable", None)
        return list(hook()) if callable(hook) else everything
    if isinstance(choice, str):
        raise SwapHwError(f"model.prune_layers: expected 'all', 'default' or a list of names, got {choice!r}")
    patterns = list(choice)
    if not patterns:
        raise SwapHwError("model.prune_layers: an empty list prunes nothing; list at least one weight")
    chosen: set[str] = set()
    for pattern in patterns:
        hits = [n for n in everything if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            shown = ", ".join(everything[:8]) + (", ..." if len(everything) > 8 else "")
            raise SwapHwError(f"model.prune_layers: {pattern!r} matches no prunable weight; they are: {shown}")
        chosen.update(hits)
    return [n for n in everything if n in chosen]


# ---------------------------------------------------------------------------------------------
# ResNet20 (He et al. 2016, CIFAR variant: 6n+2 layers with n = 3)


class _BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN plus a shortcut, then ReLU.

    Shortcut when shape changes: "A" = subsample by 2 and zero-pad the new channels (no weights,
    the CIFAR ResNet of the original paper), "B" = 1×1 strided conv + BN projection.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride = stride
        self.pad = (0, 0)
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            if shortcut == "B":
                self.shortcut = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
                )
            else:
                extra = c_out - c_in
                self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            identity = self.shortcut(x)
        elif self.stride != 1 or self.pad != (0, 0):
            identity = x[:, :, :: self.stride, :: self.stride]
            # pad the channel dimension (dim 1) with zeros: (W left, W right, H…, C before, C after)
            identity = nn.functional.pad(identity, (0, 0, 0, 0, self.pad[0], self.pad[1]))
        else:
            identity = x
        return torch.relu(out + identity)


class ResNet20(nn.Module):
    """CIFAR-style ResNet20: conv3×3(16w) → 3 stages × 3 basic blocks (16w, 32w, 64w channels,
    stride 1, 2, 2) → global average pool → linear classifier. BatchNorm after every conv.

    `width` w multiplies every channel count (1.0 = the paper's 0.27 M-parameter network).
    """

    class Options(_Options):
        width: float = Field(1.0, gt=0, le=16, description="channel width multiplier (1 = 16/32/64 channels)")
        shortcut: Literal["A", "B"] = Field(
            "A", description="A: parameter-free zero-padding shortcut (paper); B: 1x1 conv projection"
        )

    def __init__(self, input_shape: tuple[int, ...], n_classes: int, **options):
        super().__init__()
        opts = _options(self.Options, "resnet20", options)
        c_in = _image_shape(input_shape)[0]
        widths = [_channels(c, opts.width) for c in (16, 32, 64)]
        self.input_shape = tuple(input_shape)
        self.conv1 = nn.Conv2d(c_in, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, prev = [], widths[0]
        for i, c in enumerate(widths):
            blocks = []
            for b in range(3):
                stride = 2 if (i > 0 and b == 0) else 1
                blocks.append(_BasicBlock(prev, c, stride, opts.shortcut))
                prev = c
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(prev, int(n_classes))
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *_image_shape(self.input_shape))
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = out.mean(dim=(2, 3))
        return self.fc(out)

    def default_prunable(self) -> list[str]:
        """Every conv/linear weight except projection shortcuts (CHITA's conv*/fc* selection)."""
        return [n for n in all_prunable(self) if ".shortcut." not in n]


# ---------------------------------------------------------------------------------------------
# MobileNetV1 (Howard et al. 2017)

# (output channels, stride) of the 13 depthwise-separable blocks, at width 1.
_MOBILENET_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=False),
    )


class MobileNetV1(nn.Module):
    """MobileNetV1: conv3×3(32w) stem → 13 depthwise-separable blocks (depthwise 3×3 + BN + ReLU,
    pointwise 1×1 + BN + ReLU; 64…1024·w channels) → global average pool → linear classifier.

    `variant: imagenet` is the standard network for 224×224 inputs (stem stride 2, five stride-2
    stages: 224 → 7); `variant: cifar` keeps the same layers but a stride-1 stem, the usual choice
    for 32×32 inputs (32 → 2). Same parameter count either way: 4,209,088 prunable weights at
    width 1 with 1000 classes (3,185,088 + 1024·classes).
    """

    class Options(_Options):
        width: float = Field(1.0, gt=0, le=4, description="channel width multiplier α (1 = the standard 32…1024 channels)")
        variant: Literal["cifar", "imagenet"] = Field(
            "cifar", description="cifar: stride-1 stem for small inputs; imagenet: stride-2 stem for 224x224"
        )

    def __init__(self, input_shape: tuple[int, ...], n_classes: int, **options):
        super().__init__()
        opts = _options(self.Options, "mobilenetv1", options)
        c_in = _image_shape(input_shape)[0]
        self.input_shape = tuple(input_shape)
        stem = _channels(32, opts.width)
        layers: list[nn.Module] = [_conv_bn_relu(c_in, stem, 3, 2 if opts.variant == "imagenet" else 1)]
        prev = stem
        for c, stride in _MOBILENET_BLOCKS:
            c = _channels(c, opts.width)
            layers.append(nn.Sequential(
                _conv_bn_relu(prev, prev, 3, stride, groups=prev),  # depthwise
                _conv_bn_relu(prev, c, 1, 1),  # pointwise
            ))
            prev = c
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(prev, int(n_classes))
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *_image_shape(self.input_shape))
        return self.fc(self.features(x).mean(dim=(2, 3)))

    def default_prunable(self) -> list[str]:
        """Every conv (stem, depthwise, pointwise) and the classifier, as CHITA prunes it."""
        return all_prunable(self)


# ---------------------------------------------------------------------------------------------
# a small CNN for digits / MNIST / CIFAR


class SmallCNN(nn.Module):
    """[conv3×3 → ReLU → 2×2 max-pool] per entry of `channels`, adaptive average pool to
    `pool`×`pool`, then linear(`hidden`) → ReLU → linear(classes). No BatchNorm, so per-sample
    gradients do not depend on running statistics.

    Pooling halves H and W only while they are ≥ 2, so 8×8 digits, 28×28 MNIST and 32×32 CIFAR all
    fit (8 → 4 → 2, 28 → 14 → 7, 32 → 16 → 8 with the default two stages).
    """

    class Options(_Options):
        channels: tuple[Annotated[int, Field(ge=1, le=4096)], ...] = Field(
            (16, 32), min_length=1, max_length=6, description="conv channels per stage"
        )
        hidden: int = Field(64, ge=1, le=4096, description="width of the hidden linear layer")
        pool: int = Field(2, ge=1, le=8, description="spatial size after the adaptive average pool")

    def __init__(self, input_shape: tuple[int, ...], n_classes: int, **options):
        super().__init__()
        opts = _options(self.Options, "cnn", options)
        c_in, h, w = _image_shape(input_shape)
        self.input_shape = tuple(input_shape)
        layers: list[nn.Module] = []
        prev = c_in
        for c in opts.channels:
            kh, kw = (2 if h >= 2 else 1), (2 if w >= 2 else 1)
            layers += [nn.Conv2d(prev, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d((kh, kw))]
            h, w, prev = h // kh, w // kw, c
        layers.append(nn.AdaptiveAvgPool2d(opts.pool))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(prev * opts.pool * opts.pool, opts.hidden), nn.ReLU(),
            nn.Linear(opts.hidden, int(n_classes)),
        )
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *_image_shape(self.input_shape))
        return self.classifier(self.features(x))

    def default_prunable(self) -> list[str]:
        return all_prunable(self)


def prunable_count(model: nn.Module, choice: str | Iterable[str] = "default") -> int:
    """d: the number of weights `prunable_names(model, choice)` selects."""
    params = dict(model.named_parameters())
    return sum(math.prod(params[n].shape) for n in prunable_names(model, choice))

