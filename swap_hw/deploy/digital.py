"""`digital`: the identity condition — exact floating-point inference on the test split."""

from __future__ import annotations

import torch
from torch import nn

from ..registry import DIGITAL
from .base import CONDITIONS, Condition, Measurement, accuracy_and_loss


@CONDITIONS.register(DIGITAL)
class DigitalCondition(Condition):
    """Accuracy and loss of the model as it is, in float32. Deterministic; the seed is unused."""

    def evaluate(
        self, model: nn.Module, test: tuple[torch.Tensor, torch.Tensor], seed: int
    ) -> list[Measurement]:
        acc, loss = accuracy_and_loss(model, *test)
        return [Measurement("accuracy", acc), Measurement("loss", loss)]
