"""The four component families — gradient sources, pruners, deployment conditions, protocols —
and the shape every member shares.

Each family owns one `Registry`. A member is a class in its own module of the family's package,
registered by name with a decorator (``@PRUNERS.register("magnitude")``); the package calls
`discover` so that every module in it is imported and registered, with no list to edit. Unknown
names raise `KeyError` whose message lists the valid names, which config validation turns into a
file-and-field error.

A member declares its parameters as a nested pydantic model called `Params`, each field with a
description and its allowed range. Scenario validation checks a member's YAML entry against that
model, so adding a member never touches the config module.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from typing import Any, Callable, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_serializer

from .errors import ParameterError, validation_problem

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, family: str):
        self.family = family
        self._members: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorate(cls: type[T]) -> type[T]:
            if name in self._members:
                raise RuntimeError(f"{self.family} {name!r} registered twice")
            cls.name = name  # type: ignore[attr-defined]
            cls.family = self.family  # type: ignore[attr-defined]
            self._members[name] = cls
            return cls

        return decorate

    def get(self, name: str) -> type[T]:
        try:
            return self._members[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.family} {name!r}; valid: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._members)

    def attribute(self, attr: str) -> type[T]:
        """The member `attr` names in CamelCase, any capitalisation (``LabelNoise``, ``LR``, ``Lr``):
        what a family package returns for ``swap_hw.pruners.Swap``. Lower-case names are left to
        Python (they are the package's modules)."""
        wanted = attr.replace("_", "").lower()
        if attr[:1].isupper():
            for name in self._members:
                if name.replace("_", "").lower() == wanted:
                    return self._members[name]
        raise AttributeError(f"no {self.family} {attr!r}; members: "
                             f"{', '.join(''.join(p.capitalize() for p in n.split('_')) for n in self.names())}")

    def __contains__(self, name: str) -> bool:
        return name in self._members

    @staticmethod
    def discover(package: str, path: list[str]) -> None:
        """Import every module of a family's package (its `__name__`, `__path__`), so that each
        member file registers itself. Private modules (leading underscore) are skipped."""
        for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
            if not info.name.startswith("_"):
                importlib.import_module(f"{package}.{info.name}")


# Mark a parameter added after its member was first released: `Field(..., json_schema_extra=ADDED_LATER)`.
# While it holds its default it is left out of the member's description, so the cells, cell keys
# and run ids computed before it existed (when its default was the only behaviour) stay the same.
ADDED_LATER = {"added_later": True}


def omit_later_defaults(model: BaseModel, data: dict[str, Any]) -> dict[str, Any]:
    """`data` (model's JSON dump) less the ADDED_LATER fields that still hold their default."""
    for name, info in type(model).model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("added_later") and getattr(model, name) == info.default:
            data.pop(info.serialization_alias or info.alias or name, None)
            data.pop(name, None)
    return data


class LaterDefaultsOmitted(BaseModel):
    """A config block whose dumps (also nested in another model's) leave out the ADDED_LATER
    fields at their default, so adding such a field changes no existing key."""

    @model_serializer(mode="wrap")
    def _omit_later_defaults(self, handler: Any) -> dict[str, Any]:
        return omit_later_defaults(self, handler(self))


class Params(BaseModel):
    """Base of every member's parameter model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def described(self) -> dict[str, Any]:
        """The parameters as JSON, less the ones `ADDED_LATER` that still hold their default."""
        return omit_later_defaults(self, self.model_dump(mode="json"))


class Component:
    """A registered member of a family. Subclasses set `Params` and are registered by name."""

    name: ClassVar[str] = "?"
    family: ClassVar[str] = "member"  # set by the registry: "pruner", "gradient source", …
    Params: ClassVar[type[Params]] = Params
    # Where in a scenario file this member was written (e.g. "pruners[2]"), for error messages;
    # set by config validation, None for members built in code.
    config_path: str | None = None

    def __init__(self, params: Params | None = None, **kwargs: Any):
        if params is not None and kwargs:
            raise TypeError("pass either a Params instance or keyword arguments, not both")
        if params is not None:
            self.params = params
            return
        try:
            self.params = self.Params(**kwargs)
        except ValidationError as exc:  # the package's error, naming the parameter and what is allowed
            field, message = validation_problem(exc)
            raise ParameterError(f"{self.family} {self.name!r}: {field + ': ' if field else ''}{message}") from None

    def describe(self) -> dict[str, Any]:
        """Everything that determines this member's behaviour, JSON-serialisable."""
        return {"name": self.name, **self.params.described()}

    @property
    def label(self) -> str:
        """Short display name: the member name plus the parameters that differ from defaults."""
        changed = self.params.model_dump(mode="json", exclude_defaults=True)
        if not changed:
            return self.name
        inner = ",".join(f"{k}={_short(v)}" for k, v in sorted(changed.items()))
        return f"{self.name}({inner})"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label}>"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


# The identity names, from one place: the reference row of every comparison (the unpruned model's
# pruner label) and each family's identity member (untouched gradients, exact inference, one call).
DENSE = "dense"
CLEAN = "clean"
DIGITAL = "digital"
ONE_SHOT = "one_shot"
