"""The `device` setting (swap_hw/device.py): validation, the keys it must not touch, the run record,
the CLI's --device and Study(device=...), the default-device scope the cells run in, and draws that
do not depend on the device. Tests marked `cuda` compare a GPU with the CPU and are skipped where
torch sees no CUDA device (docs/gpu.md)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
import torch

from swap_hw import device as device_mod
from swap_hw.config import parse_scenario_text
from swap_hw.errors import ConfigError, ParameterError
from swap_hw.sweep.executors import LocalExecutor
from swap_hw.sweep.plan import plan_cells, run_id
from swap_hw.sweep.run import run_scenario
from swap_hw.results.store import Store

TINY = """
repeats: 1
model: {{train: {{epochs: 3}}}}
calibration: {{n: 64}}
pruners: [magnitude]
sparsities: [0.5]
{device}
output: {{db: {db}, cache_dir: {cache}}}
"""


def _tiny(tmp_path: Path, device_line: str = "", db: str = "db.sqlite"):
    text = TINY.format(device=device_line, db=tmp_path / db, cache=tmp_path / "cache")
    return parse_scenario_text(text, "s.yaml")


@pytest.fixture
def one_gpu(monkeypatch):
    """A machine whose torch sees one CUDA device, for parse-level checks only (nothing is computed)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


# --- the field ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["auto", "cpu"])
def test_every_machine_accepts_auto_and_cpu(text):
    assert device_mod.check_device(text) == text
    assert parse_scenario_text(f"pruners: [magnitude]\nsparsities: [0.5]\ndevice: {text}\n", "s.yaml").spec.device == text


def test_auto_is_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_mod.resolve_device("auto") == torch.device("cpu")
    assert device_mod.resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("text", ["cuda", "cuda:0"])
def test_cuda_forms_accepted_where_a_gpu_is_seen(one_gpu, text):
    assert device_mod.check_device(text) == text
    assert parse_scenario_text(f"pruners: [magnitude]\nsparsities: [0.5]\ndevice: '{text}'\n", "s.yaml").spec.device == text


def test_cuda_index_beyond_the_device_count_is_one_line(one_gpu):
    with pytest.raises(ConfigError) as err:
        parse_scenario_text("pruners: [magnitude]\nsparsities: [0.5]\ndevice: 'cuda:1'\n", "s.yaml")
    assert str(err.value) == ("s.yaml: device: 'cuda:1' requested, but this torch build sees 1 CUDA device(s) "
                              "(cuda:0 … cuda:0); allowed: auto, cpu, cuda, cuda:N (N < device count)")


@pytest.mark.parametrize("text", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_one_line(monkeypatch, text):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as err:
        parse_scenario_text(f"pruners: [magnitude]\nsparsities: [0.5]\ndevice: '{text}'\n", "s.yaml")
    assert str(err.value) == (f"s.yaml: device: '{text}' requested, but this torch build sees no CUDA device; "
                              "allowed: auto, cpu, cuda, cuda:N (N < device count)")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text", ["gpu", "cpu:0", "cuda:x", "cuda:-1", "", "CUDA", "auto:1"])
def test_unknown_device_strings_are_one_line(one_gpu, text):
    with pytest.raises(ConfigError) as err:
        parse_scenario_text(f"pruners: [magnitude]\nsparsities: [0.5]\ndevice: '{text}'\n", "s.yaml")
    assert str(err.value) == f"s.yaml: device: unknown device {text!r}; allowed: auto, cpu, cuda, cuda:N (N < device count)"


def test_a_number_is_refused_naming_the_field():
    with pytest.raises(ConfigError) as err:
        parse_scenario_text("pruners: [magnitude]\nsparsities: [0.5]\ndevice: 0\n", "s.yaml")
    assert str(err.value).startswith("s.yaml: device: ")


def test_validate_shows_the_unavailable_device(monkeypatch, write_scenario, capsys):
    from swap_hw.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = write_scenario("pruners: [magnitude]\nsparsities: [0.5]\ndevice: cuda\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("device: 'cuda' requested, but this torch build sees no CUDA device; "
                        "allowed: auto, cpu, cuda, cuda:N (N < device count)")
    assert len(err.splitlines()) == 1


# --- keys, run id, records ------------------------------------------------------------------------


def test_device_enters_neither_cell_keys_nor_run_id(tmp_path):
    scenarios = [_tiny(tmp_path, line) for line in ("", "device: auto", "device: cpu")]
    keys = [[c.key for c in plan_cells(s)] for s in scenarios]
    assert keys[0] == keys[1] == keys[2]
    assert run_id(scenarios[0]) == run_id(scenarios[1]) == run_id(scenarios[2])
    assert "device" not in scenarios[2].resolved()


def _stored(db: Path, run: str) -> list[tuple]:
    with Store(db) as store:
        return [(r["cell_key"], r["metric"], r["value"], r["sparsity"]) for r in store.records(run)]


def test_explicit_cpu_gives_the_default_records_and_is_recorded(tmp_path):
    default = _tiny(tmp_path, "", "default.sqlite")
    explicit = _tiny(tmp_path, "device: cpu", "cpu.sqlite")
    a = run_scenario(default, executor=LocalExecutor())
    b = run_scenario(explicit, executor=LocalExecutor())
    assert a.run_id == b.run_id and a.computed == b.computed == 2
    assert _stored(Path(a.db), a.run_id) == _stored(Path(b.db), b.run_id)
    with Store(b.db) as store:
        recorded = store.run_info(b.run_id)["device"]
    assert recorded["requested"] == "cpu" and recorded["type"] == "cpu" and recorded["index"] is None
    assert recorded["torch"] == torch.__version__ and recorded["name"]
    with Store(a.db) as store:
        assert store.run_info(a.run_id)["device"]["requested"] == "auto"


def test_cli_device_flag(tmp_path, capsys, monkeypatch):
    from swap_hw.cli import main

    path = tmp_path / "s.yaml"
    path.write_text(TINY.format(device="", db=tmp_path / "db.sqlite", cache=tmp_path / "cache"))
    assert main(["run", str(path), "--quiet", "--device", "cpu"]) == 0
    with sqlite3.connect(tmp_path / "db.sqlite") as conn:
        (run,) = conn.execute("SELECT run_id FROM runs").fetchone()
    with Store(tmp_path / "db.sqlite") as store:
        assert store.run_info(run)["device"]["requested"] == "cpu"
    assert run == run_id(_tiny(tmp_path))  # the flag is not part of the run's identity
    capsys.readouterr()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["run", str(path), "--quiet", "--device", "cuda"]) == 2
    assert "device: 'cuda' requested, but this torch build sees no CUDA device" in capsys.readouterr().err


def test_study_device(tmp_path):
    from swap_hw.api import Study

    study = Study(pruners=["magnitude"], sparsities=[0.5], repeats=1, calibration=64,
                  train_settings={"epochs": 3}, db=tmp_path / "db.sqlite", device="cpu")
    assert study.scenario.spec.device == "cpu"
    results = study.run(progress=False)
    assert results.records
    with Store(tmp_path / "db.sqlite") as store:
        assert store.run_info(results.run_id)["device"]["requested"] == "cpu"
    with pytest.raises(ParameterError, match=r"^device: unknown device 'gpu'; allowed: auto, cpu"):
        Study(pruners=["magnitude"], device="gpu")


# --- the scope the cells run in -------------------------------------------------------------------


def test_device_scope_sets_the_default_device_and_cpu_needs_none():
    with device_mod.device_scope(torch.device("meta")):
        assert torch.zeros(2).device.type == "meta"
    assert torch.zeros(2).device.type == "cpu"
    with device_mod.device_scope(torch.device("cpu")):
        assert torch.zeros(2).device.type == "cpu"


def test_scope_is_left_between_records():
    from swap_hw.sweep.cell import in_device_scope

    def steps():
        for _ in range(3):
            yield torch.zeros(1).device.type  # computed inside the scope

    seen = []
    for inside in in_device_scope(steps(), torch.device("meta")):
        seen.append((inside, torch.zeros(1).device.type))  # the consumer, between records
    assert seen == [("meta", "cpu")] * 3


def test_cells_are_computed_inside_the_scope_on_the_resolved_device(tmp_path, monkeypatch):
    """On this CPU machine: the scope is entered with the resolved device around the work, and the
    dense model and the data the cells read live on that device."""
    import swap_hw.sweep.cell as cell_mod
    from swap_hw.deploy.digital import DigitalCondition as Digital

    entered: list[torch.device] = []
    depth = [0]
    real_scope = cell_mod.device_scope

    @contextlib.contextmanager
    def recording_scope(device):
        entered.append(device)
        depth[0] += 1
        try:
            with real_scope(device):
                yield
        finally:
            depth[0] -= 1

    evaluated: list[tuple[int, torch.device, torch.device]] = []
    real_evaluate = Digital.evaluate

    def evaluate(self, model, test, seed):
        evaluated.append((depth[0], next(model.parameters()).device, test[0].device))
        return real_evaluate(self, model, test, seed)

    monkeypatch.setattr(cell_mod, "device_scope", recording_scope)
    monkeypatch.setattr(Digital, "evaluate", evaluate)
    summary = run_scenario(_tiny(tmp_path, "device: cpu"), executor=LocalExecutor())
    assert summary.computed == 2
    assert entered and set(entered) == {torch.device("cpu")}
    assert evaluated and all(d == 1 and m == torch.device("cpu") and x == torch.device("cpu")
                             for d, m, x in evaluated)


def test_on_device_moves_once_and_keeps_the_cpu_copy(tmp_path):
    from swap_hw.sweep.prepare import prepare

    prep = prepare(_tiny(tmp_path))
    assert prep.on_device(torch.device("cpu")) is prep
    moved = prep.on_device(torch.device("meta"))
    assert moved.device == torch.device("meta") and moved.dense is not prep.dense
    assert next(moved.dense.parameters()).device.type == "meta" and moved.splits.x_test.device.type == "meta"
    assert next(prep.dense.parameters()).device.type == "cpu" and prep.splits.x_test.device.type == "cpu"


# --- draws do not depend on the default device ------------------------------------------------------


def test_seeded_draws_are_made_on_the_cpu_whatever_the_default_device():
    """Every draw from a seeded torch.Generator names the CPU, so the same seed gives the same
    numbers under a GPU's scope (the meta device stands in for it: a draw that took the default
    device would fail there or give no numbers)."""
    from swap_hw.gradients.gaussian import gaussian_noise_draws
    from swap_hw.gradients.label_noise import corrupt_labels
    from swap_hw.noise.hardware import stuck_cell_codes

    y = torch.arange(40) % 10
    outside = (gaussian_noise_draws(7, 0, 5, 30, 4), corrupt_labels(y, 10, "symmetric", 0.3, 3),
               stuck_cell_codes((6, 5), 0.3, "both", 11))
    with torch.device("meta"):
        inside = (gaussian_noise_draws(7, 0, 5, 30, 4), corrupt_labels(y, 10, "symmetric", 0.3, 3),
                  stuck_cell_codes((6, 5), 0.3, "both", 11))
    for a, b in zip(outside, inside):
        for ta, tb in zip(a, b):
            assert tb.device.type == "cpu" and torch.equal(ta, tb)
    idx, xi = gaussian_noise_draws(7, 0, 5, 30, 4, device="meta")  # then moved where they are used
    assert idx.device.type == xi.device.type == "meta"


# --- memory budget --------------------------------------------------------------------------------


def test_gpu_memory_budget_comes_from_free_device_memory(monkeypatch):
    import swap_hw.config as config_mod
    from swap_hw.config import CalibrationConfig

    monkeypatch.setattr(config_mod, "free_memory_mb", lambda d: 8000.0 if d.type == "cuda" else None)
    default, chosen = CalibrationConfig(), CalibrationConfig(memory_budget_mb=100)
    gpu = torch.device("cuda", 0)
    assert default.storage() == default.storage(torch.device("cpu")) == {
        "memory_budget_mb": 2048.0, "over_budget": "recompute", "spill_dir": None}
    assert default.storage(gpu)["memory_budget_mb"] == config_mod.GPU_BUDGET_SHARE * 8000.0
    assert chosen.storage(gpu)["memory_budget_mb"] == 100  # the user's budget stands


# --- on a GPU: every family, cuda against cpu -------------------------------------------------------

# Tolerances (fractions of the 359 test examples): a GPU sums in another order, so the last bits of
# gradients and solutions differ; a pruner may then swap a few near-tied weights. Digital and
# adversarial accuracies: within 1 point (≈ 3.6 examples); analog accuracies: within 5 points,
# because aihwkit's programming and read noise draw from the device's own RNG (device-dependent).
DIGITAL_TOLERANCE = 0.01
ANALOG_TOLERANCE = 0.05

FAMILY = """
repeats: 1
model: {{train: {{epochs: 5}}}}
calibration: {{n: 128}}
sources: {sources}
pruners: {pruners}
sparsities: [0.6]
conditions: {conditions}
protocol: {protocol}
device: {device}
output: {{db: {db}, cache_dir: {cache}}}
"""

CASES = {
    "sources": dict(sources="[clean, {name: gaussian, std: 1, prop: 0.25}, {name: label_noise, rate: 0.2}, "
                            "{name: adversarial, attack: fgsm, eps: 0.1, fraction: 0.5}]",
                    pruners="[lr]", conditions="[digital]", protocol="one_shot"),
    "pruners": dict(sources="[clean]", pruners="[magnitude, lr, swap, woodfisher, {name: lottery, iterations: 2, epochs: 1}]",
                    conditions="[digital]", protocol="one_shot"),
    "conditions": dict(sources="[clean]", pruners="[magnitude, lr]",
                       conditions="[digital, {name: analog, drift_times: [1d]}, {name: adversarial, attack: fgsm, eps: [0.1]}]",
                       protocol="one_shot"),
    "gradual": dict(sources="[clean]", pruners="[magnitude, lr]", conditions="[digital]",
                    protocol="{name: gradual, stages: 2, epochs: 1}"),
}


def _family_records(tmp_path: Path, case: dict, device: str) -> dict:
    text = FAMILY.format(**case, device=device, db=tmp_path / f"{device}.sqlite", cache=tmp_path / "cache")
    summary = run_scenario(parse_scenario_text(text, f"{device}.yaml"), executor=LocalExecutor())
    with Store(summary.db) as store:
        out = {}
        for r in store.records(summary.run_id):
            out[(r["cell_key"], r["metric"], r["condition"], str(sorted(r["grid"].items())))] = r
        return out


@pytest.mark.parametrize("family", sorted(CASES))
def test_gpu_cases_are_valid_scenarios(tmp_path, family):
    """The GPU comparisons below are checked here on any machine, so they are ready when one is lent."""
    text = FAMILY.format(**CASES[family], device="cpu", db=tmp_path / "db.sqlite", cache=tmp_path / "cache")
    assert plan_cells(parse_scenario_text(text, "family.yaml"))


@pytest.mark.parametrize("family", sorted(CASES))
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device")
def test_a_gpu_agrees_with_the_cpu(tmp_path, family):
    on_cpu = _family_records(tmp_path, CASES[family], "cpu")
    on_gpu = _family_records(tmp_path, CASES[family], "cuda")
    assert on_cpu.keys() == on_gpu.keys()  # same cells, metrics and grid: the keys ignore the device
    for key, a in on_cpu.items():
        b = on_gpu[key]
        assert a["sparsity"] == b["sparsity"], key  # the same number of weights pruned
        if a["metric"] != "accuracy" or a["value"] is None:
            continue
        tolerance = ANALOG_TOLERANCE if "analog" in a["condition"] else DIGITAL_TOLERANCE
        assert abs(a["value"] - b["value"]) <= tolerance, (key, a["value"], b["value"])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device")
def test_gpu_run_records_its_device_and_draws_match_the_cpu(tmp_path):
    from swap_hw.gradients.gaussian import gaussian_noise_draws

    scenario = _tiny(tmp_path, "device: cuda")
    summary = run_scenario(scenario, executor=LocalExecutor())
    with Store(summary.db) as store:
        recorded = store.run_info(summary.run_id)["device"]
    assert recorded["type"] == "cuda" and recorded["index"] == torch.cuda.current_device()
    assert recorded["name"] == torch.cuda.get_device_name(recorded["index"])
    assert summary.run_id == run_id(_tiny(tmp_path))
    with torch.device("cuda"):
        idx, xi = gaussian_noise_draws(5, 0, 4, 50, 7, device="cuda")
    ref_idx, ref_xi = gaussian_noise_draws(5, 0, 4, 50, 7)
    assert torch.equal(idx.cpu(), ref_idx) and torch.equal(xi.cpu(), ref_xi)
