"""Name → class registries for the three component families.

Each family (gradient sources, pruners, deployment conditions) owns one `Registry`. A member
registers itself with a decorator in its own module; the family package imports its members so
that importing the package fills the registry. Unknown names raise `KeyError` whose message lists
the valid names, which config validation turns into a file-and-field error.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

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

    def __contains__(self, name: str) -> bool:
        return name in self._members
