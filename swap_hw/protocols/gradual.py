"""`gradual`: multi_stage plus E epochs of masked fine-tuning after each stage — the regime of the
SWAP paper's headline numbers (specs/swap.md §2; staged.py has the algorithm)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..registry import ADDED_LATER, Params
from .base import PROTOCOLS, PruningProtocol
from .staged import prune_staged


@PROTOCOLS.register("gradual")
class Gradual(PruningProtocol):
    """Prune in stages, fine-tuning (Adam, masks enforced) after each."""

    # a scenario's `finetune:` block held these settings before protocols were a family
    settings_block = "finetune"

    class Params(Params):
        stages: int = Field(10, ge=1, le=1000, description="T: prune → fine-tune rounds (cubic sparsity schedule)")
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
                            fresh_calibration=job.train_split if self.params.fresh_calibration else None,
                            regrow=self.params.regrow, anchor_dense=self.params.anchor == "dense",
                            **job.storage)
