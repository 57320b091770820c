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
{"drift_time": t} (and, with `stuck_fraction` > 0 in the hardware block, each chip's realised
"stuck_fraction" is stored too, tagged {"drift_time": t, "draw": k}); the report averages draws (chips) within a replicate and gives mean ± 95 % CI
over replicates. "attack_success" is relative to the same chip's clean predictions.
Every forward pass runs under a seed derived from (seed, eps, draw), so the same seed gives the
same numbers, on digital and on analog models alike.

Robustness of a stochastic chip by the randomized-defence rules (`eot_draws`: K)
------------------------------------------------------------------------------
The numbers above attack the very draw they score, through gradients of that ONE draw; RobustBench
and AutoAttack do not accept that as the robustness of a randomized model. With `eot_draws: K`
(hardware only) each draw k instead:

- programs the SCORING chip exactly as above (seeds (seed, "program"/"drift", k): the same chip,
  so the eps = 0 numbers are those of the default mode), and
- programs K ATTACK chips, held out from scoring: chip j is programmed with seed
  derive_seed(seed, "adversarial-condition", "attack-program", k, j) and drifted to `drift_time`
  with seed (…, "attack-drift", k, j) — independent programming noise, drift exponents and read
  noise, never the scoring chip's. They are shared by the eps levels of that draw; K' < K chips are
  the first K' of K.
- crafts x' on the K attack chips with EOT (swap_hw.noise.attacks.craft_adversarial_eot): forward
  calls cycle through the chips, and the EOT attacks (eotpgd, apgd, autoattack_rand) average one
  gradient per chip at every step (eot_iter = K, torchattacks' EOTPGD semantics). Attacks without
  EOT (pgd, fgsm, ...) take K = 1: a transfer attack from one held-out chip, and eotpgd with
  eot_draws 1 gives exactly the same x' (same seed) as pgd with eot_draws 1.
- scores x' on the scoring chip (a held-out draw): robust accuracy as above.

Measurements then carry one more tag, {"eot_draws": K} (numeric: a grid coordinate in the store,
so the report's column reads e.g. "adversarial eot_draws=20 eps=0.1"), next to {"attack": name};
at the default (eot_draws None) tags and cell keys are those of before. The number accepted as
randomized-defence robustness is attack autoattack_rand with eot_draws ≥ 2 (AutoAttack's own
setting: 20), scored as here on held-out chips; since APGD returns the clean x for examples it did
not fool on the attack chips, eotpgd at the same K can be stronger on the scored chip, so a claim
should give the smaller of the two (measured in docs/robustness.md). Cost per draw: K + 1
programmings, and per eps > 0 about (steps + 1)·K forward + backward passes per example for eotpgd
and apgd, twice that for autoattack_rand.

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

from ..noise.attacks import (
    EOT_ATTACKS,
    AttackSettings,
    attack_class_problem,
    craft_adversarial,
    craft_adversarial_eot,
    input_range_problem,
)
from ..errors import ConfigError
from ..noise.hardware import HardwareConfig, Seconds, program
from ..registry import ADDED_LATER
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

        eot_draws: int | None = Field(
            None,
            ge=1,
            le=100,
            json_schema_extra=ADDED_LATER,
            description="with hardware: craft the attack on this many chips held out from the one "
            "scored, averaging one gradient per chip per step (EOT; eot_iter = eot_draws); > 1 "
            "needs eotpgd, apgd or autoattack_rand. None = attack the scored chip itself",
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

        @field_validator("eot_draws")
        @classmethod
        def _eot_draws_on_hardware(cls, value: int | None, info: ValidationInfo) -> int | None:
            if value is None or "hardware" not in info.data:
                return value
            if info.data["hardware"] is None:
                raise ValueError("eot_draws applies only to a model on hardware (a digital model has one "
                                 "draw): add a hardware block")
            attack = info.data.get("attack")
            if value > 1 and attack is not None and attack not in EOT_ATTACKS:
                raise ValueError(f"eot_draws {value} needs an attack that averages gradients over draws "
                                 f"({', '.join(EOT_ATTACKS)}); {attack} takes eot_draws 1")
            eot_iter = info.data.get("eot_iter", 1)
            if eot_iter not in (1, value):
                raise ValueError(f"with eot_draws the attack averages one gradient per chip per step "
                                 f"(eot_iter = eot_draws = {value}); leave eot_iter out (got {eot_iter})")
            return value

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
        tags: dict[str, Any] = {"drift_time": t}
        if p.eot_draws is not None:
            tags["eot_draws"] = p.eot_draws
        for draw in range(p.draws):
            chip = program(model, p.hardware, derive_seed(seed, "adversarial-condition", "program", draw))
            chip.drift(t, derive_seed(seed, "adversarial-condition", "drift", draw))
            if p.hardware.stuck_fraction > 0:  # the realised fault rate of the scored chip, as `analog` stores it
                out.append(Measurement("stuck_fraction", chip.stuck_fraction(), {**tags, "draw": draw}))
            # The clean pass uses the eps = 0 scoring seed: with IO noise the forward is random,
            # and this way eps = 0 reproduces the clean pass exactly (attack_success 0).
            clean_seed = derive_seed(derive_seed(seed, "adversarial-condition", 0.0, draw), "score")
            with torch_global_seed(clean_seed):
                clean_correct = _correct(chip.analog, x, y)
            attack_chips = None
            if p.eot_draws is not None and any(eps > 0 for eps in p.eps):
                attack_chips = self.attack_chips(model, seed, draw)
            for eps in p.eps:
                out.extend(self._attack_and_score(
                    chip.analog, x, y, clean_correct, float(eps), draw, seed, tags, attack_chips
                ))
        return out

    def attack_chips(self, model: nn.Module, seed: int, draw: int) -> list[nn.Module]:
        """The `eot_draws` attack chips of `draw`: held-out programming draws of `model`, each
        drifted to drift_time, seeded (seed, "attack-program" / "attack-drift", draw, j) — never
        the seeds of the scored chip (seed, "program" / "drift", draw)."""
        p = self.params
        chips = []
        for j in range(p.eot_draws):
            chip = program(model, p.hardware, derive_seed(seed, "adversarial-condition", "attack-program", draw, j))
            chip.drift(float(p.drift_time), derive_seed(seed, "adversarial-condition", "attack-drift", draw, j))
            chips.append(chip.analog)
        return chips

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
        attack_chips: list[nn.Module] | None = None,
    ) -> list[Measurement]:
        """accuracy, loss and attack_success of `model` on x attacked with budget eps (one draw).

        x' is crafted against `model` itself, or, given `attack_chips`, against those held-out
        draws with EOT (eot_iter = their number), and always scored on `model`.
        """
        p = self.params
        # The attack's seed depends on (seed, eps, draw) only: adding an eps level or a draw
        # leaves the other measurements unchanged.
        draw_seed = derive_seed(seed, "adversarial-condition", eps, draw)
        tags = {"eps": eps, "attack": p.attack, "draw": draw, **extra_tags}
        if eps == 0:
            x_adv = x
        elif attack_chips is not None:
            settings = p.model_copy(update={"eot_iter": len(attack_chips)})
            x_adv = craft_adversarial_eot(attack_chips, x, y, settings, eps, draw_seed)
        else:
            x_adv = craft_adversarial(model, x, y, p, eps, draw_seed)
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
