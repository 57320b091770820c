"""label_noise: exact corruption counts per kind, determinism, nesting, and the gradients it yields."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from swap_hw.errors import ParameterError
from swap_hw.gradients import GRADIENT_SOURCES, per_sample_gradients
from swap_hw.gradients.label_noise import DIGIT_CLASS_MAPPING, corrupt_labels
from swap_hw.layout import Layout


def _labels(n: int, c: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 400),
    c=st.integers(2, 12),
    rate=st.floats(0.0, 1.0),
    kind=st.sampled_from(["symmetric", "pairflip"]),
    seed=st.integers(0, 2**40),
)
def test_exact_count_every_corrupted_label_wrong(n, c, rate, kind, seed):
    y = _labels(n, c, seed % 1000)
    y_before = y.clone()
    y_noisy, changed = corrupt_labels(y, c, kind, rate, seed)
    assert torch.equal(y, y_before)  # input untouched
    assert int(changed.sum()) == round(rate * n)
    assert torch.equal(changed, y_noisy != y)
    assert n == 0 or (int(y_noisy.min()) >= 0 and int(y_noisy.max()) < c)
    if kind == "pairflip":
        assert torch.equal(y_noisy[changed], (y[changed] + 1) % c)


def test_symmetric_new_labels_uniform_over_other_classes():
    c, n = 5, 20000
    y = _labels(n, c)
    y_noisy, changed = corrupt_labels(y, c, "symmetric", 0.5, seed=3)
    offsets = ((y_noisy[changed] - y[changed]) % c).bincount(minlength=c)
    assert offsets[0] == 0
    expected = int(changed.sum()) / (c - 1)
    # each of the C−1 offsets ≈ m/(C−1); binomial sd ≈ 43 here, allow 5 sd
    assert torch.all((offsets[1:].float() - expected).abs() < 5 * expected**0.5)


def test_asymmetric_flips_only_source_classes_by_mapping():
    y = _labels(3000, 10)
    y_noisy, changed = corrupt_labels(y, 10, "asymmetric", 0.4, seed=1)
    sources = torch.tensor(sorted(DIGIT_CLASS_MAPPING))
    eligible = torch.isin(y, sources)
    assert not changed[~eligible].any()
    assert int(changed.sum()) == round(0.4 * int(eligible.sum()))
    for src, dst in DIGIT_CLASS_MAPPING.items():
        sel = changed & (y == src)
        assert sel.any() and torch.all(y_noisy[sel] == dst)

    custom, ch = corrupt_labels(y, 10, "asymmetric", 1.0, seed=1, mapping={0: 9})
    assert torch.equal(ch, y == 0) and torch.all(custom[ch] == 9)


def test_seeded_and_nested():
    y = _labels(1000, 10)
    a1, c1 = corrupt_labels(y, 10, "symmetric", 0.2, seed=7)
    a2, c2 = corrupt_labels(y, 10, "symmetric", 0.2, seed=7)
    b, cb = corrupt_labels(y, 10, "symmetric", 0.2, seed=8)
    assert torch.equal(a1, a2) and torch.equal(c1, c2)
    assert not torch.equal(c1, cb)
    for kind in ("symmetric", "pairflip", "asymmetric"):
        _, low = corrupt_labels(y, 10, kind, 0.1, seed=7)
        _, high = corrupt_labels(y, 10, kind, 0.3, seed=7)
        assert int(low.sum()) < int(high.sum()) and bool((low <= high).all())


def test_clear_errors():
    y = _labels(50, 5)
    with pytest.raises(ParameterError, match="only for 10 classes"):
        corrupt_labels(y, 5, "asymmetric", 0.2, seed=0)
    with pytest.raises(ParameterError, match="outside"):
        corrupt_labels(y, 5, "asymmetric", 0.2, seed=0, mapping={1: 7})
    with pytest.raises(ParameterError, match=r"labels must lie in \[0, 3\)"):
        corrupt_labels(y, 3, "symmetric", 0.2, seed=0)
    source = GRADIENT_SOURCES.get("label_noise")
    for bad in ({"rate": -0.1}, {"kind": "uniform"}, {"mapping": {1: 2}}, {"kind": "asymmetric", "mapping": {3: 3}}):
        with pytest.raises(ValueError):
            source(**bad)


def test_source_gradients_taken_at_the_corrupted_labels(digits_model):
    model, splits = digits_model
    x, y = splits.calibration(300, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layout = Layout.from_model(model)
    clean = GRADIENT_SOURCES.get("clean")().collect(model, (x, y), seed=4)
    noisy = GRADIENT_SOURCES.get("label_noise")(kind="pairflip", rate=0.25).collect(model, (x, y), seed=4)
    again = GRADIENT_SOURCES.get("label_noise")(kind="pairflip", rate=0.25).collect(model, (x, y), seed=4)

    info = noisy.provenance["label_noise"]
    assert info["changed"] == 75 and info["realised_rate"] == pytest.approx(0.25) and info["n_classes"] == 10
    assert torch.equal(noisy.X, again.X)
    assert torch.equal(noisy.w_bar, clean.w_bar)
    y_noisy, changed = corrupt_labels(y, 10, "pairflip", 0.25, seed=4)
    assert torch.equal(noisy.X[~changed], clean.X[~changed])
    assert torch.allclose(noisy.X, per_sample_gradients(model, x, y_noisy, layout), atol=1e-6)
    assert (noisy.X[changed] - clean.X[changed]).norm(dim=1).min() > 0
    # wrong labels give larger gradients on a model that fits the true ones
    assert noisy.X[changed].norm(dim=1).mean() > 3 * clean.X[changed].norm(dim=1).mean()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_asymmetric_provenance_reports_rate_among_eligible(digits_model):
    model, splits = digits_model
    x, y = splits.calibration(400, seed=1)
    g = GRADIENT_SOURCES.get("label_noise")(kind="asymmetric", rate=0.5).collect(model, (x, y), seed=2)
    info = g.provenance["label_noise"]
    eligible = int(torch.isin(y, torch.tensor(sorted(DIGIT_CLASS_MAPPING))).sum())
    assert info["eligible"] == eligible
    assert info["changed"] == round(0.5 * eligible)
    assert info["realised_rate"] == pytest.approx(info["changed"] / 400)
