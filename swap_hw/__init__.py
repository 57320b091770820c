"""swap_hw: which pruner keeps the most accuracy when its gradients are noisy, and how the pruned
model then holds up on the same noisy hardware.

    import swap_hw as sh
    results = sh.Study(model=net, train=train_loader, test=test_loader,
                       pruners=["magnitude", "lr", "swap"], sparsities=[0.5, 0.8]).run()
    results.table()

The public API is `Study`, `Results`, `prune`, the member namespaces `sources`, `pruners`,
`conditions`, `protocols`, and the errors; docs/api.md describes it. Importing the package is cheap:
the API loads on first use.
"""

from .errors import ConfigError, ParameterError, SwapHwError

__version__ = "0.1.0"

_API = ("Study", "Results", "prune")
# the member families under the names a user reaches for; members by CamelCase name (sh.pruners.Swap)
_FAMILIES = {"sources": "gradients", "pruners": "pruners", "conditions": "deploy", "protocols": "protocols"}


def __getattr__(name: str):
    import importlib

    if name in _API:
        return getattr(importlib.import_module(".api", __name__), name)
    if name in _FAMILIES:
        return importlib.import_module(f".{_FAMILIES[name]}", __name__)
    raise AttributeError(f"module 'swap_hw' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API, *_FAMILIES])


__all__ = ["ConfigError", "ParameterError", "SwapHwError", *_API, *_FAMILIES]
