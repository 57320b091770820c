"""Pruning protocols: `one_shot` (prune once, no training) and `gradual` (prune → fine-tune stages).

one_shot — what the CBS/CHITA tables report: ``pruner.prune(w̄, X, s)`` once, then evaluate.

gradual — what the SWAP paper's headline numbers include (specs/swap.md §2). With T stages on the
cubic schedule

    s_t = s_T + (s_0 − s_T)·(1 − (t−1)/(T−1))³,   t = 1..T,   s_0 = 0   (T = 1: just s_T)

each stage t
  1. collects the calibration gradients X_t at the CURRENT weights (stage 1 may reuse the
     gradients of the dense model), with the columns of already-pruned weights set to zero;
  2. calls ``pruner.prune(weights_t, X_t, s_t)`` — the pruner stays pure and sees the stage's
     weights, in which every weight pruned so far is exactly 0;
  3. intersects the new mask with the previous one, so the pruned set only grows (a pruner that
     kept a zeroed weight on its support loses it; counted as `revived` in the stage log);
  4. writes the surviving weights into the model and fine-tunes E epochs with the mask enforced
     after every optimiser step (`models.train_model(masks=...)`): pruned weights stay exactly 0.

The stage's sparsity is reached exactly unless a pruner revives weights (then it ends higher, and
the log says by how much). Fine-tuning trains every parameter of the model (biases, BatchNorm
affine parameters and running statistics too), so `prune_gradual` returns the whole model, not just
the pruned tensors. Seeds: stage t ≥ 2 collects with derive_seed(seed, "gradual-source", t) (stage
1 uses `seed`, the one-shot seed) and fine-tunes with derive_seed(seed, "gradual-finetune", t).
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable, Mapping, Protocol

import torch
from torch import nn

from .errors import ParameterError
from .gradients.base import GradientSet, GradientSource
from .gradients.matrix_free import mask_gradient_columns
from .layout import Layout
from .models import enforce_masks, train_model
from .pruners.base import PruneResult, Pruner, check_sparsity, result_pqi_log
from .seeding import derive_seed

PROTOCOLS = ("one_shot", "gradual")


class FinetuneSettings(Protocol):
    """What the gradual protocol reads from the scenario's `finetune` block."""

    stages: int
    epochs: int
    lr: float
    batch_size: int
    weight_decay: float


def cubic_schedule(target: float, stages: int, initial: float = 0.0) -> list[float]:
    """[s_1, …, s_T]: s_t = s_T + (s_0 − s_T)(1 − (t−1)/(T−1))³ with s_0 = `initial`, s_T = `target`.

    Sparsities are fractions in [0, 1); the sequence rises from s_0 to exactly s_T, fastest at
    first. T = 1 gives [target].
    """
    if int(stages) < 1:
        raise ParameterError(f"stages must be ≥ 1, got {stages}")
    target, initial = check_sparsity(target), check_sparsity(initial)
    T = int(stages)
    if T == 1:
        return [target]
    out = [target + (initial - target) * (1.0 - (t - 1) / (T - 1)) ** 3 for t in range(1, T + 1)]
    out[-1] = target  # exact, whatever the float rounding of the formula
    return out


def _stage_summary(log: Mapping[str, Any]) -> dict[str, Any]:
    """The pruner's log of one stage without its per-layer table (kept once, for the result)."""
    return {k: v for k, v in log.items() if k not in ("layers", "pruner")}


def prune_gradual(
    pruner: Pruner,
    model: nn.Module,
    source: GradientSource | None,
    calib_batch: tuple[torch.Tensor, torch.Tensor],
    train_split: tuple[torch.Tensor, torch.Tensor],
    sparsity: float,
    finetune: FinetuneSettings,
    seed: int,
    layout: Layout | None = None,
    *,
    memory_budget_mb: float | None = None,
    first_grads: GradientSet | None = None,
    on_stage: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[nn.Module, PruneResult]:
    """Gradual pruning to `sparsity` in `finetune.stages` stages with `finetune.epochs` of masked
    fine-tuning after each (see the module docstring). Returns (pruned fine-tuned model, result).

    pruner:      any one-shot pruner (`prune(weights, grads, s)`); iterative pruners (sap,
                 lottery) run their own prune–retrain loop and are refused here.
    model:       the dense model; not modified (a copy is pruned and trained).
    source:      the gradient source collecting X_t at each stage (None only for pruners that
                 need no gradients).
    calib_batch: the (x, y) calibration examples, the same at every stage.
    train_split: the (x, y) examples fine-tuning trains on (never the test split).
    first_grads: gradients already collected at the dense weights with `seed` (reused at stage 1).
    on_stage:    called with each stage's log entry as soon as the stage is done.

    The result's masks are the final masks, its weights the final fine-tuned pruned tensors, its
    log the usual per-layer sparsity / PQI (dense reference → final weights) plus
    log["gradual"] = {"schedule", "stages": [per-stage entries], "finetune": {...}}.
    """
    if hasattr(pruner, "prune_iterative"):
        raise ParameterError(
            f"pruner {pruner.name!r} runs its own prune–retrain loop; the gradual protocol applies to "
            "one-shot pruners (magnitude, lr, swap, woodfisher)"
        )
    if pruner.needs_gradients and source is None:
        raise ParameterError(f"pruner {pruner.name!r} needs a gradient source for the gradual protocol")
    target = check_sparsity(sparsity)
    schedule = cubic_schedule(target, int(finetune.stages))
    x_train, y_train = train_split
    start_all = time.perf_counter()

    work = copy.deepcopy(model)
    for p in work.parameters():
        p.requires_grad_(True)
    layout = layout or Layout.from_model(work)
    w_dense = layout.flatten(dict(work.named_parameters()))
    keep = torch.ones(layout.d, dtype=torch.bool)
    stage_logs: list[dict[str, Any]] = []
    last_log: dict[str, Any] = {}

    for t, s_t in enumerate(schedule, start=1):
        entry: dict[str, Any] = {"stage": t, "sparsity": s_t}
        grads: GradientSet | None = None
        if pruner.needs_gradients:
            t0 = time.perf_counter()
            if t == 1 and first_grads is not None:
                grads = first_grads
            else:
                stage_seed = seed if t == 1 else derive_seed(seed, "gradual-source", t)
                work.eval()
                grads = source.collect(work, calib_batch, stage_seed, layout, memory_budget_mb=memory_budget_mb)
            grads = mask_gradient_columns(grads, keep)
            entry["gradient_seconds"] = time.perf_counter() - t0

        weights = layout.weights_of(work)
        result = pruner.prune(weights, grads, s_t)
        del grads
        new_keep = layout.flatten(result.masks).to(torch.bool)
        revived = int((new_keep & ~keep).sum())
        keep = new_keep & keep
        masks = {n: m.clone() for n, m in layout.unflatten(keep).items()}
        params = dict(work.named_parameters())
        with torch.no_grad():
            for name, value in result.weights.items():
                params[name].copy_(value.reshape(params[name].shape))
        enforce_masks(work, masks)
        last_log = dict(result.log)
        entry.update(prune=_stage_summary(result.log), revived=revived,
                     realised_sparsity=1.0 - float(keep.sum()) / max(1, layout.d))

        t0 = time.perf_counter()
        if int(finetune.epochs) > 0:
            train_model(work, x_train, y_train, epochs=int(finetune.epochs), lr=float(finetune.lr),
                        batch_size=int(finetune.batch_size), weight_decay=float(finetune.weight_decay),
                        seed=derive_seed(seed, "gradual-finetune", t), masks=masks)
        entry["finetune_seconds"] = time.perf_counter() - t0
        work.eval()
        stage_logs.append(entry)
        if on_stage is not None:
            on_stage(entry)

    for p in work.parameters():
        p.requires_grad_(False)
    work.eval()
    final = layout.weights_of(work)
    w_final = layout.flatten(final)
    masks = {n: m.clone() for n, m in layout.unflatten(keep).items()}
    log = {
        "protocol": "gradual",
        "pruner": pruner.describe(),
        "sparsity_target": target,
        "kept": int(keep.sum()),
        "d": layout.d,
        "seconds": time.perf_counter() - start_all,
        **result_pqi_log(layout, w_dense, w_final, keep, masks),
        "gradual": {
            "schedule": schedule,
            "finetune": {k: getattr(finetune, k) for k in ("stages", "epochs", "lr", "batch_size", "weight_decay")},
            "stages": stage_logs,
        },
        "final_stage": _stage_summary(last_log),
    }
    return work, PruneResult(masks=masks, weights=final, log=log)
