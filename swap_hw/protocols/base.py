"""Protocols: how a pruner is scheduled to reach a sparsity — once, or in stages.

Contract: ``protocol.run(pruner, job, sparsity) -> (pruned model, PruneResult)``. `job` (a
`PruneJob`) holds the dense model and what pruners may read; the dense model is never modified.
The base class fixes the pipeline: a pruner that runs its own schedule (`schedules_itself`, e.g.
sap and lottery, which rewind and retrain) is called once, whatever the protocol; any other pruner
gets the sparsity target resolved (`pruner.target_sparsity`, so "auto" means the same everywhere)
and is handed to the member's `_schedule` hook. The result's log says which protocol produced it
(log["protocol"]).

A member's `Params` are its settings, written in a scenario as ``protocol: {name: gradual, stages:
10, epochs: 1}``; they enter the cell keys under `settings_block` (the member's name, unless it
declares the scenario key its settings had before protocols were a family).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from ..gradients import GradientSet, GradientSource
from ..layout import Layout
from ..pruners.base import PruneResult, Pruner, TrainingContext
from ..registry import Component, Registry

PROTOCOLS: Registry["PruningProtocol"] = Registry("protocol")


@dataclass
class PruneJob:
    """What a protocol may read to prune one model.

    model:       the dense model (eval mode); never modified.
    layout:      its prunable weights.
    source:      the gradient source that collects X for pruners with `needs_gradients`.
    calibration: the (x, y) calibration batch the source collects on.
    seed:        the source's seed; staged protocols derive each stage's from it.
    grads:       gradients already collected at `model` with `seed` (shared by the pruners of a
                 work unit); collected on first use when None.
    storage:     how X is held (`GradientSource.collect`'s memory_budget_mb, over_budget, spill_dir).
    training:    the TrainingContext for pruners with `needs_training`.
    train_split: the (x, y) examples fine-tuning trains on (never the test split).
    """

    model: nn.Module
    layout: Layout
    source: GradientSource | None = None
    calibration: tuple[torch.Tensor, torch.Tensor] | None = None
    seed: int = 0
    grads: GradientSet | None = None
    storage: Mapping[str, Any] = field(default_factory=dict)
    training: TrainingContext | None = None
    train_split: tuple[torch.Tensor, torch.Tensor] | None = None

    def gradients(self) -> GradientSet:
        """The gradients at the dense model, collected once."""
        if self.grads is None:
            self.grads = self.source.collect(self.model, self.calibration, self.seed, self.layout, **self.storage)
        return self.grads


class PruningProtocol(Component):
    """Base of all protocols; members implement `_schedule`."""

    # the cell-key block of this protocol's settings (see the module docstring); None = its name
    settings_block: ClassVar[str | None] = None

    def run(self, pruner: Pruner, job: PruneJob, sparsity: float | str) -> tuple[nn.Module, PruneResult]:
        weights = job.layout.weights_of(job.model)
        if pruner.schedules_itself:
            grads = job.gradients() if pruner.needs_gradients else None
            result = pruner.prune(weights, grads, sparsity, training=job.training)
            model = result.apply(job.model)
        else:
            target = pruner.target_sparsity(sparsity, weights)
            model, result = self._schedule(pruner, job, weights, target)
        result.log.setdefault("protocol", self.name)
        return model, result

    def reference(self, job: PruneJob) -> nn.Module:
        """The dense model this protocol's pruned models are compared with (the `dense` row): the
        dense model itself unless a member fine-tunes it the way it fine-tunes the pruned ones."""
        return job.model

    def _schedule(self, pruner: Pruner, job: PruneJob, weights: Mapping[str, torch.Tensor],
                  target: float) -> tuple[nn.Module, PruneResult]:
        raise NotImplementedError

    def key_settings(self) -> dict[str, Any]:
        """What of this protocol's settings determines a cell, keyed by its settings block."""
        params = self.params.described()
        return {self.settings_block or self.name: params} if params else {}
