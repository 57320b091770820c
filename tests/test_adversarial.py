"""attacks.py, the `adversarial` gradient source and the `adversarial` deployment condition."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from swap_hw.noise.attacks import ATTACK_NAMES, AttackSettings, craft_adversarial, perturbation_norms, step_size
from swap_hw.deploy import CONDITIONS
from swap_hw.models import accuracy_and_loss
from swap_hw.gradients import GRADIENT_SOURCES

FLOAT_SLACK = 1e-6  # x + clamp(δ) is computed in float32


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.fixture(scope="module")
def test_batch(digits_model):
    _, splits = digits_model
    return splits.x_test[:120], splits.y_test[:120]


@pytest.mark.parametrize("attack", ATTACK_NAMES)
def test_every_attack_stays_in_budget_and_range_and_raises_loss(digits_model, test_batch, attack):
    model, _ = digits_model
    x, y = test_batch
    if attack == "square":  # a query-based search: fewer examples keep it fast
        x, y = x[:60], y[:60]
    eps = 0.5 if attack == "pgdl2" else 0.1
    settings = AttackSettings(attack=attack, steps=100 if attack == "square" else 5)
    x_adv = craft_adversarial(model, x, y, settings, eps, seed=3)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    linf, l2 = perturbation_norms(x, x_adv)
    norm = l2 if attack == "pgdl2" else linf
    assert float(norm.max()) <= eps + FLOAT_SLACK
    _, clean_loss = accuracy_and_loss(model, x, y)
    _, adv_loss = accuracy_and_loss(model, x_adv, y)
    # square is a black-box search on the margin, weaker per unit of work than gradient attacks
    assert adv_loss > clean_loss + (0.05 if attack == "square" else 0.2)


def test_attack_is_seeded_pure_and_leaves_global_rng_alone(digits_model, test_batch):
    model, _ = digits_model
    x, y = test_batch
    settings = AttackSettings(attack="pgd", steps=3)
    model.train()  # the caller's mode must come back
    before = _state(model)
    grads_before = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = craft_adversarial(model, x, y, settings, 0.1, seed=1)
    assert torch.equal(torch.rand(3), expected_next)  # global RNG state restored
    b = craft_adversarial(model, x, y, settings, 0.1, seed=1)
    c = craft_adversarial(model, x, y, settings, 0.1, seed=2)
    assert model.training
    model.eval()
    assert torch.equal(a, b) and not torch.equal(a, c)  # random start follows the seed
    assert _same_state(model, before)
    for p, g in zip(model.parameters(), grads_before):  # no gradient accumulated into the model
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    assert torch.equal(craft_adversarial(model, x, y, settings, 0.0, seed=1), x)
    # each batch has its own derived seed; a deterministic attack does not depend on batching
    bim = AttackSettings(attack="bim", steps=3)
    assert torch.allclose(
        craft_adversarial(model, x, y, bim, 0.1, seed=1, batch_size=50),
        craft_adversarial(model, x, y, bim, 0.1, seed=1),
        atol=FLOAT_SLACK,
    )


def test_default_step_sizes():
    assert step_size(AttackSettings(attack="pgd", steps=10), 0.1) == pytest.approx(0.025)
    assert step_size(AttackSettings(attack="ffgsm"), 0.1) == pytest.approx(0.125)
    assert step_size(AttackSettings(attack="bim", alpha_rel=0.5), 0.2) == pytest.approx(0.1)


def test_source_replaces_exact_fraction_and_keeps_labels(digits_model):
    model, splits = digits_model
    x, y = splits.calibration(200, seed=0)
    before = _state(model)
    clean = GRADIENT_SOURCES.get("clean")().collect(model, (x, y), seed=5)
    source = GRADIENT_SOURCES.get("adversarial")(attack="pgd", eps=0.1, steps=5, fraction=0.3)
    g = source.collect(model, (x, y), seed=5)
    again = source.collect(model, (x, y), seed=5)
    other = source.collect(model, (x, y), seed=6)

    info = g.provenance["adversarial"]
    assert info["replaced"] == 60 and info["realised_fraction"] == pytest.approx(0.3)
    assert info["linf_max"] <= 0.1 + FLOAT_SLACK
    assert info["error_after"] > info["error_before"]
    same_rows = (g.X == clean.X).all(dim=1)
    assert int((~same_rows).sum()) == 60  # exactly the replaced examples' rows changed
    # attacked examples have larger loss gradients than the clean ones they replaced
    assert g.X[~same_rows].norm(dim=1).mean() > 2 * clean.X[~same_rows].norm(dim=1).mean()
    assert torch.equal(g.X, again.X) and not torch.equal(g.X, other.X)
    assert torch.equal(g.w_bar, clean.w_bar)
    assert _same_state(model, before)

    none = GRADIENT_SOURCES.get("adversarial")(fraction=0.0).collect(model, (x, y), seed=5)
    assert torch.equal(none.X, clean.X) and none.provenance["adversarial"]["replaced"] == 0


def test_source_params_are_checked():
    source = GRADIENT_SOURCES.get("adversarial")
    for bad in ({"eps": -0.1}, {"eps": 1.5}, {"fraction": 1.2}, {"attack": "cw"}, {"steps": 0}):
        with pytest.raises(ValueError):
            source(**bad)
    assert source(attack="pgdl2", eps=3.0).params.eps == 3.0  # an L2 radius may exceed 1


def test_condition_robust_accuracy_falls_with_budget(digits_model):
    model, splits = digits_model
    before = _state(model)
    cond = CONDITIONS.get("adversarial")(attack="pgd", eps=[0.0, 0.05, 0.2], steps=5, max_examples=150, draws=2)
    ms = cond.evaluate(model, splits.test, seed=9)
    assert ms == cond.evaluate(model, splits.test, seed=9)
    assert len(ms) == 3 * 2 * 3
    acc = {(m.tags["eps"], m.tags["draw"]): m.value for m in ms if m.metric == "accuracy"}
    success = {(m.tags["eps"], m.tags["draw"]): m.value for m in ms if m.metric == "attack_success"}
    clean_acc, _ = accuracy_and_loss(model, splits.x_test[:150], splits.y_test[:150])
    assert acc[(0.0, 0)] == pytest.approx(clean_acc) and success[(0.0, 0)] == 0.0
    for draw in (0, 1):
        assert acc[(0.0, draw)] > acc[(0.05, draw)] > acc[(0.2, draw)]
        assert 0.0 < success[(0.05, draw)] <= success[(0.2, draw)] <= 1.0
    assert all(m.tags["attack"] == "pgd" for m in ms)
    assert _same_state(model, before)


def test_condition_params_are_checked():
    cond = CONDITIONS.get("adversarial")
    for bad in ({"eps": []}, {"eps": [0.1, 0.1]}, {"eps": [-0.1]}, {"eps": [2.0]}, {"draws": 0}, {"max_examples": 0}):
        with pytest.raises(ValueError):
            cond(**bad)
