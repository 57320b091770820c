"""Deployment conditions. Importing this package registers every member in CONDITIONS."""

from ..registry import Registry
from .base import CONDITIONS, Condition, Measurement

Registry.discover(__name__, __path__)

__all__ = ["CONDITIONS", "Condition", "Measurement"]
