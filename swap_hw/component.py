"""The shape every pluggable member shares: a name, a documented `Params` model, a label.

A member (a gradient source, a pruner, a deployment condition) declares its parameters as a nested
pydantic model called `Params`, each field with a description and its allowed range. Scenario
validation checks a member's YAML entry against that model, so adding a member never touches the
config module.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    """Base of every member's parameter model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Component:
    """A registered member of a family. Subclasses set `Params` and are registered by name."""

    name: ClassVar[str] = "?"
    Params: ClassVar[type[Params]] = Params
    # Where in a scenario file this member was written (e.g. "pruners[2]"), for error messages;
    # set by config validation, None for members built in code.
    config_path: str | None = None

    def __init__(self, params: Params | None = None, **kwargs: Any):
        if params is not None and kwargs:
            raise TypeError("pass either a Params instance or keyword arguments, not both")
        self.params = params if params is not None else self.Params(**kwargs)

    def describe(self) -> dict[str, Any]:
        """Everything that determines this member's behaviour, JSON-serialisable."""
        return {"name": self.name, **self.params.model_dump(mode="json")}

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
