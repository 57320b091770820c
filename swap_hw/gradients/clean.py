"""`clean`: the identity gradient source — exact per-sample gradients, no noise."""

from __future__ import annotations

from ..registry import CLEAN
from .base import GRADIENT_SOURCES, GradientSource


@GRADIENT_SOURCES.register(CLEAN)
class CleanSource(GradientSource):
    """Per-sample gradients of the true labels through the digital model. Baseline of the family."""
