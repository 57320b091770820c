"""Deployment conditions. Importing this package registers every member in CONDITIONS."""

from .base import CONDITIONS, Condition, Measurement, accuracy_and_loss
from . import digital  # noqa: F401  (registers members)
from . import adversarial  # noqa: F401  (registers members)
from . import analog  # noqa: F401  (registers members)

__all__ = ["CONDITIONS", "Condition", "Measurement", "accuracy_and_loss"]
