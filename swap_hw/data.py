"""Datasets → deterministic train / calibration / test tensors.

All inputs are float32 in [0, 1], shaped (N, C, H, W) for images, so attack budgets (eps) are in
the same units for every dataset. Labels are int64 class indices.

- `digits`: scikit-learn's 8×8 digits (1797 images, ships inside scikit-learn: works offline).
  Split into train / test by a seeded shuffle (`test_fraction`).
- `mnist`, `fashion_mnist`, `cifar10`: torchvision datasets from `root` (`download: true` lets
  torchvision fetch them; otherwise the files must already be there). Their own test split is used.
- `npz`: a NumPy archive with arrays x_train, y_train, x_test, y_test. Images may be (N, H, W),
  (N, H, W, C) with C ≤ 4, (N, C, H, W) or flat (N, F); uint8 inputs are divided by 255.

`as_tensors` turns what a user hands the Python API — a DataLoader, a Dataset of (input, label)
pairs, (x, y) tensors or arrays — into the same tensors, used as they are (no rescaling).

The calibration set (the n examples whose per-sample gradients pruners see) is drawn without
replacement from the training split with a seed derived per replicate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ParameterError, SwapHwError
from .seeding import numpy_rng


@dataclass
class DataSplits:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def calibration(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n training examples drawn without replacement (all of them, shuffled, if n ≥ N)."""
        total = self.x_train.shape[0]
        idx = numpy_rng(seed).permutation(total)[: min(n, total)]
        idx_t = torch.as_tensor(np.sort(idx))
        return self.x_train[idx_t], self.y_train[idx_t]

    @property
    def test(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_test, self.y_test


def _to_nchw(x: np.ndarray) -> np.ndarray:
    if x.ndim == 2:  # flat features: treat as a 1×1×F "image"
        return x[:, None, None, :]
    if x.ndim == 3:
        return x[:, None, :, :]
    if x.ndim == 4 and x.shape[-1] <= 4 and x.shape[1] > 4:  # NHWC → NCHW
        return np.transpose(x, (0, 3, 1, 2))
    if x.ndim == 4:
        return x
    raise SwapHwError(f"inputs must have 2 to 4 dimensions, got shape {x.shape}")


def _as_float01(x: np.ndarray) -> torch.Tensor:
    x = np.asarray(x)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    return torch.as_tensor(_to_nchw(x.astype(np.float32))).contiguous()


def _limit(x: torch.Tensor, y: torch.Tensor, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    return (x[:limit], y[:limit]) if limit else (x, y)


def load_digits_splits(test_fraction: float, seed: int) -> DataSplits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    perm = numpy_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    test, train = perm[:n_test], perm[n_test:]
    return DataSplits(
        "digits",
        torch.as_tensor(x[train]),
        torch.as_tensor(y[train]),
        torch.as_tensor(x[test]),
        torch.as_tensor(y[test]),
        10,
    )


_TORCHVISION = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}


def load_torchvision_splits(name: str, root: str, download: bool) -> DataSplits:
    import torchvision

    cls = getattr(torchvision.datasets, _TORCHVISION[name])
    try:
        train = cls(root=root, train=True, download=download)
        test = cls(root=root, train=False, download=download)
    except RuntimeError as exc:  # torchvision: "Dataset not found. You can use download=True ..."
        raise SwapHwError(
            f"{name} not found under {root!r} ({exc}); set data.download: true or point data.root "
            "at a folder holding the dataset"
        ) from None

    def arrays(ds):
        x = np.asarray(ds.data)
        y = np.asarray(ds.targets, dtype=np.int64)
        return _as_float01(x), torch.as_tensor(y)

    x_tr, y_tr = arrays(train)
    x_te, y_te = arrays(test)
    return DataSplits(name, x_tr, y_tr, x_te, y_te, int(max(y_tr.max(), y_te.max())) + 1)


def load_npz_splits(path: str) -> DataSplits:
    p = Path(path)
    if not p.is_file():
        raise SwapHwError(f"npz file not found: {path}")
    with np.load(p) as arc:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arc]
        if missing:
            raise SwapHwError(f"{path}: missing arrays {missing}; needs x_train, y_train, x_test, y_test")
        x_tr, x_te = _as_float01(arc["x_train"]), _as_float01(arc["x_test"])
        y_tr = torch.as_tensor(arc["y_train"].astype(np.int64))
        y_te = torch.as_tensor(arc["y_test"].astype(np.int64))
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise SwapHwError(f"{path}: x_train and x_test shapes differ: {x_tr.shape} vs {x_te.shape}")
    return DataSplits("npz", x_tr, y_tr, x_te, y_te, int(max(y_tr.max(), y_te.max())) + 1)


def _tensor(value: Any, field: str, what: str) -> torch.Tensor:
    try:
        return torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
    except Exception as exc:  # noqa: BLE001 - anything not array-like
        raise ParameterError(f"{field}: {what} is not array-like ({type(value).__name__}: {exc})") from None


def _from_pairs(pairs, field: str) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for i, item in enumerate(pairs):
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise ParameterError(f"{field}: item {i} is {type(item).__name__}; expected (input, label) pairs")
        xs.append(_tensor(item[0], field, "an input"))
        ys.append(_tensor(item[1], field, "a label"))
    if not xs:
        raise ParameterError(f"{field}: no examples")
    return xs, ys


def as_tensors(data: Any, field: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x float32, y int64) from a DataLoader, a map-style Dataset of (input, label) pairs, or an
    (x, y) pair of tensors / arrays."""
    if data is None:
        raise ParameterError(f"{field}: required (a DataLoader, a Dataset or (x, y) tensors)")
    if isinstance(data, (str, bytes)):
        raise ParameterError(f"{field}: expected a DataLoader, a Dataset or (x, y) tensors, got {type(data).__name__}")
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], (tuple, list)):
        x, y = _tensor(data[0], field, "x"), _tensor(data[1], field, "y")
    elif isinstance(data, torch.utils.data.DataLoader):
        xs, ys = _from_pairs(iter(data), field)  # batches: concatenate along the batch axis
        x, y = torch.cat([t.reshape(-1, *t.shape[1:]) for t in xs]), torch.cat([t.reshape(-1) for t in ys])
    elif isinstance(data, torch.utils.data.Dataset) or hasattr(data, "__getitem__"):
        try:
            n = len(data)
        except TypeError:
            raise ParameterError(f"{field}: a Dataset needs a length (map-style)") from None
        xs, ys = _from_pairs((data[i] for i in range(n)), field)
        x, y = torch.stack(xs), torch.stack([t.reshape(()) for t in ys])
    else:
        raise ParameterError(f"{field}: expected a DataLoader, a Dataset or (x, y) tensors, got {type(data).__name__}")
    if x.shape[0] != y.reshape(-1).shape[0]:
        raise ParameterError(f"{field}: {x.shape[0]} inputs but {y.reshape(-1).shape[0]} labels")
    if x.shape[0] == 0:
        raise ParameterError(f"{field}: no examples")
    y = y.reshape(-1)
    if y.is_floating_point():
        if not bool((y == y.round()).all()):
            raise ParameterError(f"{field}: labels must be integer class indices, got fractional values")
    if not x.is_floating_point():
        raise ParameterError(f"{field}: inputs must be floating point (as the model takes them), got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ParameterError(f"{field}: inputs contain NaN or infinite values")
    y = y.to(torch.int64)
    if int(y.min()) < 0:
        raise ParameterError(f"{field}: labels must be class indices ≥ 0, got {int(y.min())}")
    return x.to(torch.float32).contiguous(), y.contiguous()


def load_splits(cfg, seed: int) -> DataSplits:
    """Load the dataset described by a `DataConfig` (see config.py)."""
    if cfg.name == "digits":
        splits = load_digits_splits(cfg.test_fraction, seed)
    elif cfg.name in _TORCHVISION:
        splits = load_torchvision_splits(cfg.name, str(cfg.root), cfg.download)
    elif cfg.name == "npz":
        splits = load_npz_splits(str(cfg.path))
    else:  # config validation makes this unreachable
        raise SwapHwError(f"unknown dataset {cfg.name!r}")
    splits.x_train, splits.y_train = _limit(splits.x_train, splits.y_train, cfg.limit_train)
    splits.x_test, splits.y_test = _limit(splits.x_test, splits.y_test, cfg.limit_test)
    return splits
