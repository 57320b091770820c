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

An npz file's contents are checked before any training (`load_npz_splits`): a damaged archive,
missing arrays, inputs and labels of different lengths, an empty split, labels that are not class
indices (fractional, one-hot, negative), test classes the training split never has, a single
training class, NaN/Inf inputs, unsupported input dimensions and train/test shapes that differ
each raise a one-line `DataError` naming the file and what is allowed.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ParameterError, SwapHwError
from .seeding import numpy_rng


class DataError(SwapHwError):
    """The data cannot be used as it is; `field` is the scenario field to change (`data.path` for an
    npz file's contents, `data.limit_train` for a limit that leaves one class, `data` otherwise)."""

    def __init__(self, message: str, field: str = "data"):
        super().__init__(message)
        self.field = field


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
        return draw_examples(self.x_train, self.y_train, n, seed)

    @property
    def test(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_test, self.y_test


def draw_examples(x: torch.Tensor, y: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n of the examples (x, y) drawn without replacement with `seed`, in their original order."""
    total = x.shape[0]
    idx = numpy_rng(seed).permutation(total)[: min(n, total)]
    idx_t = torch.as_tensor(np.sort(idx), device=x.device)  # x may live on a GPU (swap_hw.device)
    return x[idx_t], y[idx_t]


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


_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_NPZ_HOW = "write it with numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
_INPUT_SHAPES = "(N, F), (N, H, W), (N, H, W, C) or (N, C, H, W)"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """The four arrays of an npz file; a missing, empty, truncated or corrupt file, a single .npy
    array, an archive without the four arrays or with object arrays raise DataError."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"npz file not found: {path}", "data.path")
    with open(p, "rb") as f:
        head = f.read(8)
    if not head:
        raise DataError(f"{path} is empty (0 bytes); {_NPZ_HOW}", "data.path")
    if head.startswith(b"\x93NUMPY"):
        raise DataError(f"{path} holds a single .npy array, not an npz archive of x_train, y_train, x_test, "
                        f"y_test; {_NPZ_HOW}", "data.path")
    if not zipfile.is_zipfile(p):
        what = "is truncated or corrupt (an incomplete zip archive)" if head.startswith(b"PK") else \
            "is not an npz archive (a zip of .npy arrays)"
        raise DataError(f"{path} {what}; {_NPZ_HOW}", "data.path")
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(p, allow_pickle=False) as arc:
            missing = [k for k in _NPZ_KEYS if k not in arc.files]
            if missing:
                raise DataError(f"{path}: missing arrays {missing}; needs x_train, y_train, x_test, y_test "
                                f"(it has {sorted(arc.files)})", "data.path")
            for key in _NPZ_KEYS:
                try:
                    arrays[key] = np.asarray(arc[key])
                except ValueError as exc:
                    if "allow_pickle" not in str(exc):
                        raise
                    raise DataError(f"{path}: {key} is an object array (pickled Python objects); store "
                                    "numeric arrays", "data.path") from None
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile, zlib and numpy's format errors on a damaged file
        raise DataError(f"{path} is truncated or corrupt ({_first_line(exc)}); {_NPZ_HOW}", "data.path") from None
    return arrays


def _labels(path: str, key: str, y: np.ndarray) -> np.ndarray:
    """y as int64 class indices, or DataError saying why it is not one."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2:
        raise DataError(f"{path}: {key} has shape {y.shape}: one-hot labels: give class indices (argmax), e.g. "
                        f"{key}.argmax(axis=1)", "data.path")
    if y.ndim != 1:
        raise DataError(f"{path}: {key} has shape {y.shape}; labels must be one class index per example, "
                        "shape (N,)", "data.path")
    if y.dtype == np.bool_ or np.issubdtype(y.dtype, np.integer):
        out = y.astype(np.int64)
    elif np.issubdtype(y.dtype, np.floating):
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}: {key} holds labels that are not integers ({int(bad.sum())} of them, e.g. "
                            f"{y[i]:g} at index {i}); labels must be integer class indices 0, 1, …", "data.path")
        out = y.astype(np.int64)
    else:
        raise DataError(f"{path}: {key} has dtype {y.dtype}; labels must be integer class indices 0, 1, …",
                        "data.path")
    if out.size and out.min() < 0:
        i = int(np.argmin(out))
        raise DataError(f"{path}: {key} has negative labels (e.g. {out[i]} at index {i}); class indices start "
                        "at 0", "data.path")
    return out


def _inputs(path: str, key: str, x: np.ndarray) -> torch.Tensor:
    """x as float32 (N, C, H, W) (uint8 divided by 255), or DataError saying why it cannot be."""
    if not (x.dtype == np.bool_ or np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"{path}: {key} has dtype {x.dtype}; inputs must be real numbers (float, or uint8 "
                        "divided by 255)", "data.path")
    if not 2 <= x.ndim <= 4:
        raise DataError(f"{path}: {key} has shape {x.shape}; inputs must be {_INPUT_SHAPES}", "data.path")
    if x.shape[0] and x[0].size == 0:
        raise DataError(f"{path}: {key} has shape {x.shape}: each example holds no values", "data.path")
    t = _as_float01(x)
    finite = torch.isfinite(t.reshape(t.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten()
        many = f"{bad.numel()} examples, the first" if bad.numel() > 1 else "1 example,"
        raise DataError(f"{path}: {key} holds NaN or infinite values ({many} at index {int(bad[0])}); inputs must "
                        "be finite: drop or repair those examples", "data.path")
    return t


def load_npz_splits(path: str) -> DataSplits:
    """Read and check an npz file (see the module's docstring); every problem is one DataError line."""
    a = _read_npz(path)
    for split in ("train", "test"):
        x, y = a[f"x_{split}"], a[f"y_{split}"]
        nx = x.shape[0] if x.ndim else None
        ny = y.shape[0] if y.ndim else None
        if nx is None or ny is None:
            key = f"x_{split}" if nx is None else f"y_{split}"
            raise DataError(f"{path}: {key} is a single number, not an array of examples", "data.path")
        if nx != ny:
            raise DataError(f"{path}: x_{split} has {nx} examples but y_{split} has {ny} labels; each example "
                            "needs exactly one label", "data.path")
        if nx == 0:
            raise DataError(f"{path}: the {split} split is empty (x_{split} has 0 examples); give at least one "
                            f"{'training' if split == 'train' else 'test'} example", "data.path")
    x_tr, x_te = _inputs(path, "x_train", a["x_train"]), _inputs(path, "x_test", a["x_test"])
    if a["x_train"].shape[1:] != a["x_test"].shape[1:]:
        raise DataError(f"{path}: x_train and x_test differ in input shape: {a['x_train'].shape[1:]} vs "
                        f"{a['x_test'].shape[1:]} per example; both splits need the same", "data.path")
    y_tr, y_te = _labels(path, "y_train", a["y_train"]), _labels(path, "y_test", a["y_test"])
    classes = np.unique(y_tr)
    if classes.size < 2:
        raise DataError(f"{path}: y_train holds a single class ({int(classes[0])}); a classifier needs at least "
                        "two classes to train on", "data.path")
    top = int(classes[-1])
    if int(y_te.max()) > top:
        extra = int(y_te[y_te > top].min())
        raise DataError(f"{path}: y_test has class {extra} that y_train never has (y_train's classes go up to "
                        f"{top}); drop those test examples or add training examples of that class", "data.path")
    return DataSplits("npz", x_tr, torch.as_tensor(y_tr), x_te, torch.as_tensor(y_te), top + 1)


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
    kept = torch.unique(splits.y_train)
    if kept.numel() < 2:  # a loader refuses a one-class file, so the limit left one class
        raise DataError(f"the first {splits.x_train.shape[0]} training examples are all of class {int(kept[0])}; "
                        "raise data.limit_train or shuffle the training examples", "data.limit_train")
    return splits
