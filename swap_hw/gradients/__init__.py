"""Gradient sources. Importing this package registers every member in GRADIENT_SOURCES."""

from ..registry import Registry
from .base import GRADIENT_SOURCES, OVER_BUDGET, GradientSource
from .gradient_set import GradientSet
from .per_sample import per_sample_gradients

Registry.discover(__name__, __path__)


names = GRADIENT_SOURCES.names  # the registered members' names


def __getattr__(name: str):
    """Members by CamelCase name: ``swap_hw.gradients.Analog(...)``."""
    return GRADIENT_SOURCES.attribute(name)

__all__ = ["GRADIENT_SOURCES", "OVER_BUDGET", "GradientSet", "GradientSource", "per_sample_gradients"]
