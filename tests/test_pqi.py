"""PQ Index: its mathematical properties (hypothesis), reference values, the keep bound and prune
count, auto_sparsity, and PQI in every PruneResult log."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from swap_hw.errors import ParameterError
from swap_hw.pqi import (
    auto_sparsity,
    keep_bound,
    pq_index,
    pq_index_groups,
    pqi_global,
    pqi_per_layer,
    pqi_per_neuron,
    prune_count,
)
from swap_hw.pruners import PRUNERS

SETTINGS = settings(max_examples=60, deadline=None)

# Values whose magnitudes stay away from subnormals so |w|^p is representable.
finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False).map(
    lambda v: 0.0 if abs(v) < 1e-6 else v
)
vectors = st.lists(finite, min_size=1, max_size=40).filter(lambda xs: any(x != 0.0 for x in xs))
pq_pairs = st.sampled_from([(0.5, 1.0), (1.0, 2.0), (0.25, 3.0), (1.5, 1.75)])


def t(xs) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


@SETTINGS
@given(vectors, pq_pairs)
def test_range(xs, pq):
    p, q = pq
    d = len(xs)
    value = pq_index(t(xs), p, q)
    assert 0.0 <= value <= 1.0 - d ** (1.0 / q - 1.0 / p) + 1e-12


@SETTINGS
@given(vectors, pq_pairs, st.floats(min_value=1e-3, max_value=1e3), st.sampled_from([1.0, -1.0]))
def test_scale_invariance(xs, pq, scale, sign):
    p, q = pq
    assert pq_index(t(xs) * scale * sign, p, q) == pytest.approx(pq_index(t(xs), p, q), abs=1e-9)


@SETTINGS
@given(vectors, pq_pairs, st.integers(min_value=2, max_value=4))
def test_clone_invariance(xs, pq, copies):
    p, q = pq
    w = t(xs)
    assert pq_index(w.repeat(copies), p, q) == pytest.approx(pq_index(w, p, q), abs=1e-9)


@SETTINGS
@given(vectors, pq_pairs)
def test_adding_a_zero_raises_it_unless_masked_out(xs, pq):
    p, q = pq
    w = t(xs)
    padded = torch.cat([w, torch.zeros(1, dtype=torch.float64)])
    before = pq_index(w, p, q)
    after = pq_index(padded, p, q)
    # Exactly: 1 − I picks up the factor (d/(d+1))^{1/p − 1/q} < 1.
    d = len(xs)
    assert after > before
    assert 1.0 - after == pytest.approx((1.0 - before) * (d / (d + 1)) ** (1 / p - 1 / q), rel=1e-9)
    # A pruned (masked) zero does not count: survivors only.
    mask = torch.cat([torch.ones(d, dtype=torch.bool), torch.zeros(1, dtype=torch.bool)])
    assert pq_index(padded, p, q, mask=mask) == pytest.approx(before, abs=1e-12)


@SETTINGS
@given(st.integers(min_value=1, max_value=200), pq_pairs, st.floats(min_value=1e-3, max_value=1e3))
def test_maximal_with_one_nonzero_and_zero_when_flat(d, pq, value):
    p, q = pq
    one_hot = torch.zeros(d, dtype=torch.float64)
    one_hot[d // 2] = value
    assert pq_index(one_hot, p, q) == pytest.approx(1.0 - d ** (1 / q - 1 / p), abs=1e-12)
    signs = torch.where(torch.arange(d) % 2 == 0, 1.0, -1.0).to(torch.float64)
    assert pq_index(signs * value, p, q) == pytest.approx(0.0, abs=1e-12)


@SETTINGS
@given(vectors)
def test_keep_fraction_is_one_minus_index_at_p_half_q_one(xs):
    value = pq_index(t(xs), 0.5, 1.0)
    assert keep_bound(len(xs), value, 0.5, 1.0, 0.0) / len(xs) == pytest.approx(1.0 - value, rel=1e-12)


@SETTINGS
@given(vectors, st.lists(st.booleans(), min_size=40, max_size=40))
def test_mask_means_survivors_only(xs, keep):
    w = t(xs)
    mask = torch.tensor(keep[: len(xs)])
    assume(bool((w[mask] != 0).any()))
    assert pq_index(w, mask=mask) == pytest.approx(pq_index(w[mask]), abs=1e-12)


def test_reference_values_gaussian_and_laplace_at_d_1e5():
    gen = torch.Generator().manual_seed(1234)
    gauss = torch.randn(100_000, generator=gen, dtype=torch.float64)
    u = torch.rand(100_000, generator=gen, dtype=torch.float64) - 0.5
    laplace = -torch.sign(u) * torch.log1p(-2 * u.abs())
    # Spec §1 values; the seeded draw's spread at d = 1e5 is ~1e-3.
    assert pq_index(gauss, 0.5, 1.0) == pytest.approx(0.152, abs=0.005)
    assert pq_index(gauss, 1.0, 2.0) == pytest.approx(0.202, abs=0.005)
    assert pq_index(laplace, 0.5, 1.0) == pytest.approx(0.215, abs=0.005)
    assert pq_index(laplace, 1.0, 2.0) == pytest.approx(0.295, abs=0.005)


def test_float32_and_float64_agree_and_tiny_weights_work():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(5000, generator=gen)
    assert pq_index(w) == pytest.approx(pq_index(w.double()), abs=1e-6)
    assert pq_index(w * 1e-30) == pytest.approx(pq_index(w), abs=1e-6)


@pytest.mark.parametrize(
    "w, p, q, message",
    [
        (torch.zeros(5), 0.5, 1.0, "all-zero"),
        (torch.zeros(0), 0.5, 1.0, "all-zero"),
        (torch.ones(3), 1.0, 1.0, "p < q"),
        (torch.ones(3), 2.0, 1.0, "p < q"),
        (torch.ones(3), 0.0, 1.0, "p > 0"),
        (torch.ones(3), -1.0, 1.0, "p > 0"),
        (torch.tensor([1.0, float("nan")]), 0.5, 1.0, "NaN"),
    ],
)
def test_clear_errors(w, p, q, message):
    with pytest.raises(ParameterError, match=message):
        pq_index(w, p, q)


def test_all_masked_out_is_undefined():
    with pytest.raises(ParameterError, match="all-zero"):
        pq_index(torch.ones(4), mask=torch.zeros(4, dtype=torch.bool))


def test_per_layer_global_and_per_neuron():
    gen = torch.Generator().manual_seed(3)
    weights = {"a": torch.randn(6, 5, generator=gen), "b": torch.zeros(4, 6), "c": torch.randn(3, 2, 2, 2, generator=gen)}
    layers = pqi_per_layer(weights)
    assert layers["a"] == pytest.approx(pq_index(weights["a"]))
    assert layers["b"] is None  # all-zero layer: recorded as undefined, no crash
    assert pqi_global(weights) == pytest.approx(pq_index(torch.cat([w.reshape(-1) for w in weights.values()])))
    neurons = pqi_per_neuron(weights)
    assert neurons["a"].shape == (6,)
    for i in range(6):
        assert float(neurons["a"][i]) == pytest.approx(pq_index(weights["a"][i]))
    assert torch.isnan(neurons["b"]).all()
    assert float(neurons["c"][1]) == pytest.approx(pq_index(weights["c"][1]))  # one conv filter
    masks = {n: w != 0 for n, w in weights.items()}
    masks["a"][0] = False
    assert math.isnan(float(pqi_per_neuron(weights, masks)["a"][0]))
    assert pqi_per_layer(weights, masks)["a"] == pytest.approx(pq_index(weights["a"][1:]))


def test_groups_match_separate_calls():
    gen = torch.Generator().manual_seed(9)
    w = torch.randn(30, generator=gen)
    gid = torch.randint(0, 4, (30,), generator=gen)
    values = pq_index_groups(w, gid, 5, 1.0, 2.0)
    for g in range(4):
        assert float(values[g]) == pytest.approx(pq_index(w[gid == g], 1.0, 2.0))
    assert math.isnan(float(values[4]))  # a group with no entries


@pytest.mark.parametrize(
    "d_t, r_t, gamma, beta, expected",
    [
        (100, 80.0, 1.0, 0.9, 20),  # floor(100·min(1·(1 − 80/100), 0.9)) = 20, not 19
        (100, 79.2, 1.0, 0.9, 20),  # ceil(79.2) = 80
        (100, 80.0, 0.5, 0.9, 10),
        (100, 5.0, 1.0, 0.9, 90),  # β caps the step
        (100, 30.0, 1.0, 1.0, 70),
        (100, 100.4, 1.0, 0.9, 0),  # bound above d: clamped at 0
        (7, 3.5, 1.0, 0.9, 3),
        (10, 9.00001, 1.0, 0.9, 0),  # ceil(9.00001) = 10 → nothing to prune
        (100, 80.00000000000001, 1.0, 0.9, 20),  # float noise above an integer bound is not a weight
        (150, 50.0, 0.29, 0.9, 29),  # 0.29·100 = 28.999999999999996 in floats; floor must give 29
        (0, 0.0, 1.0, 0.9, 0),
    ],
)
def test_prune_count_formula(d_t, r_t, gamma, beta, expected):
    assert prune_count(d_t, r_t, gamma, beta) == expected


def test_keep_bound_general_form_and_errors():
    # p = 1, q = 2, η_r = 0.5: r = d·1.5^{−2}·(1 − I)^{2}.
    assert keep_bound(1000, 0.2, 1.0, 2.0, 0.5) == pytest.approx(1000 * 1.5**-2 * 0.8**2)
    with pytest.raises(ParameterError, match="eta_r"):
        keep_bound(10, 0.2, eta_r=-0.1)
    with pytest.raises(ParameterError, match="gamma"):
        prune_count(10, 5.0, gamma=0.0)
    with pytest.raises(ParameterError, match="beta"):
        prune_count(10, 5.0, beta=1.5)


def test_auto_sparsity_follows_the_bound():
    gen = torch.Generator().manual_seed(5)
    weights = {"a": torch.randn(40, 30, generator=gen), "b": torch.randn(10, 40, generator=gen)}
    d = 1600
    index = pq_index(torch.cat([w.reshape(-1) for w in weights.values()]))
    expected = prune_count(d, keep_bound(d, index)) / d
    assert auto_sparsity(weights) == pytest.approx(expected)
    assert 0.1 < auto_sparsity(weights) < 0.2  # Gaussian-like weights: I ≈ 0.15
    # Already-pruned weights count as pruned; the step applies to the survivors.
    masks = {"a": torch.ones(40, 30, dtype=torch.bool), "b": torch.zeros(10, 40, dtype=torch.bool)}
    survivors = weights["a"].reshape(-1)
    c = prune_count(1200, keep_bound(1200, pq_index(survivors)))
    assert auto_sparsity(weights, masks=masks) == pytest.approx((400 + c) / d)
    # A huge step never prunes everything.
    assert auto_sparsity(weights, gamma=100.0, beta=1.0) == pytest.approx((d - 1) / d)


def test_every_prune_result_logs_pqi_before_and_after():
    gen = torch.Generator().manual_seed(2)
    weights = {"a": torch.randn(8, 6, generator=gen), "b": torch.randn(4, 8, generator=gen) * 1e-4}
    result = PRUNERS.get("magnitude")().prune(weights, None, 0.5)
    log = result.log
    assert log["pqi"]["p"] == 0.5 and log["pqi"]["q"] == 1.0
    flat = torch.cat([w.reshape(-1) for w in weights.values()])
    assert log["pqi"]["global_before"] == pytest.approx(pq_index(flat))
    kept = torch.cat([m.reshape(-1) for m in result.masks.values()])
    assert log["pqi"]["global_after"] == pytest.approx(pq_index(flat, mask=kept))
    layer = {entry["name"]: entry for entry in log["layers"]}
    assert layer["a"]["pqi_before"] == pytest.approx(pq_index(weights["a"]))
    assert layer["a"]["pqi_after"] == pytest.approx(pq_index(weights["a"], mask=result.masks["a"]))
    # Layer b is tiny, so global magnitude pruning removes all of it: undefined, not a crash.
    assert layer["b"]["sparsity"] == 1.0
    assert layer["b"]["pqi_after"] is None
    assert layer["b"]["pqi_before"] == pytest.approx(pq_index(weights["b"]))
