"""Options that reproduce the SWAP authors' protocol (specs/swap.md §9): ε in absolute units, SGD
fine-tuning with momentum, a fresh calibration draw per stage — and parameters added later leave
the cells computed before them (their keys) unchanged while at their defaults."""

from __future__ import annotations

import pytest
import torch

from swap_hw.config import parse_scenario_text
from swap_hw.errors import ParameterError
from swap_hw.gradients import GRADIENT_SOURCES
from swap_hw.models import train_model
from swap_hw.protocols import PROTOCOLS, PruneJob
from swap_hw.pruners import PRUNERS
from swap_hw.sweep.plan import plan_cells
from swap_hw.transport import EntropicPlans

BASE = "pruners: [swap]\nsparsities: [0.5]\nprotocol: gradual\n"


def test_parameters_added_later_keep_earlier_cells_while_at_their_defaults():
    default = PRUNERS.get("swap")()
    assert "epsilon_units" not in default.describe()
    assert PRUNERS.get("swap")(epsilon_units="relative").describe() == default.describe()
    assert PRUNERS.get("swap")(epsilon_units="absolute").describe()["epsilon_units"] == "absolute"
    keys = [c.key for c in plan_cells(parse_scenario_text(BASE, "s.yaml"))]
    same = [c.key for c in plan_cells(parse_scenario_text(
        BASE.replace("protocol: gradual", "protocol: {name: gradual, optimizer: adam, momentum: 0.0, "
                     "fresh_calibration: false}").replace("[swap]", "[{name: swap, epsilon_units: relative}]"), "s.yaml"))]
    assert keys == same
    pruned = {c.key for c in plan_cells(parse_scenario_text(BASE, "s.yaml")) if c.pruner is not None}
    other = {c.key for c in plan_cells(parse_scenario_text(
        BASE.replace("protocol: gradual", "protocol: {name: gradual, optimizer: sgd, momentum: 0.5}"), "s.yaml"))
        if c.pruner is not None}
    assert pruned and other and not pruned & other  # a non-default setting gives cells of its own


def test_epsilon_in_absolute_units():
    y = torch.randn(50, dtype=torch.float64) * 3
    relative, absolute = EntropicPlans(y, 1.0), EntropicPlans(y, 1.0, scale=1.0)
    assert absolute.describe["epsilon_abs"] == 1.0 and relative.describe["epsilon_abs"] == relative.scale != 1.0
    plans = PRUNERS.get("swap")(epsilon=1.0, epsilon_units="absolute").make_plans(y)
    assert plans.describe["epsilon_abs"] == 1.0


def _job(digits_model, n=64):
    model, splits = digits_model
    from swap_hw.layout import Layout

    return PruneJob(model=model, layout=Layout.from_model(model), source=GRADIENT_SOURCES.get("clean")(),
                    calibration=splits.calibration(n, 0), seed=3, train_split=(splits.x_train, splits.y_train))


def test_sgd_fine_tuning_with_momentum(digits_model):
    model, splits = digits_model
    import copy

    a, b = copy.deepcopy(model), copy.deepcopy(model)
    for net in (a, b):
        for p in net.parameters():
            p.requires_grad_(True)
    masks = {"layers.1.weight": torch.rand(40, 64) > 0.5}
    train_model(a, splits.x_train, splits.y_train, epochs=1, lr=1e-3, batch_size=64, seed=0, masks=masks,
                optimizer="sgd", momentum=0.5)
    train_model(b, splits.x_train, splits.y_train, epochs=1, lr=1e-3, batch_size=64, seed=0, masks=masks)
    wa, wb = a.layers[1].weight, b.layers[1].weight
    assert bool((wa[~masks["layers.1.weight"]] == 0).all()) and not torch.equal(wa, wb)
    sgd = PROTOCOLS.get("gradual")(stages=2, optimizer="sgd", momentum=0.5).run(PRUNERS.get("lr")(), _job(digits_model), 0.6)
    adam = PROTOCOLS.get("gradual")(stages=2).run(PRUNERS.get("lr")(), _job(digits_model), 0.6)
    assert not torch.equal(sgd[1].weights["layers.1.weight"], adam[1].weights["layers.1.weight"])


def test_a_fresh_calibration_draw_per_stage_is_seeded_and_differs(digits_model):
    protocol = PROTOCOLS.get("multi_stage")(stages=3, fresh_calibration=True)
    _, first = protocol.run(PRUNERS.get("lr")(), _job(digits_model), 0.7)
    _, again = protocol.run(PRUNERS.get("lr")(), _job(digits_model), 0.7)
    _, fixed = PROTOCOLS.get("multi_stage")(stages=3).run(PRUNERS.get("lr")(), _job(digits_model), 0.7)
    stages = first.log["multi_stage"]["stages"]
    seeds = [s.get("calibration_seed") for s in stages]
    assert seeds[0] is None and None not in seeds[1:] and len(set(seeds[1:])) == 2
    assert all(torch.equal(first.weights[k], again.weights[k]) for k in first.weights)  # seeded
    assert any(not torch.equal(first.weights[k], fixed.weights[k]) for k in first.weights)  # a new draw changes it


def test_moving_all_anchor_moves_targets_plan_and_ridge():
    from swap_hw.gradients import GradientSet
    from swap_hw.layout import Layout

    layout = Layout.from_shapes([("a", (20, 10))])
    gen = torch.Generator().manual_seed(0)
    X, w = torch.randn(40, 200, generator=gen), torch.randn(200, generator=gen)
    grads = GradientSet(X=X, w_bar=w, layout=layout)

    def pruned(**options):
        return PRUNERS.get("swap")(**options).prune(layout.unflatten(w), grads, 0.7).weights["a"]

    staged = {a: pruned(anchor=a, stages=3) for a in ("fixed", "moving", "moving_all")}
    assert not torch.equal(staged["moving_all"], staged["fixed"])
    assert not torch.equal(staged["moving_all"], staged["moving"])
    assert torch.equal(pruned(anchor="moving_all"), pruned())  # one stage: nothing to move


def test_regrowth_re_selects_a_pruned_weight(digits_model):
    from swap_hw.pruners.base import Pruner, SolveOutput
    from swap_hw.pruners.selection import hard_threshold_mask

    class GradientStep(Pruner):
        """One long gradient step then top-k: it moves every weight whose gradient column is live."""

        name = "gradient_step"

        def _solve(self, w_bar, grads, k, layout):
            g = grads.xtu(grads.xv(w_bar) + 1.0)
            w = w_bar - (w_bar.norm() / g.norm()) * g
            return SolveOutput(w=w, mask=hard_threshold_mask(w, k))

    grow = PROTOCOLS.get("multi_stage")(stages=3, regrow=True).run(GradientStep(), _job(digits_model), 0.6)[1]
    shrink = PROTOCOLS.get("multi_stage")(stages=3).run(GradientStep(), _job(digits_model), 0.6)[1]
    stages_grow = grow.log["multi_stage"]["stages"]
    assert sum(s["revived"] for s in stages_grow[1:]) > 0  # weights pruned at one stage came back later
    assert any(not torch.equal(grow.masks[k], shrink.masks[k]) for k in grow.masks)
    total = sum(m.numel() for m in grow.masks.values())
    assert abs(1 - sum(int(m.sum()) for m in grow.masks.values()) / total - 0.6) < 1e-3  # exact target


def test_the_authors_step_by_hand_on_a_small_problem():
    """X = [[1, 0], [0, 1], [1, 1]], w̄ = (1, 2), so y = Xw̄ = (1, 2, 3); the identity plan (LR), λ = 0.
    From w = (2, 0): Xw = (2, 0, 2), ∇Q = Xᵀ(Xw − y) = Xᵀ(1, −2, −1) = (0, −3); Xg = (0, −3, −3),
    so τ* = ⟨g, g⟩ / ‖Xg‖² = 9 / 18 = 0.5 and w − τ*g = (2, 1.5).
    k = 2: Q(2, 1.5) = ½‖(1, 2, 3) − (2, 1.5, 3.5)‖² = 0.75; one growth to τ = 0.525 gives
    Q = ½(1 + 0.425² + 0.575²) = 0.755625 > 0.75, so τ stays 0.5 and the step lands on (2, 1.5).
    k = 1: H₁(2, 1.5) = (2, 0), Q = ½(1 + 4 + 1) = 3, no lower than before the step: the authors'
    rule takes it all the same."""
    from swap_hw.gradients import GradientSet
    from swap_hw.layout import Layout
    from swap_hw.pruners.iht import _authors_step, _Problem, _State
    from swap_hw.pruners.selection import Budget
    from swap_hw.transport import IdentityPlans

    X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    w_bar = torch.tensor([1.0, 2.0], dtype=torch.float64)
    layout = Layout.from_shapes([("a", (2,))])
    prob = _Problem(GradientSet(X=X, w_bar=w_bar.float(), layout=layout), X.double() @ w_bar, 0.0, w_bar.clone())
    plan = IdentityPlans(prob.y)(X.double() @ torch.tensor([2.0, 0.0], dtype=torch.float64))
    w = torch.tensor([2.0, 0.0], dtype=torch.float64)
    state = _State(w, torch.tensor([True, False]), X.double() @ w, prob.objective(plan, w, X.double() @ w))
    assert state.q == pytest.approx(3.0)
    two, info = _authors_step(prob, plan, state, Budget(((0, 2, 2),)), "consistent", 8)
    assert info == {"tau": pytest.approx(0.5), "growths": 0}
    assert torch.allclose(two.w, torch.tensor([2.0, 1.5], dtype=torch.float64)) and two.q == pytest.approx(0.75)
    one, info = _authors_step(prob, plan, state, Budget(((0, 2, 1),)), "consistent", 8)
    assert torch.allclose(one.w, torch.tensor([2.0, 0.0], dtype=torch.float64)) and one.q == pytest.approx(3.0)
    assert info["tau"] == pytest.approx(0.5)  # taken although Q did not fall: no descent test


def test_the_authors_step_moves_from_unthresholded_weights_in_later_stages(digits_model):
    """With several stages the authors' rule steps from the previous stage's weights as they are; it
    differs from the descent rule, keeps exactly k and is deterministic."""
    model, splits = digits_model
    from swap_hw.layout import Layout

    layout = Layout.from_model(model)
    grads = GRADIENT_SOURCES.get("clean")().collect(model, splits.calibration(64, 0), seed=0, layout=layout)
    weights = layout.weights_of(model)
    kwargs = dict(stages=4, iht_steps=1, backsolve=False)
    a = PRUNERS.get("lr")(step_rule="always", **kwargs).prune(weights, grads, 0.8)
    b = PRUNERS.get("lr")(step_rule="always", **kwargs).prune(weights, grads, 0.8)
    c = PRUNERS.get("lr")(**kwargs).prune(weights, grads, 0.8)
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert any(not torch.equal(a.weights[k], c.weights[k]) for k in a.weights)
    assert sum(int(m.sum()) for m in a.masks.values()) == sum(int(m.sum()) for m in c.masks.values())
    assert all(s.get("iht_iterations") in (None, 1) for s in a.log["stages"])


def test_mlpnet_without_biases():
    from swap_hw.models import build_model

    model = build_model("mlpnet", (1, 8, 8), 10, seed=0, bias=False)
    assert all(not name.endswith("bias") for name, _ in model.named_parameters())
    assert sum(p.numel() for p in model.parameters()) == 64 * 40 + 40 * 20 + 20 * 10


def test_anchoring_every_stage_at_the_dense_weights(digits_model):
    """With the stage's own weights as w̄ the authors' step starts where the gradient is 0 and
    reduces to magnitude; anchored at the dense weights it moves the mask."""
    kwargs = dict(stages=1, iht_steps=1, step_rule="always", update_weights=False, backsolve=False,
                  lambda_=0.01, lambda_units="absolute")
    protocol = dict(stages=3, epochs=1, optimizer="sgd", lr=1e-3, momentum=0.5)
    stage = PROTOCOLS.get("gradual")(**protocol).run(PRUNERS.get("lr")(**kwargs), _job(digits_model), 0.7)[1]
    dense = PROTOCOLS.get("gradual")(**protocol, anchor="dense").run(PRUNERS.get("lr")(**kwargs), _job(digits_model), 0.7)[1]
    magnitude = PROTOCOLS.get("gradual")(**protocol).run(PRUNERS.get("magnitude")(), _job(digits_model), 0.7)[1]
    assert all(torch.equal(stage.masks[k], magnitude.masks[k]) for k in stage.masks)
    assert any(not torch.equal(dense.masks[k], magnitude.masks[k]) for k in dense.masks)
    with pytest.raises(ParameterError, match="takes no anchor_weights"):
        PRUNERS.get("magnitude")().prune({"a": torch.ones(3)}, None, 0.5, anchor_weights={"a": torch.ones(3)})


def test_the_authors_preset_runs(tmp_path):
    from swap_hw.cli import main

    args = ["run", "scenarios/swap_authors.yaml", "--quiet", "--set", "repeats=1", "--set", "sparsities=[0.7]",
            "--set", "protocol.stages=3", "--set", f"output.db={tmp_path / 'a.sqlite'}",
            "--set", f"output.cache_dir={tmp_path / 'cache'}"]
    assert main(args) == 0


def test_dense_epochs_with_sgd_and_momentum(tmp_path):
    """`model.train.optimizer: sgd` trains the dense model (and sap/lottery's retraining) with SGD
    and momentum, as the authors' two dense epochs; at the defaults nothing about the model's
    description (its cache key, every cell key) changes."""
    from swap_hw.errors import ConfigError
    from swap_hw.models import build_model
    from swap_hw.sweep.plan import Seeds
    from swap_hw.sweep.prepare import prepare

    text = (f"pruners: [magnitude]\nsparsities: [0.5]\noutput: {{db: {tmp_path / 'a.sqlite'}, "
            f"cache_dir: {tmp_path / 'cache'}}}\nmodel: {{train: {{epochs: 1, lr: 0.01, TRAIN}}}}\n")
    plain = parse_scenario_text(text.replace(", TRAIN", ""), "s.yaml")
    explicit = parse_scenario_text(text.replace("TRAIN", "optimizer: adam, momentum: 0.0"), "s.yaml")
    sgd = parse_scenario_text(text.replace("TRAIN", "optimizer: sgd, momentum: 0.5"), "s.yaml")
    assert plain.model_description() == explicit.model_description()
    assert "optimizer" not in plain.model_description()["train"]
    assert [c.key for c in plan_cells(plain)] == [c.key for c in plan_cells(explicit)]
    assert not {c.key for c in plan_cells(plain)} & {c.key for c in plan_cells(sgd)}

    prep = prepare(sgd)
    seeds = Seeds(sgd.spec.seed)
    by_hand = build_model("mlpnet", prep.splits.input_shape, prep.splits.n_classes, seed=seeds.init)
    train_model(by_hand, prep.splits.x_train, prep.splits.y_train, epochs=1, lr=0.01, batch_size=64,
                seed=seeds.train, optimizer="sgd", momentum=0.5)
    adam = prepare(plain).dense.state_dict()
    for name, value in by_hand.state_dict().items():
        assert torch.equal(prep.dense.state_dict()[name], value)
        assert not torch.equal(adam[name], value)
    with pytest.raises(ConfigError, match=r"momentum.*sgd"):
        parse_scenario_text(text.replace("TRAIN", "momentum: 0.5"), "s.yaml")
