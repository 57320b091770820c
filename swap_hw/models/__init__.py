"""Model architectures: `build_model(arch, input_shape, n_classes, seed, **options)` and the
`ARCHITECTURES` it builds from, the zoo, dense training and evaluation helpers.

Architectures are built from (input_shape, n_classes) so one scenario file works on any dataset.
"""

from __future__ import annotations

import copy
from typing import Callable

from torch import nn

from ..errors import SwapHwError
from ..seeding import torch_global_seed
from . import factory
from .evaluate import accuracy_and_loss
from .mlpnet import MLPNet
from .training import apply_weights, cached_dense_model, enforce_masks, load_checkpoint, read_checkpoint, train_model
from .zoo import MobileNetV1, ResNet20, SmallCNN, all_prunable, prunable_count, prunable_names

# name → builder(input_shape, n_classes, **options); zoo builders declare their options (`Options`).
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mlpnet": MLPNet, "resnet20": ResNet20, "mobilenetv1": MobileNetV1, "cnn": SmallCNN,
}


def build_model(arch: str, input_shape: tuple[int, ...], n_classes: int, seed: int, **options) -> nn.Module:
    """A freshly initialised model; initialisation is seeded (torch's global RNG, restored after)."""
    if arch not in ARCHITECTURES:
        raise SwapHwError(f"unknown architecture {arch!r}; valid: {', '.join(sorted(ARCHITECTURES))}")
    with torch_global_seed(seed):
        model = ARCHITECTURES[arch](tuple(input_shape), int(n_classes), **options)
    return model


def reinitialised(model: nn.Module, seed: int) -> nn.Module:
    """A copy of `model` with every parameter re-drawn by its layer's own `reset_parameters`
    (seeded): the initial weights w_0 that rewinding pruners (sap, lottery) return to when the
    user hands in a trained model object. Layers without `reset_parameters` keep their values."""
    clone = copy.deepcopy(model)
    with torch_global_seed(seed):
        for module in clone.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    return clone


__all__ = [
    "factory", "ARCHITECTURES", "build_model", "MLPNet", "ResNet20", "MobileNetV1", "SmallCNN", "accuracy_and_loss",
    "apply_weights", "cached_dense_model", "enforce_masks", "load_checkpoint", "read_checkpoint", "train_model",
    "all_prunable", "prunable_count", "prunable_names", "reinitialised",
]
