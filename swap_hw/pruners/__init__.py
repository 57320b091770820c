"""Pruners. Importing this package registers every member in PRUNERS."""

from .base import PRUNERS, PruneResult, Pruner, hard_threshold, hard_threshold_mask, kept_count
from . import magnitude  # noqa: F401  (registers members)

__all__ = ["PRUNERS", "PruneResult", "Pruner", "hard_threshold", "hard_threshold_mask", "kept_count"]
