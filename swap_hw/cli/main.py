"""Command line: `run`, `validate`, `report`, `runs`, `export`. Thin: parse, call swap_hw, print.

Exit codes: 0 success, 2 bad input (one line naming file and field, no traceback), 1 a fault while
running (disk full, database locked, NaN; one line), 130 interrupted (finished cells are kept; run
the same command again to resume). `--debug` adds the traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Sequence

from . import sweeps as cli_sweeps
from ..errors import RunFault, SwapHwError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="swap_hw", description="Prune under noisy gradients; judge on noisy hardware.")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error, not just its line")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run (or resume) a scenario and print its summary table")
    run.add_argument("scenario", help="scenario YAML file")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                     help="override a field, e.g. --set sparsities=[0.5,0.9] --set pruners[1].epsilon=0.05")
    run.add_argument("--db", help="results database (default: the scenario's output.db)")
    run.add_argument("--metric", default="accuracy", help="metric shown in the summary table")
    run.add_argument("--quiet", action="store_true", help="no progress output, only the table")
    cli_sweeps.add_run_arguments(run)

    val = sub.add_parser("validate", help="check a scenario file without running it")
    val.add_argument("scenario")
    val.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")

    rep = sub.add_parser("report", help="re-render results from the database only")
    rep.add_argument("--db", default="results/swap_hw.sqlite")
    rep.add_argument("--run", help="run id or a unique prefix (default: the newest run)")
    rep.add_argument("--format", choices=["table", "json", "csv", "markdown"], default="table",
                     help="table: the summary (rich); markdown: the same summary as a GitHub-flavoured markdown "
                          "table; json/csv: every record")
    rep.add_argument("--metric", default="accuracy")
    rep.add_argument("--out", help="write json/csv/markdown here instead of standard output")
    rep.add_argument("--layers", action="store_true",
                     help="also show per-layer sparsity and PQ index before → after for every pruner, and on analog "
                     "conditions the crossbar tiles each layer programs / frees and its line reads per inference")
    cli_sweeps.add_report_arguments(rep)
    cli_sweeps.add_export_parser(sub)

    runs = sub.add_parser("runs", help="list the runs in a database")
    runs.add_argument("--db", default="results/swap_hw.sqlite")
    return p


def _open_store(db: str):
    """The database `report` and `runs` read. Opened for writing (which migrates an older one);
    a read-only one that needs no migration is read as it is."""
    from pathlib import Path

    from ..results.store import SCHEMA_VERSION, ReadOnlyDatabase, Store

    if not Path(db).exists():  # a directory or a file that is no database: the Store says which
        raise SwapHwError(f"{db}: no results database here (run a scenario first, or pass --db)")
    try:
        return Store(db)
    except ReadOnlyDatabase as exc:
        try:
            store = Store(db, read_only=True)
        except SwapHwError:
            raise exc
        if store.version != SCHEMA_VERSION:  # an older schema needs writing to migrate
            store.close()
            raise exc
        return store


def cmd_validate(args) -> int:
    """The scenario file, then what `run` checks before training (the data loaded and checked, the
    model built and probed, a checkpoint read), without training; warnings go to stderr."""
    from ..config import load_scenario
    from ..sweep.prepare import checked_inputs
    from ..sweep.run import plan_cells

    scenario = load_scenario(args.scenario, args.overrides)
    checked = checked_inputs(scenario)
    for warning in checked.warnings:
        print(f"warning: {scenario.file}: {warning}", file=sys.stderr)
    print(f"{args.scenario}: valid — {len(plan_cells(scenario))} cells "
          f"({len(scenario.sources)} sources × {len(scenario.pruners)} pruners × "
          f"{len(scenario.spec.sparsities)} sparsities × {scenario.spec.repeats} replicates × "
          f"{len(scenario.conditions)} conditions, plus dense references)")
    splits = checked.splits
    model = (f"checkpoint {scenario.spec.model.checkpoint} read" if checked.checkpoint is not None
             else "model built")
    print(f"inputs checked: data {splits.name}, {int(splits.x_train.shape[0])} train / "
          f"{int(splits.x_test.shape[0])} test examples, input {'×'.join(map(str, splits.input_shape))}, "
          f"{splits.n_classes} classes; {model}, {checked.layout.d:,} prunable weights"
          f"{f'; {len(checked.warnings)} warning(s)' if checked.warnings else ''}")
    return 0


def cmd_run(args) -> int:
    from ..config import load_scenario
    from ..results.progress import ProgressReporter
    from ..results.report import describe_run, make_console, render_table, summarize
    from ..results.store import Store
    from ..sweep.run import run_scenario

    # validates everything before any work
    scenario = load_scenario(args.scenario, args.overrides + cli_sweeps.device_override(args))
    console = make_console()
    if args.dry_run:
        return cli_sweeps.dry_run(scenario, args.db, console)
    with cli_sweeps.executor_from_args(args) as executor, ProgressReporter(console, quiet=args.quiet) as progress:
        if not args.quiet and executor.kind != "local":
            console.print(f"executor: {executor.describe()}")
        summary = run_scenario(scenario, db=args.db, on_event=progress.event, executor=executor)
    if not args.quiet:
        console.print(f"run {summary.run_id}: {summary.computed} cells computed, {summary.skipped} already in "
                      f"{summary.db}, {summary.seconds:.1f} s")
    with Store(summary.db) as store:
        records = store.records(summary.run_id)
        info = describe_run(store.run_info(summary.run_id))
    cli_sweeps.check_metric(args.metric, records, "--metric", summary.db, summary.run_id)  # the run is saved
    if info:
        console.print(info, highlight=False)
    render_table(summarize(records, args.metric), title=f"{scenario.name} — run {summary.run_id}", console=console)
    return 0


def cmd_report(args) -> int:
    from ..results.report import (describe_run, make_console, records_csv, records_json, render_markdown,
                                  render_table, summarize)

    if args.out:  # paths first: nothing is read (or drawn) before they are known to be usable
        cli_sweeps.check_out_file(args.out)
    if args.plot:
        cli_sweeps.check_plot_dir(args.plot)
    with _open_store(args.db) as store:
        if args.compare:
            return cli_sweeps.report_compare(args, store)
        run_id = store.resolve_run_id(args.run)
        if run_id is None:
            known = ", ".join(r["run_id"] for r in store.runs()) or "none"
            what = f"no run matches {args.run!r}" if args.run else "the database holds no runs"
            raise SwapHwError(f"{args.db}: --run: {what}; runs: {known}")
        run = store.run(run_id)
        info = describe_run(store.run_info(run_id))
        records = store.records(run_id)
        cell_logs = store.cell_logs(run_id) if (args.layers or args.plot) else []
    if args.plot or args.format in ("table", "markdown"):  # json/csv hold every metric
        cli_sweeps.check_metric(args.metric, records, "--metric", args.db, run_id)
    if args.plot:
        cli_sweeps.report_plot(records, args.plot, args.metric, run["name"], cell_logs)  # figures name no run id
    if args.format == "table":
        console = make_console()
        if info:
            console.print(info, highlight=False)
        render_table(summarize(records, args.metric), title=f"{run['name']} — run {run_id}", console=console)
        if args.layers:
            from ..results.report import layer_rows, render_layers

            render_layers(layer_rows(cell_logs, records), title=f"per-layer sparsity and PQ index — run {run_id}")
        return 0
    if args.format == "markdown":
        text = render_markdown(summarize(records, args.metric), title=f"{run['name']} — run {run_id}")
        text = f"{info}\n\n{text}" if info else text
    else:
        text = records_json(records) if args.format == "json" else records_csv(records)
    if args.out:
        cli_sweeps.write_out_file(args.out, text)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def cmd_runs(args) -> int:
    import datetime as dt

    from rich.table import Table

    from ..results.report import make_console

    with _open_store(args.db) as store:
        runs = store.runs()
    table = Table(title=f"runs in {args.db}")
    for col in ("run", "name", "scenario", "status", "cells done/planned", "started", "user files (content sha256)"):
        table.add_column(col)
    for r in runs:
        started = dt.datetime.fromtimestamp(r["started_at"]).strftime("%Y-%m-%d %H:%M") if r["started_at"] else ""
        files = "\n".join(f"{field} {sha}" for field, sha in sorted(r["files"].items()))
        table.add_row(r["run_id"], r["name"], r["scenario_file"] or "", r["status"] or "",
                      f"{r['done']}/{r['planned']}", started, files)
    make_console().print(table)
    return 0


COMMANDS = {"run": cmd_run, "validate": cmd_validate, "report": cmd_report, "runs": cmd_runs,
            "export": cli_sweeps.cmd_export}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SwapHwError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, RunFault) else 2
    except KeyboardInterrupt:
        print("interrupted: finished cells are saved; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
