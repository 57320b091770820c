"""Protocols: how a pruner is scheduled (one_shot, multi_stage, gradual). Importing this package
registers every member in PROTOCOLS."""

from ..registry import Registry
from .base import PROTOCOLS, PruneJob, PruningProtocol
from .staged import prune_staged

Registry.discover(__name__, __path__)


names = PROTOCOLS.names  # the registered members' names


def __getattr__(name: str):
    """Members by CamelCase name: ``swap_hw.protocols.Gradual(...)``."""
    return PROTOCOLS.attribute(name)

__all__ = ["PROTOCOLS", "PruneJob", "PruningProtocol", "prune_staged"]
