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

Attacking the model as deployed on analog hardware (`hardware` block + `drift_time`): each draw k
is one chip. The model is programmed on simulated tiles (swap_hw.noise.hardware.program, programming
noise and drift exponents seeded from (seed, k)), drifted to `drift_time` seconds (read noise
seeded from (seed, k)), and then, on that same programmed-and-drifted chip, the clean accuracy
(eps = 0) and every eps level are measured: the attack is crafted WHITE-BOX against the analog
forward itself — torchattacks differentiates through aihwkit's torch tiles (autograd w.r.t. the
inputs), so with IO noise (out_noise, inp_res/out_res quantisation) every forward and backward of
the attack is a stochastic draw, exactly like the scoring passes; `eotpgd` with `eot_iter` > 1
averages gradients over that noise. Measurements then carry the extra tag
{"drift_time": t}; the report averages draws (chips) within a replicate and gives mean ± 95 % CI
over replicates. "attack_success" is relative to the same chip's clean predictions.
Every forward pass runs under a seed derived from (seed, eps, draw), so the same seed gives the
same numbers, on digital and on analog models alike.

`max_examples` scores the first N test examples only (the same N for every model, so pruners stay
comparable) — attacks cost `steps` forward + backward passes per example (on hardware, plus one
programming per draw).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field, ValidationInfo, field_validator
from torch import nn

from ..noise.attacks import AttackSettings, craft_adversarial, input_range_problem
from ..errors import ConfigError
from ..noise.hardware import HardwareConfig, Seconds, program
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
        hardware: HardwareConfig | None = Field(
            None,
            description="attack the model as deployed on this simulated analog hardware (same "
            "fields as the analog condition: noise_model, drift_compensation, keep_pruned_zero, "
            "out_noise, ...); each draw programs a new chip. None = the digital model",
        )
        drift_time: Seconds | None = Field(
            None,
            ge=0.0,
            validate_default=True,
            description="with hardware: seconds between programming and the attack (e.g. 86400 = "
            "one day); required with hardware, not allowed without",
        )

        @field_validator("eps")
        @classmethod
        def _non_negative(cls, values: list[float], info: ValidationInfo) -> list[float]:
            bad = [v for v in values if not (math.isfinite(v) and v >= 0)]
            if bad:
                raise ValueError(f"eps values must be finite and ≥ 0, got {bad}")
            if len(set(values)) != len(values):
                raise ValueError(f"eps values must be distinct, got {values}")
            # attack is declared (in AttackSettings) before eps, so it is in info.data when valid
            if info.data.get("attack", "pgdl2") != "pgdl2" and any(v > 1.0 for v in values):
                raise ValueError(f"an L∞ budget eps > 1 exceeds the input range [0, 1]; got {values}")
            return values

        @field_validator("drift_time")
        @classmethod
        def _drift_time_with_hardware(cls, value: float | None, info: ValidationInfo) -> float | None:
            if "hardware" not in info.data:  # the hardware block itself was invalid
                return value
            hardware = info.data["hardware"]
            if hardware is None and value is not None:
                raise ValueError("drift_time applies only to a model on hardware: add a hardware block")
            if hardware is not None:
                if value is None:
                    raise ValueError(
                        "give drift_time, the seconds between programming and the attack (e.g. 1, 86400)"
                    )
                hardware.check_drift_time(value)
            return value

    def validate_scenario(self, scenario, file: str, path: str) -> None:
        """Config-time check: the scenario's inputs must lie in [0, 1] for an attack."""
        problem = input_range_problem(scenario.spec.data, getattr(scenario.inline, "data", None))
        if problem:
            raise ConfigError(file, path, problem)

    def describe(self) -> dict[str, Any]:
        # A digital attack's description (and so its results' keys in existing databases) does not
        # mention the hardware fields it does not use.
        out = super().describe()
        if self.params.hardware is None:
            out.pop("hardware", None)
            out.pop("drift_time", None)
        return out

    def evaluate(
        self, model: nn.Module, test: tuple[torch.Tensor, torch.Tensor], seed: int
    ) -> list[Measurement]:
        p = self.params
        x, y = test
        if p.max_examples is not None:
            x, y = x[: p.max_examples], y[: p.max_examples]
        if p.hardware is not None:
            return self._evaluate_on_hardware(model, x, y, seed)
        # A digital model is deterministic: one clean pass serves every draw.
        with torch_global_seed(derive_seed(seed, "adversarial-condition", "clean")):
            clean_correct = _correct(model, x, y)
        out: list[Measurement] = []
        for eps in p.eps:
            for draw in range(p.draws):
                out.extend(self._attack_and_score(model, x, y, clean_correct, float(eps), draw, seed, {}))
        return out

    def _evaluate_on_hardware(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int
    ) -> list[Measurement]:
        """Per draw: program a chip, drift it, then measure every eps on that chip."""
        p = self.params
        t = float(p.drift_time)
        out: list[Measurement] = []
        for draw in range(p.draws):
            chip = program(model, p.hardware, derive_seed(seed, "adversarial-condition", "program", draw))
            chip.drift(t, derive_seed(seed, "adversarial-condition", "drift", draw))
            # The clean pass uses the eps = 0 scoring seed: with IO noise the forward is random,
            # and this way eps = 0 reproduces the clean pass exactly (attack_success 0).
            clean_seed = derive_seed(derive_seed(seed, "adversarial-condition", 0.0, draw), "score")
            with torch_global_seed(clean_seed):
                clean_correct = _correct(chip.analog, x, y)
            for eps in p.eps:
                out.extend(
                    self._attack_and_score(chip.analog, x, y, clean_correct, float(eps), draw, seed, {"drift_time": t})
                )
        return out

    def _attack_and_score(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        clean_correct: torch.Tensor,
        eps: float,
        draw: int,
        seed: int,
        extra_tags: dict[str, Any],
    ) -> list[Measurement]:
        """accuracy, loss and attack_success of `model` on x attacked with budget eps (one draw)."""
        p = self.params
        # The attack's seed depends on (seed, eps, draw) only: adding an eps level or a draw
        # leaves the other measurements unchanged.
        draw_seed = derive_seed(seed, "adversarial-condition", eps, draw)
        tags = {"eps": eps, "attack": p.attack, "draw": draw, **extra_tags}
        x_adv = x if eps == 0 else craft_adversarial(model, x, y, p, eps, draw_seed)
        with torch_global_seed(derive_seed(draw_seed, "score")):
            correct, loss = _correct_and_loss(model, x_adv, y)
        n_clean = int(clean_correct.sum())
        flipped = int((clean_correct & ~correct).sum())
        return [
            Measurement("accuracy", float(correct.float().mean()), dict(tags)),
            Measurement("loss", loss, dict(tags)),
            Measurement("attack_success", flipped / n_clean if n_clean else 0.0, dict(tags)),
        ]


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
