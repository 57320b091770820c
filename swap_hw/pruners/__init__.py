"""Pruners. Importing this package registers every member in PRUNERS."""

from .base import PRUNERS, PruneResult, Pruner, hard_threshold, hard_threshold_mask, kept_count
from . import magnitude  # noqa: F401  (registers members)
from . import lr, swap, woodfisher  # noqa: F401  (regression pruners sharing iht.py; OBS)
from . import sap, lottery  # noqa: F401  (iterative members; call prune_iterative)
from .iterative import IterativePruner, TrainingContext

__all__ = ["PRUNERS", "PruneResult", "Pruner", "hard_threshold", "hard_threshold_mask", "kept_count", "IterativePruner", "TrainingContext"]
