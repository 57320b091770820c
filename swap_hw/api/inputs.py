"""The user's train and test data as the engine's DataSplits (each converted by `data.as_tensors`:
a DataLoader, a Dataset or (x, y) tensors, used as they are; labels are class indices)."""

from __future__ import annotations

from typing import Any

import torch

from ..data import DataSplits, as_tensors
from ..errors import ParameterError


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
