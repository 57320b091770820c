"""`multi_stage`: T stages on the cubic schedule, gradients re-collected at the pruned weights
before each stage, no training — how CBS and CHITA++ prune one-shot (staged.py has the algorithm)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..registry import ADDED_LATER, Params
from .base import PROTOCOLS, PruningProtocol
from .staged import prune_staged


@PROTOCOLS.register("multi_stage")
class MultiStage(PruningProtocol):
    """Prune in stages, re-linearising (re-collecting X) before each; no retraining."""

    class Params(Params):
        stages: int = Field(10, ge=1, le=1000, description="T: prune stages (cubic sparsity schedule)")
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

    def _schedule(self, pruner, job, weights, target):
        return prune_staged(pruner, job.model, job.source, job.calibration, target, self.params.stages, job.seed,
                            job.layout, first_grads=job.grads, **job.storage,
                            fresh_calibration=job.train_split if self.params.fresh_calibration else None,
                            regrow=self.params.regrow, anchor_dense=self.params.anchor == "dense")
