"""The command line: `swap-hw` / `python cli.py` (parse, call swap_hw, print)."""

from .main import main

__all__ = ["main"]
