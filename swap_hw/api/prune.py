"""`prune`: one pruner call on your model and data — the quickest way in."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ParameterError
from ..gradients import GRADIENT_SOURCES
from ..layout import Layout
from ..models import prunable_names, reinitialised
from ..pruners import PRUNERS, PruneResult, TrainingContext
from ..registry import Component
from ..seeding import derive_seed
from ..data import DataSplits
from . import inputs


def _member(registry, member: Any, field: str, params: dict) -> Component:
    if isinstance(member, Component):
        if params:
            raise ParameterError(f"{field}: give parameters to the member itself, not as keywords")
        return member
    if not isinstance(member, str) or member not in registry:
        raise ParameterError(f"{field}: unknown {registry.family} {member!r}; valid: {', '.join(registry.names())}")
    return registry.get(member)(**params)


def prune(model: nn.Module, data: Any, pruner: Any = "magnitude", sparsity: float | str = 0.5, *,
          source: Any = "clean", n: int = 1000, seed: int = 0, layers: Any = "default",
          memory_budget_mb: float | None = None, **pruner_params: Any) -> PruneResult:
    """Prune `model` once: per-sample gradients of `n` examples of `data` (a DataLoader, a Dataset
    or (x, y) tensors, drawn without replacement, seeded) under `source`, then `pruner` at
    `sparsity` (a fraction in [0, 1), or "auto"). The model is not modified; `result.apply(model)`
    gives the pruned copy.

    pruner / source: names or members (`swap_hw.pruners.Swap(epsilon=0.05)`); keyword arguments
    left over are the pruner's parameters (`prune(net, loader, "swap", 0.8, epsilon=0.05)`).
    layers: which weights are pruned — "default" (the conv/linear weights), "all", or names/globs.
    Pruners that rewind and retrain (sap, lottery) retrain on `data`, from weights re-drawn by
    each layer's own initialiser (seeded).
    """
    if not isinstance(model, nn.Module):
        raise ParameterError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    member = _member(PRUNERS, pruner, "pruner", pruner_params)
    gradient_source = _member(GRADIENT_SOURCES, source, "source", {})
    if not (isinstance(n, int) and n > 0):
        raise ParameterError(f"n: calibration examples must be a positive integer, got {n!r}")
    x, y = inputs.as_tensors(data, "data")
    splits = DataSplits("inline", x, y, x[:0], y[:0], int(y.max()) + 1)
    batch = splits.calibration(n, derive_seed(seed, "calibration", 0))
    dense = model.eval()
    layout = Layout.from_model(dense, include=prunable_names(dense, layers))
    weights = layout.weights_of(dense)
    grads = None
    if member.needs_gradients:
        grads = gradient_source.collect(dense, batch, derive_seed(seed, "source", 0), layout,
                                        memory_budget_mb=memory_budget_mb)
    training = None
    if member.needs_training:
        training = TrainingContext(model=dense, initial_state=reinitialised(dense, derive_seed(seed, "init")).state_dict(),
                                   x_train=x, y_train=y, seed=derive_seed(seed, "prune", 0))
    return member.prune(weights, grads, sparsity, training=training)
