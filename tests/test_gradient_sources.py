"""The `gaussian` (paper noise) and `analog` (simulated hardware) gradient sources."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from swap_hw.gradients import GRADIENT_SOURCES
from swap_hw.gradients.gaussian import add_gaussian_gradient_noise


@pytest.fixture(scope="module")
def calibration(digits_model):
    model, splits = digits_model
    return model, splits.calibration(128, seed=0)


@pytest.fixture(scope="module")
def clean_set(calibration):
    model, batch = calibration
    return GRADIENT_SOURCES.get("clean")().collect(model, batch, seed=0)


# --- gaussian ------------------------------------------------------------------------------------


@pytest.mark.parametrize("std,prop", [(1.0, 0.25), (4.0, 0.1), (2.0, 1.0)])
def test_gaussian_noise_fraction_and_scale(std, prop):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(400, 500, generator=gen) * torch.linspace(0.1, 5.0, 400).unsqueeze(1)
    noisy, m = add_gaussian_gradient_noise(X, std, prop, seed=1)
    assert m == round(prop * 500)
    changed = noisy != X
    assert torch.equal(changed.sum(dim=1), torch.full((400,), m))  # exactly m per row
    # noise divided by each row's own σ(g) is N(0, std²)
    sigma = X.std(dim=1, correction=0, keepdim=True)
    z = ((noisy - X) / sigma)[changed]
    assert z.mean().abs() < 0.05 * std
    assert z.std().item() == pytest.approx(std, rel=0.03)
    # the chosen coordinates differ between rows (fresh draw per sample) and cover all columns
    if prop < 1.0:
        assert not torch.equal(changed[0], changed[1])
        assert changed.float().mean(dim=0).min() > 0


def test_gaussian_source_is_seeded_and_records_fraction(calibration, clean_set):
    model, batch = calibration
    source = GRADIENT_SOURCES.get("gaussian")(std=2.0, prop=0.5)
    a = source.collect(model, batch, seed=0)
    b = source.collect(model, batch, seed=0)
    c = source.collect(model, batch, seed=1)
    assert torch.equal(a.X, b.X)
    assert not torch.equal(a.X, c.X)
    d = clean_set.d
    assert a.provenance["noisy_fraction"] == round(0.5 * d) / d
    assert ((a.X != clean_set.X).sum(dim=1) <= round(0.5 * d)).all()
    assert a.provenance["noise_to_signal"] > 0.5  # std 2 on half the coordinates: ≈ 2·√0.5
    assert torch.equal(a.w_bar, clean_set.w_bar)
    zero = GRADIENT_SOURCES.get("gaussian")(std=0.0).collect(model, batch, seed=0)
    assert torch.equal(zero.X, clean_set.X)


def test_gaussian_params_validated():
    cls = GRADIENT_SOURCES.get("gaussian")
    for bad in ({"prop": 0.0}, {"prop": 1.5}, {"std": -1.0}, {"sigma": 1.0}):
        with pytest.raises(ValidationError):
            cls(**bad)
    assert cls(std=4, prop=0.1).label == "gaussian(prop=0.1,std=4)"


# --- analog ---------------------------------------------------------------------------------------


def test_analog_source_gradients_come_from_the_hardware(calibration, clean_set):
    model, batch = calibration
    source = GRADIENT_SOURCES.get("analog")(drift_time=3600.0)
    a = source.collect(model, batch, seed=0)
    b = source.collect(model, batch, seed=0)
    c = source.collect(model, batch, seed=1)
    assert a.X.shape == clean_set.X.shape
    assert torch.equal(a.X, b.X) and not torch.equal(a.X, c.X)
    assert torch.equal(a.w_bar, clean_set.w_bar)  # pruners still edit the digital weights
    rel = float((a.X - clean_set.X).norm() / clean_set.X.norm())
    assert 0.01 < rel < 1.0
    prov = a.provenance
    assert 0.02 < prov["weight_error"] < 0.5 and prov["drift_time"] == 3600.0
    assert set(prov["alpha"]) == {"layers.1.weight", "layers.3.weight", "layers.5.weight"}
    assert all(1.0 < x < 2.0 for v in prov["alpha"].values() for x in v)


def test_analog_source_without_noise_equals_clean(calibration, clean_set):
    model, batch = calibration
    exact = GRADIENT_SOURCES.get("analog")(prog_noise_scale=0.0, read_noise_scale=0.0, drift_scale=0.0)
    got = exact.collect(model, batch, seed=0)
    assert got.provenance["weight_error"] < 1e-5
    assert torch.allclose(got.X, clean_set.X, rtol=1e-3, atol=1e-5)


def test_analog_source_params_validated():
    cls = GRADIENT_SOURCES.get("analog")
    with pytest.raises(ValidationError, match="weights only"):
        cls(out_noise=0.06)
    with pytest.raises(ValidationError, match="characterised only"):
        cls(noise_model="reram_wan2022", drift_time=3600.0)
    with pytest.raises(ValidationError):
        cls(drift_time=-1.0)
    assert cls(noise_model="reram_wan2022").params.drift_time == 86400.0
