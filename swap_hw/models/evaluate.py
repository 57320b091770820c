"""Evaluation helpers shared by every stage that scores a model on a split."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def accuracy_and_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024
) -> tuple[float, float]:
    """Top-1 accuracy (fraction) and mean cross-entropy (nats) of `model` on (x, y), eval mode."""
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    try:
        for start in range(0, x.shape[0], batch_size):
            out = model(x[start : start + batch_size])
            target = y[start : start + batch_size]
            correct += int((out.argmax(dim=1) == target).sum())
            loss_sum += float(nn.functional.cross_entropy(out, target, reduction="sum"))
    finally:
        model.train(was_training)
    n = x.shape[0]
    return correct / n, loss_sum / n
