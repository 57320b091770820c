"""Every member of every family keeps its family's contract. The tests run over the registries, so a
member added as one file is covered here with no edit: gradient sources, pruners, deployment
conditions and protocols, each with its defaults, on a small MLPNet trained on digits."""

from __future__ import annotations

import math

import pytest
import torch

from swap_hw.deploy import CONDITIONS, Measurement
from swap_hw.gradients import GRADIENT_SOURCES, GradientSet
from swap_hw.layout import Layout
from swap_hw.protocols import PROTOCOLS, PruneJob
from swap_hw.pruners import PRUNERS, PruneResult, TrainingContext, kept_count
from swap_hw.registry import CLEAN, DIGITAL, ONE_SHOT


def state_of(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_untouched(model, before) -> None:
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


@pytest.fixture(scope="module")
def small(digits_model):
    """The session's digits MLPNet, a 64-example calibration batch, a 120-example test split."""
    model, splits = digits_model
    layout = Layout.from_model(model)
    x_test, y_test = splits.test
    return model, splits, layout, splits.calibration(64, 0), (x_test[:120], y_test[:120])


def test_each_family_has_its_identity_member():
    assert CLEAN in GRADIENT_SOURCES and DIGITAL in CONDITIONS and ONE_SHOT in PROTOCOLS
    assert "magnitude" in PRUNERS


@pytest.mark.parametrize("name", GRADIENT_SOURCES.names())
def test_gradient_source_contract(small, name):
    """collect(model, batch, seed) → an n×d GradientSet at the model's weights, finite, seeded,
    with its provenance; the model is not modified."""
    model, _, layout, batch, _ = small
    before = state_of(model)
    source = GRADIENT_SOURCES.get(name)()
    grads = source.collect(model, batch, seed=11, layout=layout)
    assert isinstance(grads, GradientSet) and grads.X.shape == (64, layout.d)
    assert bool(torch.isfinite(grads.X).all()) and float(grads.X.abs().sum()) > 0
    assert torch.equal(grads.w_bar, layout.flatten(dict(model.named_parameters())))  # w̄ = digital weights
    assert grads.provenance["source"] == source.describe() and grads.provenance["seed"] == 11
    again = GRADIENT_SOURCES.get(name)().collect(model, batch, seed=11, layout=layout)
    assert torch.equal(grads.X, again.X)
    other_seed = GRADIENT_SOURCES.get(name)().collect(model, batch, seed=12, layout=layout)
    assert torch.equal(grads.X, other_seed.X) != source.stochastic  # a stochastic source's draw follows its seed
    assert_untouched(model, before)


@pytest.mark.parametrize("name", PRUNERS.names())
def test_pruner_contract(small, name):
    """prune(weights, grads, sparsity, training=) with exactly what the pruner declares it needs →
    a PruneResult at the target sparsity, weights zero off the mask, deterministic, and nothing the
    caller handed in is modified; without what it needs, a ParameterError names it."""
    from swap_hw.errors import ParameterError

    model, splits, layout, batch, _ = small
    pruner_cls = PRUNERS.get(name)
    weights = layout.weights_of(model)
    weights_before = {k: v.clone() for k, v in weights.items()}
    model_before = state_of(model)
    grads = GRADIENT_SOURCES.get(CLEAN)().collect(model, batch, seed=3, layout=layout) if pruner_cls.needs_gradients else None
    training = None
    if pruner_cls.needs_training:
        init = {k: v.clone() for k, v in model_before.items()}
        training = TrainingContext(model=model, initial_state=init, x_train=splits.x_train[:300],
                                   y_train=splits.y_train[:300], epochs=1, batch_size=100, seed=4)
    x_before = grads.X.clone() if grads is not None else None

    first = pruner_cls().prune(weights, grads, 0.5, training=training)
    second = pruner_cls().prune(weights, grads, 0.5, training=training)
    assert isinstance(first, PruneResult)
    assert set(first.masks) == set(layout.names)
    kept = sum(int(m.sum()) for m in first.masks.values())
    assert kept == kept_count(layout.d, 0.5)
    for n, mask in first.masks.items():
        assert mask.dtype == torch.bool and tuple(mask.shape) == tuple(weights[n].shape)
        assert bool((first.weights[n][~mask] == 0).all())
        assert bool(torch.isfinite(first.weights[n]).all())
        assert torch.equal(first.weights[n], second.weights[n]) and torch.equal(mask, second.masks[n])
    assert first.log["pruner"] == pruner_cls().describe() and "layers" in first.log
    for n in weights:
        assert torch.equal(weights[n], weights_before[n])
    assert_untouched(model, model_before)
    if grads is not None:
        assert torch.equal(grads.X, x_before)
        with pytest.raises(ParameterError, match="GradientSet"):
            pruner_cls().prune(weights, None, 0.5, training=training)
    if pruner_cls.needs_training:
        with pytest.raises(ParameterError, match="TrainingContext"):
            pruner_cls().prune(weights, grads, 0.5)


@pytest.mark.parametrize("name", CONDITIONS.names())
def test_condition_contract(small, name):
    """evaluate(model, test, seed) → Measurements with finite values (accuracy in [0, 1]), the same
    for the same seed; the model is not modified."""
    model, _, _, _, test = small
    before = state_of(model)
    condition = CONDITIONS.get(name)()
    first = condition.evaluate(model, test, 5)
    assert first and all(isinstance(m, Measurement) for m in first)
    assert all(math.isfinite(m.value) for m in first)
    assert all(0.0 <= m.value <= 1.0 for m in first if m.metric == "accuracy")
    assert {m.metric for m in first} >= {"accuracy"}
    again = CONDITIONS.get(name)().evaluate(model, test, 5)
    assert [(m.metric, m.value, m.tags) for m in first] == [(m.metric, m.value, m.tags) for m in again]
    assert_untouched(model, before)


@pytest.mark.parametrize("name", PROTOCOLS.names())
def test_protocol_contract(small, name):
    """run(pruner, job, sparsity) → (pruned model, PruneResult): the model carries the result's
    masks at the target sparsity, the log names the protocol, the dense model is not modified."""
    model, splits, layout, batch, _ = small
    before = state_of(model)
    job = PruneJob(model=model, layout=layout, source=GRADIENT_SOURCES.get(CLEAN)(), calibration=batch, seed=2,
                   train_split=(splits.x_train[:300], splits.y_train[:300]))
    protocol = PROTOCOLS.get(name)(**({"stages": 2} if "stages" in PROTOCOLS.get(name).Params.model_fields else {}))
    pruned, result = protocol.run(PRUNERS.get("lr")(), job, 0.6)
    assert result.log["protocol"] == name
    w = layout.flatten(dict(pruned.named_parameters()))
    mask = layout.flatten(result.masks).to(torch.bool)
    assert int(mask.sum()) == kept_count(layout.d, 0.6)
    assert bool((w[~mask] == 0).all()) and bool(torch.isfinite(w).all())
    assert_untouched(model, before)
