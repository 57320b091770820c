"""Models from the user's own code: ``model: {factory: "my_models:MyNet"}`` or ``"path/to/file.py:MyNet"``.

A factory reference names a module (importable from `sys.path`, e.g. ``my_models`` or
``pkg.nets``) or a Python file (a path ending in ``.py``, relative to the working folder), then
``:`` and an attribute of it: a `nn.Module` subclass or any callable returning one. It is called
with the scenario's ``model.options`` as keyword arguments, plus ``input_shape`` (per-example, e.g.
(1, 28, 28)) and ``n_classes`` when its signature accepts them (or ``**kwargs``).

Every process that builds the model imports the reference itself (process-pool and Dask workers
too): a module by its name, falling back to its file when the worker's `sys.path` lacks its folder
(a pool started from a notebook), a file by its path under a module name derived from its content.
The factory's source file enters the cell keys and the dense-model cache by the digest of its
contents (only that file: a change in another file it imports is not seen — keep the model in one
file, or bump a version option).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, Callable

from torch import nn

from ..digest import file_digest
from ..errors import ParameterError


def _split(ref: str) -> tuple[str, str]:
    module, sep, attr = str(ref).rpartition(":")
    if not sep or not module or not attr or not attr.replace(".", "").replace("_", "").isalnum():
        raise ParameterError(f"factory {ref!r} must be 'module:Name' or 'path/to/file.py:Name'")
    return module, attr


def _is_file_ref(module: str) -> bool:
    return module.endswith(".py") or "/" in module or "\\" in module


def _import_file(path: Path):
    if not path.is_file():
        raise ParameterError(f"factory file not found: {path}")
    digest = file_digest(path)
    name = f"swap_hw_user_{path.stem}_{digest[:12]}"  # the same file content gets the same module name
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file failed to import: say which and why
        del sys.modules[name]
        raise ParameterError(f"factory file {path} failed to import: {type(exc).__name__}: {exc}") from None
    return module


def _import_module(name: str, fallback_file: str | None):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if fallback_file and Path(fallback_file).is_file():
            return _import_file(Path(fallback_file))
        raise ParameterError(f"factory module {name!r} cannot be imported ({exc}); put its folder on "
                             "sys.path (PYTHONPATH) or give the file's path instead") from None
    except Exception as exc:  # noqa: BLE001
        raise ParameterError(f"factory module {name!r} failed to import: {type(exc).__name__}: {exc}") from None


def source_file(ref: str) -> str:
    """The file that defines the factory's module (imported to find it, for a module name)."""
    module, _ = _split(ref)
    if _is_file_ref(module):
        return str(Path(module).resolve())
    mod = _import_module(module, None)
    path = getattr(mod, "__file__", None)
    if not path:
        raise ParameterError(f"factory module {module!r} has no source file to know it by")
    return str(Path(path).resolve())


def resolve(ref: str, file: str | None = None) -> Callable[..., nn.Module]:
    """The callable a factory reference names. `file`: the module's source file (`source_file`),
    used when a worker cannot import the module by its name."""
    module, attr = _split(ref)
    if _is_file_ref(module):  # the absolute path found at validation, if given: workers may sit elsewhere
        mod = _import_file(Path(file) if file else Path(module))
    else:
        mod = _import_module(module, file)
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ParameterError(f"factory {ref!r}: {module} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ParameterError(f"factory {ref!r} is not callable")
    return obj


def call(factory: Callable[..., nn.Module], ref: str, input_shape: tuple[int, ...], n_classes: int,
         options: dict[str, Any]) -> nn.Module:
    """factory(**options), plus input_shape / n_classes where its signature takes them."""
    kwargs = dict(options)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for name, value in (("input_shape", tuple(input_shape)), ("n_classes", int(n_classes))):
        if (name in params or takes_any) and name not in kwargs:
            kwargs[name] = value
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise ParameterError(f"factory {ref!r} could not be called with options {sorted(options)}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ParameterError(f"factory {ref!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model
