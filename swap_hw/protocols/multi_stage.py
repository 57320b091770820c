"""`multi_stage`: T stages on the cubic schedule, gradients re-collected at the pruned weights
before each stage, no training — how CBS and CHITA++ prune one-shot (staged.py has the algorithm)."""

from __future__ import annotations

from pydantic import Field

from .base import PROTOCOLS, PruningProtocol
from .staged import StagedParams, prune_staged, stage_options


@PROTOCOLS.register("multi_stage")
class MultiStage(PruningProtocol):
    """Prune in stages, re-linearising (re-collecting X) before each; no retraining."""

    class Params(StagedParams):
        stages: int = Field(10, ge=1, le=1000, description="T: prune stages (cubic sparsity schedule)")

    def _schedule(self, pruner, job, weights, target):
        return prune_staged(pruner, job.model, job.source, job.calibration, target, self.params.stages, job.seed,
                            job.layout, first_grads=job.grads, **job.storage, **stage_options(self.params, job))
