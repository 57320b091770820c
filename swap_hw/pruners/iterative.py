"""Iterative prune–rewind–retrain pruners (`sap`, `lottery`) and the training context they need.

These pruners cannot be one-shot ``prune(weights, grads, sparsity)`` calls: every iteration
rewinds the surviving weights to their values at initialisation and trains again. They are called
as ``pruner.prune_iterative(model, ctx, sparsity) -> PruneResult``; their `_solve` raises a
ParameterError saying so. The shared loop (spec sap_pqi.md §3), with w_0 the initial weights and m
the mask (all ones at first):

    for t = 0, 1, ..., T:
        rewind:  w ← w_0 ⊙ m                      (every parameter back to w_0, pruned ones to 0)
        train E epochs with m enforced           (pruned weights stay exactly 0 after every step)
        record PQI, accuracy, remaining fraction
        if t == T (or the sparsity target is reached): stop
        per group g of the scope: prune the c_g smallest |w| among g's survivors

Members decide c_g (`_group_prune_counts`): SAP from the PQ-index bound, lottery a fixed fraction.
Groups are the scope: `global` (all prunable weights as one vector), `layer` (each weight tensor),
`neuron` (each output row of a Linear / output filter of a Conv).

Iteration 0 is "train the dense model from w_0"; by default the dense model handed in IS that
result, so it is reused rather than trained again (`TrainingContext.retrain_dense`). The model of
the last epoch of each iteration is used: no checkpoint is chosen by test accuracy (the paper
picks the best-test-accuracy epoch; this loop never sees the test split).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal, Mapping

import torch
from pydantic import Field
from torch import nn

from ..component import Params
from ..deploy.base import accuracy_and_loss
from ..errors import ParameterError
from ..gradients.base import GradientSet
from ..layout import Layout
from ..models import enforce_masks, train_model
from ..pqi import DEFAULT_P, DEFAULT_Q, neuron_group_ids, pq_index_groups
from ..seeding import derive_seed
from .base import PruneResult, Pruner, SolveOutput, check_sparsity, kept_count, result_pqi_log

Scope = Literal["global", "layer", "neuron"]


@dataclass
class TrainingContext:
    """Everything an iterative pruner needs besides the model to prune.

    initial_state: w_0, the model's full state_dict at initialisation (before dense training);
                   every iteration rewinds to it. Not modified.
    x_train, y_train: the training split the pruner retrains on (never the test split).
    epochs:        E, training epochs per iteration (a pruner's `epochs` Param overrides it), ≥ 1.
    lr, batch_size, weight_decay: Adam settings of `swap_hw.models.train_model`.
    seed:          root seed; iteration t trains with derive_seed(seed, "iterative-train", t), so
                   sap and lottery see the same batches at the same iteration.
    x_val, y_val:  optional validation split; its accuracy is recorded per iteration.
    evaluate:      optional callable (model copy, iteration) → {metric: float}, recorded per
                   iteration under "metrics" (e.g. accuracy on analog hardware).
    train_accuracy: record accuracy on the training split per iteration.
    retrain_dense: False = iteration 0 reuses the dense model passed to `prune_iterative` (it was
                   trained from w_0 already); True = iteration 0 also rewinds and trains E epochs.
    """

    initial_state: Mapping[str, torch.Tensor]
    x_train: torch.Tensor
    y_train: torch.Tensor
    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    weight_decay: float = 0.0
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    evaluate: Callable[[nn.Module, int], Mapping[str, float]] | None = None
    train_accuracy: bool = True
    retrain_dense: bool = False

    def check(self, model: nn.Module) -> None:
        if int(self.epochs) < 1:
            raise ParameterError(f"TrainingContext.epochs must be ≥ 1, got {self.epochs}")
        if not self.lr > 0:
            raise ParameterError(f"TrainingContext.lr must be > 0, got {self.lr}")
        if int(self.batch_size) < 1:
            raise ParameterError(f"TrainingContext.batch_size must be ≥ 1, got {self.batch_size}")
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


class IterativeParams(Params):
    """Parameters every iterative pruner shares."""

    iterations: int = Field(
        20,
        ge=1,
        le=1000,
        description="T: the most prune steps (T+1 trainings); with a sparsity target the loop "
        "stops earlier once the target is reached",
    )
    epochs: int | None = Field(
        None, ge=1, description="E: training epochs per iteration; None = the TrainingContext's epochs"
    )
    scope: Scope = Field(
        "global",
        description="where the prune count is decided and the smallest weights are compared: "
        "global (all prunable weights), layer (each weight tensor), neuron (each output row/filter)",
    )


def scope_groups(layout: Layout, scope: str) -> tuple[torch.Tensor, int]:
    """(group id of each flat weight, number of groups) for a scope."""
    if scope == "global":
        return torch.zeros(layout.d, dtype=torch.int64), 1
    gid = torch.empty(layout.d, dtype=torch.int64)
    n_groups = 0
    for i, s in enumerate(layout.slices):
        if scope == "layer":
            gid[s.offset : s.stop] = i
            n_groups = i + 1
        elif scope == "neuron":
            ids, n = neuron_group_ids(s.shape)
            gid[s.offset : s.stop] = ids + n_groups
            n_groups += n
        else:
            raise ParameterError(f"scope must be global, layer or neuron, got {scope!r}")
    return gid, n_groups


def prune_smallest(
    w: torch.Tensor, mask: torch.Tensor, gid: torch.Tensor, counts: torch.Tensor
) -> torch.Tensor:
    """New mask: in each group g, the counts[g] surviving entries of smallest |w| are removed.

    Ties go to the lower flat index. counts[g] must not exceed group g's survivors.
    """
    # Sort by |w| with non-survivors last, then (stably) by group: within each group the survivors
    # come first in increasing |w|, so an entry is pruned when its rank in its group < counts[g].
    score = torch.where(mask, w.abs().to(torch.float64), torch.full((), math.inf, dtype=torch.float64))
    by_score = torch.sort(score, stable=True).indices
    order = by_score[torch.sort(gid[by_score], stable=True).indices]
    group_sizes = torch.bincount(gid, minlength=counts.numel())
    starts = torch.cumsum(group_sizes, 0) - group_sizes
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    rank = rank - starts[gid]
    return mask & ~(rank < counts[gid])


def cut_counts(counts: torch.Tensor, total: int) -> torch.Tensor:
    """Shrink per-group counts so they sum to exactly `total` (< their sum), proportionally.

    Largest-remainder rounding: floor(c_g·total/Σc), then the leftover units go to the groups with
    the largest fractional parts (lower group index first on ties); no group exceeds its c_g.
    """
    counts = counts.to(torch.int64)
    whole = int(counts.sum())
    if total >= whole:
        return counts
    exact = counts.to(torch.float64) * total / whole
    base = torch.floor(exact).to(torch.int64)
    leftover = total - int(base.sum())
    frac = exact - base.to(torch.float64)
    order = torch.sort(-frac, stable=True).indices
    base[order[:leftover]] += 1
    return base


class IterativePruner(Pruner):
    """Base of prune–rewind–retrain pruners. Members implement `_group_prune_counts`."""

    needs_gradients: ClassVar[bool] = False
    Params: ClassVar[type[IterativeParams]] = IterativeParams

    def _solve(
        self, w_bar: torch.Tensor, grads: GradientSet | None, k: int, layout: Layout
    ) -> SolveOutput:
        raise ParameterError(
            f"pruner {self.name!r} rewinds and retrains, so it needs a TrainingContext: call "
            f"prune_iterative(model, TrainingContext(...), sparsity) instead of prune(weights, grads, "
            f"sparsity)"
        )

    def _group_prune_counts(
        self, w: torch.Tensor, mask: torch.Tensor, gid: torch.Tensor, n_groups: int
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """(c_g for every group as int64 (n_groups,), extra fields for the iteration record)."""
        raise NotImplementedError

    def prune_iterative(
        self,
        model: nn.Module,
        ctx: TrainingContext,
        sparsity: float | None = None,
        layout: Layout | None = None,
    ) -> PruneResult:
        """Run the prune–rewind–retrain loop on a copy of `model` (the dense trained model).

        sparsity None: prune by the member's own rule for T = `iterations` steps (stopping early
        if the rule prunes nothing). sparsity s ∈ [0, 1): stop as soon as at most
        k = floor(d·(1−s)) weights survive; the step that would overshoot is cut (proportionally
        across groups, `cut_counts`) so that exactly k survive. If T steps do not reach s, the result stays at the sparsity
        reached, with log["target_reached"] = False and a warning.

        `layout` says which weights are prunable (default: every Linear/Conv weight of `model`);
        the others (and biases, norm layers) are rewound and retrained but never pruned.

        Returns PruneResult with masks (prunable weights), weights (EVERY parameter of the final
        retrained network, biases included, pruned entries exactly 0, so
        ``apply_weights(model, result.weights)`` rebuilds it), buffers (every buffer of the
        retrained network, e.g. BatchNorm running statistics) and log: pruner, sparsity_target,
        kept, d, seconds, layers/pqi (before = dense model, after = final survivors), iterations
        (one record per training), stopped ("iterations" | "target" | "rule"), target_reached,
        epochs_per_iteration, warnings.
        """
        target = None if sparsity is None else check_sparsity(sparsity)
        ctx.check(model)
        params: IterativeParams = self.params  # type: ignore[assignment]
        epochs = int(params.epochs if params.epochs is not None else ctx.epochs)
        layout = Layout.from_model(model) if layout is None else layout
        own = dict(model.named_parameters())
        for s in layout.slices:
            if s.name not in own or tuple(own[s.name].shape) != s.shape:
                raise ParameterError(f"layout entry {s.name!r} {s.shape} is not a parameter of the model")
        if layout.d == 0:
            raise ParameterError("the model has no prunable weight (Linear/Conv weight)")
        w_dense = layout.flatten(dict(model.named_parameters()))
        k_target = None if target is None else kept_count(layout.d, target)
        gid, n_groups = scope_groups(layout, params.scope)
        mask = torch.ones(layout.d, dtype=torch.bool)

        start = time.perf_counter()
        records: list[dict[str, Any]] = []
        warnings: list[str] = []
        stopped = "iterations"
        net = model
        for t in range(params.iterations + 1):
            t0 = time.perf_counter()
            net = self._trained_network(model, ctx, mask, layout, t, epochs)
            w = layout.flatten(dict(net.named_parameters()))
            record = self._record(net, ctx, layout, w, mask, t)
            kept = int(mask.sum())
            if k_target is not None and kept <= k_target:
                stopped = "target"
            elif t == params.iterations:
                stopped = "iterations"
            else:
                counts, extra = self._group_prune_counts(w, mask, gid, n_groups)
                counts = torch.minimum(counts.to(torch.int64).clamp(min=0), torch.bincount(gid[mask], minlength=n_groups))
                record.update(extra)
                if k_target is not None and kept - int(counts.sum()) < k_target:
                    counts = cut_counts(counts, kept - k_target)
                    record["cut_to_target"] = True
                total = int(counts.sum())
                record["prune_count"] = total
                if total == 0:
                    stopped = "rule"
                else:
                    mask = prune_smallest(w, mask, gid, counts)
            record["seconds"] = time.perf_counter() - t0
            records.append(record)
            if "prune_count" not in record or record["prune_count"] == 0:
                record.setdefault("prune_count", 0)
                break

        kept = int(mask.sum())
        target_reached = None if k_target is None else kept <= k_target
        if target_reached is False:
            warnings.append(
                f"{self.name}: sparsity target {target} not reached ({1 - kept / layout.d:.4f} after "
                f"{len(records) - 1} prune steps, stopped by {stopped}); raise `iterations`"
            )
        w_final = layout.flatten(dict(net.named_parameters()))
        w_final = torch.where(mask, w_final, torch.zeros(()))
        masks = {n: m.clone() for n, m in layout.unflatten(mask).items()}
        weights = {n: p.detach().clone() for n, p in net.named_parameters()}
        for name, value in layout.unflatten(w_final).items():
            weights[name] = value.clone().to(weights[name].dtype)
        buffers = {n: b.detach().clone() for n, b in net.named_buffers()}
        log = {
            "pruner": self.describe(),
            "sparsity_target": target,
            "kept": kept,
            "d": layout.d,
            "seconds": time.perf_counter() - start,
            **result_pqi_log(layout, w_dense, w_final, mask, masks),
            "iterations": records,
            "stopped": stopped,
            "target_reached": target_reached,
            "epochs_per_iteration": epochs,
            "retrain_dense": bool(ctx.retrain_dense),
            "warnings": warnings,
        }
        return PruneResult(masks=masks, weights=weights, log=log, buffers=buffers)

    def _trained_network(
        self, model: nn.Module, ctx: TrainingContext, mask: torch.Tensor, layout: Layout, t: int, epochs: int
    ) -> nn.Module:
        """A fresh copy of `model`, rewound to w_0 ⊙ m and trained E epochs (t = 0: maybe reused)."""
        net = copy.deepcopy(model)
        if t == 0 and not ctx.retrain_dense:
            net.eval()
            return net
        net.load_state_dict({k: v.detach().clone() for k, v in ctx.initial_state.items()})
        # The dense model may come with requires_grad switched off (it is only evaluated there).
        for p in net.parameters():
            p.requires_grad_(True)
        masks = layout.unflatten(mask)
        enforce_masks(net, masks)
        train_model(
            net,
            ctx.x_train,
            ctx.y_train,
            epochs=epochs,
            lr=ctx.lr,
            batch_size=int(ctx.batch_size),
            seed=derive_seed(ctx.seed, "iterative-train", t),
            weight_decay=ctx.weight_decay,
            masks=masks,
        )
        for p in net.parameters():
            p.requires_grad_(False)
        return net

    def _record(
        self, net: nn.Module, ctx: TrainingContext, layout: Layout, w: torch.Tensor, mask: torch.Tensor, t: int
    ) -> dict[str, Any]:
        """One iteration's record: sparsity, PQI (global and per layer, survivors only), accuracy."""
        layer_ids, _ = scope_groups(layout, "layer")
        everything = torch.zeros(layout.d, dtype=torch.int64)
        pqi_all = float(pq_index_groups(w, everything, 1, DEFAULT_P, DEFAULT_Q, mask)[0])
        pqi_layers = pq_index_groups(w, layer_ids, len(layout.slices), DEFAULT_P, DEFAULT_Q, mask)
        kept = int(mask.sum())
        record: dict[str, Any] = {
            "iteration": t,
            "kept": kept,
            "remaining_fraction": kept / layout.d,
            "pqi_global": None if math.isnan(pqi_all) else pqi_all,
            "pqi_layers": {
                s.name: (None if math.isnan(float(v)) else float(v)) for s, v in zip(layout.slices, pqi_layers)
            },
            "train_accuracy": None,
            "val_accuracy": None,
        }
        if ctx.train_accuracy:
            record["train_accuracy"] = accuracy_and_loss(net, ctx.x_train, ctx.y_train)[0]
        if ctx.x_val is not None and ctx.y_val is not None:
            record["val_accuracy"] = accuracy_and_loss(net, ctx.x_val, ctx.y_val)[0]
        if ctx.evaluate is not None:
            record["metrics"] = {k: float(v) for k, v in ctx.evaluate(copy.deepcopy(net), t).items()}
        return record
