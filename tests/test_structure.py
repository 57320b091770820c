"""Structured sparsity (pruners/structure.py): every pruner's masks obey the structure exactly."""

from __future__ import annotations

import pytest
import torch

from swap_hw.config import parse_scenario_text
from swap_hw.errors import ConfigError, ParameterError
from swap_hw.gradients.gradient_set import GradientSet
from swap_hw.layout import Layout
from swap_hw.pruners import PRUNERS
from swap_hw.pruners.structure import Structure, StructuredBudget
from swap_hw.tiles import split_sizes

PRUNER_NAMES = ["magnitude", "lr", "swap", "woodfisher"]
# a Linear-like and a Conv-like tensor: crossbar matrices 12×16 and 6×(2·3·3) = 6×18
SHAPES = [("fc.weight", (12, 16)), ("conv.weight", (6, 2, 3, 3))]


def _problem(seed: int = 0, n: int = 40):
    g = torch.Generator().manual_seed(seed)
    weights = {name: torch.randn(shape, generator=g) for name, shape in SHAPES}
    layout = Layout.from_shapes((n_, tuple(t.shape)) for n_, t in weights.items())
    x = torch.randn(n, layout.d, generator=g)
    return weights, GradientSet(x, layout.flatten(weights), layout)


def _matrices(mask: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    return [mask[name].reshape(shape[0], -1) for name, shape in SHAPES]


def _assert_units_whole(m: torch.Tensor, row_edges: list[int], col_edges: list[int]) -> int:
    """Every block between consecutive edges is all kept or all pruned; returns blocks kept."""
    kept = 0
    for r0, r1 in zip(row_edges, row_edges[1:]):
        for c0, c1 in zip(col_edges, col_edges[1:]):
            block = m[r0:r1, c0:c1]
            assert bool(block.all()) or not bool(block.any()), f"block [{r0}:{r1}, {c0}:{c1}] kept in part"
            kept += int(block.all())
    return kept


def _edges(sizes: list[int]) -> list[int]:
    out = [0]
    for s in sizes:
        out.append(out[-1] + s)
    return out


@pytest.mark.parametrize("pruner", PRUNER_NAMES)
def test_channel_masks_keep_or_drop_whole_rows(pruner):
    weights, grads = _problem()
    result = PRUNERS.get(pruner)(structure="channel").prune(weights, grads, 0.5)
    kept_rows = 0
    for m in _matrices(result.masks):
        rows = m.all(dim=1)
        assert torch.equal(rows, m.any(dim=1)), "a row is kept in part"
        assert bool(rows.any()), "a layer lost every row"
        kept_rows += int(rows.sum())
    assert kept_rows == 9  # floor(18 rows · 0.5)
    assert result.log["structure"]["kept_units"] == 9


@pytest.mark.parametrize("pruner", PRUNER_NAMES)
def test_block_masks_are_whole_blocks(pruner):
    weights, grads = _problem(1)
    result = PRUNERS.get(pruner)(structure="block:4x8").prune(weights, grads, 0.6)
    mats = _matrices(result.masks)
    # 12×16 → 3×2 blocks of 4×8; 6×18 → 2×3 blocks (4×8, 4×8, 4×2; 2×8, 2×8, 2×2)
    kept = _assert_units_whole(mats[0], [0, 4, 8, 12], [0, 8, 16])
    kept += _assert_units_whole(mats[1], [0, 4, 6], [0, 8, 16, 18])
    assert kept == 4  # floor(12 units · 0.4)


@pytest.mark.parametrize("pruner", PRUNER_NAMES)
def test_tile_masks_follow_the_balanced_tile_split(pruner):
    weights, grads = _problem(2)
    result = PRUNERS.get(pruner)(structure="tile:5").prune(weights, grads, 0.5)
    mats = _matrices(result.masks)
    kept = 0
    for m in mats:
        kept += _assert_units_whole(m, _edges(split_sizes(m.shape[0], 5)), _edges(split_sizes(m.shape[1], 5)))
    # 12×16 at T=5: rows 4,4,4 and columns 4,4,4,4 → 12 tiles; 6×18: rows 3,3, columns 5,5,4,4 → 8 tiles
    assert kept == 10


@pytest.mark.parametrize("pruner", PRUNER_NAMES)
@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_n_of_m_masks_keep_at_most_n_per_group(pruner, sparsity):
    weights, grads = _problem(3)
    result = PRUNERS.get(pruner)(structure="2:4").prune(weights, grads, sparsity)
    for m in _matrices(result.masks):
        groups = m.reshape(m.shape[0], -1, 2 * 2 if m.shape[1] % 4 == 0 else 1)
        if m.shape[1] % 4 == 0:
            per_group = groups.sum(dim=2)
        else:  # 18 columns: 4 full groups and a tail of 2 per row
            full = m[:, :16].reshape(m.shape[0], 4, 4).sum(dim=2)
            tail = m[:, 16:].sum(dim=1, keepdim=True)
            per_group = torch.cat([full, tail], dim=1)
        assert int(per_group.max()) <= 2
    d = sum(m.numel() for m in result.masks.values())
    assert int(sum(int(m.sum()) for m in result.masks.values())) == int(d * (1 - sparsity) + 1e-9)


def test_n_of_m_at_its_own_sparsity_keeps_exactly_n_in_every_group():
    weights, grads = _problem(3)
    # scope layer: the 12×16 layer has no short tail group, so its budget is exactly 2 per group
    result = PRUNERS.get("lr")(structure="2:4", scope="layer").prune(weights, grads, 0.5)
    per_group = result.masks["fc.weight"].reshape(12, 4, 4).sum(dim=2)
    assert bool((per_group == 2).all())


def test_n_of_m_selection_is_the_exact_projection():
    """≤ N per group and ≤ k in all: the selection keeps the largest Σv² over every feasible mask
    (checked by brute force on a tiny vector)."""
    import itertools

    layout = Layout.from_shapes([("w", (1, 8))])
    v = torch.tensor([0.9, -0.1, 0.8, 0.7, -0.05, 0.3, 0.2, -0.6], dtype=torch.float64)
    budget = StructuredBudget.make(layout, 3, 1 - 3 / 8, "global", Structure.parse("2:4"))
    mask = budget.mask(v)
    best = max(
        (c for c in itertools.combinations(range(8), 3) if sum(i < 4 for i in c) <= 2 and sum(i >= 4 for i in c) <= 2),
        key=lambda c: sum(float(v[i]) ** 2 for i in c),
    )
    assert sorted(torch.nonzero(mask).reshape(-1).tolist()) == list(best)


def test_structured_lr_with_one_weight_per_unit_equals_unstructured_lr():
    weights, grads = _problem(4)
    plain = PRUNERS.get("lr")().prune(weights, grads, 0.6)
    single = PRUNERS.get("lr")(structure="block:1x1").prune(weights, grads, 0.6)
    for name in plain.masks:
        assert torch.equal(plain.masks[name], single.masks[name])
        torch.testing.assert_close(plain.weights[name], single.weights[name], rtol=1e-5, atol=1e-6)


def test_unit_tau_c_equals_the_elementwise_bound_for_single_weights():
    weights, grads = _problem(5)
    layout = grads.layout
    from swap_hw.pruners.selection import Budget

    w = grads.w_bar.to(torch.float64)
    k = layout.d // 2
    plain = Budget.make(layout, k, 0.5, "global")
    support = plain.mask(w)
    w = torch.where(support, w, torch.zeros((), dtype=torch.float64))
    b = torch.randn(layout.d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    single = StructuredBudget.make(layout, k, 0.5, "global", Structure.parse("block:1x1"))
    assert single.tau_c(w, b, support) == pytest.approx(plain.tau_c(w, b, support), rel=1e-12)


def test_structure_text_is_canonical_and_bad_text_names_the_forms():
    assert str(Structure.parse(" Block:16X8 ")) == "block:16x8"
    assert str(Structure.parse("2:4")) == "2:4"
    for bad in ("4:2", "block:0x4", "tiles", "tile:0", 3):
        with pytest.raises(ValueError, match="structure|N:M|block sides|tile size"):
            Structure.parse(bad)


SCENARIO = """
data: {{name: digits}}
model: {{arch: mlpnet, train: {{epochs: 1}}}}
calibration: {{n: 32}}
sources: [clean]
pruners: [{{name: magnitude, structure: "{structure}"}}]
conditions: [digital]
sparsities: [{sparsities}]
"""


def test_bad_structure_in_a_scenario_is_one_line_naming_the_field():
    with pytest.raises(ConfigError) as err:
        parse_scenario_text(SCENARIO.format(structure="3:3", sparsities="0.5"), "s.yaml")
    assert "pruners[0]" in str(err.value) and "structure" in str(err.value) and "\n" not in str(err.value)


def test_n_of_m_below_its_sparsity_is_refused_before_any_training():
    with pytest.raises(ConfigError) as err:
        parse_scenario_text(SCENARIO.format(structure="2:4", sparsities="0.5, 0.3"), "s.yaml")
    message = str(err.value)
    assert "pruners[0].structure" in message and "≥ 0.5" in message and "sparsities[1]" in message
    with pytest.raises(ParameterError, match="≥ 0.5"):
        weights, grads = _problem()
        PRUNERS.get("magnitude")(structure="2:4").prune(weights, grads, 0.3)


def test_default_structure_leaves_descriptions_unchanged():
    for name in PRUNER_NAMES:
        assert "structure" not in PRUNERS.get(name)().describe()
        assert PRUNERS.get(name)(structure="channel").describe()["structure"] == "channel"




@pytest.mark.parametrize("pruner", ["sap", "lottery"])
def test_iterative_pruners_remove_whole_units(pruner, digits_model):
    from swap_hw.layout import Layout
    from swap_hw.pruners import TrainingContext
    from swap_hw.models import build_model

    model, splits = digits_model
    layout = Layout.from_model(model)
    init = build_model("mlpnet", splits.input_shape, splits.n_classes, 0).state_dict()
    ctx = TrainingContext(model=model, initial_state=init, x_train=splits.x_train[:300],
                          y_train=splits.y_train[:300], epochs=1, seed=0, train_accuracy=False)
    params = {"iterations": 3, "structure": "tile:16", "epochs": 1}
    result = PRUNERS.get(pruner)(**params).prune(layout.weights_of(model), None, 0.5, training=ctx)
    for name, mask in result.masks.items():
        m = mask.reshape(mask.shape[0], -1)
        _assert_units_whole(m, _edges(split_sizes(m.shape[0], 16)), _edges(split_sizes(m.shape[1], 16)))
        assert bool(m.any()), "a layer lost every unit"
    assert result.log["structure"]["kept_units"] < result.log["structure"]["units"]
    with pytest.raises(ConfigError, match="not N:M"):
        parse_scenario_text(SCENARIO.format(structure="2:4", sparsities="0.5").replace(
            "name: magnitude", f"name: {pruner}"), "s.yaml")
