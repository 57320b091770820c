"""`gradual`: multi_stage plus E epochs of masked fine-tuning after each stage — the regime of the
SWAP paper's headline numbers (specs/swap.md §2; staged.py has the algorithm)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..registry import ADDED_LATER
from .base import PROTOCOLS, PruningProtocol
from .staged import StagedParams, prune_staged, stage_options


@PROTOCOLS.register("gradual")
class Gradual(PruningProtocol):
    """Prune in stages, fine-tuning (Adam, masks enforced) after each."""

    # a scenario's `finetune:` block held these settings before protocols were a family
    settings_block = "finetune"

    class Params(StagedParams):
        stages: int = Field(10, ge=1, le=1000, description="T: prune → fine-tune rounds (cubic sparsity schedule)")
        epochs: int = Field(1, ge=0, description="E: fine-tuning epochs after each stage, pruned weights held at 0")
        lr: float = Field(1e-3, gt=0, description="Adam learning rate of fine-tuning")
        batch_size: int = Field(64, gt=0, description="fine-tuning minibatch size")
        weight_decay: float = Field(0.0, ge=0, description="weight decay of fine-tuning")
        optimizer: Literal["adam", "sgd"] = Field(
            "adam", json_schema_extra=ADDED_LATER,
            description="fine-tuning optimiser: Adam (default) or SGD with `momentum` (the authors' code: SGD, "
            "lr 1e-3, momentum 0.5 for MLPNet, 0.9 and weight decay 1e-4 for ResNet20)",
        )
        momentum: float = Field(0.0, ge=0, lt=1, json_schema_extra=ADDED_LATER,
                                description="SGD momentum (ignored by Adam)")

    def _schedule(self, pruner, job, weights, target):
        return prune_staged(pruner, job.model, job.source, job.calibration, target, self.params.stages, job.seed,
                            job.layout, finetune=self.params, train_split=job.train_split, first_grads=job.grads,
                            **stage_options(self.params, job), **job.storage)
