"""Deployment conditions. Importing this package registers every member in CONDITIONS."""

from ..registry import Registry
from .base import CONDITIONS, Condition, Measurement

Registry.discover(__name__, __path__)


names = CONDITIONS.names  # the registered members' names


def __getattr__(name: str):
    """Members by CamelCase name: ``swap_hw.deploy.Analog(...)``."""
    return CONDITIONS.attribute(name)

__all__ = ["CONDITIONS", "Condition", "Measurement"]
