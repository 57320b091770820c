"""`one_shot`: the identity protocol — one pruner call at the dense weights, no training.

``pruner.prune(w̄, X, s)`` with X collected once at the dense model; the pruned model is the dense
model with the result's weights.
"""

from __future__ import annotations

from ..registry import ONE_SHOT
from .base import PROTOCOLS, PruningProtocol


@PROTOCOLS.register(ONE_SHOT)
class OneShot(PruningProtocol):
    """Prune once to the target, at the dense weights."""

    def _schedule(self, pruner, job, weights, target):
        result = pruner.prune(weights, job.gradients() if pruner.needs_gradients else None, target)
        return result.apply(job.model), result
