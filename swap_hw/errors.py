"""Errors a user can act on.

Every error that reaches the command line is a `SwapHwError`; the CLI prints its one-line message
and exits with status 2 (bad input) or 1 (`RunFault`: a fault while running). Anything else
escaping is a bug in swap_hw, not in the user's input. `--debug` shows the traceback of either.
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


class RunFault(SwapHwError):
    """Something went wrong while running, not in the user's input: a full or read-only disk, a
    locked database, a NaN in a model. The CLI exits 1 (2 is bad input); what finished is kept."""


class ParameterError(SwapHwError, ValueError):
    """A component was called with a value outside its documented range (library use)."""


def field_path(loc: tuple) -> str:
    """A pydantic error location as the dotted path a user writes: ``pruners[1].epsilon``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


# pydantic adds union-member tags ("float", "literal['auto']") to locations; they are not fields
_UNION_TAGS = {"float", "int", "str", "bool"}


def validation_problem(exc, prefix: tuple = ()) -> tuple[str, str]:
    """(field path, one-line message) of the first error of a pydantic ValidationError: the one
    translation of pydantic's wording into this package's ("unknown key", "allowed: ...")."""
    err = exc.errors()[0]
    loc = prefix + tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS)))
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required field is missing"
    elif err["type"].startswith("literal_error"):
        msg = msg.replace("Input should be", "allowed:")
    return field_path(loc), msg
