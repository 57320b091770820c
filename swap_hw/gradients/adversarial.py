"""`adversarial`: per-sample gradients at calibration inputs partly replaced by adversarial ones.

A seeded choice picks EXACTLY m = round(fraction·n) calibration examples; each x_i is replaced by
an adversarial x'_i crafted against the dense digital model with its true label y_i (untargeted,
budget ‖x'_i − x_i‖ ≤ eps in input units, L∞ or L2 for pgdl2; see swap_hw/noise/attacks.py). Row i of X
is then ∂ CE(f(x'_i), y_i) / ∂w: the label stays right, the input moves to where the model's loss
is high, so these rows are large and point along the model's most sensitive directions — the
noise a pruner calibrated on attacked (or distribution-shifted) data sees.

Provenance records the count and realised fraction replaced, the attack's success on them
(fraction of replaced examples misclassified after the attack, and before it), and the mean and
max perturbation norms actually used.
"""

from __future__ import annotations

import torch
from pydantic import Field, ValidationInfo, field_validator
from torch import nn

from ..noise.attacks import (
    AttackSettings,
    attack_class_problem,
    craft_adversarial,
    input_range_problem,
    perturbation_norms,
)
from ..errors import ConfigError
from ..seeding import derive_seed, torch_generator
from .base import GRADIENT_SOURCES, GradientSource


@GRADIENT_SOURCES.register("adversarial")
class AdversarialSource(GradientSource):
    """Per-sample gradients where a fraction of calibration inputs are adversarial examples."""

    stochastic = True

    class Params(AttackSettings):
        eps: float = Field(
            0.1,
            ge=0.0,
            description="attack budget in input units (inputs are in [0, 1]): L∞ radius, or L2 "
            "radius for pgdl2; 0 leaves the inputs clean",
        )
        fraction: float = Field(
            0.5,
            ge=0.0,
            le=1.0,
            description="fraction of calibration examples replaced by adversarial ones, exactly "
            "round(fraction·n), chosen by a seeded draw",
        )

        @field_validator("eps")
        @classmethod
        def _linf_budget(cls, eps: float, info: ValidationInfo) -> float:
            # attack is declared (in AttackSettings) before eps, so it is in info.data when valid
            if info.data.get("attack", "pgdl2") != "pgdl2" and eps > 1.0:
                raise ValueError(f"an L∞ budget eps > 1 exceeds the input range [0, 1]; got {eps}")
            return eps

    def validate_scenario(self, scenario, file: str, path: str) -> None:
        """Config-time check: the scenario's inputs must lie in [0, 1] for an attack, and
        autoattack_rand needs ≥ 3 classes."""
        inline = getattr(scenario.inline, "data", None)
        problem = input_range_problem(scenario.spec.data, inline)
        if problem:
            raise ConfigError(file, path, problem)
        problem = attack_class_problem(self.params, scenario.spec.data, inline)
        if problem:
            raise ConfigError(file, f"{path}.attack", problem)

    def transform_batch(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, provenance: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.params
        n = int(x.shape[0])
        m = int(round(p.fraction * n))
        gen = torch_generator(derive_seed(seed, "adversarial-choice"))
        # drawn on the CPU (the generator's device) and moved: the same examples on any device
        chosen = torch.randperm(n, generator=gen, device="cpu")[:m].sort().values.to(x.device)
        x_sel, y_sel = x[chosen], y[chosen]
        x_adv = craft_adversarial(model, x_sel, y_sel, p, p.eps, derive_seed(seed, "adversarial-craft"))
        x_out = x.clone()
        x_out[chosen] = x_adv

        record: dict = {"replaced": m, "realised_fraction": m / n if n else 0.0}
        if m:
            linf, l2 = perturbation_norms(x_sel, x_adv)
            wrong_before, wrong_after = _error_rates(model, x_sel, x_adv, y_sel)
            record.update(
                error_before=wrong_before,
                error_after=wrong_after,
                linf_mean=float(linf.mean()),
                linf_max=float(linf.max()),
                l2_mean=float(l2.mean()),
            )
        provenance["adversarial"] = record
        return x_out, y


@torch.no_grad()
def _error_rates(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    was_training = model.training
    model.eval()
    try:
        before = float((model(x).argmax(dim=1) != y).float().mean())
        after = float((model(x_adv).argmax(dim=1) != y).float().mean())
    finally:
        model.train(was_training)
    return before, after
