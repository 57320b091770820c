"""swap_hw.noise.hardware: aihwkit programming, drift, effective weights, zero retention."""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from swap_hw.errors import ParameterError
from swap_hw.noise.hardware import HardwareConfig, program


def _pruned(model: nn.Module, fraction: float = 0.5) -> nn.Module:
    """A copy whose first layer has its smallest-|w| `fraction` set exactly to zero."""
    pruned = copy.deepcopy(model)
    w = pruned.layers[1].weight
    with torch.no_grad():
        w[w.abs() < w.abs().flatten().quantile(fraction)] = 0.0
    return pruned


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_config_rejects_bad_values():
    with pytest.raises(ValidationError, match="prog_noise_scale"):
        HardwareConfig(prog_noise_scale=-1.0)
    with pytest.raises(ValidationError, match="noise_model"):
        HardwareConfig(noise_model="flash")
    with pytest.raises(ValidationError, match="only apply to noise_model 'custom'"):
        HardwareConfig(custom_drift_nu_mean=0.3)
    with pytest.raises(ValidationError, match="one noise scale"):
        HardwareConfig(noise_model="reram_wan2022", read_noise_scale=2.0)
    with pytest.raises(ValidationError, match="must be below g_max"):
        HardwareConfig(noise_model="reram_cmo", g_max=5.0)
    # features aihwkit's torch tiles refuse are named as such, not as unknown keys
    with pytest.raises(ValidationError, match="PyTorch inference tiles cannot simulate short-term weight"):
        HardwareConfig(w_noise=0.01)
    with pytest.raises(ValidationError, match="cannot simulate IR drop"):
        HardwareConfig(ir_drop=1.0)
    with pytest.raises(ValidationError, match="extra"):
        HardwareConfig(w_noize=0.01)
    assert HardwareConfig(noise_model="reram_cmo").g_range == pytest.approx((9.0, 88.2), abs=1e-3)


def test_program_is_seeded_and_leaves_caller_model_alone(digits_model):
    model, _ = digits_model
    before = _state(model)
    a = program(model, HardwareConfig(), seed=3).drift(3600.0, seed=4).effective_weights()
    b = program(model, HardwareConfig(), seed=3).drift(3600.0, seed=4).effective_weights()
    c = program(model, HardwareConfig(), seed=5).drift(3600.0, seed=4).effective_weights()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layers.1.weight"], c["layers.1.weight"])
    assert set(a) == {"layers.1.weight", "layers.3.weight", "layers.5.weight"}


@pytest.mark.parametrize("compensation", [True, False])
def test_digital_copy_reproduces_analog_forward(digits_model, compensation):
    """With perfect IO, the digital copy carrying α·W_tile equals aihwkit's forward, multi-tile too."""
    model, splits = digits_model
    x = splits.x_test[:64]
    # tile_size 16 splits layer 1 (40×64) into 3×4 tiles, each with its own α.
    hw = program(model, HardwareConfig(tile_size=16, drift_compensation=compensation), seed=0)
    hw.drift(86400.0, seed=1)
    alphas = hw.alphas()["layers.1.weight"]
    assert len(alphas) == 12
    if compensation:
        assert len(set(alphas)) > 1 and all(a > 1.0 for a in alphas)  # drift lowers G, α lifts it
    else:
        assert alphas == [1.0] * 12
    with torch.no_grad():
        expected = hw.analog(x)
        got = hw.digital_copy()(x)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, model(x), atol=1e-3)  # the hardware is not the digital model


def test_digital_copy_matches_conv_layers():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=4), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 4 * 4, 10),
    ).eval()
    hw = program(model, HardwareConfig(), seed=0).drift(3600.0, seed=1)
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(hw.digital_copy()(x), hw.analog(x), rtol=1e-5, atol=1e-6)
    weights = hw.effective_weights()
    assert weights["0.weight"].shape == (4, 1, 3, 3)
    # aihwkit maps groups = 1 only: the depthwise conv stays digital and exact
    assert "2.weight" not in weights
    assert isinstance(hw.analog.get_submodule("2"), nn.Conv2d)


def test_noise_scales_reach_the_device(digits_model):
    model, _ = digits_model
    exact = HardwareConfig(prog_noise_scale=0.0, read_noise_scale=0.0, drift_scale=0.0)
    assert program(model, exact, 0).drift(31536000.0, 1).relative_weight_error() < 1e-5
    noisy = program(model, HardwareConfig(), 0).drift(31536000.0, 1).relative_weight_error()
    noisier = program(model, HardwareConfig(prog_noise_scale=3.0), 0).drift(31536000.0, 1).relative_weight_error()
    assert 0.02 < noisy < noisier


def test_drift_starts_from_the_programmed_state(digits_model):
    """Drifting to t1, then t2, then t1 again with the same seed reproduces the first t1 weights."""
    model, _ = digits_model
    hw = program(model, HardwareConfig(), seed=0)
    first = hw.drift(60.0, seed=7).effective_weights()
    later = hw.drift(31536000.0, seed=8).effective_weights()
    again = hw.drift(60.0, seed=7).effective_weights()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["layers.3.weight"], later["layers.3.weight"])


def test_compensation_undoes_global_pcm_drift(digits_model):
    model, _ = digits_model
    errors = {}
    for comp in (True, False):
        hw = program(model, HardwareConfig(drift_compensation=comp), seed=0).drift(31536000.0, seed=1)
        errors[comp] = hw.relative_weight_error()
    # a year of PCM drift shrinks conductances to about half; α brings the scale back
    assert errors[False] > 0.35 and errors[True] < 0.5 * errors[False]


@pytest.mark.parametrize("noise_model,max_kept", [("pcm", 0.6), ("reram_cmo", 0.0)])
def test_pruned_weights_do_not_stay_zero_unless_kept(digits_model, noise_model, max_kept):
    model, _ = digits_model
    pruned = _pruned(model)
    hw = program(pruned, HardwareConfig(noise_model=noise_model), seed=0).drift(86400.0, seed=1)
    fraction = hw.pruned_zero_fraction()
    assert fraction is not None and fraction <= max_kept
    kept = program(pruned, HardwareConfig(noise_model=noise_model, keep_pruned_zero=True), seed=0)
    for t in (1.0, 86400.0, 31536000.0):
        kept.drift(t, seed=2)
        assert kept.pruned_zero_fraction() == 1.0
        w = kept.effective_weights()["layers.1.weight"]
        target = kept.target_weights()["layers.1.weight"]
        assert torch.equal(w[target == 0], torch.zeros_like(w[target == 0]))
        assert (w[target != 0] != target[target != 0]).float().mean() > 0.99  # the rest is noisy
    with torch.no_grad():  # and the analog forward agrees with the masked weights
        x = torch.rand(16, 1, 8, 8)
        assert torch.allclose(kept.digital_copy()(x), kept.analog(x), rtol=1e-5, atol=1e-5)
    assert program(model, HardwareConfig(), seed=0).pruned_zero_fraction() is None


def test_wan2022_only_at_characterised_times(digits_model):
    model, _ = digits_model
    hw = program(model, HardwareConfig(noise_model="reram_wan2022"), seed=0)
    hw.drift(86400.0, seed=1)
    with pytest.raises(ParameterError, match="characterised only"):
        hw.drift(3600.0, seed=1)


def test_io_noise_is_seeded(digits_model):
    model, splits = digits_model
    x, y = splits.x_test[:200], splits.y_test[:200]
    hw = program(model, HardwareConfig(out_noise=0.06, inp_res=1 / 126, out_res=1 / 510), seed=0)
    hw.drift(1.0, seed=1)
    a = hw.accuracy_and_loss(x, y, seed=5)
    assert a == hw.accuracy_and_loss(x, y, seed=5)
    assert a[1] != hw.accuracy_and_loss(x, y, seed=6)[1]
    with torch.no_grad():  # IO noise acts per forward: the weights-only copy no longer matches
        assert not torch.allclose(hw.digital_copy()(x), hw.analog(x), atol=1e-4)
