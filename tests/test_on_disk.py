"""X spilled to disk (calibration.over_budget: disk): the dense path's numbers, no file left behind."""

from __future__ import annotations

import os

import pytest
import torch

from swap_hw.gradients import GRADIENT_SOURCES, GradientSet
from swap_hw.gradients.matrix_free import (ColumnMask, MatrixFreeError, MatrixFreeGradientSet,
                                           PerSampleGradientOperator)
from swap_hw.gradients.on_disk import OnDiskRows, SpillError, spill
from swap_hw.layout import Layout
from swap_hw.models import build_model
from swap_hw.pruners import PRUNERS


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> bool:
    return float((a - b).norm()) <= rtol * float(b.norm()) + 1e-7


@pytest.fixture(scope="module")
def cnn_case():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(24, 1, 8, 8, generator=gen), torch.randint(0, 10, (24,), generator=gen)
    model = build_model("cnn", (1, 8, 8), 10, seed=0, channels=[4, 8], hidden=16).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, (x, y), Layout.from_model(model)


def test_spilled_products_and_rows_equal_the_dense_matrix_across_blocks(cnn_case, tmp_path):
    model, (x, y), layout = cnn_case
    dense = PerSampleGradientOperator(model, x, y, layout).rows(0, 24)
    # a block of ~5 rows, so products and row reads cross block boundaries
    on_disk = spill(PerSampleGradientOperator(model, x, y, layout), tmp_path, block_mb=5 * layout.d * 4 / 2**20)
    assert isinstance(on_disk, OnDiskRows) and on_disk.row_chunk() == 5
    assert os.listdir(tmp_path) == []  # unlinked at creation: nothing to clean up, even after SIGKILL
    gen = torch.Generator().manual_seed(1)
    v, V = torch.randn(layout.d, generator=gen), torch.randn(layout.d, 3, generator=gen)
    u, U = torch.randn(24, generator=gen), torch.randn(24, 2, generator=gen)
    assert torch.equal(on_disk.rows(0, 24), dense)  # the bytes written are the rows computed
    assert torch.equal(on_disk.rows(3, 17), dense[3:17])
    assert close(on_disk.matvec(v), dense @ v) and close(on_disk.matvec(V), dense @ V)
    assert close(on_disk.rmatvec(u), dense.T @ u) and close(on_disk.rmatvec(U), dense.T @ U)
    assert on_disk.cheap_columns and torch.equal(on_disk.columns(7, 90), dense[:, 7:90])
    keep = torch.rand(layout.d, generator=gen) > 0.5
    masked = ColumnMask(on_disk, keep)
    assert masked.cheap_columns and torch.equal(masked.columns(7, 90), dense[:, 7:90] * keep[7:90])


@pytest.mark.parametrize("source", ["clean", "gaussian", "label_noise"])
def test_collect_over_budget_to_disk_matches_dense_noise_included(cnn_case, tmp_path, source):
    model, batch, layout = cnn_case
    src = GRADIENT_SOURCES.get(source)()
    dense = src.collect(model, batch, 3, layout)
    on_disk = src.collect(model, batch, 3, layout, memory_budget_mb=1e-6, over_budget="disk", spill_dir=str(tmp_path))
    assert type(dense) is GradientSet and isinstance(on_disk, MatrixFreeGradientSet)
    assert on_disk.provenance["gradient_mode"] == "disk" and "gradient_mode" not in dense.provenance
    assert close(on_disk.rows(0, on_disk.n), dense.X)
    v = torch.randn(layout.d, generator=torch.Generator().manual_seed(4))
    assert close(on_disk.xv(v), dense.X @ v) and close(on_disk.xtu(dense.X @ v), dense.X.T @ (dense.X @ v))
    assert on_disk.mean_square() == pytest.approx(dense.mean_square(), rel=1e-5)
    assert on_disk.cheap_columns and close(on_disk.columns(10, 50), dense.X[:, 10:50])
    assert os.listdir(tmp_path) == []
    recomputed = src.collect(model, batch, 3, layout, memory_budget_mb=1e-6)
    assert not recomputed.cheap_columns
    with pytest.raises(MatrixFreeError, match="stream rows instead"):
        recomputed.columns(0, 5)


@pytest.mark.parametrize("name", ["lr", "swap", "woodfisher"])
def test_pruners_give_the_dense_result_on_spilled_gradients(digits_model, tmp_path, name):
    model, splits = digits_model
    layout = Layout.from_model(model)
    src = GRADIENT_SOURCES.get("clean")()
    batch = splits.calibration(128, 0)
    dense = src.collect(model, batch, 0, layout)
    on_disk = src.collect(model, batch, 0, layout, memory_budget_mb=1e-6, over_budget="disk", spill_dir=str(tmp_path))
    pruner = PRUNERS.get(name)()
    a = pruner.prune(layout.weights_of(model), dense, 0.8)
    b = pruner.prune(layout.weights_of(model), on_disk, 0.8)
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
    assert all(torch.allclose(a.weights[n], b.weights[n], atol=1e-4) for n in a.weights)


def test_spill_refuses_a_missing_folder_and_too_little_space(cnn_case, tmp_path, monkeypatch):
    model, (x, y), layout = cnn_case
    operator = PerSampleGradientOperator(model, x, y, layout)
    with pytest.raises(SpillError, match=r"calibration\.spill_dir: '.*nowhere' is not a directory"):
        spill(operator, tmp_path / "nowhere")

    import shutil

    from swap_hw.gradients import on_disk

    monkeypatch.setattr(on_disk.shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(10, 10, 2**20))
    with pytest.raises(SpillError, match=r"calibration\.spill_dir: .* 0\.0 GiB free; X needs .*over_budget: recompute"):
        spill(operator, tmp_path)
    assert os.listdir(tmp_path) == []


def test_a_run_switches_between_recompute_and_disk_without_recomputing(write_scenario, tmp_path):
    import json
    import sqlite3

    from swap_hw.config import load_scenario
    from swap_hw.sweep.run import run_scenario

    body = """
    repeats: 1
    model: {train: {epochs: 3}}
    calibration: {n: 48, memory_budget_mb: 0.001, over_budget: disk, spill_dir: %s}
    pruners: [lr]
    sparsities: [0.8]
    """ % tmp_path
    scenario = load_scenario(write_scenario(body))
    first = run_scenario(scenario)
    assert first.computed == first.planned == 2
    with sqlite3.connect(first.db) as conn:
        modes = [json.loads(p)["gradient_mode"] for (p,) in conn.execute(
            "SELECT provenance_json FROM cells WHERE pruner = 'lr'")]
    assert modes == ["disk"]
    assert not [f for f in os.listdir(tmp_path) if f.startswith("swap_hw-X-")]  # no gradient file left
    again = run_scenario(load_scenario(write_scenario(body.replace("over_budget: disk", "over_budget: recompute"))))
    assert again.computed == 0 and again.skipped == 2
