"""Chip realism from aihwkit 1.1.0 in swap_hw.noise.hardware: drift-compensation choices,
the Hermes PCM noise model, and stuck-at-fault cells (as the `analog` condition and source see them)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from swap_hw.config import parse_scenario_text
from swap_hw.deploy import CONDITIONS
from swap_hw.errors import ConfigError
from swap_hw.gradients import GRADIENT_SOURCES
from swap_hw.noise.hardware import (
    HEALTHY,
    STUCK_MAX,
    STUCK_ZERO,
    HardwareConfig,
    _analog_layers,
    _tile_grid,
    program,
)

TIMES = [1.0, 3600.0, 86400.0, 31536000.0]


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 12), nn.ReLU(), nn.Linear(12, 5)).eval()


def _tile_blocks(hw) -> dict[str, list[tuple[slice, slice, nn.Module]]]:
    return {f"{n}.weight": _tile_grid(layer.analog_module) for n, layer in _analog_layers(hw.analog)}


def _tile_weights(hw) -> dict[str, torch.Tensor]:
    """name → W_tile (2-D, no compensation), as the tiles hold it now."""
    return {f"{n}.weight": layer.get_weights()[0].detach().clone() for n, layer in _analog_layers(hw.analog)}


# --- stuck-at faults --------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.37])
@pytest.mark.parametrize("stuck_at", ["zero", "max", "both"])
def test_stuck_cells_realised_exactly_per_layer(fraction, stuck_at):
    model = _mlp()
    hw = program(model, HardwareConfig(stuck_fraction=fraction, stuck_at=stuck_at, tile_size=8), seed=0)
    codes = hw.stuck_cells()
    assert set(codes) == {"0.weight", "2.weight"}
    stuck_total = cells_total = 0
    for name, c in codes.items():
        n = c.numel()
        m = int(round(fraction * n))
        stuck = int((c != HEALTHY).sum())
        assert stuck == m, name
        n_zero, n_max = int((c == STUCK_ZERO).sum()), int((c == STUCK_MAX).sum())
        if stuck_at == "zero":
            assert (n_zero, n_max) == (m, 0)
        elif stuck_at == "max":
            assert (n_zero, n_max) == (0, m)
        else:
            assert (n_zero, n_max) == (m - m // 2, m // 2)  # the odd cell reads zero
        stuck_total += stuck
        cells_total += n
    assert hw.stuck_fraction() == stuck_total / cells_total
    assert abs(hw.stuck_fraction() - fraction) <= 1.0 / 60  # layer 2 has 60 cells


def test_stuck_cells_are_seeded():
    model = _mlp()
    config = HardwareConfig(stuck_fraction=0.1, stuck_at="both")
    a = program(model, config, seed=5).stuck_cells()
    b = program(model, config, seed=5).stuck_cells()
    c = program(model, config, seed=6).stuck_cells()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    # the defect map is the seed's, whatever the noise model
    d = program(model, HardwareConfig(stuck_fraction=0.1, stuck_at="both", noise_model="reram_cmo"), seed=5)
    assert all(torch.equal(a[k], d.stuck_cells()[k]) for k in a)


@pytest.mark.parametrize("compensation", ["none", "global", "per_column"])
def test_stuck_cells_stay_stuck_through_every_drift(compensation):
    model = _mlp()
    config = HardwareConfig(stuck_fraction=0.2, stuck_at="both", tile_size=8, compensation=compensation)
    hw = program(model, config, seed=1)
    codes2d = {k: v.reshape(v.shape[0], -1) for k, v in hw.stuck_cells().items()}
    targets = {k: v.reshape(v.shape[0], -1) for k, v in hw.target_weights().items()}
    expected = {}  # name → value each stuck cell's tile weight must hold (NaN where healthy)
    for name, blocks in _tile_blocks(hw).items():
        want = torch.full_like(targets[name], float("nan"))
        for rows, cols, _ in blocks:
            t, c = targets[name][rows, cols], codes2d[name][rows, cols]
            sign = torch.where(t < 0, -1.0, 1.0)
            block = want[rows, cols]
            block[c == STUCK_ZERO] = 0.0
            block[c == STUCK_MAX] = (sign * t.abs().max())[c == STUCK_MAX]
            want[rows, cols] = block
        expected[name] = want
    for i, t in enumerate(TIMES):
        hw.drift(t, seed=10 + i)
        tile_w, w_hw = _tile_weights(hw), hw.effective_weights()
        for name, want in expected.items():
            stuck = ~torch.isnan(want)
            assert int(stuck.sum()) > 0
            assert torch.equal(tile_w[name][stuck], want[stuck]), (name, t)
            assert torch.all(w_hw[name].reshape(want.shape)[codes2d[name] == STUCK_ZERO] == 0.0)
            # healthy cells drift: they differ from their target
            assert not torch.allclose(tile_w[name][~stuck], targets[name][~stuck], atol=1e-4)
    assert hw.stuck_fraction() == pytest.approx(0.2, abs=0.01)


def test_healthy_cells_evolve_as_on_the_fault_free_chip():
    """Faults change only the stuck cells: without compensation every healthy cell equals the
    fault-free chip's (same seeds) after programming and after drift."""
    model = _mlp()
    faulty = program(model, HardwareConfig(stuck_fraction=0.1, stuck_at="max", drift_compensation=False), seed=2)
    clean = program(model, HardwareConfig(drift_compensation=False), seed=2)
    healthy = {k: (v == HEALTHY).reshape(v.shape[0], -1) for k, v in faulty.stuck_cells().items()}
    for t in (None, 86400.0, 31536000.0):
        if t is not None:
            faulty.drift(t, seed=3)
            clean.drift(t, seed=3)
        fw, cw = _tile_weights(faulty), _tile_weights(clean)
        for k in healthy:
            assert torch.equal(fw[k][healthy[k]], cw[k][healthy[k]])
            assert not torch.equal(fw[k][~healthy[k]], cw[k][~healthy[k]])


def test_stuck_max_sign_follows_the_target_and_zero_targets_read_plus():
    model = _mlp()
    with torch.no_grad():
        model[0].weight[:, :5] = 0.0  # exact zeros: a stuck-max cell there reads +max
    hw = program(model, HardwareConfig(stuck_fraction=0.5, stuck_at="max", prog_noise_scale=0.0,
                                       read_noise_scale=0.0, drift_scale=0.0, drift_compensation=False), seed=0)
    hw.drift(86400.0, seed=1)
    w, target, codes = hw.effective_weights()["0.weight"], model[0].weight.detach(), hw.stuck_cells()["0.weight"]
    w_max = float(target.abs().max())
    stuck = codes == STUCK_MAX
    assert torch.allclose(w[stuck], torch.where(target[stuck] < 0, -w_max, w_max))
    assert bool(((target == 0) & stuck).any()) and torch.all(w[(target == 0) & stuck] == w_max)
    assert torch.allclose(w[~stuck], target[~stuck], atol=1e-6)  # noiseless healthy cells are exact


def test_stuck_cells_with_keep_pruned_zero_and_the_digital_copy():
    """A stuck device overrides an unprogrammed cell; the digital copy still equals the analog forward."""
    model = _mlp()
    with torch.no_grad():
        model[0].weight[model[0].weight.abs() < 0.1] = 0.0
    hw = program(model, HardwareConfig(stuck_fraction=0.3, stuck_at="max", keep_pruned_zero=True, tile_size=8), 0)
    hw.drift(3600.0, seed=1)
    w, codes, target = hw.effective_weights()["0.weight"], hw.stuck_cells()["0.weight"], model[0].weight.detach()
    assert torch.all(w[(target == 0) & (codes == HEALTHY)] == 0.0)
    assert torch.all(w[(target == 0) & (codes == STUCK_MAX)] > 0.0)
    x = torch.rand(16, 20)
    with torch.no_grad():
        assert torch.allclose(hw.digital_copy()(x), hw.analog(x), rtol=1e-5, atol=1e-6)


# --- drift compensation -----------------------------------------------------------------------


def _readout_alpha(baseline: torch.Tensor, now: torch.Tensor, per_column: bool) -> torch.Tensor:
    """α = baseline / current readout of unit inputs through the tile, computed here from the
    definitions (mean |output| over all outputs, or per output column), clamped like aihwkit."""
    if per_column:
        return baseline.abs().mean(dim=1).clamp(min=1e-4) / now.abs().mean(dim=1).clamp(min=1e-4)
    return baseline.abs().mean().clamp(min=1e-4) / now.abs().mean().clamp(min=1e-4)


@pytest.mark.parametrize("mode", ["global", "per_column", "global_exact"])
def test_compensation_factors_are_the_readout_ratios(mode):
    """W_hw = diag(α)·W_tile per tile with α computed from the tile's weights at programming (or
    from the exact targets, global_exact) and after drift — multi-tile."""
    model = _mlp()
    hw = program(model, HardwareConfig(compensation=mode, tile_size=8), seed=0)
    programmed = _tile_weights(hw)
    targets = {k: v.reshape(v.shape[0], -1) for k, v in hw.target_weights().items()}
    hw.drift(31536000.0, seed=1)
    now, w_hw = _tile_weights(hw), hw.effective_weights()
    for name, blocks in _tile_blocks(hw).items():
        assert len(blocks) > 1
        expected = now[name].clone()
        for rows, cols, _ in blocks:
            base = (targets if mode == "global_exact" else programmed)[name][rows, cols]
            alpha = _readout_alpha(base, now[name][rows, cols], mode == "per_column")
            expected[rows, cols] = now[name][rows, cols] * (alpha.view(-1, 1) if alpha.dim() else alpha)
        assert torch.allclose(w_hw[name].reshape(expected.shape), expected, rtol=1e-5, atol=1e-7), name
    spread = hw.alpha_column_range()["0.weight"]
    assert (spread[1] - spread[0] > 0.01) == True  # several tiles or columns, each its own α


@pytest.mark.parametrize("mode", ["per_column", "global_exact", "none"])
def test_effective_weights_reproduce_aihwkit_forward(mode):
    """With perfect IO the digital copy (W_hw) equals aihwkit's own compensated forward: linear
    layers split over tiles, and a convolution."""
    model = _mlp()
    hw = program(model, HardwareConfig(compensation=mode, tile_size=8), seed=0).drift(86400.0, seed=1)
    x = torch.rand(32, 20)
    with torch.no_grad():
        assert torch.allclose(hw.digital_copy()(x), hw.analog(x), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(hw.analog(x), model(x), atol=1e-3)
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(2, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 4)).eval()
    hw = program(conv, HardwareConfig(compensation=mode), seed=0).drift(86400.0, seed=1)
    x = torch.rand(4, 2, 6, 6)
    with torch.no_grad():
        assert torch.allclose(hw.digital_copy()(x), hw.analog(x), rtol=1e-5, atol=1e-6)


def test_per_column_alpha_is_aihwkits_own():
    """swap_hw's per-column W_hw row scales are exactly the tile's α vector aihwkit computed."""
    model = _mlp()
    hw = program(model, HardwareConfig(compensation="per_column"), seed=3).drift(86400.0, seed=4)
    now, w_hw = _tile_weights(hw), hw.effective_weights()
    for name, blocks in _tile_blocks(hw).items():
        (_, _, tile), = blocks
        alpha = tile.alpha.reshape(-1)
        assert alpha.numel() == now[name].shape[0] and len(set(alpha.tolist())) == alpha.numel()
        assert torch.allclose(w_hw[name], now[name] * alpha.view(-1, 1))


def test_global_compensation_is_unchanged():
    """compensation: global is the old drift_compensation: true (same α, same weights), and
    none is the old drift_compensation: false."""
    model = _mlp()
    for new, old in [({"compensation": "global"}, {}), ({"compensation": "none"}, {"drift_compensation": False})]:
        a = program(model, HardwareConfig(tile_size=8, **new), seed=0).drift(86400.0, seed=1)
        b = program(model, HardwareConfig(tile_size=8, **old), seed=0).drift(86400.0, seed=1)
        assert a.alphas() == b.alphas()
        wa, wb = a.effective_weights(), b.effective_weights()
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # and the old formula: one scalar per tile
    hw = program(model, HardwareConfig(tile_size=8), seed=0).drift(86400.0, seed=1)
    now, w_hw = _tile_weights(hw), hw.effective_weights()
    for name, blocks in _tile_blocks(hw).items():
        for rows, cols, tile in blocks:
            assert tile.alpha.numel() == 1
            assert torch.equal(w_hw[name][rows, cols], now[name][rows, cols] * tile.alpha.reshape(-1)[0])


# --- Hermes -----------------------------------------------------------------------------------


def test_hermes_runs_end_to_end(digits_model):
    model, splits = digits_model
    x, y = splits.test
    config = HardwareConfig(noise_model="pcm_hermes")
    assert config.g_range == (0.0, 20.7)
    assert HardwareConfig(noise_model="pcm_hermes", hermes_devices=1).g_range == (0.0, 10.35)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the deprecated-indexing warning is handled, nothing else leaks
        hw = program(model, config, seed=0).drift(86400.0, seed=1)
        acc, loss = hw.accuracy_and_loss(x, y, seed=2)
    digital = (model(x).argmax(1) == y).float().mean().item()
    assert 0.5 < acc <= 1.0 and math.isfinite(loss) and acc > digital - 0.2
    assert 0.0 < hw.relative_weight_error() < 0.5
    assert all(a > 1.0 for v in hw.alphas().values() for a in v)  # Hermes PCM drifts down
    again = program(model, config, seed=0).drift(86400.0, seed=1).effective_weights()
    assert all(torch.equal(again[k], v) for k, v in hw.effective_weights().items())
    single = program(model, HardwareConfig(noise_model="pcm_hermes", hermes_devices=1), seed=0).drift(86400.0, 1)
    assert single.relative_weight_error() != hw.relative_weight_error()
    measured = CONDITIONS.get("analog")(noise_model="pcm_hermes", draws=1, drift_times=["1d"]).evaluate(
        model, (x, y), seed=0)
    # the tagged (per draw and time) measurements; the untagged ones are the tile accounting
    assert {m.metric for m in measured if m.tags} - {f"layer_{t}" for t in ("tiles", "tiles_freed", "cells_programmed",
            "row_reads", "column_reads")} == {"accuracy", "loss", "weight_error"}
    assert all(math.isfinite(m.value) for m in measured)


# --- through the condition and the source ------------------------------------------------------


def test_condition_emits_the_realised_stuck_fraction_per_draw_and_time():
    model = _mlp()
    x, y = torch.rand(40, 20), torch.randint(0, 5, (40,))
    cond = CONDITIONS.get("analog")(stuck_fraction=0.05, stuck_at="both", draws=2, drift_times=[1.0, 86400.0])
    measured = [m for m in cond.evaluate(model, (x, y), seed=0) if m.metric == "stuck_fraction"]
    assert len(measured) == 4
    realised = (round(0.05 * 240) + round(0.05 * 60)) / 300
    assert all(m.value == realised for m in measured)
    assert {(m.tags["draw"], m.tags["drift_time"]) for m in measured} == {(0, 1.0), (0, 86400.0), (1, 1.0), (1, 86400.0)}
    plain = CONDITIONS.get("analog")(draws=1, drift_times=[1.0]).evaluate(model, (x, y), seed=0)
    assert "stuck_fraction" not in {m.metric for m in plain}


def test_source_records_stuck_fraction_and_column_alphas(digits_model):
    model, splits = digits_model
    batch = splits.calibration(32, seed=0)
    source = GRADIENT_SOURCES.get("analog")(stuck_fraction=0.02, compensation="per_column", drift_time=3600.0)
    got = source.collect(model, batch, seed=0)
    prov = got.provenance
    cells = {"layers.1.weight": 64 * 40, "layers.3.weight": 40 * 20, "layers.5.weight": 20 * 10}
    assert prov["stuck_fraction"] == sum(round(0.02 * n) for n in cells.values()) / sum(cells.values())
    assert set(prov["alpha_column_range"]) == set(cells)
    assert all(lo < hi for lo, hi in prov["alpha_column_range"].values())
    assert prov["source"]["compensation"] == "per_column" and prov["source"]["stuck_fraction"] == 0.02
    assert torch.isfinite(got.X).all()
    plain = GRADIENT_SOURCES.get("analog")(drift_time=3600.0).collect(model, batch, seed=0).provenance
    assert "stuck_fraction" not in plain and "alpha_column_range" not in plain


# --- descriptions and cell keys -----------------------------------------------------------------

OLD_HARDWARE = {
    "noise_model": "pcm", "prog_noise_scale": 1.0, "read_noise_scale": 1.0, "drift_scale": 1.0,
    "custom_prog_noise_us": 0.2, "custom_drift_nu_mean": 0.1, "custom_drift_nu_std": 0.05,
    "g_max": None, "g_min": None, "drift_compensation": True, "keep_pruned_zero": False,
    "out_noise": 0.0, "inp_res": 0.0, "out_res": 0.0, "tile_size": 512,
}  # the HardwareConfig fields before compensation, hermes_devices, stuck_fraction, stuck_at


def test_default_descriptions_are_unchanged():
    cond = CONDITIONS.get("analog")
    src = GRADIENT_SOURCES.get("analog")
    assert cond().describe() == {"name": "analog", **OLD_HARDWARE,
                                 "drift_times": [1.0, 3600.0, 86400.0, 31536000.0], "draws": 5}
    assert src().describe() == {"name": "analog", **OLD_HARDWARE, "drift_time": 86400.0}
    adv = CONDITIONS.get("adversarial")(hardware={"noise_model": "pcm"}, drift_time=86400).describe()
    assert adv["hardware"] == OLD_HARDWARE  # also when nested
    # writing the old meaning with the new field gives the old description
    assert cond(compensation="global").describe() == cond().describe()
    assert src(compensation="none").describe() == src(drift_compensation=False).describe()
    assert cond(stuck_fraction=0.0, stuck_at="zero", hermes_devices=2).describe() == cond().describe()
    # new settings do show
    assert cond(compensation="per_column").describe()["compensation"] == "per_column"
    assert src(stuck_fraction=0.01, stuck_at="max").describe() == {
        "name": "analog", **OLD_HARDWARE, "drift_time": 86400.0, "stuck_fraction": 0.01, "stuck_at": "max"}


def test_cell_keys_of_old_scenarios_are_unchanged():
    from swap_hw.sweep.plan import plan_cells

    base = "pruners: [magnitude]\nsparsities: [0.5]\nsources: [{name: analog, drift_time: 3600}]\n" \
           "conditions: [{name: analog, draws: 1, drift_times: [1]}]\n"
    same = base.replace("drift_time: 3600}", "drift_time: 3600, compensation: global}")
    other = base.replace("drift_times: [1]}", "drift_times: [1], compensation: per_column}")
    keys = lambda text: sorted(c.key for c in plan_cells(parse_scenario_text(text, "s.yaml")))
    assert keys(base) == keys(same)
    assert keys(base) != keys(other)


# --- bad input --------------------------------------------------------------------------------

GOOD = "pruners: [magnitude]\nsparsities: [0.5]\n"


@pytest.mark.parametrize(
    "entry, field, words",
    [
        ("conditions: [{name: analog, stuck_fraction: 1.0}]", "conditions[0].stuck_fraction", "less than 1"),
        ("conditions: [{name: analog, stuck_fraction: -0.1}]", "conditions[0].stuck_fraction", "greater than or equal to 0"),
        ("conditions: [{name: analog, stuck_fraction: 0.1, stuck_at: sideways}]", "conditions[0].stuck_at",
         "allowed: 'zero', 'max' or 'both'"),
        ("conditions: [{name: analog, stuck_at: max}]", "conditions[0].stuck_at", "only with stuck_fraction > 0"),
        ("conditions: [{name: analog, compensation: per_row}]", "conditions[0].compensation",
         "allowed: 'global', 'global_exact', 'per_column' or 'none'"),
        ("conditions: [{name: analog, compensation: per_column, drift_compensation: false}]",
         "conditions[0].compensation", "contradicts drift_compensation: false"),
        ("sources: [{name: analog, compensation: none, drift_compensation: true}]",
         "sources[0].compensation", "contradicts drift_compensation: true"),
        ("conditions: [{name: analog, noise_model: pcm_hermes, g_max: 30}]", "conditions[0].g_max",
         "characterised up to g_max 20.7"),
        ("conditions: [{name: analog, noise_model: pcm_hermes, hermes_devices: 1, g_max: 15}]",
         "conditions[0].hermes_devices", "up to g_max 10.35"),
        ("sources: [{name: analog, hermes_devices: 1}]", "sources[0].hermes_devices",
         "only applies to noise_model 'pcm_hermes'"),
        ("sources: [{name: analog, noise_model: pcm_hermes, hermes_devices: 3}]", "sources[0].hermes_devices",
         "allowed: 2 or 1"),
        ("conditions: [{name: adversarial, attack: fgsm, eps: [0.1], drift_time: 1,"
         " hardware: {stuck_fraction: 2}}]", "conditions[0].hardware.stuck_fraction", "less than 1"),
    ],
)
def test_bad_chip_settings_are_one_line_naming_the_field(entry, field, words):
    with pytest.raises(ConfigError) as info:
        parse_scenario_text(GOOD + entry + "\n", "s.yaml")
    message = str(info.value)
    assert info.value.field == field, message
    assert words in message and "\n" not in message
    assert message.startswith(f"s.yaml: {field}: ")


def test_good_chip_settings_parse():
    scenario = parse_scenario_text(GOOD + "conditions: [{name: analog, noise_model: pcm_hermes, hermes_devices: 1, "
                                   "compensation: global_exact, stuck_fraction: 0.01, stuck_at: both}]\n", "s.yaml")
    (cond,) = scenario.conditions
    config = HardwareConfig(**{k: getattr(cond.params, k) for k in HardwareConfig.model_fields})
    assert config.compensation_mode == "global_exact" and config.g_range == (0.0, 10.35)


def test_hermes_is_refused_in_one_line_where_torch_misreads_its_indexing(monkeypatch):
    import swap_hw.noise.hardware as hardware

    assert hardware._torch_reads_list_of_masks()  # this torch runs Hermes (the test above)
    monkeypatch.setattr(hardware, "_torch_reads_list_of_masks", lambda: False)
    with pytest.raises(ConfigError) as info:
        parse_scenario_text(GOOD + "sources: [{name: analog, noise_model: pcm_hermes}]\n", "s.yaml")
    message = str(info.value)
    assert info.value.field == "sources[0].noise_model" and "\n" not in message
    assert "pcm_hermes cannot run under torch" in message and "x[[mask]]" in message


def test_adversarial_condition_on_a_faulty_chip_stores_the_realised_stuck_fraction(digits_model):
    model, splits = digits_model
    x, y = splits.test[0][:40], splits.test[1][:40]
    cond = CONDITIONS.get("adversarial")(eps=[0.0], draws=2, drift_time="1d",
                                         hardware={"noise_model": "pcm", "stuck_fraction": 0.05})
    stuck = [m for m in cond.evaluate(model, (x, y), seed=0) if m.metric == "stuck_fraction"]
    assert [m.tags["draw"] for m in stuck] == [0, 1]
    assert all(0.04 < m.value < 0.06 for m in stuck)
