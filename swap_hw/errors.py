"""Errors a user can act on.

Every error that reaches the command line is a `SwapHwError`; the CLI prints its one-line message
and exits with status 2. Anything else escaping is a bug in swap_hw, not in the user's input.
"""

from __future__ import annotations


class SwapHwError(Exception):
    """Base of all errors caused by user input or environment, shown without a traceback."""


class ConfigError(SwapHwError):
    """A scenario file (or a --set override) is invalid.

    The message always names the file and the dotted field path, then says what is allowed, e.g.
    ``scenarios/x.yaml: pruners[1].name: unknown pruner 'swp'; valid: lr, magnitude, swap``.
    """

    def __init__(self, file: str, field: str, message: str):
        self.file = str(file)
        self.field = field
        self.reason = message
        where = f"{self.file}: {field}: " if field else f"{self.file}: "
        super().__init__(where + message)


class ParameterError(SwapHwError, ValueError):
    """A component was called with a value outside its documented range (library use)."""
