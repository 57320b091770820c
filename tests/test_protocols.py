"""The staged protocols (multi_stage, gradual): cubic schedule, gradients re-collected at the pruned
weights, pruned weights held at zero through fine-tuning, exact final sparsity, masks that only
grow, and the runner recording which protocol made each cell."""

from __future__ import annotations

import dataclasses

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
from swap_hw.protocols import prune_staged
from swap_hw.pruners.schedule import cubic_schedule
from swap_hw.sweep.run import run_scenario

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
    # the dense model's gradient columns with the pruned weights as w̄ (a pruner reads w̄ from its
    # GradientSet, and refuses weights that are not that w̄)
    with pytest.raises(ParameterError, match="differ from the GradientSet"):
        GradientStep().prune(layout.unflatten(zeroed), grads, 0.6)
    again = GradientStep().prune(layout.unflatten(zeroed), dataclasses.replace(grads, w_bar=zeroed), 0.6)
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
    stages = finetune.stages if finetune is not None else kw.pop("stages")
    train = (splits.x_train, splits.y_train) if finetune is not None else None
    return prune_staged(pruner, model, GRADIENT_SOURCES.get(source)(), splits.calibration(96, 0), sparsity,
                        stages, seed=7, finetune=finetune, train_split=train, **kw)


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
    from swap_hw.models import accuracy_and_loss
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
    train = (splits.x_train, splits.y_train)
    a = prune_staged(GradientStep(), model, GRADIENT_SOURCES.get("clean")(), batch, 0.8, 4, seed=7,
                     finetune=FINETUNE, train_split=train)[1]
    b = prune_staged(GradientStep(), model, GRADIENT_SOURCES.get("clean")(), batch, 0.8, 4, seed=7,
                     finetune=FINETUNE, train_split=train, first_grads=given)[1]
    assert all(torch.equal(a.weights[n], b.weights[n]) for n in a.weights)  # same seed → same run


@pytest.mark.parametrize("over_budget", ["recompute", "disk"])
def test_gradients_over_the_budget_give_the_same_gradual_run(digits_model, over_budget, tmp_path):
    _, dense = run(GradientStep(), digits_model, sparsity=0.8, source="gaussian")
    _, free = run(GradientStep(), digits_model, sparsity=0.8, source="gaussian", memory_budget_mb=1e-6,
                  over_budget=over_budget, spill_dir=str(tmp_path))
    assert all(torch.equal(dense.masks[n], free.masks[n]) for n in dense.masks)
    assert all(torch.allclose(dense.weights[n], free.weights[n], atol=1e-4) for n in dense.weights)


def test_a_pruner_that_revives_weights_cannot_shrink_the_pruned_set(digits_model):
    pruned, result = run(KeepsSmallest(), digits_model, sparsity=0.6)
    stages = result.log["gradual"]["stages"]
    assert sum(e["revived"] for e in stages) > 0  # it tried
    realised = [e["realised_sparsity"] for e in stages]
    assert realised == sorted(realised) and result.sparsity >= 0.6


class RecordingSource:
    """Clean gradients, remembering the weights of every model it was asked to collect at."""

    def __init__(self):
        self.inner, self.seen = GRADIENT_SOURCES.get("clean")(), []

    def collect(self, model, batch, seed, layout=None, **storage):
        self.seen.append({k: v.detach().clone() for k, v in model.named_parameters()})
        return self.inner.collect(model, batch, seed, layout, **storage)


def test_multi_stage_recollects_gradients_at_the_pruned_weights_and_never_trains(digits_model):
    model, splits = digits_model
    source, seen_stages = RecordingSource(), []
    pruned, result = prune_staged(PRUNERS.get("lr")(), model, source, splits.calibration(96, 0), 0.9, 4, seed=7,
                                  on_stage=seen_stages.append)
    layout = Layout.from_model(model)
    assert result.log["protocol"] == "multi_stage" and "finetune" not in result.log["multi_stage"]
    stages = result.log["multi_stage"]["stages"]
    assert stages == seen_stages and [e["sparsity"] for e in stages] == cubic_schedule(0.9, 4)
    assert all("finetune_seconds" not in e and e["revived"] == 0 for e in stages)
    assert len(source.seen) == 4  # one collection per stage
    dense = dict(model.named_parameters())
    assert all(torch.equal(source.seen[0][k], v) for k, v in dense.items())  # stage 1 at w̄
    # stage t ≥ 2 collects at the weights stage t − 1 wrote: zeros where pruned, re-fitted elsewhere
    # (stage 1 is at s_1 = s_0 = 0 on the cubic schedule, so stage 3 is the first to see a change)
    assert stages[0]["sparsity"] == 0.0
    for t in range(2, 4):
        w_t = layout.flatten(source.seen[t])
        kept = kept_count(layout.d, stages[t - 1]["sparsity"])
        assert int((w_t != 0).sum()) == kept
        assert not torch.equal(w_t, layout.flatten(source.seen[t - 1]))
    # no training: biases are the dense ones, the final weights are the last stage's
    params = dict(pruned.named_parameters())
    assert torch.equal(params["layers.1.bias"], dense["layers.1.bias"])
    assert int((layout.flatten(result.weights) != 0).sum()) == kept_count(layout.d, 0.9)


def test_multi_stage_lr_beats_lr_on_gradients_taken_once(digits_model):
    """The point of re-collecting: the quadratic model is re-expanded where the weights now are."""
    from swap_hw.models import accuracy_and_loss
    from swap_hw.models import apply_weights

    model, splits = digits_model
    batch = splits.calibration(256, 0)
    layout = Layout.from_model(model)
    grads = GRADIENT_SOURCES.get("clean")().collect(model, batch, seed=7)
    once = PRUNERS.get("lr")(stages=6).prune(layout.weights_of(model), grads, 0.95)
    staged, _ = prune_staged(PRUNERS.get("lr")(), model, GRADIENT_SOURCES.get("clean")(), batch, 0.95, 6, seed=7)
    acc_once = accuracy_and_loss(apply_weights(model, once.weights), *splits.test)[0]
    acc_staged = accuracy_and_loss(staged, *splits.test)[0]
    assert acc_staged > acc_once + 0.2, (acc_staged, acc_once)  # measured 0.80 vs 0.32


def test_gradual_needs_the_training_split(digits_model):
    model, splits = digits_model
    with pytest.raises(ParameterError, match="train_split"):
        prune_staged(PRUNERS.get("magnitude")(), model, None, splits.calibration(32, 0), 0.5, 2, seed=0,
                     finetune=FINETUNE)


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
    # the report says which protocol produced each number
    from rich.console import Console

    from swap_hw.results.report import render_table, summarize, summary_as_dict
    from swap_hw.results.store import Store

    with Store(summary.db) as store:
        report = summarize(store.records(summary.run_id))
    assert {row[1]: report.protocols.get(row) for row in report.rows} == {"dense": None, "magnitude": "gradual"}
    assert {d["pruner"]: d["protocol"] for d in summary_as_dict(report)} == {"dense": None, "magnitude": "gradual"}
    console = Console(record=True, width=200)
    render_table(report, console=console)
    text = console.export_text()
    assert "protocol" in text and "gradual" in text
    one_shot = load_scenario(write_scenario(GRADUAL.replace("protocol: gradual", "protocol: one_shot"), "one.yaml"))
    run_scenario(one_shot)
    with sqlite3.connect(one_shot.spec.output.db) as conn:
        protocols = {r[0] for r in conn.execute("SELECT protocol FROM cells WHERE pruner = 'magnitude'")}
    assert protocols == {"one_shot", "gradual"}  # same database, different cells
    multi = load_scenario(write_scenario(GRADUAL.replace("protocol: gradual", "protocol: multi_stage\nmulti_stage: {stages: 3}"), "multi.yaml"))
    run_scenario(multi)
    with sqlite3.connect(multi.spec.output.db) as conn:
        protocols = {r[0] for r in conn.execute("SELECT protocol FROM cells WHERE pruner = 'magnitude'")}
    assert protocols == {"one_shot", "multi_stage", "gradual"}


@pytest.mark.parametrize("body,field", [
    ("protocol: gradual_ish", "protocol"),
    ("finetune: {stages: 0}", "finetune.stages"),
    ("multi_stage: {stages: 0}", "multi_stage.stages"),
    ("multi_stage: {epochs: 1}", "multi_stage.epochs"),
    ("finetune: {lr: 0}", "finetune.lr"),
    ("finetune: {warmup: 1}", "finetune.warmup"),
])
def test_protocol_settings_are_validated(write_scenario, body, field):
    with pytest.raises(ConfigError) as info:
        load_scenario(write_scenario("pruners: [magnitude]\nsparsities: [0.5]\n" + body + "\n"))
    assert info.value.field == field


@pytest.mark.parametrize("protocol", ["multi_stage", "gradual"])
def test_export_recomputes_a_staged_cell(write_scenario, tmp_path, protocol):
    """export rebuilds the staged run's model: the final (fine-tuned) weights, the masks every stage
    kept, and the accuracy the run stored."""
    from swap_hw.models import accuracy_and_loss
    from swap_hw.sweep.export import export_pruned
    from swap_hw.models import build_model
    from swap_hw.results.store import Store

    text = GRADUAL.replace("pruners: [magnitude]", "pruners: [lr]").replace("protocol: gradual", f"protocol: {protocol}")
    scenario = load_scenario(write_scenario(text + "multi_stage: {stages: 3}\n", f"{protocol}.yaml"))
    summary = run_scenario(scenario)
    out = export_pruned(summary.db, summary.run_id, "lr", "0.8", 0, tmp_path / "lr.pt")
    assert out.meta["verified"]
    with Store(summary.db) as store:
        [log] = [c["prune_log_json"] for c in store.cell_logs(summary.run_id) if c["pruner"] == "lr"]
        [stored] = [r["value"] for r in store.records(summary.run_id) if r["pruner"] == "lr" and r["metric"] == "accuracy"]
    assert log["protocol"] == protocol
    assert sum(int(m.sum()) for m in out.masks.values()) == log["kept"]
    fresh = build_model(out.meta["arch"], out.meta["input_shape"], out.meta["n_classes"], seed=3, **out.meta["options"])
    fresh.load_state_dict(out.state_dict)
    fresh.eval()
    params = dict(fresh.named_parameters())
    assert all(torch.all(params[n][~m] == 0) for n, m in out.masks.items())
    from swap_hw.sweep.run import prepare

    assert accuracy_and_loss(fresh, *prepare(scenario).splits.test)[0] == stored


def test_cell_keys_follow_the_settings_of_the_protocol_in_use(write_scenario):
    """multi_stage.stages changes a multi_stage cell (a different result), not a one_shot one."""
    from swap_hw.sweep.run import plan_cells

    def keys(text):
        return {c.key for c in plan_cells(load_scenario(write_scenario(text, "k.yaml")))}

    base = "pruners: [lr]\nsparsities: [0.5]\nrepeats: 1\n"
    multi3 = keys(base + "protocol: multi_stage\nmulti_stage: {stages: 3}\n")
    assert multi3 != keys(base + "protocol: multi_stage\nmulti_stage: {stages: 4}\n")
    assert multi3.isdisjoint(keys(base + "protocol: gradual\nfinetune: {stages: 3, epochs: 0}\n"))
    assert keys(base + "multi_stage: {stages: 3}\n") == keys(base + "multi_stage: {stages: 4}\n") == keys(base)
