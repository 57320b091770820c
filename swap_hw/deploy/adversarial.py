"""`adversarial`: robust accuracy of a (pruned) model under an input attack, per budget eps.

For each budget eps in `eps` and each repetition k < `draws`, every test example x is replaced by
an untargeted adversarial x' with ‖x' − x‖ ≤ eps (L∞; L2 for pgdl2; input units, inputs in
[0, 1]) crafted against the model being judged (white-box: the attack sees that model's own
gradients, so a pruned model is attacked through its own sparse weights), and the model is scored
on x' with the TRUE labels:

    robust accuracy(eps) = (1/N) Σ_i 1[argmax f(x'_i) = y_i]      (fraction in [0, 1])
    loss(eps)            = (1/N) Σ_i CE(f(x'_i), y_i)             (nats)

eps = 0 is the clean accuracy (no attack is run). Repetitions matter when the attack is random
(random starts, square's search) or the model's forward is stochastic (noisy analog hardware);
each draw's attack is seeded from (seed, eps, draw), so the same seed gives the same numbers and
adding an eps level does not change the others.

Measurements: "accuracy" and "loss" with tags {"eps": eps, "attack": name, "draw": k}, plus
"attack_success": among test examples the model classifies correctly without attack, the fraction
the attack makes it misclassify (0 for eps = 0).

The model may be an aihwkit analog model (pure-PyTorch tiles) as well as a digital one: the attack
then differentiates through the simulated hardware's noisy forward (checked: PGD and EOTPGD run on
a `convert_to_analog` MLPNet with TorchInferenceRPUConfig), and `eotpgd` with `eot_iter` > 1
averages over that noise. Every forward pass runs under a seed derived from (seed, eps, draw).

`max_examples` scores the first N test examples only (the same N for every model, so pruners stay
comparable) — attacks cost `steps` forward + backward passes per example.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from ..attacks import AttackSettings, craft_adversarial
from ..seeding import derive_seed, torch_global_seed
from .base import CONDITIONS, Condition, Measurement


@CONDITIONS.register("adversarial")
class AdversarialCondition(Condition):
    """Robust accuracy and loss per attack budget (see the module docstring)."""

    class Params(AttackSettings):
        eps: list[float] = Field(
            [0.0, 0.05, 0.1, 0.2],
            min_length=1,
            description="attack budgets in input units (inputs are in [0, 1]): L∞ radii, or L2 radii "
            "for pgdl2; 0 gives the clean accuracy",
        )
        draws: int = Field(
            1,
            ge=1,
            le=1000,
            description="repetitions of each attack with different seeds (for random-start attacks "
            "or stochastic models); each gives its own measurements tagged `draw`",
        )
        max_examples: int | None = Field(
            None,
            ge=1,
            description="attack only the first N test examples (None = all); the same examples "
            "for every model",
        )

        @field_validator("eps")
        @classmethod
        def _non_negative(cls, values: list[float]) -> list[float]:
            bad = [v for v in values if not (math.isfinite(v) and v >= 0)]
            if bad:
                raise ValueError(f"eps values must be finite and ≥ 0, got {bad}")
            if len(set(values)) != len(values):
                raise ValueError(f"eps values must be distinct, got {values}")
            return values

        @model_validator(mode="after")
        def _linf_budget(self):
            if self.attack != "pgdl2" and any(v > 1.0 for v in self.eps):
                raise ValueError(f"an L∞ budget eps > 1 exceeds the input range [0, 1]; got {self.eps}")
            return self

    def evaluate(
        self, model: nn.Module, test: tuple[torch.Tensor, torch.Tensor], seed: int
    ) -> list[Measurement]:
        p = self.params
        x, y = test
        if p.max_examples is not None:
            x, y = x[: p.max_examples], y[: p.max_examples]
        # A stochastic model (noisy analog hardware) draws its forward noise from torch's global
        # RNG, so every forward pass here runs under a seed of its own: same seed, same numbers.
        with torch_global_seed(derive_seed(seed, "adversarial-condition", "clean")):
            clean_correct = _correct(model, x, y)
        n_clean = int(clean_correct.sum())
        out: list[Measurement] = []
        for eps in p.eps:
            for draw in range(p.draws):
                draw_seed = derive_seed(seed, "adversarial-condition", float(eps), draw)
                tags = {"eps": float(eps), "attack": p.attack, "draw": draw}
                x_adv = x if eps == 0 else craft_adversarial(model, x, y, p, float(eps), draw_seed)
                with torch_global_seed(derive_seed(draw_seed, "score")):
                    correct, loss = _correct_and_loss(model, x_adv, y)
                flipped = int((clean_correct & ~correct).sum())
                out.append(Measurement("accuracy", float(correct.float().mean()), dict(tags)))
                out.append(Measurement("loss", loss, dict(tags)))
                out.append(
                    Measurement("attack_success", flipped / n_clean if n_clean else 0.0, dict(tags))
                )
        return out


@torch.no_grad()
def _correct_and_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024):
    """Per-example correctness (bool, length N) and mean cross-entropy (nats), eval mode."""
    was_training = model.training
    model.eval()
    correct, loss_sum = [], 0.0
    try:
        for start in range(0, x.shape[0], batch_size):
            logits = model(x[start : start + batch_size])
            target = y[start : start + batch_size]
            correct.append(logits.argmax(dim=1) == target)
            loss_sum += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
    finally:
        model.train(was_training)
    return torch.cat(correct), loss_sum / max(x.shape[0], 1)


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _correct_and_loss(model, x, y)[0]
