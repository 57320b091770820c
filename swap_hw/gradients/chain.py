"""A chain of gradient sources applied in order, e.g. label noise, then analog hardware.

Each hook of the pipeline (see base.py) runs every member's hook in list order: the batch passes
through every `transform_batch`, the model through every `gradient_model`, X through every
`perturb`. Each member draws from its own seed derived from the chain's seed and its position, and
records its provenance under its own entry, so the stored description says exactly what was
applied and in which order.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..seeding import derive_seed
from .base import GradientSource


class ChainedSource(GradientSource):
    name = "chain"

    def __init__(self, members: list[GradientSource]):
        super().__init__()
        self.members = list(members)

    def describe(self) -> dict[str, Any]:
        return {"name": "chain", "members": [m.describe() for m in self.members]}

    @property
    def label(self) -> str:
        return "+".join(m.label for m in self.members)

    def validate_scenario(self, scenario, file: str, path: str) -> None:
        """Run each member's own config-time cross-field check (config.py's hook), if it has one."""
        for i, member in enumerate(self.members):
            check = getattr(member, "validate_scenario", None)
            if check is not None:
                check(scenario, file, f"{path}[{i}]")

    def _seed(self, seed: int, i: int) -> int:
        return derive_seed(seed, "chain", i, self.members[i].name)

    def _sub(self, provenance: dict, i: int) -> dict:
        steps = provenance.setdefault("chain", [{} for _ in self.members])
        steps[i].setdefault("source", self.members[i].describe())
        return steps[i]

    def transform_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, provenance: dict):
        for i, m in enumerate(self.members):
            x, y = m.transform_batch(model, x, y, self._seed(seed, i), self._sub(provenance, i))
        return x, y

    def gradient_model(self, model: nn.Module, seed: int, provenance: dict) -> nn.Module:
        for i, m in enumerate(self.members):
            model = m.gradient_model(model, self._seed(seed, i), self._sub(provenance, i))
        return model

    def perturb(self, X: torch.Tensor, seed: int, provenance: dict) -> torch.Tensor:
        for i, m in enumerate(self.members):
            X = m.perturb(X, self._seed(seed, i), self._sub(provenance, i))
        return X

    def perturb_operator(self, operator, seed: int, provenance: dict):
        for i, m in enumerate(self.members):
            operator = m.perturb_operator(operator, self._seed(seed, i), self._sub(provenance, i))
        return operator
