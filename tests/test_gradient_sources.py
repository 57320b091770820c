"""The `gaussian` (paper noise) and `analog` (simulated hardware) gradient sources."""

from __future__ import annotations

import pytest
import torch

from swap_hw.errors import ParameterError
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
        with pytest.raises(ParameterError):
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
    with pytest.raises(ParameterError, match="weights only"):
        cls(out_noise=0.06)
    with pytest.raises(ParameterError, match="characterised only"):
        cls(noise_model="reram_wan2022", drift_time=3600.0)
    with pytest.raises(ParameterError):
        cls(drift_time=-1.0)
    assert cls(noise_model="reram_wan2022").params.drift_time == 86400.0


# --- per_sample_gradients: Linear fast path vs the general torch.func path -----------------------


def _loop(model, x, y, layout):
    params = dict(model.named_parameters())
    rows = []
    for i in range(x.shape[0]):
        loss = torch.nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, [params[s.name] for s in layout.slices])
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


@pytest.mark.parametrize("case", ["mlpnet", "twice", "conv"])
def test_per_sample_gradients_paths_agree(case):
    from swap_hw.gradients.per_sample import (_independent_linear_layers, _torch_func_per_sample_gradients,
                                        per_sample_gradients)
    from swap_hw.layout import Layout
    from swap_hw.models import MLPNet

    torch.manual_seed(0)
    if case == "mlpnet":
        model, x = MLPNet((1, 8, 8), 10, hidden=(12, 7)), torch.rand(37, 1, 8, 8)
    elif case == "twice":  # one Linear applied twice: the fast path must notice and fall back
        shared = torch.nn.Linear(10, 10)
        model, x = torch.nn.Sequential(shared, torch.nn.ReLU(), shared), torch.rand(37, 10)
    else:
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                    torch.nn.Linear(3 * 6 * 6, 10))
        x = torch.rand(37, 1, 8, 8)
    model.eval()
    y = torch.randint(0, 10, (37,))
    layout = Layout.from_model(model)
    assert (_independent_linear_layers(model, layout) is not None) == (case != "conv")
    got = per_sample_gradients(model, x, y, layout, chunk_size=8)  # several chunks
    assert torch.allclose(got, _loop(model, x, y, layout), rtol=1e-4, atol=1e-6)
    assert torch.allclose(got, _torch_func_per_sample_gradients(model, x, y, layout, 8), rtol=1e-4, atol=1e-6)
    # the caller's model is untouched: eval mode kept, no hooks left, Parameters still Parameters
    assert not model.training and all(not m._forward_hooks for m in model.modules())
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in model.parameters())
