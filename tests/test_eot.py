"""EOT over hardware draws and AutoAttack's rand version (issue 18, part 5).

A tiny MLP on digits, programmed on simulated PCM chips; every attack here runs in well under a
second.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchattacks
from torch import nn

import swap_hw.deploy.adversarial as adversarial_module
from swap_hw.config import parse_scenario_text
from swap_hw.deploy import CONDITIONS
from swap_hw.errors import ConfigError, ParameterError
from swap_hw.noise.attacks import (
    AttackSettings,
    DrawCycle,
    build_attack,
    craft_adversarial,
    craft_adversarial_eot,
    perturbation_norms,
    torchattacks_seed,
)
from swap_hw.noise.hardware import HardwareConfig, program
from swap_hw.results.store import split_tags
from swap_hw.seeding import derive_seed, torch_global_seed

FLOAT_SLACK = 1e-6  # x + clamp(δ) is computed in float32
NOISY_IO = {"noise_model": "pcm", "out_noise": 0.06}  # a chip whose every forward is a fresh draw


@pytest.fixture(scope="module")
def tiny():
    """A 64-32-10 MLP trained for 3 epochs on digits (≈ 90 % test accuracy), and 64 test examples."""
    from swap_hw.data import load_digits_splits
    from swap_hw.models import train_model

    splits = load_digits_splits(0.2, 0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    train_model(model, splits.x_train, splits.y_train, epochs=3, lr=3e-3, batch_size=64, seed=1)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, (splits.x_test[:64], splits.y_test[:64])


def _chips(model, config: dict, seeds: list[int], t: float = 86400.0) -> list[nn.Module]:
    hw = HardwareConfig(**config)
    return [program(model, hw, s).drift(t, s + 1000).analog for s in seeds]


def _accuracy(model, x, y, seed=0) -> float:
    with torch.no_grad(), torch_global_seed(seed):
        return float((model(x).argmax(dim=1) == y).float().mean())


class _Counted(nn.Module):
    """Delegates to `model` and appends `index` to the shared `log` on every call."""

    def __init__(self, model: nn.Module, index: int, log: list[int]):
        super().__init__()
        self.model, self.index, self.log = model, index, log

    def forward(self, x):
        self.log.append(self.index)
        return self.model(x)


# --- EOT over K draws ---------------------------------------------------------------------------


@pytest.mark.parametrize("config", [NOISY_IO, {"noise_model": "pcm"}], ids=["io-noise", "perfect-io"])
def test_eot_with_one_draw_is_single_draw_pgd_bit_for_bit(tiny, config):
    model, (x, y) = tiny
    (chip,) = _chips(model, config, [5])
    pgd = craft_adversarial(chip, x, y, AttackSettings(attack="pgd", steps=5), 0.1, seed=7)
    eot = craft_adversarial_eot([chip], x, y, AttackSettings(attack="eotpgd", steps=5, eot_iter=1), 0.1, seed=7)
    assert torch.equal(pgd, eot)
    assert not torch.equal(pgd, x)  # the attack moved the inputs (the equality is not vacuous)
    other = craft_adversarial_eot([chip], x, y, AttackSettings(attack="eotpgd", steps=5), 0.1, seed=8)
    assert not torch.equal(other, eot)  # the random start follows the seed


def test_each_eot_step_averages_one_gradient_per_draw(tiny):
    """EOTPGD over K chips: every step runs the K chips once each, and one step from x (no random
    start) moves x by alpha·sign(Σ_j ∇x CE(chip_j(x), y)), the sum of the per-chip gradients."""
    model, (x, y) = tiny
    chips = _chips(model, {"noise_model": "pcm", "prog_noise_scale": 3.0}, [11, 12, 13])
    log: list[int] = []
    counted = [_Counted(c, j, log) for j, c in enumerate(chips)]
    steps, k = 4, len(chips)
    settings = AttackSettings(attack="eotpgd", steps=steps, eot_iter=k)
    x_adv = craft_adversarial_eot(counted, x, y, settings, 0.1, seed=3)
    assert log == list(range(k)) * steps
    assert torch.equal(craft_adversarial_eot(counted, x, y, settings, 0.1, seed=3), x_adv)  # reproducible
    assert not torch.equal(craft_adversarial_eot(counted[:1], x, y, settings.model_copy(update={"eot_iter": 1}),
                                                 0.1, seed=3), x_adv)  # three chips are not one

    one_step = AttackSettings(attack="eotpgd", steps=1, eot_iter=k, random_start=False, alpha_rel=0.5)
    x_one = craft_adversarial_eot(chips, x, y, one_step, 0.1, seed=3)
    xg = x.clone().requires_grad_(True)
    grad = sum(torch.autograd.grad(nn.functional.cross_entropy(c(xg), y), xg)[0] for c in chips)
    expected = torch.clamp(x + 0.05 * grad.sign(), 0.0, 1.0)
    assert torch.allclose(x_one, expected, atol=FLOAT_SLACK)
    # the gradients of the single chips disagree in sign somewhere: the average is not any one of them
    signs = [torch.autograd.grad(nn.functional.cross_entropy(c(xg), y), xg)[0].sign() for c in chips]
    assert all(not torch.equal(s, grad.sign()) for s in signs)


def test_draw_cycle_runs_every_draw_in_any_k_consecutive_calls(tiny):
    model, (x, y) = tiny
    chips = _chips(model, NOISY_IO, [1, 2, 3])
    cycle = DrawCycle(chips)
    x_adv = build_attack(cycle, AttackSettings(attack="autoattack_rand", steps=3, eot_iter=3), 0.1, seed=0)(x, y).detach()
    served = cycle.served
    assert len(served) > 3 * 3  # APGD-CE at least: 1 + (steps + 1)·eot_iter calls
    assert all(len(set(served[i:i + 3])) == 3 for i in range(len(served) - 2))
    assert float(perturbation_norms(x, x_adv)[0].max()) <= 0.1 + FLOAT_SLACK
    with pytest.raises(ParameterError, match="at least one model draw"):
        craft_adversarial_eot([], x, y, AttackSettings(attack="eotpgd"), 0.1, seed=0)


def test_every_submodule_keeps_its_own_mode(tiny):
    """torchattacks calls train() on a model it found in train mode; a chip in eval mode inside a
    wrapper in train mode must come back in eval mode (an analog tile computes differently in
    train mode)."""
    model, (x, y) = tiny
    chips = _chips(model, {"noise_model": "pcm"}, [31, 32])
    wrappers = [_Counted(c, j, []) for j, c in enumerate(chips)]  # nn.Module starts in train mode
    for draws in (wrappers[:1], wrappers):
        craft_adversarial_eot(draws, x, y, AttackSettings(attack="eotpgd", steps=2, eot_iter=len(draws)), 0.1, seed=0)
        assert all(w.training for w in wrappers) and not any(c.training for c in chips)


# --- the condition: attack K held-out chips, score on another ----------------------------------


def _record_programs(monkeypatch) -> list:
    made = []
    real = adversarial_module.program

    def recording(model, config, seed):
        chip = real(model, config, seed)
        made.append(chip)
        return chip

    monkeypatch.setattr(adversarial_module, "program", recording)
    return made


def test_condition_attacks_held_out_chips_and_scores_on_its_own(tiny, monkeypatch):
    model, test = tiny
    made = _record_programs(monkeypatch)
    attacked = []
    real_craft = adversarial_module.craft_adversarial_eot

    def recording_craft(models, *args, **kwargs):
        attacked.append(list(models))
        return real_craft(models, *args, **kwargs)

    monkeypatch.setattr(adversarial_module, "craft_adversarial_eot", recording_craft)
    cls = CONDITIONS.get("adversarial")
    common = dict(eps=[0.0, 0.1], steps=3, draws=2, hardware=NOISY_IO, drift_time=86400)
    cond = cls(attack="eotpgd", eot_draws=3, **common)
    ms = cond.evaluate(model, test, seed=4)

    seeds = [c.seed for c in made]
    scoring = {derive_seed(4, "adversarial-condition", "program", k) for k in range(2)}
    attack = {derive_seed(4, "adversarial-condition", "attack-program", k, j) for k in range(2) for j in range(3)}
    assert len(seeds) == len(set(seeds)) == 2 + 2 * 3  # every chip its own programming draw
    assert set(seeds) == scoring | attack and not scoring & attack
    by_seed = {c.seed: c for c in made}
    for k in range(2):  # the attack ran on draw k's three attack chips, never on the scored chip
        score_chip = by_seed[derive_seed(4, "adversarial-condition", "program", k)]
        chips = attacked[k]
        assert [id(c) for c in chips] == [id(by_seed[derive_seed(4, "adversarial-condition", "attack-program", k, j)].analog)
                                          for j in range(3)]
        assert all(c is not score_chip.analog for c in chips)
        w_score = score_chip.effective_weights()
        for j in range(3):
            w_attack = by_seed[derive_seed(4, "adversarial-condition", "attack-program", k, j)].effective_weights()
            assert all(not torch.equal(w_attack[n], w_score[n]) for n in w_score)

    assert all(m.tags["eot_draws"] == 3 and m.tags["attack"] == "eotpgd" for m in ms)
    assert len(ms) == 2 * 2 * 3
    # stored: the draw count is a grid coordinate (the report's column reads "eot_draws=3 eps=0.1"),
    # the attack's name a descriptive tag
    _, grid, other = split_tags(ms[-1].tags)
    assert grid == {"eps": 0.1, "drift_time": 86400.0, "eot_draws": 3.0} and other == {"attack": "eotpgd"}
    assert ms == cond.evaluate(model, test, seed=4)  # reproducible
    assert ms != cond.evaluate(model, test, seed=5)
    acc = {(m.tags["eps"], m.tags["draw"]): m.value for m in ms if m.metric == "accuracy"}
    for k in range(2):
        assert acc[(0.1, k)] < acc[(0.0, k)] - 0.1  # a transfer attack from 3 held-out chips still bites
    # the scored chip is the default mode's chip: its eps = 0 numbers are the same
    plain = cls(attack="eotpgd", **common).evaluate(model, test, seed=4)
    key = lambda m: (m.metric, m.tags["draw"])
    assert {key(m): m.value for m in ms if m.tags["eps"] == 0} == {key(m): m.value for m in plain if m.tags["eps"] == 0}
    assert all("eot_draws" not in m.tags for m in plain)


def test_condition_eotpgd_with_one_draw_equals_pgd_with_one_draw(tiny):
    model, test = tiny
    cls = CONDITIONS.get("adversarial")
    common = dict(eps=[0.0, 0.1], steps=4, draws=2, hardware=NOISY_IO, drift_time=3600, eot_draws=1)
    eot = cls(attack="eotpgd", **common).evaluate(model, test, seed=2)
    pgd = cls(attack="pgd", **common).evaluate(model, test, seed=2)
    assert [m.value for m in eot] == [m.value for m in pgd]
    assert [{**m.tags, "attack": "pgd"} for m in eot] == [m.tags for m in pgd]
    # one held-out chip is a different attack from the scored chip's own gradients
    white_box = cls(attack="pgd", **{k: v for k, v in common.items() if k != "eot_draws"}).evaluate(model, test, seed=2)
    assert [m.value for m in white_box] != [m.value for m in pgd]


def test_autoattack_rand_on_held_out_chips(tiny):
    model, test = tiny
    cls = CONDITIONS.get("adversarial")
    cond = cls(attack="autoattack_rand", eps=[0.0, 0.1], steps=3, eot_draws=2, hardware=NOISY_IO, drift_time=86400)
    ms = cond.evaluate(model, test, seed=1)
    assert all(np.isfinite(m.value) for m in ms)
    assert all(m.tags["attack"] == "autoattack_rand" and m.tags["eot_draws"] == 2 for m in ms)
    acc = {m.tags["eps"]: m.value for m in ms if m.metric == "accuracy"}
    assert acc[0.1] < acc[0.0]


# --- AutoAttack's rand version --------------------------------------------------------------------


def test_autoattack_rand_stays_in_the_ball_and_range(tiny):
    model, (x, y) = tiny
    chips = _chips(model, NOISY_IO, [21, 22])
    settings = AttackSettings(attack="autoattack_rand", steps=5, eot_iter=2)
    x_adv = craft_adversarial_eot(chips, x, y, settings, 0.08, seed=6)
    assert x_adv.shape == x.shape and float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float(perturbation_norms(x, x_adv)[0].max()) <= 0.08 + FLOAT_SLACK
    assert torch.equal(craft_adversarial_eot(chips, x, y, settings, 0.08, seed=6), x_adv)
    assert _accuracy(model, x_adv, y) < _accuracy(model, x, y) - 0.1
    digital = craft_adversarial(model, x, y, settings, 0.08, seed=6)  # on the digital model too
    assert float(perturbation_norms(x, digital)[0].max()) <= 0.08 + FLOAT_SLACK


def test_autoattack_rand_is_torchattacks_rand_version(tiny):
    """With AutoAttack's own settings (steps 10, EOT 20) the attack is torchattacks'
    AutoAttack(version='rand') bit for bit."""
    model, (x, y) = tiny
    ours = build_attack(model, AttackSettings(attack="autoattack_rand", steps=10, eot_iter=20), 0.1, seed=3)
    theirs = torchattacks.AutoAttack(model, norm="Linf", eps=0.1, version="rand", n_classes=10,
                                     seed=torchattacks_seed(3))
    with torch_global_seed(0):
        a = ours(x, y)
    with torch_global_seed(0):
        b = theirs(x, y)
    assert torch.equal(a, b) and not torch.equal(a, x)


def test_autoattack_rand_refuses_a_two_class_model():
    torch.manual_seed(0)
    two = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 2, (8,))
    with pytest.raises(ParameterError) as info:
        craft_adversarial(two, x, y, AttackSettings(attack="autoattack_rand"), 0.1, seed=0)
    message = str(info.value)
    assert "\n" not in message and "needs ≥ 3 classes, but the model has 2" in message
    # cross-entropy attacks with EOT remain available for two classes
    x_adv = craft_adversarial(two, x, y, AttackSettings(attack="apgd", eot_iter=2, steps=3), 0.1, seed=0)
    assert float(perturbation_norms(x, x_adv)[0].max()) <= 0.1 + FLOAT_SLACK


# --- settings: defaults unchanged, bad ones refused in one line ------------------------------------


def test_default_description_and_tags_are_unchanged(tiny):
    cls = CONDITIONS.get("adversarial")
    assert cls().describe() == {
        "name": "adversarial", "attack": "pgd", "steps": 10, "alpha_rel": None, "random_start": True,
        "eot_iter": 1, "eps": [0.0, 0.05, 0.1, 0.2], "draws": 1, "max_examples": None,
    }
    on_chip = cls(hardware={}, drift_time=1).describe()
    assert "eot_draws" not in on_chip and set(on_chip) == set(cls().describe()) | {"hardware", "drift_time"}
    assert cls(hardware={}, drift_time=1, eot_draws=2, attack="apgd").describe()["eot_draws"] == 2
    model, test = tiny
    ms = cls(eps=[0.0, 0.1], steps=2, hardware={}, drift_time=1).evaluate(model, test, seed=0)
    assert all(set(m.tags) == {"eps", "attack", "draw", "drift_time"} for m in ms)


@pytest.mark.parametrize("bad, match", [
    ({"eot_draws": 0, "hardware": {}, "drift_time": 1}, "greater than or equal to 1"),
    ({"eot_draws": 2, "attack": "eotpgd"}, "only to a model on hardware"),
    ({"eot_draws": 4, "attack": "pgd", "hardware": {}, "drift_time": 1}, "needs an attack that averages"),
    ({"eot_draws": 4, "attack": "eotpgd", "eot_iter": 3, "hardware": {}, "drift_time": 1}, "leave eot_iter out"),
    ({"attack": "autoattack"}, "autoattack_rand"),
])
def test_bad_eot_settings_are_parameter_errors(bad, match):
    with pytest.raises(ParameterError, match=match):
        CONDITIONS.get("adversarial")(**bad)


SCENARIO = """
pruners: [magnitude]
sparsities: [0.5]
{data}
sources: {sources}
conditions: {conditions}
"""


def _error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_scenario_text(text, "s.yaml")
    assert "\n" not in str(info.value)
    return info.value


@pytest.fixture
def two_class_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "two.npz"
    np.savez(path, x_train=rng.random((40, 16), dtype=np.float32), y_train=np.arange(40) % 2,
             x_test=rng.random((10, 16), dtype=np.float32), y_test=np.arange(10) % 2)
    return path


HW = "hardware: {noise_model: pcm}, drift_time: 86400"


@pytest.mark.parametrize("sources, conditions, field, words", [
    ("[clean]", f"[{{name: adversarial, eot_draws: 0, {HW}}}]", "conditions[0].eot_draws",
     "greater than or equal to 1"),
    ("[clean]", "[digital, {name: adversarial, attack: eotpgd, eot_draws: 4}]", "conditions[1].eot_draws",
     "add a hardware block"),
    ("[clean]", f"[{{name: adversarial, attack: pgd, eot_draws: 4, {HW}}}]", "conditions[0].eot_draws",
     "eotpgd, apgd, autoattack_rand"),
    ("[clean]", f"[{{name: adversarial, attack: apgd, eot_iter: 5, eot_draws: 4, {HW}}}]",
     "conditions[0].eot_draws", "leave eot_iter out"),
    ("[clean]", "[{name: adversarial, attack: autoattack_rand}]", "conditions[0].attack", "needs ≥ 3 classes, but the data have 2"),
    ("[{name: adversarial, attack: autoattack_rand}]", "[digital]", "sources[0].attack", "needs ≥ 3 classes"),
])
def test_bad_eot_scenarios_are_one_line_naming_the_field(two_class_npz, sources, conditions, field, words):
    data = f"data: {{name: npz, path: {two_class_npz}}}"
    err = _error(SCENARIO.format(data=data, sources=sources, conditions=conditions))
    assert err.field == field, str(err)
    assert words in err.reason


def test_good_eot_scenarios_validate(two_class_npz):
    digits = SCENARIO.format(data="", sources="[clean]", conditions=(
        f"[{{name: adversarial, attack: autoattack_rand, eot_draws: 20, steps: 10, {HW}}},"
        f" {{name: adversarial, attack: eotpgd, eot_draws: 4, eot_iter: 4, {HW}}}]"))
    scenario = parse_scenario_text(digits, "s.yaml")
    assert [c.params.eot_draws for c in scenario.conditions] == [20, 4]
    # two classes: the cross-entropy attacks with EOT are fine
    two = SCENARIO.format(data=f"data: {{name: npz, path: {two_class_npz}}}", sources="[clean]",
                          conditions=f"[{{name: adversarial, attack: apgd, eot_draws: 3, {HW}}}]")
    assert parse_scenario_text(two, "s.yaml").conditions[0].params.attack == "apgd"
