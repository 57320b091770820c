"""Pruners: (reference weights, what the pruner needs, sparsity) → PruneResult. Pure: nothing is mutated.

One contract for every pruner::

    pruner.prune(weights, grads, sparsity, *, training=None) -> PruneResult

weights:  name → tensor, the layout's prunable weights w̄ (with a GradientSet, they must be its
          w̄: the flat w̄ and the layout are then read from the GradientSet, never rebuilt).
grads:    a GradientSet, for pruners that declare `needs_gradients` (None is allowed otherwise).
sparsity: s ∈ [0, 1), the fraction of weights set to zero (k = floor(d·(1 − s)) survive), or
          "auto": the pruner's `target_sparsity` decides (by default one PQ-index step on w̄,
          `pqi.auto_sparsity`; the iterative pruners use their own rule instead).
training: a TrainingContext, for pruners that declare `needs_training` (they rewind to the
          initial weights and retrain; sap, lottery).

A pruner declares what it needs (`needs_gradients`, `needs_training`) and the caller supplies
exactly that; nothing dispatches on a pruner's type. Pruners that run their own prune–retrain
schedule say so with `schedules_itself`: a protocol then calls them once instead of staging them.

The base class fixes the pipeline — check the inputs, read w̄ and the layout, resolve the target,
call the `_prune` hook. One-shot members implement only the narrower `_solve(w_bar, grads, k,
layout) -> SolveOutput` hook that `_prune` calls (the base then checks the support, unflattens and
logs); iterative members override `_prune` (iterative.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Mapping

import torch
from torch import nn

from ..errors import ConfigError, ParameterError, RunFault
from ..gradients.gradient_set import GradientSet
from ..layout import Layout
from ..models.training import apply_weights
from ..pqi import DEFAULT_P, DEFAULT_Q, auto_sparsity, pqi_log
from ..registry import Component, Registry
from .schedule import check_sparsity
from .selection import hard_threshold, hard_threshold_mask, kept_count  # noqa: F401  (re-exported)
from .structure import UNSTRUCTURED, Structure, realised

PRUNERS: Registry["Pruner"] = Registry("pruner")


@dataclass
class PruneResult:
    """The outcome of one pruning call.

    masks:   name → bool tensor, True where the weight survives.
    weights: name → float tensor, the new weights, already zero wherever the mask is False.
    log:     per-layer sparsity and PQI before/after ("layers"), global PQI before/after ("pqi"),
             solver stages (objective, step, time), warnings, total time.
    """

    masks: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor]
    log: dict[str, Any] = field(default_factory=dict)
    # Non-parameter state of a RETRAINED network (BatchNorm running statistics), name → tensor, to
    # load next to `weights`; empty for one-shot pruners, which leave buffers as they were.
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)

    def apply(self, model: nn.Module) -> nn.Module:
        """A copy of `model` carrying this result: the new weights (pruned ones exactly 0) and, for
        pruners that retrained, the retrained buffers. `model` itself is not modified."""
        pruned = apply_weights(model, self.weights)
        if self.buffers:
            pruned.load_state_dict(self.buffers, strict=False)
        return pruned

    @property
    def sparsity(self) -> float:
        total = sum(m.numel() for m in self.masks.values())
        kept = sum(int(m.sum()) for m in self.masks.values())
        return 1.0 - kept / total if total else 0.0


@dataclass
class SolveOutput:
    """What a pruner's `_solve` hook returns: the flat new weights and their support."""

    w: torch.Tensor  # (d,) new weights; entries outside `mask` are ignored (set to 0 by the base)
    mask: torch.Tensor  # (d,) bool support
    log: dict[str, Any] = field(default_factory=dict)


def result_pqi_log(
    layout: Layout,
    w_before: torch.Tensor,
    w_after: torch.Tensor,
    mask: torch.Tensor,
    masks: Mapping[str, torch.Tensor],
) -> dict[str, Any]:
    """The "layers" and "pqi" entries of a PruneResult log.

    layers: one dict per pruned tensor: name, size, sparsity, pqi_before (over the dense reference
            weights), pqi_after (over the surviving weights; None if none of them is non-zero).
    pqi:    {"p", "q", "global_before", "global_after"} with the defaults p = 0.5, q = 1.
    """
    summary, per_layer = pqi_log(layout, w_before, w_after, mask, DEFAULT_P, DEFAULT_Q)
    layers = [
        {
            "name": s.name,
            "size": s.numel,
            "sparsity": 1.0 - float(masks[s.name].sum()) / s.numel,
            "pqi_before": per_layer[s.name]["before"],
            "pqi_after": per_layer[s.name]["after"],
        }
        for s in layout.slices
    ]
    return {"layers": layers, "pqi": summary}




@dataclass
class TrainingContext:
    """What a pruner that rewinds and retrains (`needs_training`) needs besides the weights.

    model:         the dense trained model whose prunable weights are the `weights` handed to
                   `prune` (its architecture is retrained; it is copied, never modified).
    initial_state: w_0, the model's full state_dict at initialisation (before dense training);
                   every iteration rewinds to it. Not modified.
    x_train, y_train: the training split the pruner retrains on (never the test split).
    epochs:        E, training epochs per iteration (a pruner's `epochs` Param overrides it), ≥ 1.
    lr, batch_size, weight_decay, optimizer ("adam" | "sgd"), momentum (sgd only): the settings of
                   `swap_hw.models.train_model`.
    seed:          root seed; iteration t trains with derive_seed(seed, "iterative-train", t), so
                   sap and lottery see the same batches at the same iteration.
    x_val, y_val:  optional validation split; its accuracy is recorded per iteration.
    evaluate:      optional callable (model copy, iteration) → {metric: float}, recorded per
                   iteration under "metrics" (e.g. accuracy on analog hardware).
    train_accuracy: record accuracy on the training split per iteration.
    retrain_dense: False = iteration 0 reuses the dense model passed to `prune_iterative` (it was
                   trained from w_0 already); True = iteration 0 also rewinds and trains E epochs.
    """

    model: nn.Module
    initial_state: Mapping[str, torch.Tensor]
    x_train: torch.Tensor
    y_train: torch.Tensor
    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    weight_decay: float = 0.0
    optimizer: str = "adam"
    momentum: float = 0.0
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    evaluate: Callable[[nn.Module, int], Mapping[str, float]] | None = None
    train_accuracy: bool = True
    retrain_dense: bool = False

    def check(self) -> None:
        model = self.model
        if int(self.epochs) < 1:
            raise ParameterError(f"TrainingContext.epochs must be ≥ 1, got {self.epochs}")
        if not self.lr > 0:
            raise ParameterError(f"TrainingContext.lr must be > 0, got {self.lr}")
        if int(self.batch_size) < 1:
            raise ParameterError(f"TrainingContext.batch_size must be ≥ 1, got {self.batch_size}")
        if self.optimizer not in ("adam", "sgd") or not 0 <= self.momentum < 1:
            raise ParameterError(f"TrainingContext.optimizer must be 'adam' or 'sgd' and momentum in [0, 1), "
                                 f"got {self.optimizer!r}, {self.momentum}")
        if self.x_train.shape[0] != self.y_train.shape[0] or self.x_train.shape[0] == 0:
            raise ParameterError(
                f"training split needs as many labels as inputs (> 0), got {self.x_train.shape[0]} "
                f"inputs and {self.y_train.shape[0]} labels"
            )
        if (self.x_val is None) != (self.y_val is None):
            raise ParameterError("give both x_val and y_val, or neither")
        own = model.state_dict()
        missing = sorted(set(own) - set(self.initial_state))
        extra = sorted(set(self.initial_state) - set(own))
        if missing or extra:
            raise ParameterError(
                f"initial_state does not fit the model: missing {missing[:5]}, unexpected {extra[:5]}"
            )
        for name, value in own.items():
            if tuple(self.initial_state[name].shape) != tuple(value.shape):
                raise ParameterError(
                    f"initial_state[{name!r}] has shape {tuple(self.initial_state[name].shape)}, "
                    f"the model's has {tuple(value.shape)}"
                )


class Pruner(Component):
    """Base of all pruners: one call, `prune(weights, grads, sparsity, training=None)`.

    Members declare what they need and implement one hook: `_solve` (one-shot) or `_prune`
    (anything that is not a single solve on w̄, e.g. prune–rewind–retrain).
    """

    # per-sample gradients: `grads` must be a GradientSet
    needs_gradients: ClassVar[bool] = True
    # rewinds to the initial weights and retrains: `training` must be a TrainingContext
    needs_training: ClassVar[bool] = False
    # runs its own prune schedule (e.g. prune–rewind–retrain), so protocols call it once rather
    # than staging it; its log names the schedule under "protocol"
    schedules_itself: ClassVar[bool] = False
    # the objective can be anchored at weights other than the starting ones (`anchor_weights`)
    uses_anchor_weights: ClassVar[bool] = False

    def prune(
        self,
        weights: Mapping[str, torch.Tensor],
        grads: GradientSet | None,
        sparsity: float | Literal["auto"],
        *,
        training: TrainingContext | None = None,
        anchor_weights: Mapping[str, torch.Tensor] | None = None,
    ) -> PruneResult:
        """`anchor_weights` (pruners with `uses_anchor_weights`): the weights the objective is anchored
        at — the regression's targets X·w_a, its plan's dense cloud and its ridge centre — when they
        are not the starting `weights` where the gradients were taken (the SWAP authors keep the
        dense model's weights there at every stage of a staged protocol)."""
        if self.needs_gradients and grads is None:
            raise ParameterError(f"pruner {self.name!r} needs a GradientSet, got None")
        if self.needs_training and training is None:
            raise ParameterError(
                f"pruner {self.name!r} rewinds and retrains, so it needs a TrainingContext: call "
                "prune(weights, grads, sparsity, training=TrainingContext(...))"
            )
        layout, w_bar = self._reference(weights, grads)
        target = self.target_sparsity(sparsity, weights)
        if anchor_weights is None:
            return self._prune(w_bar, layout, target, grads, training)
        if not self.uses_anchor_weights:
            raise ParameterError(f"pruner {self.name!r} takes no anchor_weights")
        return self._prune(w_bar, layout, target, grads, training, anchor=layout.flatten(anchor_weights))

    @property
    def structure(self) -> Structure:
        """The survivors' pattern (pruners/structure.py); unstructured for pruners without the setting."""
        return Structure.parse(getattr(self.params, "structure", UNSTRUCTURED))

    def validate_scenario(self, scenario, file: str, path: str) -> None:
        """Config-time check: every numeric sparsity of the scenario is reachable under `structure`."""
        for i, s in enumerate(scenario.spec.sparsities):
            if isinstance(s, (int, float)) and not isinstance(s, bool):
                try:
                    self.structure.check_sparsity(float(s))
                except ParameterError as exc:
                    raise ConfigError(file, f"{path}.structure", f"{exc} (sparsities[{i}])") from None

    def target_sparsity(self, sparsity: float | str, weights: Mapping[str, torch.Tensor]) -> float | None:
        """The fraction to prune: `sparsity` itself, or for "auto" one PQ-index step on `weights`
        (pqi.auto_sparsity). None means the pruner's own rule decides (see IterativePruner)."""
        if sparsity == "auto":
            return float(auto_sparsity(weights))
        return check_sparsity(sparsity)

    @staticmethod
    def _reference(weights: Mapping[str, torch.Tensor], grads: GradientSet | None) -> tuple[Layout, torch.Tensor]:
        """(layout, flat w̄): the GradientSet's own when there is one (checked against `weights`),
        else built from `weights`."""
        if grads is None:
            layout = Layout.from_shapes((n, tuple(t.shape)) for n, t in weights.items())
            return layout, layout.flatten(weights)
        layout = grads.layout
        if set(weights) != set(layout.names):
            raise ParameterError(f"weights name {sorted(weights)[:4]}…, the GradientSet's layout names "
                                 f"{layout.names[:4]}…: they must be the same tensors")
        for s in layout.slices:
            given = weights[s.name]
            if tuple(given.shape) != s.shape or not torch.equal(
                    given.detach().reshape(-1).float(), grads.w_bar[s.offset : s.stop]):
                raise ParameterError(f"weights[{s.name!r}] differ from the GradientSet's w̄ (the gradients "
                                     "were taken at other weights)")
        return layout, grads.w_bar

    def _prune(
        self,
        w_bar: torch.Tensor,
        layout: Layout,
        target: float | None,
        grads: GradientSet | None,
        training: TrainingContext | None,
        anchor: torch.Tensor | None = None,
    ) -> PruneResult:
        """One solve on w̄: k = floor(d·(1 − target)) survivors from `_solve`, exactly k for a
        global scope, weights zero off the support, per-layer sparsity and PQI logged."""
        k = kept_count(layout.d, target)
        start = time.perf_counter()
        # solvers never write into w_bar (the GradientSet's); only anchored pruners take `anchor`
        out = self._solve(w_bar, grads, k, layout) if anchor is None else self._solve(w_bar, grads, k, layout, anchor=anchor)
        seconds = time.perf_counter() - start
        mask = out.mask.reshape(-1).to(torch.bool)
        structure = self.structure
        if structure.unstructured and int(mask.sum()) != k and out.log.get("scope", "global") == "global":
            raise RuntimeError(f"{self.name} kept {int(mask.sum())} weights, expected exactly {k}")
        # checked exactly (a unit kept in part, an N:M group over N raises), logged when structured
        structure_log = {} if structure.unstructured else {"structure": realised(structure, layout, mask)}
        w = torch.where(mask, out.w.reshape(-1).float(), torch.zeros(()))
        if not bool(torch.isfinite(w).all()):  # nothing NaN leaves a pruner (its log's PQI would fail too)
            raise RunFault(f"pruner {self.label} produced NaN/Inf weights")
        # views of the result's own fresh flat tensors: no copies
        masks = layout.unflatten(mask)
        log = {
            "pruner": self.describe(),
            "sparsity_target": target,
            "kept": int(mask.sum()),
            "d": layout.d,
            "seconds": seconds,
            **result_pqi_log(layout, w_bar, w, mask, masks),
            **out.log,
            **structure_log,
        }
        return PruneResult(masks=masks, weights=layout.unflatten(w), log=log)

    def _solve(
        self, w_bar: torch.Tensor, grads: GradientSet | None, k: int, layout: Layout
    ) -> SolveOutput:
        raise NotImplementedError
