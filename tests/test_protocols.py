"""The gradual protocol: cubic schedule, pruned weights held at zero through fine-tuning, exact
final sparsity, masks that only grow, and the runner recording which protocol made each cell."""

from __future__ import annotations

import sqlite3
from types import SimpleNamespace

import pytest
import torch

from swap_hw.config import load_scenario
from swap_hw.errors import ConfigError, ParameterError
from swap_hw.gradients import GRADIENT_SOURCES
from swap_hw.layout import Layout
from swap_hw.pruners import PRUNERS, Pruner, kept_count
from swap_hw.pruners.base import SolveOutput, hard_threshold_mask
from swap_hw.protocols import cubic_schedule, prune_gradual
from swap_hw.runner import run_scenario

FINETUNE = SimpleNamespace(stages=4, epochs=1, lr=1e-3, batch_size=64, weight_decay=0.0)


def test_cubic_schedule():
    assert cubic_schedule(0.9, 1) == [0.9]
    s = cubic_schedule(0.9, 10)
    assert len(s) == 10 and s[0] == 0.0 and s[-1] == 0.9
    assert all(a < b for a, b in zip(s, s[1:]))
    assert s[4] == pytest.approx(0.9 * (1 - (1 - 4 / 9) ** 3))
    steps = [b - a for a, b in zip(s, s[1:])]
    assert all(a > b for a, b in zip(steps, steps[1:]))  # fastest first
    with pytest.raises(ParameterError):
        cubic_schedule(0.9, 0)
    with pytest.raises(ParameterError):
        cubic_schedule(1.0, 3)


class GradientStep(Pruner):
    """Test pruner: one long gradient step on ½‖Xw + 1‖², then top-k. Its step moves every weight
    whose gradient column is non-zero, so it would revive pruned weights if they had gradients."""

    name = "gradient_step"

    def _solve(self, w_bar, grads, k, layout):
        g = grads.xtu(grads.xv(w_bar) + 1.0)
        w = w_bar - (w_bar.norm() / g.norm()) * g
        return SolveOutput(w=w, mask=hard_threshold_mask(w, k))


def test_the_gradient_step_pruner_would_revive_without_masked_columns(digits_model):
    model, splits = digits_model
    grads = GRADIENT_SOURCES.get("clean")().collect(model, splits.calibration(96, 0), seed=7)
    layout = grads.layout
    weights = layout.weights_of(model)
    first = GradientStep().prune(weights, grads, 0.5)
    zeroed = layout.flatten(first.weights)
    again = GradientStep().prune(layout.unflatten(zeroed), grads, 0.6)
    revived = layout.flatten(again.masks).bool() & ~layout.flatten(first.masks).bool()
    assert int(revived.sum()) > 0


class KeepsSmallest(Pruner):
    """Test pruner that keeps the k SMALLEST weights: it picks already-pruned zeros on purpose."""

    name = "keeps_smallest"
    needs_gradients = False

    def _solve(self, w_bar, grads, k, layout):
        return SolveOutput(w=w_bar, mask=hard_threshold_mask(1.0 / (w_bar.abs() + 1e-12), k))


def run(pruner, digits_model, sparsity=0.9, source="clean", finetune=FINETUNE, **kw):
    model, splits = digits_model
    return prune_gradual(pruner, model, GRADIENT_SOURCES.get(source)(), splits.calibration(96, 0),
                         (splits.x_train, splits.y_train), sparsity, finetune, seed=7, **kw)


def test_gradual_magnitude_reaches_the_target_with_pruned_weights_at_zero(digits_model):
    model, splits = digits_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    pruned, result = run(PRUNERS.get("magnitude")(), digits_model, on_stage=seen.append)
    layout = Layout.from_model(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # caller's model untouched
    kept = kept_count(layout.d, 0.9)
    assert result.log["kept"] == kept and result.sparsity == pytest.approx(1 - kept / layout.d)
    params = dict(pruned.named_parameters())
    for name, mask in result.masks.items():
        assert torch.equal(params[name][~mask], torch.zeros(int((~mask).sum())))  # exactly zero
        assert torch.equal(result.weights[name], params[name])
    w = layout.flatten(result.weights)
    assert int((w != 0).sum()) == kept
    # fine-tuning moved the survivors (and the biases) away from the dense values
    dense_w = layout.flatten(dict(model.named_parameters()))
    keep = layout.flatten(result.masks).bool()
    assert not torch.equal(w[keep], dense_w[keep])
    assert not torch.equal(params["layers.1.bias"], dict(model.named_parameters())["layers.1.bias"])
    stages = result.log["gradual"]["stages"]
    assert seen == stages and [e["sparsity"] for e in stages] == cubic_schedule(0.9, 4)
    realised = [e["realised_sparsity"] for e in stages]
    assert realised == sorted(realised) and realised[-1] == pytest.approx(result.sparsity)
    assert all(e["revived"] == 0 and e["finetune_seconds"] > 0 for e in stages)
    assert result.log["protocol"] == "gradual" and pruned.training is False
    # fine-tuning recovers accuracy that one-shot magnitude pruning at s = 0.9 loses
    from swap_hw.deploy.base import accuracy_and_loss
    from swap_hw.models import apply_weights

    one_shot = PRUNERS.get("magnitude")().prune(layout.weights_of(model), None, 0.9)
    acc_gradual = accuracy_and_loss(pruned, *splits.test)[0]
    acc_one_shot = accuracy_and_loss(apply_weights(model, one_shot.weights), *splits.test)[0]
    assert acc_gradual > acc_one_shot + 0.1


def test_masks_only_grow_for_a_gradient_pruner(digits_model):
    """Gradients are recollected at every stage with pruned columns zeroed; nothing is revived."""
    pruned, result = run(GradientStep(), digits_model, sparsity=0.8, source="gaussian")
    stages = result.log["gradual"]["stages"]
    assert all(e["revived"] == 0 for e in stages)
    assert all("gradient_seconds" in e for e in stages)
    layout = Layout.from_model(pruned)
    assert result.log["kept"] == kept_count(layout.d, 0.8)
    params = dict(pruned.named_parameters())
    assert all(torch.equal(params[n][~m], torch.zeros(int((~m).sum()))) for n, m in result.masks.items())


def test_first_stage_reuses_given_gradients(digits_model):
    model, splits = digits_model
    batch = splits.calibration(96, 0)
    given = GRADIENT_SOURCES.get("clean")().collect(model, batch, seed=7)
    a = prune_gradual(GradientStep(), model, GRADIENT_SOURCES.get("clean")(), batch,
                      (splits.x_train, splits.y_train), 0.8, FINETUNE, seed=7)[1]
    b = prune_gradual(GradientStep(), model, GRADIENT_SOURCES.get("clean")(), batch,
                      (splits.x_train, splits.y_train), 0.8, FINETUNE, seed=7, first_grads=given)[1]
    assert all(torch.equal(a.weights[n], b.weights[n]) for n in a.weights)  # same seed → same run


def test_matrix_free_gradients_give_the_same_gradual_run(digits_model):
    _, dense = run(GradientStep(), digits_model, sparsity=0.8, source="gaussian")
    _, free = run(GradientStep(), digits_model, sparsity=0.8, source="gaussian", memory_budget_mb=1e-6)
    assert all(torch.equal(dense.masks[n], free.masks[n]) for n in dense.masks)
    assert all(torch.allclose(dense.weights[n], free.weights[n], atol=1e-4) for n in dense.weights)


def test_a_pruner_that_revives_weights_cannot_shrink_the_pruned_set(digits_model):
    pruned, result = run(KeepsSmallest(), digits_model, sparsity=0.6)
    stages = result.log["gradual"]["stages"]
    assert sum(e["revived"] for e in stages) > 0  # it tried
    realised = [e["realised_sparsity"] for e in stages]
    assert realised == sorted(realised) and result.sparsity >= 0.6


def test_iterative_pruners_are_refused(digits_model):
    with pytest.raises(ParameterError, match="own prune"):
        run(PRUNERS.get("sap")(), digits_model)


GRADUAL = """
repeats: 1
model: {train: {epochs: 3}}
calibration: {n: 64}
pruners: [magnitude]
sparsities: [0.8]
protocol: gradual
finetune: {stages: 3, epochs: 1}
"""


def test_runner_records_the_protocol_of_each_cell(write_scenario):
    scenario = load_scenario(write_scenario(GRADUAL))
    summary = run_scenario(scenario)
    assert summary.computed == summary.planned == 2
    with sqlite3.connect(scenario.spec.output.db) as conn:
        rows = conn.execute("SELECT pruner, protocol, sparsity FROM cells").fetchall()
    assert {(p, proto) for p, proto, _ in rows} == {("dense", "gradual"), ("magnitude", "gradual")}
    assert [s for p, _, s in rows if p == "magnitude"][0] == pytest.approx(0.8, abs=1e-3)
    one_shot = load_scenario(write_scenario(GRADUAL.replace("protocol: gradual", "protocol: one_shot"), "one.yaml"))
    run_scenario(one_shot)
    with sqlite3.connect(one_shot.spec.output.db) as conn:
        protocols = {r[0] for r in conn.execute("SELECT protocol FROM cells WHERE pruner = 'magnitude'")}
    assert protocols == {"one_shot", "gradual"}  # same database, different cells


@pytest.mark.parametrize("body,field", [
    ("protocol: gradual_ish", "protocol"),
    ("finetune: {stages: 0}", "finetune.stages"),
    ("finetune: {lr: 0}", "finetune.lr"),
    ("finetune: {warmup: 1}", "finetune.warmup"),
])
def test_protocol_settings_are_validated(write_scenario, body, field):
    with pytest.raises(ConfigError) as info:
        load_scenario(write_scenario("pruners: [magnitude]\nsparsities: [0.5]\n" + body + "\n"))
    assert info.value.field == field
