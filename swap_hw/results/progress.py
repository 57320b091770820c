"""Progress of a running sweep (`run`, `Study.run`): a rich progress bar on a terminal or in a
notebook, plain log lines otherwise."""

from __future__ import annotations

import time
from typing import Any


class ProgressReporter:
    """Receives runner events (`plan`, `prepare`, `cell`, `finish`) and shows them.

    On a terminal or in a Jupyter notebook: one bar with cells done / total (cells already in the database count as done),
    elapsed and estimated time left. When stdout is not a terminal (CI, `| tee`): one line per
    event, at most one line per second for cells.
    `quiet`: nothing.
    """

    def __init__(self, console, quiet: bool = False):
        self.console = console
        self.quiet = quiet
        self.interactive = (console.is_terminal or console.is_jupyter) and not quiet
        self._progress = None
        self._task = None
        self._last_line = 0.0
        self._start = time.perf_counter()
        self._already = 0

    def __enter__(self) -> "ProgressReporter":
        if self.interactive:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                      console=self.console, transient=False)
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def event(self, kind: str, **info: Any) -> None:
        if self.quiet:
            return
        if kind == "plan":
            msg = f"run {info['run_id']}: {info['total']} cells, {info['total'] - info['todo']} already done"
            if self._progress is not None:
                self.console.print(msg)
                # the bar counts every cell of the sweep; ones already in the database start it off,
                # and only cells computed now feed the rate behind the time-left estimate
                self._already = info["total"] - info["todo"]
                self._task = self._progress.add_task("cells", total=max(info["total"], 1),
                                                     completed=self._already if info["total"] else 1)
            else:
                print(msg, flush=True)
        elif kind == "prepare":
            if self._progress is not None and self._task is not None:
                self._progress.update(self._task, description=info["message"])
            else:
                print(info["message"], flush=True)
        elif kind == "cell":
            rec = info["record"]
            if self._progress is not None and self._task is not None:
                self._progress.update(self._task, completed=self._already + info["done"],
                                      description=f"{rec.pruner} s={rec.sparsity_label} {rec.condition}")
            else:
                now = time.perf_counter()
                if now - self._last_line >= 1.0 or info["done"] == info["todo"]:
                    self._last_line = now
                    print(f"[{now - self._start:7.1f} s] {info['done']}/{info['todo']} cells "
                          f"({rec.pruner}, s={rec.sparsity_label}, {rec.condition})", flush=True)
