"""Dataset loaders, tested on small files the tests write (nothing is downloaded)."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch

from swap_hw.config import DataConfig
from swap_hw.data import load_splits
from swap_hw.errors import SwapHwError


def write_idx(path, array: np.ndarray) -> None:
    dims = array.shape
    code = 0x08  # unsigned byte
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, code, len(dims)))
        for d in dims:
            f.write(struct.pack(">I", d))
        f.write(array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_torchvision_idx_datasets_from_local_files(tmp_path, name, folder):
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    write_idx(raw / "train-images-idx3-ubyte", rng.integers(0, 256, (30, 28, 28)))
    write_idx(raw / "train-labels-idx1-ubyte", np.arange(30) % 10)
    write_idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (12, 28, 28)))
    write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(12) % 10)
    splits = load_splits(DataConfig(name=name, root=str(tmp_path)), seed=0)
    assert splits.x_train.shape == (30, 1, 28, 28) and splits.x_test.shape == (12, 1, 28, 28)
    assert splits.x_train.dtype == torch.float32 and 0 <= splits.x_train.min() and splits.x_train.max() <= 1
    assert splits.n_classes == 10 and splits.y_test.tolist() == [i % 10 for i in range(12)]


def test_cifar10_from_local_batches(tmp_path, monkeypatch):
    import torchvision

    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [*((f"data_batch_{i}", 4) for i in range(1, 6)), ("test_batch", 6)]:
        with open(base / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(range(n))}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    # The real files' md5 sums are checked by torchvision; these hand-made ones cannot match.
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: True)
    splits = load_splits(DataConfig(name="cifar10", root=str(tmp_path)), seed=0)
    assert splits.x_train.shape == (20, 3, 32, 32) and splits.x_test.shape == (6, 3, 32, 32)


def test_missing_torchvision_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(SwapHwError, match="download: true"):
        load_splits(DataConfig(name="mnist", root=str(tmp_path)), seed=0)


def test_npz_with_hwc_images_and_limits(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=rng.integers(0, 256, (50, 6, 6, 3), dtype=np.uint8), y_train=np.arange(50) % 3,
             x_test=rng.integers(0, 256, (10, 6, 6, 3), dtype=np.uint8), y_test=np.arange(10) % 3)
    splits = load_splits(DataConfig(name="npz", path=str(path), limit_train=20), seed=0)
    assert splits.x_train.shape == (20, 3, 6, 6) and splits.n_classes == 3
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((2, 3)))
    with pytest.raises(SwapHwError, match="missing arrays"):
        load_splits(DataConfig(name="npz", path=str(bad)), seed=0)


def test_digits_split_is_deterministic_and_calibration_draws_differ_by_seed():
    a = load_splits(DataConfig(), seed=3)
    b = load_splits(DataConfig(), seed=3)
    assert torch.equal(a.x_test, b.x_test) and a.x_train.shape[0] + a.x_test.shape[0] == 1797
    xa, _ = a.calibration(100, 1)
    xb, _ = a.calibration(100, 1)
    xc, _ = a.calibration(100, 2)
    assert torch.equal(xa, xb) and not torch.equal(xa, xc)
