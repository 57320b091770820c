"""Issue 3 across the three noise worlds: contracts of every source and condition, the adversarial
condition on analog hardware, config-time rejection of bad noise settings, the noise scenarios."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from swap_hw.noise.attacks import AttackSettings, craft_adversarial
from swap_hw.cli import main as cli_main
from swap_hw.config import load_scenario
from swap_hw.deploy import CONDITIONS, Measurement
from swap_hw.models import accuracy_and_loss
from swap_hw.gradients import GRADIENT_SOURCES, GradientSet
from swap_hw.gradients.chain import ChainedSource
from swap_hw.layout import Layout

ROOT = Path(__file__).resolve().parents[1]


def _snapshot(model: nn.Module) -> tuple:
    """Everything a source or condition must leave alone: values, flags, mode, accumulated .grad."""
    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        {k: p.requires_grad for k, p in model.named_parameters()},
        model.training,
        {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()},
    )


def _unchanged(model: nn.Module, snap) -> bool:
    state, requires_grad, training, grads = snap
    return (
        all(torch.equal(state[k], v) for k, v in model.state_dict().items())
        and all(requires_grad[k] == p.requires_grad for k, p in model.named_parameters())
        and model.training == training
        and all((p.grad is None and grads[k] is None) or (p.grad is not None and grads[k] is not None
                and torch.equal(p.grad, grads[k])) for k, p in model.named_parameters())
    )


@pytest.fixture(scope="module")
def calibration(digits_model):
    _, splits = digits_model
    return splits.calibration(48, seed=0)


@pytest.fixture(scope="module")
def test_subset(digits_model):
    _, splits = digits_model
    return splits.x_test[:64], splits.y_test[:64]


# --- contracts ------------------------------------------------------------------------------------


def _sources() -> list:
    """Every registered source with its default parameters, plus a chain of two noise worlds."""
    members = [pytest.param(lambda n=n: GRADIENT_SOURCES.get(n)(), id=n) for n in GRADIENT_SOURCES.names()]
    chain = lambda: ChainedSource([GRADIENT_SOURCES.get("label_noise")(rate=0.25), GRADIENT_SOURCES.get("analog")()])
    return members + [pytest.param(chain, id="chain:label_noise+analog")]


@pytest.mark.parametrize("make", _sources())
def test_source_contract(digits_model, calibration, make):
    model, _ = digits_model
    source = make()
    snap = _snapshot(model)
    x, y = calibration
    x_before, y_before = x.clone(), y.clone()
    g = source.collect(model, (x, y), seed=3)
    layout = Layout.from_model(model)
    assert isinstance(g, GradientSet)
    assert g.X.shape == (x.shape[0], layout.d) and g.X.dtype == torch.float32
    assert bool(torch.isfinite(g.X).all()) and float(g.X.abs().sum()) > 0
    assert torch.equal(g.w_bar, layout.flatten(dict(model.named_parameters())))  # the DIGITAL weights
    assert g.provenance["source"] == source.describe() and g.provenance["seed"] == 3
    assert _unchanged(model, snap)
    assert torch.equal(x, x_before) and torch.equal(y, y_before)  # the batch is not edited in place
    # same seed → identical gradients; a stochastic source's draw follows its seed
    assert torch.equal(source.collect(model, (x, y), seed=3).X, g.X)
    if getattr(source, "stochastic", False) or isinstance(source, ChainedSource):
        assert not torch.equal(source.collect(model, (x, y), seed=4).X, g.X)


def test_chain_provenance_says_what_was_applied_in_order(digits_model, calibration):
    model, _ = digits_model
    x, y = calibration
    label, analog = GRADIENT_SOURCES.get("label_noise")(rate=0.25), GRADIENT_SOURCES.get("analog")()
    g = ChainedSource([label, analog]).collect(model, (x, y), seed=3)
    steps = g.provenance["chain"]
    assert [s["source"] for s in steps] == [label.describe(), analog.describe()]
    # exactly round(0.25·48) = 12 labels corrupted, then gradients through the programmed chip
    assert steps[0]["label_noise"]["changed"] == 12
    assert steps[0]["label_noise"]["realised_rate"] == 12 / 48
    assert steps[1]["drift_time"] == 86400.0 and steps[1]["weight_error"] > 0
    # both noises are in X: it differs from label noise alone and from the hardware alone
    alone = [ChainedSource([m]).collect(model, (x, y), seed=3).X for m in (label, analog)]
    assert all(not torch.equal(g.X, a) for a in alone)


def _conditions() -> list:
    members = [pytest.param(lambda n=n: CONDITIONS.get(n)(), id=n) for n in CONDITIONS.names()]
    on_chip = lambda: CONDITIONS.get("adversarial")(
        eps=[0.0, 0.1], steps=3, draws=2, hardware={"noise_model": "pcm", "out_noise": 0.06}, drift_time=3600
    )
    return members + [pytest.param(on_chip, id="adversarial-on-analog")]


@pytest.mark.parametrize("make", _conditions())
def test_condition_contract(digits_model, test_subset, make):
    model, _ = digits_model
    condition = make()
    snap = _snapshot(model)
    ms = condition.evaluate(model, test_subset, seed=5)
    assert ms and all(isinstance(m, Measurement) for m in ms)
    assert all(isinstance(m.value, float) and math.isfinite(m.value) for m in ms)
    assert {"accuracy", "loss"} <= {m.metric for m in ms}
    assert all(0.0 <= m.value <= 1.0 for m in ms if m.metric == "accuracy")
    assert all(m.value >= 0.0 for m in ms if m.metric == "loss")
    assert _unchanged(model, snap)
    assert condition.evaluate(model, test_subset, seed=5) == ms  # same seed → identical


# --- the adversarial condition on analog hardware ------------------------------------------------


def _by_tags(ms, metric):
    return {(m.tags["eps"], m.tags["draw"]): m.value for m in ms if m.metric == metric}


def test_adversarial_on_analog_hardware(digits_model, test_subset):
    model, _ = digits_model
    cls = CONDITIONS.get("adversarial")
    cond = cls(eps=[0.0, 0.05, 0.15], attack="pgd", steps=5, draws=3,
               hardware={"noise_model": "pcm", "out_noise": 0.06}, drift_time=86400)
    ms = cond.evaluate(model, test_subset, seed=11)
    assert ms == cond.evaluate(model, test_subset, seed=11)
    assert ms != cond.evaluate(model, test_subset, seed=12)
    assert all(m.tags["drift_time"] == 86400.0 for m in ms) and len(ms) == 3 * 3 * 3
    acc, loss, success = (_by_tags(ms, k) for k in ("accuracy", "loss", "attack_success"))
    # each draw is its own chip (programming, drift, ADC noise): the draws' clean losses all differ
    assert len({loss[(0.0, k)] for k in range(3)}) == 3
    for k in range(3):
        assert success[(0.0, k)] == 0.0  # eps = 0 repeats the chip's clean pass exactly
        assert acc[(0.15, k)] <= acc[(0.05, k)] <= acc[(0.0, k)]
        assert acc[(0.15, k)] < acc[(0.0, k)] - 0.2 and loss[(0.15, k)] > loss[(0.0, k)]
    # an added eps level leaves the others alone (seeds derive from (seed, eps, draw))
    fewer = cls(eps=[0.0, 0.05], attack="pgd", steps=5, draws=3,
                hardware={"noise_model": "pcm", "out_noise": 0.06}, drift_time=86400)
    assert [m for m in ms if m.tags["eps"] != 0.15] == fewer.evaluate(model, test_subset, seed=11)


def test_noiseless_hardware_reproduces_the_digital_attack(digits_model, test_subset):
    """With every hardware noise off the chip computes the digital function, so the same seeded
    attack gives (up to float rounding of the conductance mapping) the digital numbers — the attack
    really runs against the chip's forward, not against some other model."""
    model, _ = digits_model
    common = dict(eps=[0.0, 0.1], attack="pgd", steps=5, draws=2)
    digital = CONDITIONS.get("adversarial")(**common).evaluate(model, test_subset, seed=2)
    quiet = {"prog_noise_scale": 0.0, "read_noise_scale": 0.0, "drift_scale": 0.0}
    chip = CONDITIONS.get("adversarial")(**common, hardware=quiet, drift_time=1).evaluate(model, test_subset, seed=2)
    key = lambda m: (m.metric, m.tags["eps"], m.tags["draw"])
    on_chip = {key(m): m.value for m in chip}
    assert set(on_chip) == {key(m) for m in digital} and len(chip) == len(digital) == 2 * 2 * 3
    for d in digital:
        assert on_chip[key(d)] == pytest.approx(d.value, abs=2 / 64 if d.metric != "loss" else 0.05)
    # and noisy hardware under the same attack is a different, weaker model
    noisy = CONDITIONS.get("adversarial")(**common, hardware={"prog_noise_scale": 3.0}, drift_time=1)
    assert _by_tags(noisy.evaluate(model, test_subset, seed=2), "loss") != _by_tags(digital, "loss")


def test_adversarial_hardware_params():
    cls = CONDITIONS.get("adversarial")
    for bad, match in (
        ({"drift_time": 10.0}, "only to a model on hardware"),
        ({"hardware": {}}, "give drift_time"),
        ({"hardware": {"noise_model": "reram_wan2022"}, "drift_time": 3600}, "characterised only"),
        ({"hardware": {"w_noise": 0.02}, "drift_time": 1}, "cannot simulate short-term weight read noise"),
        ({"hardware": {"noise_model": "flash"}, "drift_time": 1}, "noise_model"),
        ({"hardware": {}, "drift_time": -1.0}, "greater than or equal to 0"),
    ):
        with pytest.raises(ValueError, match=match):
            cls(**bad)
    # a digital attack's description does not carry the unused hardware fields
    assert "hardware" not in cls().describe() and "drift_time" not in cls().describe()
    assert cls(hardware={}, drift_time=1).describe()["hardware"]["noise_model"] == "pcm"


def test_pgd_lowers_dense_accuracy_on_the_test_split(digits_model):
    model, splits = digits_model
    x, y = splits.test
    clean_acc, clean_loss = accuracy_and_loss(model, x, y)
    x_adv = craft_adversarial(model, x, y, AttackSettings(attack="pgd", steps=5), 0.1, seed=0)
    adv_acc, adv_loss = accuracy_and_loss(model, x_adv, y)
    assert clean_acc > 0.85 and adv_acc < clean_acc - 0.3 and adv_loss > clean_loss
    assert torch.equal(craft_adversarial(model, x, y, AttackSettings(attack="pgd", steps=5), 0.1, seed=0), x_adv)


# --- config-time validation through the command line ------------------------------------------------

BASE = """
# a bad noise setting must stop the run before any work
repeats: 1
model: {{train: {{epochs: 1}}}}
calibration: {{n: 32}}
{data}
sources: {sources}
pruners: [magnitude]
sparsities: [0.5]
conditions: {conditions}
"""


def _scenario(write_scenario, sources="[clean]", conditions="[digital]", data=""):
    return write_scenario(BASE.format(sources=sources, conditions=conditions, data=data))


BAD_SETTINGS = [
    # (sources, conditions, field named in the error, words of the message)
    ("[{name: label_noise, rate: 1.5}]", "[digital]", "sources[0].rate", "less than or equal to 1"),
    ("[clean, {name: label_noise, rate: -0.1}]", "[digital]", "sources[1].rate", "greater than or equal to 0"),
    ("[{name: adversarial, fraction: 2}]", "[digital]", "sources[0].fraction", "less than or equal to 1"),
    ("[{name: adversarial, eps: -0.1}]", "[digital]", "sources[0].eps", "greater than or equal to 0"),
    ("[{name: adversarial, attack: cw}]", "[digital]", "sources[0].attack", "allowed:"),
    ("[{name: gaussian, prop: 0}]", "[digital]", "sources[0].prop", "greater than 0"),
    ("[[label_noise, {name: analog, drift_time: -5}]]", "[digital]", "sources[0][1].drift_time", "greater than or equal to 0"),
    ("[{name: analog, noise_model: flash}]", "[digital]", "sources[0].noise_model", "'pcm', 'reram_wan2022'"),
    ("[{name: analog, out_noise: 0.06}]", "[digital]", "sources[0].out_noise", "carries weights only"),
    ("[clean]", "[{name: adversarial, eps: [0.1, -0.2]}]", "conditions[0].eps", "finite and ≥ 0"),
    ("[clean]", "[{name: adversarial, eps: [1.5]}]", "conditions[0].eps", "exceeds the input range [0, 1]"),
    ("[{name: adversarial, attack: fgsm, eps: 1.5}]", "[digital]", "sources[0].eps", "exceeds the input range [0, 1]"),
    ("[clean]", "[{name: analog, w_noise: 0.02}]", "conditions[0].w_noise", "pure-PyTorch inference tiles cannot simulate"),
    ("[clean]", "[digital, {name: adversarial, hardware: {ir_drop: 1.0}, drift_time: 1}]",
     "conditions[1].hardware.ir_drop", "cannot simulate IR drop"),
    ("[clean]", "[{name: adversarial, drift_time: 86400}]", "conditions[0].drift_time", "add a hardware block"),
    ("[clean]", "[{name: analog, noise_model: reram_wan2022, drift_times: [1, 3600]}]",
     "conditions[0].drift_times", "characterised only"),
]


@pytest.mark.parametrize("sources,conditions,field,words", BAD_SETTINGS)
def test_bad_noise_settings_exit_2_naming_file_and_field(write_scenario, capsys, sources, conditions, field, words):
    path = _scenario(write_scenario, sources, conditions)
    assert cli_main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"error: {path}: {field}: "), err[0]
    assert words in err[0]


def _npz(tmp_path: Path, scale: float) -> Path:
    from swap_hw.data import load_digits_splits

    s = load_digits_splits(0.2, 0)
    path = tmp_path / f"digits_x{scale:g}.npz"
    np.savez(path, x_train=s.x_train.numpy() * scale, y_train=s.y_train.numpy(),
             x_test=s.x_test.numpy() * scale, y_test=s.y_test.numpy())
    return path


def test_attack_on_data_outside_the_unit_range_is_rejected(write_scenario, tmp_path, capsys):
    bad = f"data: {{name: npz, path: {_npz(tmp_path, 16.0)}}}"  # raw digits pixel values 0..16
    for sources, conditions, field in (
        ("[clean]", "[digital, {name: adversarial, eps: [0.1]}]", "conditions[1]"),
        ("[[label_noise, {name: adversarial}]]", "[digital]", "sources[0][1]"),
    ):
        path = _scenario(write_scenario, sources, conditions, bad)
        assert cli_main(["validate", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {path}: {field}: attacks keep inputs in [0, 1]") and "spans [0, 16]" in err
    good = f"data: {{name: npz, path: {_npz(tmp_path, 1.0)}}}"
    path = _scenario(write_scenario, "[clean]", "[{name: adversarial, eps: [0.1]}]", good)
    assert cli_main(["validate", str(path)]) == 0
    # without an attack, inputs outside [0, 1] are the user's choice
    assert cli_main(["validate", str(_scenario(write_scenario, data=bad))]) == 0


def test_unsupported_hardware_feature_exits_2_from_the_real_command(write_scenario, tmp_path):
    path = _scenario(write_scenario, "[{name: analog, mv_type: split_mode}]")
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "run", str(path)], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        f"error: {path}: sources[0].mv_type: not supported: aihwkit's pure-PyTorch inference tiles "
        "cannot simulate multi-pass (bit-sliced / split) matrix-vector products (aihwkit raises "
        "'Only AnalogMVType.ONE_PASS supported as forward.mv_type'), and its C++ tiles do not run "
        "under this torch"
    ]
    assert not (tmp_path / "results.sqlite").exists()


# --- the noise scenarios --------------------------------------------------------------------------


def test_noise_scenarios_validate_and_ask_what_they_claim():
    paper = load_scenario(ROOT / "scenarios" / "paper_noise.yaml")
    grid = {(s.params.std, s.params.prop) for s in paper.sources if s.name == "gaussian"}
    assert grid == {(std, prop) for std in (1, 2, 4) for prop in (0.1, 0.25)}
    assert {p.name for p in paper.pruners} >= {"magnitude", "lr", "swap"}

    reram = load_scenario(ROOT / "scenarios" / "analog_reram.yaml")
    analog = [c for c in reram.conditions if c.name == "analog"]
    assert {c.params.noise_model for c in analog} == {"reram_wan2022", "reram_cmo"}
    wan = [c.params for c in analog if c.params.noise_model == "reram_wan2022"]
    assert {(p.drift_compensation, p.keep_pruned_zero) for p in wan} == {(True, False), (True, True), (False, False)}
    assert any(s.name == "analog" and s.params.noise_model == "reram_wan2022" for s in reram.sources)

    combined = load_scenario(ROOT / "scenarios" / "label_noise_analog.yaml")
    chains = [s for s in combined.sources if isinstance(s, ChainedSource)]
    assert [[m.name for m in c.members] for c in chains] == [["label_noise", "analog"]]
    hw = chains[0].members[1].params
    deployed = [c.params for c in combined.conditions if c.name == "analog"]
    attacked = [c.params for c in combined.conditions if c.name == "adversarial"]
    # judged on the same device the gradients came through
    assert deployed and all(p.noise_model == hw.noise_model for p in deployed)
    assert attacked and all(p.hardware.noise_model == hw.noise_model and p.drift_time == hw.drift_time
                            for p in attacked)

    for name in ("label_noise", "adversarial", "paper_noise", "analog_reram", "label_noise_analog"):
        path = ROOT / "scenarios" / f"{name}.yaml"
        load_scenario(path)
        assert path.read_text().lstrip().startswith("# Question:")
