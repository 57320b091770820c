"""Iterative prune–rewind–retrain pruners (`sap`, `lottery`) and the training context they need.

These pruners are not a single solve on w̄: every iteration rewinds the surviving weights to
their values at initialisation and trains again. They take the same call as every pruner,
``pruner.prune(weights, None, sparsity, training=TrainingContext(model, ...))``, declare
`needs_training` (so the caller must supply the context) and `schedules_itself` (so a protocol
calls them once), and with ``sparsity: "auto"`` their own rule decides how far to go. The shared loop (spec sap_pqi.md §3), with w_0 the initial weights and m
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
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ..errors import ParameterError
from ..gradients.gradient_set import GradientSet
from ..layout import Layout
from ..models import accuracy_and_loss, enforce_masks, train_model
from ..pqi import DEFAULT_P, DEFAULT_Q, pq_index_groups
from ..seeding import derive_seed
from .base import PruneResult, Pruner, TrainingContext, result_pqi_log
from .selection import cut_counts, kept_count, prune_smallest, scope_groups
from .structure import StructureParams, realised, remove_smallest_units

Scope = Literal["global", "layer", "neuron"]


class IterativeParams(StructureParams):
    """Parameters every iterative pruner shares (`structure`: the unit structures channel, block:RxC,
    tile:T remove whole units of smallest Σw² per prune step; N:M is not offered here)."""

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


    @model_validator(mode="after")
    def _unit_structures_only(self) -> "IterativeParams":
        kind = self.structure.split(":")[0] if not self.structure[0].isdigit() else "n:m"
        if kind == "n:m":
            raise ValueError(f"structure {self.structure}: the iterative pruners remove whole units (channel, "
                             "block:RxC, tile:T), not N:M patterns")
        if kind != "unstructured" and self.scope == "neuron":
            raise ValueError(f"structure {self.structure} takes scope global or layer, not neuron")
        return self


class IterativePruner(Pruner):
    """Base of prune–rewind–retrain pruners. Members implement `_group_prune_counts`."""

    needs_gradients: ClassVar[bool] = False
    needs_training: ClassVar[bool] = True
    schedules_itself: ClassVar[bool] = True
    Params: ClassVar[type[IterativeParams]] = IterativeParams

    def target_sparsity(self, sparsity: float | str, weights) -> float | None:
        """"auto" leaves the sparsity to the member's own rule (None); otherwise s ∈ [0, 1)."""
        return None if sparsity == "auto" else super().target_sparsity(sparsity, weights)

    def _group_prune_counts(
        self, w: torch.Tensor, mask: torch.Tensor, gid: torch.Tensor, n_groups: int
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """(c_g for every group as int64 (n_groups,), extra fields for the iteration record)."""
        raise NotImplementedError

    def _prune(
        self,
        w_bar: torch.Tensor,
        layout: Layout,
        target: float | None,
        grads: GradientSet | None,
        training: TrainingContext | None,
    ) -> PruneResult:
        """Run the prune–rewind–retrain loop on a copy of `training.model` (the dense trained model).

        target None ("auto"): prune by the member's own rule for T = `iterations` steps (stopping
        early if the rule prunes nothing). target s ∈ [0, 1): stop as soon as at most
        k = floor(d·(1−s)) weights survive; the step that would overshoot is cut (proportionally
        across groups, `cut_counts`) so that exactly k survive. If T steps do not reach s, the
        result stays at the sparsity reached, with log["target_reached"] = False and a warning.

        The `weights` handed to `prune` say which weights are prunable (their names and order; they
        must be `training.model`'s own); the others (biases, norm layers, weights left out) are
        rewound and retrained but never pruned.

        Returns PruneResult with masks (prunable weights), weights (EVERY parameter of the final
        retrained network, biases included, pruned entries exactly 0, so
        ``apply_weights(model, result.weights)`` rebuilds it), buffers (every buffer of the
        retrained network, e.g. BatchNorm running statistics) and log: pruner, sparsity_target,
        kept, d, seconds, layers/pqi (before = dense model, after = final survivors), iterations
        (one record per training), stopped ("iterations" | "target" | "rule"), target_reached,
        epochs_per_iteration, warnings.
        """
        ctx = training
        model = ctx.model
        ctx.check()
        params: IterativeParams = self.params  # type: ignore[assignment]
        epochs = int(params.epochs if params.epochs is not None else ctx.epochs)
        own = dict(model.named_parameters())
        for s in layout.slices:
            if s.name not in own or tuple(own[s.name].shape) != s.shape:
                raise ParameterError(f"layout entry {s.name!r} {s.shape} is not a parameter of the model")
        if layout.d == 0:
            raise ParameterError("the model has no prunable weight (Linear/Conv weight)")
        if not torch.equal(layout.flatten(own), w_bar):
            raise ParameterError("the weights to prune differ from training.model's own weights")
        w_dense = w_bar
        k_target = None if target is None else kept_count(layout.d, target)
        gid, n_groups = scope_groups(layout, params.scope)
        mask = torch.ones(layout.d, dtype=torch.bool)
        structure = self.structure
        units = None
        if not structure.unstructured:
            if structure.kind == "n:m" or params.scope == "neuron":
                raise ParameterError(f"{self.name} takes structure {structure} only with scope global or layer and "
                                     "not as N:M (whole units are removed by their Σw²)")
            units = structure.groups(layout)
            # the scope group of each unit: that of its first weight
            first = torch.full((units.count,), layout.d, dtype=torch.int64).scatter_reduce_(
                0, units.gid, torch.arange(layout.d), reduce="amin")
            unit_scope = gid[first]

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
                elif units is None:
                    mask = prune_smallest(w, mask, gid, counts)
                else:
                    before = int(mask.sum())
                    mask = remove_smallest_units(w, mask, units, unit_scope, counts)
                    record["prune_count"] = before - int(mask.sum())
                    if record["prune_count"] == 0:  # every layer is down to its last unit
                        stopped = "rule"
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
            "protocol": "iterative",
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
        if units is not None:  # checked exactly, as for the one-shot pruners
            log["structure"] = realised(structure, layout, mask)
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
            optimizer=ctx.optimizer,
            momentum=ctx.momentum,
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
