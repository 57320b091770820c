"""Gradient sources. Importing this package registers every member in GRADIENT_SOURCES."""

from .base import GRADIENT_SOURCES, GradientSet, GradientSource, per_sample_gradients
from . import clean  # noqa: F401  (registers members)
from . import adversarial, label_noise  # noqa: F401  (registers members)
from . import analog, gaussian  # noqa: F401  (registers members)

__all__ = ["GRADIENT_SOURCES", "GradientSet", "GradientSource", "per_sample_gradients"]
