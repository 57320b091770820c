"""The staged schedule shared by the `multi_stage` and `gradual` protocols.

multi_stage — one-shot in the CBS / CHITA++ sense (no training at all): T stages on the cubic
schedule, the calibration gradients RE-COLLECTED at the current pruned weights before each stage.
The quadratic models behind lr / swap / woodfisher are expansions around the point where X was
taken; at s = 0.95 the pruned point is far from w̄, and re-linearising along the way is what keeps
the model accurate there (measured: docs/pruners.md, "Re-collecting gradients").

gradual — what the SWAP paper's headline numbers include (specs/swap.md §2): multi_stage plus E
epochs of masked fine-tuning after each stage.

With T stages on the cubic schedule (pruners/schedule.py)

    s_t = s_T + (s_0 − s_T)·(1 − (t−1)/(T−1))³,   t = 1..T,   s_0 = 0   (T = 1: just s_T)

each stage t of multi_stage and gradual
  1. collects the calibration gradients X_t at the CURRENT weights (stage 1 may reuse the
     gradients of the dense model), with the columns of already-pruned weights set to zero;
  2. calls ``pruner.prune(weights_t, X_t, s_t)`` — the pruner stays pure and sees the stage's
     weights, in which every weight pruned so far is exactly 0 (so its anchor w̄ is weights_t);
  3. intersects the new mask with the previous one, so the pruned set only grows (a pruner that
     kept a zeroed weight on its support loses it; counted as `revived` in the stage log);
  4. writes the surviving weights into the model and (gradual only) fine-tunes E epochs with the
     mask enforced after every optimiser step (`models.train_model(masks=...)`): pruned weights
     stay exactly 0. With the gradual protocol's `hwa` settings every one of these fine-tunings is
     hardware-aware (`noise.hwa.hwa_train_model`: aihwkit weight-noise injection, same optimiser,
     batches and seeds, masks enforced the same way).

The stage's sparsity is reached exactly unless a pruner revives weights (then it ends higher, and
the log says by how much). Fine-tuning trains every parameter of the model (biases, BatchNorm
affine parameters and running statistics too), so `prune_staged` returns the whole model, not just
the pruned tensors. Seeds: stage t ≥ 2 collects with derive_seed(seed, "gradual-source", t) (stage
1 uses `seed`, the one-shot seed) and fine-tunes with derive_seed(seed, "gradual-finetune", t); the
names are the gradual protocol's, which came first, and multi_stage shares them, so both protocols
draw the same gradient noise at the same stage.

The dense reference of a gradual run (`finetune_dense`) is the dense model put through the same
fine-tuning calls — T calls of E epochs, seeds derive_seed(seed, "gradual-finetune", t), no mask —
so it differs from a pruned model only by the pruning: it equals the `magnitude` pruner at sparsity
0 under the same protocol and seed (each stage then keeps every weight).
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable, Literal, Mapping, Protocol

import torch
from pydantic import Field
from torch import nn

from ..data import draw_examples
from ..errors import ParameterError
from ..gradients import GradientSet, GradientSource
from ..gradients.matrix_free import mask_gradient_columns
from ..layout import Layout
from ..models import enforce_masks, train_model
from ..noise.hwa import HWAConfig, hwa_train_model
from ..pruners.base import PruneResult, Pruner, result_pqi_log
from ..pruners.schedule import check_sparsity, cubic_schedule
from ..registry import ADDED_LATER, Params
from ..seeding import derive_seed


class StagedParams(Params):
    """The settings every staged protocol shares (`stages` is declared by each, its meaning differs)."""

    fresh_calibration: bool = Field(
        False, json_schema_extra=ADDED_LATER,
        description="draw a new calibration batch of n training examples at every stage (seeded per stage), "
        "as the authors' code does; false = the replicate's one batch at every stage",
    )
    regrow: bool = Field(
        False, json_schema_extra=ADDED_LATER,
        description="let a later stage re-select weights an earlier one pruned (their gradients stay live), "
        "as the authors' code does; false = the pruned set only grows",
    )
    anchor: Literal["stage", "dense"] = Field(
        "stage", json_schema_extra=ADDED_LATER,
        description="what each stage's objective is anchored at (targets, plan, ridge): the stage's own weights "
        "(stage, default) or the dense model's at every stage while the step starts from the stage's weights "
        "(dense: the authors' code; for lr and swap)",
    )


def stage_options(params: StagedParams, job) -> dict[str, Any]:
    """prune_staged's keyword arguments for these settings and a PruneJob."""
    return {"fresh_calibration": job.train_split if params.fresh_calibration else None,
            "regrow": params.regrow, "anchor_dense": params.anchor == "dense"}


class FinetuneSettings(Protocol):
    """What the gradual protocol reads from its settings (`optimizer` and `momentum` are optional:
    Adam without them; `hwa` is optional: digital fine-tuning without it)."""

    stages: int
    epochs: int
    lr: float
    batch_size: int
    weight_decay: float


def finetuner_of(finetune: FinetuneSettings) -> HWAConfig | None:
    """The HWA settings of `finetune`, or None for digital fine-tuning."""
    return getattr(finetune, "hwa", None)


def finetune_log(finetune: FinetuneSettings) -> dict[str, Any]:
    """What the protocol's log says about its fine-tuning: the settings and which fine-tuner ran
    ("digital", or "hwa" with its settings under "hwa")."""
    hwa = finetuner_of(finetune)
    out = {k: getattr(finetune, k) for k in ("stages", "epochs", "lr", "batch_size", "weight_decay")}
    out["optimizer"] = getattr(finetune, "optimizer", "adam")
    out["momentum"] = float(getattr(finetune, "momentum", 0.0))
    out["finetuner"] = "digital" if hwa is None else "hwa"
    if hwa is not None:
        out["hwa"] = hwa.model_dump(mode="json")
    return out


def finetune_stage(model: nn.Module, finetune: FinetuneSettings, train_split: tuple[torch.Tensor, torch.Tensor],
                   seed: int, masks: Mapping[str, torch.Tensor] | None) -> None:
    """Fine-tune `model` in place for `finetune.epochs` epochs on `train_split` (digital, or
    hardware-aware when `finetune.hwa` is set), `masks` held at zero after every step, seeded."""
    if int(finetune.epochs) <= 0:
        return
    options = dict(epochs=int(finetune.epochs), lr=float(finetune.lr), batch_size=int(finetune.batch_size),
                   weight_decay=float(finetune.weight_decay), seed=int(seed), masks=masks,
                   optimizer=getattr(finetune, "optimizer", "adam"), momentum=float(getattr(finetune, "momentum", 0.0)))
    hwa = finetuner_of(finetune)
    if hwa is None:
        train_model(model, *train_split, **options)
        return
    tuned = hwa_train_model(model, *train_split, config=hwa, **options)
    with torch.no_grad():  # back into the caller's model, keeping its parameters' requires_grad
        model.load_state_dict(tuned.state_dict())


def finetune_dense(model: nn.Module, finetune: FinetuneSettings, train_split: tuple[torch.Tensor, torch.Tensor],
                   seed: int) -> tuple[nn.Module, dict[str, Any]]:
    """The dense reference of a gradual run: a copy of `model` fine-tuned as every pruned model of
    the run is, without pruning — `finetune.stages` calls of `finetune.epochs` epochs each (the
    same total), stage t seeded with derive_seed(seed, "gradual-finetune", t), no mask. Equal to
    the `magnitude` pruner at sparsity 0 under the same settings and seed. Returns (model in eval
    mode, log) with log = {"finetune": finetune_log(...), "seconds": wall-clock seconds}."""
    start = time.perf_counter()
    work = copy.deepcopy(model)
    for p in work.parameters():
        p.requires_grad_(True)
    for t in range(1, int(finetune.stages) + 1):
        finetune_stage(work, finetune, train_split, derive_seed(seed, "gradual-finetune", t), None)
    for p in work.parameters():
        p.requires_grad_(False)
    work.eval()
    return work, {"finetune": finetune_log(finetune), "seconds": time.perf_counter() - start}


def _stage_summary(log: Mapping[str, Any]) -> dict[str, Any]:
    """The pruner's log of one stage without its per-layer table (kept once, for the result)."""
    return {k: v for k, v in log.items() if k not in ("layers", "pruner")}


def prune_staged(
    pruner: Pruner,
    model: nn.Module,
    source: GradientSource | None,
    calib_batch: tuple[torch.Tensor, torch.Tensor],
    sparsity: float,
    stages: int,
    seed: int,
    layout: Layout | None = None,
    *,
    finetune: FinetuneSettings | None = None,
    train_split: tuple[torch.Tensor, torch.Tensor] | None = None,
    memory_budget_mb: float | None = None,
    over_budget: str = "recompute",
    spill_dir: str | None = None,
    first_grads: GradientSet | None = None,
    on_stage: Callable[[dict[str, Any]], None] | None = None,
    fresh_calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
    regrow: bool = False,
    anchor_dense: bool = False,
) -> tuple[nn.Module, PruneResult]:
    """Prune to `sparsity` in `stages` stages, re-collecting gradients before each (see the module
    docstring): the `multi_stage` protocol, or `gradual` when `finetune` is given (then
    `finetune.epochs` of masked fine-tuning on `train_split` follow each stage).
    Returns (pruned model, result).

    pruner:      any one-shot pruner (`prune(weights, grads, s)`); iterative pruners (sap,
                 lottery) run their own prune–retrain loop and are refused here.
    model:       the dense model; not modified (a copy is pruned and trained).
    source:      the gradient source collecting X_t at each stage (None only for pruners that
                 need no gradients).
    calib_batch: the (x, y) calibration examples, the same at every stage.
    stages:      T ≥ 1, the number of stages on the cubic schedule.
    finetune:    the fine-tuning settings (epochs, lr, batch_size, weight_decay) or None.
    train_split: the (x, y) examples fine-tuning trains on (never the test split).
    memory_budget_mb, over_budget, spill_dir: how each stage holds X (GradientSource.collect).
    first_grads: gradients already collected at the dense weights with `seed` (reused at stage 1).
    fresh_calibration: the (x, y) examples to draw a new calibration batch from at every stage
                 t ≥ 2 (as many as `calib_batch` holds, seeded by derive_seed(seed,
                 "stage-calibration", t)), as the authors' code does; None = `calib_batch` throughout.
    regrow:      let a later stage re-select weights an earlier one pruned (the authors' code): their
                 gradient columns stay live and the stage's mask replaces the previous one instead of
                 being intersected with it; `revived` then counts the weights regrown.
    anchor_dense: anchor every stage's objective at the dense weights (targets, plan, ridge) while
                 the step starts from the stage's weights, as the authors' code does; false = each
                 stage's own weights are its w̄ (pruners with `uses_anchor_weights`; others ignore it).
    on_stage:    called with each stage's log entry as soon as the stage is done.

    The result's masks are the final masks, its weights the final pruned (fine-tuned) tensors, its
    log the usual per-layer sparsity / PQI (dense reference → final weights) plus
    log[protocol] = {"schedule", "stages": [per-stage entries], "finetune": {...} (gradual only: the
    settings and which fine-tuner ran, `finetune_log`)}.
    """
    protocol = "multi_stage" if finetune is None else "gradual"
    if finetune is not None and train_split is None:
        raise ParameterError("the gradual protocol needs the train_split it fine-tunes on")
    if pruner.schedules_itself:
        raise ParameterError(
            f"pruner {pruner.name!r} runs its own prune–retrain loop; the {protocol} protocol applies to "
            "one-shot pruners (magnitude, lr, swap, woodfisher)"
        )
    if pruner.needs_gradients and source is None:
        raise ParameterError(f"pruner {pruner.name!r} needs a gradient source for the {protocol} protocol")
    target = check_sparsity(sparsity)
    schedule = cubic_schedule(target, int(stages))
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
                batch = calib_batch
                if fresh_calibration is not None and t > 1:
                    draw_seed = derive_seed(seed, "stage-calibration", t)
                    batch = draw_examples(*fresh_calibration, calib_batch[0].shape[0], draw_seed)
                    entry["calibration_seed"] = draw_seed
                work.eval()
                grads = source.collect(work, batch, stage_seed, layout, memory_budget_mb=memory_budget_mb,
                                       over_budget=over_budget, spill_dir=spill_dir)
            if not regrow:  # a pruned weight gets no gradient, so no pruner can bring it back
                grads = mask_gradient_columns(grads, keep)
            entry["gradient_seconds"] = time.perf_counter() - t0

        weights = layout.weights_of(work)
        if anchor_dense and pruner.uses_anchor_weights:  # the dense targets and ridge at every stage
            result = pruner.prune(weights, grads, s_t, anchor_weights=layout.unflatten(w_dense))
        else:
            result = pruner.prune(weights, grads, s_t)
        del grads
        new_keep = layout.flatten(result.masks).to(torch.bool)
        revived = int((new_keep & ~keep).sum())
        keep = new_keep if regrow else new_keep & keep
        masks = {n: m.clone() for n, m in layout.unflatten(keep).items()}
        params = dict(work.named_parameters())
        with torch.no_grad():
            for name, value in result.weights.items():
                params[name].copy_(value.reshape(params[name].shape))
        enforce_masks(work, masks)
        last_log = dict(result.log)
        entry.update(prune=_stage_summary(result.log), revived=revived,
                     realised_sparsity=1.0 - float(keep.sum()) / max(1, layout.d))

        if finetune is not None:
            t0 = time.perf_counter()
            finetune_stage(work, finetune, train_split, derive_seed(seed, "gradual-finetune", t), masks)
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
        "protocol": protocol,
        "pruner": pruner.describe(),
        "sparsity_target": target,
        "kept": int(keep.sum()),
        "d": layout.d,
        "seconds": time.perf_counter() - start_all,
        **result_pqi_log(layout, w_dense, w_final, keep, masks),
        protocol: {
            "schedule": schedule,
            **({"finetune": finetune_log(finetune)} if finetune is not None else {}),
            "stages": stage_logs,
        },
        "final_stage": _stage_summary(last_log),
    }
    return work, PruneResult(masks=masks, weights=final, log=log)
