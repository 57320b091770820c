"""Your model in a scenario: `model.factory` by file path and by module name, in every executor;
user files known by content (factory code, npz data, checkpoints); pickled checkpoints only when
trusted; a layer the gradient code cannot handle named before any training."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from swap_hw.cli import main
from swap_hw.config import load_scenario
from swap_hw.errors import ConfigError
from swap_hw.results.store import Store
from swap_hw.sweep.plan import plan_cells
from swap_hw.sweep.run import run_scenario

MODEL_CODE = '''
import torch
from torch import nn


class ResNetLet(nn.Module):
    """conv + BatchNorm + a residual add + a depthwise conv + a linear head."""

    def __init__(self, channels=4, n_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.head = nn.Linear(channels * 64, n_classes)

    def forward(self, x):
        h = torch.relu(self.bn(self.stem(x)))
        return self.head(torch.relu(h + self.dw(h)).flatten(1))
'''

BODY = """
repeats: 2
model: {{factory: "{factory}", options: {{channels: 4}}, train: {{epochs: 2}}}}
calibration: {{n: 48}}
pruners: [magnitude, lr]
sparsities: [0.5]
"""


def values_of(db: str, run_id: str) -> list[tuple]:
    with Store(db) as store:
        return [(r["cell_key"], r["metric"], r["value"]) for r in store.records(run_id)]


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "code" / "user_nets.py"
    path.parent.mkdir()
    path.write_text(MODEL_CODE)
    return path


def test_factory_by_file_path_runs_reports_and_exports(write_scenario, model_file, tmp_path, capsys):
    scenario = load_scenario(write_scenario(BODY.format(factory=f"{model_file}:ResNetLet")))
    summary = run_scenario(scenario)
    assert summary.computed == summary.planned == 2 * (1 + 2)
    assert scenario.resolved()["files"]["model.factory"] == scenario.files["model.factory"][1]
    assert main(["report", "--db", summary.db, "--format", "csv"]) == 0
    assert capsys.readouterr().out.count("\n") == 1 + 2 * 3 * 2  # header + (dense, 2 pruners) × 2 × 2 metrics
    out = tmp_path / "pruned.pt"
    assert main(["export", "--db", summary.db, "--pruner", "lr", "--sparsity", "0.5", "--seed", "1", str(out)]) == 0
    bundle = torch.load(out, weights_only=True)
    assert bundle["meta"]["factory"].endswith(":ResNetLet") and bundle["meta"]["verified"]
    assert main(["runs", "--db", summary.db]) == 0
    assert scenario.files["model.factory"][1] in capsys.readouterr().out  # the run says which code it ran


def test_factory_by_module_name_in_a_process_pool_and_on_dask(write_scenario, model_file, monkeypatch, tmp_path):
    """Workers import the model themselves; a pool whose workers lack the parent's sys.path entry
    falls back to the module's file. Every executor gives the same records."""
    from swap_hw.sweep.executors import DaskExecutor, ProcessPoolExecutor

    monkeypatch.syspath_prepend(str(model_file.parent))
    scenario = load_scenario(write_scenario(BODY.format(factory="user_nets:ResNetLet")))
    local = run_scenario(scenario, db=str(tmp_path / "local.sqlite"))
    pooled = run_scenario(scenario, db=str(tmp_path / "pool.sqlite"), executor=ProcessPoolExecutor(2))
    assert pooled.computed == local.computed == 6
    assert values_of(pooled.db, pooled.run_id) == values_of(local.db, local.run_id)
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=50) as cluster:
        with DaskExecutor(cluster.scheduler_address) as executor:
            dask_run = run_scenario(scenario, db=str(tmp_path / "dask.sqlite"), executor=executor)
    assert values_of(dask_run.db, dask_run.run_id) == values_of(local.db, local.run_id)


def test_changed_factory_code_gives_new_cells_and_a_new_dense_model(write_scenario, model_file):
    path = write_scenario(BODY.format(factory=f"{model_file}:ResNetLet"))
    before = load_scenario(path)
    first = run_scenario(before)
    assert run_scenario(load_scenario(path)).computed == 0  # unchanged: everything reused
    model_file.write_text(MODEL_CODE.replace("a linear head", "a linear head (edited)"))
    again = load_scenario(path)
    assert not {c.key for c in plan_cells(again)} & {c.key for c in plan_cells(before)}
    second = run_scenario(again)
    assert second.computed == second.planned and second.dense_was_cached is False
    assert second.run_id != first.run_id


def write_npz(path: Path, shift: float) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    x = np.clip(x + shift, 0, 1).astype(np.float32)
    np.savez(path, x_train=x[:1200], y_train=digits.target[:1200], x_test=x[1200:], y_test=digits.target[1200:])


def test_an_npz_is_known_by_its_content_not_its_path(write_scenario, tmp_path):
    data = tmp_path / "mine.npz"
    write_npz(data, 0.0)
    body = f"repeats: 1\ndata: {{name: npz, path: {data}}}\nmodel: {{train: {{epochs: 2}}}}\ncalibration: {{n: 32}}\n" \
           "pruners: [magnitude]\nsparsities: [0.5]\n"
    path = write_scenario(body)
    first = run_scenario(load_scenario(path))
    assert first.computed == 2
    write_npz(data, 0.3)  # the user overwrites their file
    changed = run_scenario(load_scenario(path))
    assert changed.computed == 2 and changed.skipped == 0 and changed.dense_was_cached is False
    moved = tmp_path / "elsewhere" / "same.npz"
    moved.parent.mkdir()
    moved.write_bytes(data.read_bytes())
    same = run_scenario(load_scenario(write_scenario(body.replace(str(data), str(moved)), "moved.yaml")))
    assert same.computed == 0 and same.skipped == 2  # same content at another path: the same cells


def test_a_file_changed_after_validation_is_refused(write_scenario, tmp_path):
    data = tmp_path / "d.npz"
    write_npz(data, 0.0)
    scenario = load_scenario(write_scenario(f"data: {{name: npz, path: {data}}}\npruners: [magnitude]\nsparsities: [0.5]\n"))
    write_npz(data, 0.2)
    with pytest.raises(ConfigError, match="changed since the scenario was validated") as info:
        run_scenario(scenario)
    assert info.value.field == "data.path"


def test_pickled_model_checkpoints_need_trusted(write_scenario, tmp_path):
    from swap_hw.models import build_model

    model = build_model("mlpnet", (1, 8, 8), 10, seed=0)
    pickled = tmp_path / "whole.pt"
    torch.save(model, pickled)
    body = f"repeats: 1\nmodel: {{checkpoint: {pickled}}}\ncalibration: {{n: 32}}\npruners: [magnitude]\nsparsities: [0.5]\n"
    with pytest.raises(ConfigError, match="model.trusted: true") as info:
        run_scenario(load_scenario(write_scenario(body)))
    assert info.value.field == "model.checkpoint" and "\n" not in str(info.value)
    trusted = run_scenario(load_scenario(write_scenario(body.replace("checkpoint:", "trusted: true, checkpoint:"), "t.yaml")))
    assert trusted.computed == 2
    wrong = tmp_path / "wrong.pt"
    torch.save({"layers.1.weight": torch.zeros(40, 64), "extra.weight": torch.zeros(2)}, wrong)
    with pytest.raises(ConfigError, match="missing: layers.1.bias") as info:
        run_scenario(load_scenario(write_scenario(body.replace(str(pickled), str(wrong)), "w.yaml")))
    assert "unexpected: extra.weight" in str(info.value)


def test_a_layer_the_gradient_code_cannot_handle_is_named_before_training(write_scenario, tmp_path):
    code = tmp_path / "odd.py"
    code.write_text(textwrap.dedent('''
        import torch
        from torch import nn

        class Gate(nn.Module):
            def forward(self, x):
                return x if float(x.sum().item()) > -1e9 else -x   # data-dependent Python control flow

        class Odd(nn.Module):
            def __init__(self, n_classes=10):
                super().__init__()
                self.fc = nn.Linear(64, 16)
                self.gate = Gate()
                self.out = nn.Conv1d(1, n_classes, 16)

            def forward(self, x):
                return self.out(self.gate(self.fc(x.flatten(1))).unsqueeze(1)).flatten(1)
    '''))
    scenario = load_scenario(write_scenario(f"model: {{factory: '{code}:Odd'}}\npruners: [lr]\nsparsities: [0.5]\n"))
    with pytest.raises(ConfigError, match=r"layer 'gate' \(Gate\) cannot be handled") as info:
        run_scenario(scenario)
    assert "\n" not in str(info.value)
    assert not list((tmp_path / "cache").glob("dense-*.pt")) if (tmp_path / "cache").exists() else True


def test_factory_errors_name_the_field(write_scenario, model_file):
    cases = [
        (f"{model_file}:Nope", "has no attribute"),
        ("no_such_module_xyz:Net", "cannot be imported"),
        ("not a reference", "must be 'module:Name'"),
        (f"{model_file.parent / 'missing.py'}:Net", "not found"),
    ]
    for factory, message in cases:
        with pytest.raises(ConfigError, match=message) as info:
            load_scenario(write_scenario(f"model: {{factory: '{factory}'}}\npruners: [magnitude]\nsparsities: [0.5]\n"))
        assert info.value.field == "model.factory"
    with pytest.raises(ConfigError, match="not both"):
        load_scenario(write_scenario(f"model: {{arch: cnn, factory: '{model_file}:ResNetLet'}}\npruners: [magnitude]\n"
                                     "sparsities: [0.5]\n"))
