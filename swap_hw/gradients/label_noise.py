"""`label_noise`: per-sample gradients of calibration examples whose labels are partly wrong.

The gradient of example i is taken at its corrupted label ỹ_i instead of y_i:
X[i] = ∂ CE(f(x_i), ỹ_i) / ∂w. A wrong label turns example i's gradient row into a gradient that
pushes towards the wrong class, which is the physical noise this source models (crowd-sourced or
weakly labelled calibration data).

Noise kinds (C classes, labels 0 … C−1). A seeded choice picks EXACTLY m examples to corrupt, so
the realised rate is m/n with m = round(rate·n) — not a Bernoulli draw whose rate wanders:

- `symmetric`: m = round(rate·n) examples, each relabelled uniformly among the C − 1 OTHER
  classes (every corrupted label is wrong, so the realised error rate is m/n exactly).
- `pairflip`:  m = round(rate·n) examples, ỹ = (y + 1) mod C (Han et al. 2018's pair flipping).
- `asymmetric`: class-dependent flips src → dst to a similar class. Only examples whose true class
  is a source class are eligible; m = round(rate·n_eligible) of them are flipped (the convention of
  Patrini et al. 2017: `rate` is the flip probability WITHIN a source class), so the overall rate
  is m/n < rate. Default mapping (for C = 10 digit classes, Patrini et al.'s MNIST choice):
  2→7, 3→8, 5→6, 6→5, 7→1. For CIFAR-10 pass mapping {9: 1, 2: 0, 3: 5, 5: 3, 4: 7}
  (truck→automobile, bird→airplane, cat↔dog, deer→horse).

Noise levels are nested: with the same seed and kind, the examples corrupted at a lower rate are
among those corrupted at a higher rate (one seeded permutation, cut at m), so a sweep over rates
adds noise rather than redrawing it.

Provenance records the realised rate (fraction of all n labels changed), the count changed, and
for asymmetric noise the rate among eligible examples.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ..registry import Params
from ..errors import ParameterError
from ..seeding import derive_seed, torch_generator
from .base import GRADIENT_SOURCES, GradientSource

NoiseKind = Literal["symmetric", "asymmetric", "pairflip"]

# Patrini et al. (2017), MNIST: 2→7, 3→8, 5↔6, 7→1.
DIGIT_CLASS_MAPPING: dict[int, int] = {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}


def corrupt_labels(
    y: torch.Tensor,
    n_classes: int,
    kind: NoiseKind,
    rate: float,
    seed: int,
    mapping: dict[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels with exactly round(rate·n_eligible) entries corrupted; returns (ỹ, changed mask).

    y: (n,) int64 labels in [0, n_classes). rate ∈ [0, 1]. Eligible examples are all n for
    symmetric / pairflip, and those whose label is a key of `mapping` for asymmetric (mapping
    None → DIGIT_CLASS_MAPPING, valid only for n_classes = 10). Which examples are corrupted and
    (for symmetric) their new labels are drawn from a torch.Generator seeded by `seed`; `y` is
    not modified. Every corrupted label differs from the true one, so changed.sum() = m.
    """
    if not 0.0 <= rate <= 1.0:
        raise ParameterError(f"label noise rate must be in [0, 1], got {rate}")
    if n_classes < 2:
        raise ParameterError(f"label noise needs at least 2 classes, got {n_classes}")
    y = y.to(torch.int64)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ParameterError(f"labels must lie in [0, {n_classes}), got range [{int(y.min())}, {int(y.max())}]")
    gen = torch_generator(derive_seed(seed, "label-noise", kind))

    if kind == "asymmetric":
        mapping = _checked_mapping(mapping, n_classes)
        sources = torch.tensor(sorted(mapping), dtype=torch.int64, device=y.device)
        eligible = torch.nonzero(torch.isin(y, sources)).flatten()
    else:
        eligible = torch.arange(y.numel(), device=y.device)
    m = int(round(rate * eligible.numel()))
    # drawn on the CPU (the generator's device) and moved: the same labels flip on any device
    chosen = eligible[torch.randperm(eligible.numel(), generator=gen, device="cpu")[:m].to(y.device)]

    y_noisy = y.clone()
    if kind == "symmetric":
        # Uniform over the C − 1 other classes: add an offset in 1 … C−1 modulo C.
        offset = torch.randint(1, n_classes, (m,), generator=gen, device="cpu").to(y.device)
        y_noisy[chosen] = (y[chosen] + offset) % n_classes
    elif kind == "pairflip":
        y_noisy[chosen] = (y[chosen] + 1) % n_classes
    else:
        lookup = torch.arange(n_classes, device=y.device)
        for src, dst in mapping.items():
            lookup[src] = dst
        y_noisy[chosen] = lookup[y[chosen]]
    return y_noisy, y_noisy != y


def _checked_mapping(mapping: dict[int, int] | None, n_classes: int) -> dict[int, int]:
    if mapping is None:
        if n_classes != 10:
            raise ParameterError(
                f"asymmetric label noise has a default class mapping only for 10 classes; this "
                f"model has {n_classes}: give `mapping` (source class → target class)"
            )
        return dict(DIGIT_CLASS_MAPPING)
    bad = {k: v for k, v in mapping.items() if not (0 <= k < n_classes and 0 <= v < n_classes)}
    if bad:
        raise ParameterError(f"label noise mapping {bad} names classes outside [0, {n_classes})")
    return dict(mapping)


@GRADIENT_SOURCES.register("label_noise")
class LabelNoiseSource(GradientSource):
    """Per-sample gradients at corrupted labels (see the module docstring for the noise kinds)."""

    stochastic = True

    class Params(Params):
        kind: NoiseKind = Field(
            "symmetric",
            description="symmetric (uniform over the other classes), pairflip (y → y+1 mod C) or "
            "asymmetric (class mapping, rate within the source classes)",
        )
        rate: float = Field(
            0.2,
            ge=0.0,
            le=1.0,
            description="fraction of eligible calibration labels corrupted, exactly round(rate·n) "
            "(eligible = all examples, or the source classes' examples for asymmetric)",
        )
        mapping: dict[int, int] | None = Field(
            None,
            description="asymmetric only: source class → target class; default (10 classes) "
            "2→7, 3→8, 5→6, 6→5, 7→1",
        )

        @model_validator(mode="after")
        def _mapping_consistent(self):
            if self.mapping is not None:
                if self.kind != "asymmetric":
                    raise ValueError("mapping is used only by kind: asymmetric")
                if not self.mapping:
                    raise ValueError("mapping must name at least one source class")
                same = [k for k, v in self.mapping.items() if k == v]
                if same:
                    raise ValueError(f"mapping sends classes {same} to themselves")
                if any(k < 0 or v < 0 for k, v in self.mapping.items()):
                    raise ValueError("mapping classes must be ≥ 0")
            return self

    def transform_batch(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, provenance: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n_classes = _output_classes(model, x)
        p = self.params
        y_noisy, changed = corrupt_labels(y, n_classes, p.kind, p.rate, seed, p.mapping)
        n = max(int(y.numel()), 1)
        provenance["label_noise"] = {
            "n_classes": n_classes,
            "changed": int(changed.sum()),
            "realised_rate": float(changed.sum()) / n,
        }
        if p.kind == "asymmetric":
            sources = torch.tensor(sorted(_checked_mapping(p.mapping, n_classes)), device=y.device)
            eligible = int(torch.isin(y, sources).sum())
            provenance["label_noise"]["eligible"] = eligible
            provenance["label_noise"]["rate_among_eligible"] = (
                float(changed.sum()) / eligible if eligible else 0.0
            )
        return x, y_noisy


@torch.no_grad()
def _output_classes(model: nn.Module, x: torch.Tensor) -> int:
    """Number of classes = width of the model's output on one example (eval mode, restored)."""
    was_training = model.training
    model.eval()
    try:
        return int(model(x[:1]).shape[1])
    finally:
        model.train(was_training)
