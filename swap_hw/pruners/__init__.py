"""Pruners. Importing this package registers every member in PRUNERS."""

from ..registry import Registry
from .base import PRUNERS, PruneResult, Pruner, TrainingContext, hard_threshold, hard_threshold_mask, kept_count

Registry.discover(__name__, __path__)


names = PRUNERS.names  # the registered members' names


def __getattr__(name: str):
    """Members by CamelCase name: ``swap_hw.pruners.Swap(...)``."""
    return PRUNERS.attribute(name)

__all__ = ["PRUNERS", "PruneResult", "Pruner", "TrainingContext", "hard_threshold", "hard_threshold_mask",
           "kept_count"]
