"""What a user hands the API as data — a DataLoader, a Dataset or (x, y) tensors / arrays — as
the engine's tensors. Inputs are used as they are (no rescaling): the model sees exactly what the
user's own loader gives it. Labels must be integer class indices."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..data import DataSplits
from ..errors import ParameterError


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


def splits(train: Any, test: Any, n_classes: int | None = None) -> DataSplits:
    """The engine's DataSplits from the user's train and test data."""
    x_train, y_train = as_tensors(train, "train")
    x_test, y_test = as_tensors(test, "test")
    if tuple(x_train.shape[1:]) != tuple(x_test.shape[1:]):
        raise ParameterError(f"test: inputs of shape {tuple(x_test.shape[1:])}, train's are {tuple(x_train.shape[1:])}")
    seen = int(max(y_train.max(), y_test.max())) + 1
    classes = seen if n_classes is None else int(n_classes)
    if classes < seen:
        raise ParameterError(f"n_classes: {classes}, but the labels go up to {seen - 1}")
    if len(torch.unique(y_train)) < 2:
        raise ParameterError("train: a single class; accuracy would say nothing about pruning")
    return DataSplits("inline", x_train, y_train, x_test, y_test, classes)
