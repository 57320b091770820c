"""Iterative pruners `sap` and `lottery`: prune counts, masks through training, stopping rules,
purity, and their refusal to run without a training context."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from swap_hw.data import load_digits_splits
from swap_hw.errors import ParameterError
from swap_hw.layout import Layout
from swap_hw.models import apply_weights, build_model, train_model
from swap_hw.pqi import keep_bound, pq_index, pq_index_groups, prune_count
from swap_hw.pruners import PRUNERS, TrainingContext, kept_count
from swap_hw.pruners.selection import cut_counts, prune_smallest, scope_groups
from swap_hw.models import accuracy_and_loss


@pytest.fixture(scope="module")
def setup():
    splits = load_digits_splits(0.2, seed=0)
    x, y = splits.x_train[:360], splits.y_train[:360]
    model = build_model("mlpnet", splits.input_shape, splits.n_classes, seed=1, hidden=(12,))
    init = {k: v.clone() for k, v in model.state_dict().items()}
    train_model(model, x[60:], y[60:], epochs=3, lr=0.02, batch_size=100, seed=2)
    for p in model.parameters():  # the runner hands pruners a frozen dense model
        p.requires_grad_(False)
    return model, init, (x[60:], y[60:]), (x[:60], y[:60])


def context(setup, **overrides) -> TrainingContext:
    model, init, (x, y), (xv, yv) = setup
    settings = dict(model=model, initial_state=init, x_train=x, y_train=y, x_val=xv, y_val=yv, epochs=1, lr=0.02,
                    batch_size=100, seed=5)
    settings.update(overrides)
    return TrainingContext(**settings)


def prune_iteratively(pruner, model, ctx, sparsity, layout=None, weights=None):
    """The one pruner contract for a pruner that retrains: the model's prunable weights (all, or
    `layout`'s), no gradients, the training context of `model`; sparsity None = its own rule."""
    weights = weights if weights is not None else (layout or Layout.from_model(model)).weights_of(model)
    return pruner.prune(weights, None, "auto" if sparsity is None else sparsity,
                        training=dataclasses.replace(ctx, model=model))


def zeros_in_prunable(model, iteration):
    layout = Layout.from_model(model)
    return {"zeros": float((layout.flatten(dict(model.named_parameters())) == 0).sum())}


def test_sap_counts_follow_the_formula_on_a_fixed_vector():
    gen = torch.Generator().manual_seed(0)
    layout = Layout.from_shapes([("a", (6, 10)), ("b", (4, 6))])
    w = torch.randn(layout.d, generator=gen) * torch.rand(layout.d, generator=gen) ** 3
    mask = torch.rand(layout.d, generator=gen) > 0.2
    for scope in ("global", "layer", "neuron"):
        pruner = PRUNERS.get("sap")(scope=scope, gamma=0.8, beta=0.5, eta_r=0.1, p=1.0, q=2.0)
        gid, n_groups = scope_groups(layout, scope)
        counts, _ = pruner._group_prune_counts(w, mask, gid, n_groups)
        assert n_groups == {"global": 1, "layer": 2, "neuron": 10}[scope]
        for g in range(n_groups):
            alive = mask & (gid == g)
            d_g = int(alive.sum())
            i_g = pq_index(w, 1.0, 2.0, mask=alive)
            expected = prune_count(d_g, keep_bound(d_g, i_g, 1.0, 2.0, 0.1), 0.8, 0.5)
            assert int(counts[g]) == expected
        assert int(counts.sum()) > 0  # the heavy-tailed vector is compressible
        new = prune_smallest(w, mask, gid, counts)
        assert not bool((new & ~mask).any())  # nothing revived
        for g in range(n_groups):
            alive, gone = mask & (gid == g), mask & ~new & (gid == g)
            assert int(gone.sum()) == int(counts[g])
            if int(gone.sum()) and int((alive & new).sum()):
                assert float(w[gone].abs().max()) <= float(w[alive & new].abs().min())


def test_defaults_keep_fraction_is_one_minus_pqi():
    # p = 0.5, q = 1, η_r = 0, γ = 1: c = d − ceil(d·(1 − I)), unless β = 0.9 caps it.
    w = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.125, 0.0625] * 5)
    pruner = PRUNERS.get("sap")()
    gid, _ = scope_groups(Layout.from_shapes([("a", (40,))]), "global")
    counts, extra = pruner._group_prune_counts(w, torch.ones(40, dtype=torch.bool), gid, 1)
    index = pq_index(w)
    assert extra["rule_pqi"] == pytest.approx(index)
    assert extra["keep_bound"] == pytest.approx(40 * (1 - index))
    assert int(counts[0]) == 40 - int(torch.ceil(torch.tensor(40 * (1 - index), dtype=torch.float64)))


def test_sap_run_records_follow_the_rule_and_masks_stay_zero(setup):
    model = setup[0]
    ctx = context(setup, evaluate=zeros_in_prunable)
    result = prune_iteratively(PRUNERS.get("sap")(iterations=3), model, ctx, None)
    records = result.log["iterations"]
    d = result.log["d"]
    assert [r["iteration"] for r in records] == list(range(len(records)))
    assert len(records) == 4 or result.log["stopped"] == "rule"
    for before, after in zip(records, records[1:]):
        kept = before["kept"]
        assert before["rule_pqi"] == pytest.approx(before["pqi_global"])  # same p, q as the log
        assert before["prune_count"] == prune_count(kept, keep_bound(kept, before["rule_pqi"]))
        assert after["kept"] == kept - before["prune_count"]
    for r in records:
        # Every pruned weight is exactly zero after each iteration's training.
        assert r["metrics"]["zeros"] >= d - r["kept"]
        assert set(r) >= {"iteration", "remaining_fraction", "pqi_global", "pqi_layers", "val_accuracy",
                          "train_accuracy", "prune_count"}
        assert r["remaining_fraction"] == pytest.approx(r["kept"] / d)
        assert set(r["pqi_layers"]) == {"layers.1.weight", "layers.3.weight"}
        assert 0.0 <= r["val_accuracy"] <= 1.0
    assert records[-1]["prune_count"] == 0
    assert records[0]["prune_count"] > 0
    # The result: masks match the last record, pruned weights are exactly zero.
    assert int(sum(m.sum() for m in result.masks.values())) == records[-1]["kept"]
    for name, mask in result.masks.items():
        assert bool((result.weights[name][~mask] == 0).all())
    assert result.log["pqi"]["global_after"] == pytest.approx(records[-1]["pqi_global"])


def test_lottery_prunes_floor_of_twenty_percent_and_result_rebuilds_the_network(setup):
    model = setup[0]
    ctx = context(setup)
    result = prune_iteratively(PRUNERS.get("lottery")(iterations=3), model, ctx, None)
    records = result.log["iterations"]
    assert len(records) == 4 and result.log["stopped"] == "iterations"
    d = result.log["d"]
    kept = d
    for r in records[:-1]:
        assert r["kept"] == kept
        assert r["prune_count"] == int(0.2 * kept)  # floor(0.2 · survivors)
        kept -= r["prune_count"]
    assert records[-1]["kept"] == kept == result.log["kept"]
    # weights carry every retrained parameter (biases too), so apply_weights rebuilds the final net.
    assert set(result.weights) == {n for n, _ in model.named_parameters()}
    rebuilt = apply_weights(model, result.weights)
    x, y = ctx.x_train, ctx.y_train
    assert accuracy_and_loss(rebuilt, x, y)[0] == pytest.approx(records[-1]["train_accuracy"])
    assert result.sparsity == pytest.approx(1 - kept / d)


def test_layer_scope_lottery_prunes_each_layer_by_its_own_count(setup):
    model = setup[0]
    result = prune_iteratively(PRUNERS.get("lottery")(iterations=1, scope="layer", rate=0.3), model, context(setup), None)
    for entry in result.log["layers"]:
        size = entry["size"]
        assert round(entry["sparsity"] * size) == int(0.3 * size)


def test_sparsity_target_cuts_the_last_step_exactly(setup):
    model = setup[0]
    ctx = context(setup)
    d = Layout.from_model(model).d
    result = prune_iteratively(PRUNERS.get("lottery")(iterations=10), model, ctx, 0.5)
    k = kept_count(d, 0.5)
    assert result.log["kept"] == k
    assert result.log["stopped"] == "target" and result.log["target_reached"] is True
    records = result.log["iterations"]
    # 0.8^3 = 0.512 > 0.5 > 0.8^4: three full steps, then one cut to reach exactly k.
    assert len(records) == 5
    assert records[3].get("cut_to_target") is True
    assert records[3]["prune_count"] == records[3]["kept"] - k
    # Layer and neuron scope: the cut is spread over the groups and still hits k exactly.
    for scope in ("layer", "neuron"):
        grouped = prune_iteratively(PRUNERS.get("sap")(iterations=10, scope=scope), model, ctx, 0.3)
        assert grouped.log["kept"] == kept_count(d, 0.3)
        assert grouped.log["stopped"] == "target"
        assert any(r.get("cut_to_target") for r in grouped.log["iterations"])


def test_unreachable_target_warns_and_reports(setup):
    model = setup[0]
    result = prune_iteratively(PRUNERS.get("lottery")(iterations=1), model, context(setup), 0.9)
    assert result.log["target_reached"] is False
    assert result.log["warnings"] and "not reached" in result.log["warnings"][0]
    assert result.sparsity == pytest.approx(0.2, abs=1e-3)


def test_pruner_does_not_mutate_model_or_context(setup):
    model, init = setup[0], setup[1]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    init_copy = {k: v.clone() for k, v in init.items()}
    flags = [p.requires_grad for p in model.parameters()]
    prune_iteratively(PRUNERS.get("sap")(iterations=1), model, context(setup, retrain_dense=True), None)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])
    for k, v in init.items():
        assert torch.equal(v, init_copy[k])
    assert [p.requires_grad for p in model.parameters()] == flags


def test_iteration_zero_reuses_the_dense_model_unless_asked(setup):
    model = setup[0]
    _, _, (x, y), _ = setup
    dense_acc = accuracy_and_loss(model, x, y)[0]
    reused = prune_iteratively(PRUNERS.get("lottery")(iterations=1), model, context(setup), None)
    assert reused.log["iterations"][0]["train_accuracy"] == pytest.approx(dense_acc)
    assert reused.log["iterations"][0]["pqi_global"] == pytest.approx(reused.log["pqi"]["global_before"])
    # Same settings, same seed: the run is reproducible.
    again = prune_iteratively(PRUNERS.get("lottery")(iterations=1), model, context(setup), None)
    for name in reused.masks:
        assert torch.equal(reused.masks[name], again.masks[name])
        assert torch.equal(reused.weights[name], again.weights[name])


def test_one_shot_call_and_bad_inputs_raise_clear_errors(setup):
    model = setup[0]
    weights = Layout.from_model(model).weights_of(model)
    for name in ("sap", "lottery"):
        with pytest.raises(ParameterError, match="TrainingContext"):
            PRUNERS.get(name)().prune(weights, None, 0.5)
    with pytest.raises(ParameterError, match="p must be smaller than q"):
        PRUNERS.get("sap")(p=1.0, q=0.5)
    with pytest.raises(ParameterError):
        PRUNERS.get("sap")(beta=1.5)
    with pytest.raises(ParameterError):
        PRUNERS.get("sap")(scope="channel")
    with pytest.raises(ParameterError):
        PRUNERS.get("lottery")(rate=1.0)
    with pytest.raises(ParameterError, match="sparsity"):
        prune_iteratively(PRUNERS.get("sap")(), model, context(setup), 1.0)
    bad_init = {k: v for k, v in setup[1].items() if not k.endswith("bias")}
    with pytest.raises(ParameterError, match="initial_state"):
        prune_iteratively(PRUNERS.get("sap")(), model, context(setup, initial_state=bad_init), None)


def test_cut_counts_sums_exactly_and_never_exceeds():
    counts = torch.tensor([7, 0, 3, 10, 1])
    for total in range(0, 21):
        cut = cut_counts(counts, total)
        assert int(cut.sum()) == total
        assert bool((cut <= counts).all()) and bool((cut >= 0).all())


def test_neuron_groups_are_output_rows():
    layout = Layout.from_shapes([("a", (3, 4)), ("conv", (2, 3, 2, 2))])
    gid, n = scope_groups(layout, "neuron")
    assert n == 5
    assert gid[:12].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert gid[12:].tolist() == [3] * 12 + [4] * 12
    w = torch.arange(1.0, layout.d + 1)
    values = pq_index_groups(w, gid, n)
    assert float(values[3]) == pytest.approx(pq_index(w[12:24]))


def test_partial_layout_and_batchnorm_buffers(setup):
    from torch import nn

    _, _, (x, y), _ = setup
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
    init = {k: v.clone() for k, v in net.state_dict().items()}
    train_model(net, x, y, epochs=1, lr=0.02, batch_size=100, seed=0)
    layout = Layout.from_model(net, include=["0.weight"])
    ctx = context(setup, initial_state=init)
    result = prune_iteratively(PRUNERS.get("lottery")(iterations=1, rate=0.5), net, ctx, None, layout=layout)
    assert set(result.masks) == {"0.weight"} and result.log["kept"] == 18  # 36 conv weights, half gone
    assert bool((result.weights["4.weight"] != 0).all())  # outside the layout: retrained, not pruned
    # The retrained BatchNorm statistics come back with the result, not the dense model's.
    assert set(result.buffers) == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    assert not torch.equal(result.buffers["1.running_mean"], net.state_dict()["1.running_mean"])
    with pytest.raises(ParameterError, match="layout entry"):
        prune_iteratively(PRUNERS.get("lottery")(), net, ctx, None, weights={"0.weight": torch.zeros(4, 1, 2, 2)})
