"""Which tensors of a model are pruned, and where each sits in the flat weight vector.

Pruners see one flat vector w̄ ∈ R^d: the weights of every prunable tensor, flattened in module
order and concatenated. `Layout` records name, shape and offset of each, so results map back to
the model. Prunable: the `weight` of every Linear and Conv layer (tensors with more than one
dimension); biases and normalisation layers never.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import torch
from torch import nn

PRUNABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class LayerSlice:
    name: str  # parameter name in the model's state_dict, e.g. "layers.0.weight"
    shape: tuple[int, ...]
    offset: int  # start index in the flat vector

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def stop(self) -> int:
        return self.offset + self.numel


@dataclass(frozen=True)
class Layout:
    slices: tuple[LayerSlice, ...]

    @property
    def d(self) -> int:
        return self.slices[-1].stop if self.slices else 0

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.slices]

    @classmethod
    def from_shapes(cls, shapes: Iterable[tuple[str, tuple[int, ...]]]) -> "Layout":
        slices, offset = [], 0
        for name, shape in shapes:
            sl = LayerSlice(name, tuple(int(s) for s in shape), offset)
            slices.append(sl)
            offset = sl.stop
        return cls(tuple(slices))

    @classmethod
    def from_model(cls, model: nn.Module, include: Iterable[str] | None = None) -> "Layout":
        """Layout of the prunable weights of `model` (optionally only the named parameters)."""
        wanted = set(include) if include is not None else None
        shapes = []
        for mod_name, module in model.named_modules():
            if isinstance(module, PRUNABLE_TYPES) and module.weight.dim() > 1:
                pname = f"{mod_name}.weight" if mod_name else "weight"
                if wanted is None or pname in wanted:
                    shapes.append((pname, tuple(module.weight.shape)))
        if wanted is not None:
            missing = wanted - {n for n, _ in shapes}
            if missing:
                raise KeyError(f"not prunable weights of this model: {sorted(missing)}")
        return cls.from_shapes(shapes)

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate the named tensors (detached, float32) into one flat vector."""
        return torch.cat([tensors[s.name].detach().reshape(-1).float() for s in self.slices])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat vector (length d) back into named tensors of the layout's shapes."""
        if flat.numel() != self.d:
            raise ValueError(f"flat vector has {flat.numel()} entries, layout has {self.d}")
        return {s.name: flat[s.offset : s.stop].reshape(s.shape) for s in self.slices}

    def weights_of(self, model: nn.Module) -> dict[str, torch.Tensor]:
        params = dict(model.named_parameters())
        return {s.name: params[s.name].detach().clone() for s in self.slices}
