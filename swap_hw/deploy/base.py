"""Deployment conditions: how a (pruned) model is judged.

Contract: ``condition.evaluate(model, test, seed) -> list[Measurement]``. The model is not
modified (members that program hardware work on a copy). A condition may return many
measurements: one per drift time, per attack strength, per repeated hardware draw; `tags` says
which. Metrics are named plainly: "accuracy" (fraction in [0, 1]), "loss" (mean cross-entropy,
nats), plus member-specific ones documented on the member.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..models.evaluate import accuracy_and_loss  # noqa: F401  (re-exported for members)
from ..registry import Component, Registry

CONDITIONS: Registry["Condition"] = Registry("deployment condition")


@dataclass(frozen=True)
class Measurement:
    metric: str  # e.g. "accuracy"
    value: float
    # Where in the condition's own grid this value sits, e.g. {"drift_time": 3600.0, "draw": 2}.
    # Keys used by the store's columns: drift_time (seconds), draw (repetition index).
    tags: dict[str, Any] = field(default_factory=dict)


class Condition(Component):
    """Base of all deployment conditions; members implement `evaluate`."""

    def evaluate(
        self, model: nn.Module, test: tuple[torch.Tensor, torch.Tensor], seed: int
    ) -> list[Measurement]:
        raise NotImplementedError
