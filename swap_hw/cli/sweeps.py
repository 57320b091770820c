"""The sweep parts of the command line (kept apart from cli.py so both stay small):
`run --dry-run`, `run --workers/--executor/--address/--device`, `report --compare`, `report --plot`, `export`.
Thin like cli.py: parse, call swap_hw, print.
"""

from __future__ import annotations

import argparse
import errno
import json
from pathlib import Path

from ..errors import RunFault, SwapHwError


def add_run_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument("--dry-run", action="store_true",
                     help="list the planned cells (and which are already done) and the total; compute nothing")
    run.add_argument("--workers", type=int, default=1, metavar="N",
                     help="compute work units in a local pool of N processes (1 torch thread each)")
    run.add_argument("--executor", choices=["local", "dask"], default="local",
                     help="local: this machine; dask: an existing dask.distributed cluster (--address)")
    run.add_argument("--address", metavar="tcp://HOST:PORT", help="the Dask scheduler, for --executor dask")
    run.add_argument("--threads", type=int, default=1, metavar="T",
                     help="torch intra-op threads per process (default 1: the simulated models are small and "
                          "thread hand-offs cost more than they save; parallelism comes from --workers)")
    run.add_argument("--device", metavar="DEVICE",
                     help="where cells are computed, instead of the scenario's `device`: auto, cpu, cuda or cuda:N "
                          "(not part of the cells' identity; see docs/gpu.md)")


def add_report_arguments(rep: argparse.ArgumentParser) -> None:
    rep.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"),
                     help="two runs (ids or unique prefixes) side by side with B − A and its 95%% CI")
    rep.add_argument("--plot", metavar="DIR",
                     help="also write PNG figures (metric vs sparsity per condition, vs drift time per pruner)")


def add_export_parser(sub) -> None:
    exp = sub.add_parser("export", help="write the pruned model of one cell as a torch state_dict plus masks")
    exp.add_argument("out", metavar="OUT.pt", help="file to write")
    exp.add_argument("--db", default="results/swap_hw.sqlite")
    exp.add_argument("--run", help="run id or a unique prefix (default: the newest run)")
    exp.add_argument("--pruner", required=True, help="pruner label as shown by report (or its name if unique)")
    exp.add_argument("--sparsity", required=True, help="a sparsity of the run, e.g. 0.9, or auto")
    exp.add_argument("--seed", type=int, required=True, metavar="K", help="replicate index, 0 … repeats−1")
    exp.add_argument("--source", help="gradient source label (needed when the run has several)")


# --------------------------------------------------------------------------------------------
# paths and values the user gives: checked before any work, one line naming the flag and value


def _os_error(what: str, exc: OSError) -> SwapHwError:
    """An OSError writing a user's output as one line: a full or read-only disk is a RunFault."""
    why = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EROFS, errno.EIO, errno.EDQUOT):
        return RunFault(f"{what}: cannot write ({why})")
    return SwapHwError(f"{what}: cannot write ({why}); pass another path")


def _first_existing(path: Path) -> Path:
    return next((a for a in (path, *path.parents) if a.exists()), path)


def check_out_file(path: str, flag: str = "--out") -> Path:
    """A file a command will write: not a directory, in a folder that exists."""
    out = Path(path)
    if out.is_dir():
        raise SwapHwError(f"{flag} {path}: is a directory; pass a file path, e.g. {out / 'report.txt'}")
    folder = out.parent
    if not folder.is_dir():
        blocker = _first_existing(folder)
        if blocker.exists() and not blocker.is_dir():
            raise SwapHwError(f"{flag} {path}: {blocker} is a file, not a folder; pass another path")
        raise SwapHwError(f"{flag} {path}: the folder {folder} does not exist; create it first, or pass another path")
    return out


def write_out_file(path: str, text: str, flag: str = "--out") -> None:
    out = check_out_file(path, flag)
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise _os_error(f"{flag} {path}", exc) from exc


def check_plot_dir(path: str) -> Path:
    """The folder `--plot` writes figures into (created if missing): not a file, nor under one."""
    out = Path(path)
    blocker = _first_existing(out)
    if blocker.exists() and not blocker.is_dir():
        what = "is a file" if blocker == out else f"is under {blocker}, which is a file"
        raise SwapHwError(f"--plot {path}: {what}, not a folder; pass a folder for the figures (created if missing)")
    return out


def check_metric(metric: str, records: list[dict], flag: str, db: str, run_id: str) -> None:
    """A metric the run holds values of (none to check when it holds no records yet)."""
    have = sorted({r["metric"] for r in records})
    if have and metric not in have:
        raise SwapHwError(f"{db}: {flag} {metric!r}: run {run_id} holds no such metric; valid: {', '.join(have)}")


def device_override(args) -> list[str]:
    """`--device X` as the `--set` override it stands for (validated with the scenario, so a device
    this machine lacks is refused before any work, naming the field `device`)."""
    device = getattr(args, "device", None)
    return [] if device is None else [f"device={json.dumps(device)}"]  # quoted: YAML reads it as text


def executor_from_args(args):
    import torch

    from ..sweep.executors import make_executor

    if args.threads < 1:
        raise SwapHwError(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)  # the coordinator computes units itself with the local executor
    return make_executor(args.executor, args.workers, args.address, torch_threads=args.threads)


def dry_run(scenario, db: str | None, console) -> int:
    """Print every planned cell with whether it is done, and the totals. Touches nothing."""
    from rich.table import Table

    from ..sweep.executors import plan_status
    from ..sweep.plan import cell_labels, group_cells

    status = plan_status(scenario, db)
    table = Table(title=f"{scenario.name}: planned cells (dry run, nothing computed)")
    for col in ("replicate", "source", "pruner", "sparsity", "condition", "done?"):
        table.add_column(col, justify="right" if col in ("replicate", "sparsity") else "left")
    for cell, done in status:
        lab = cell_labels(scenario, cell)
        table.add_row(str(lab["replicate"]), lab["source"], lab["pruner"], lab["sparsity"], lab["condition"],
                      "yes" if done else "no")
    console.print(table)
    n_done = sum(done for _, done in status)
    todo = {c.key for c, done in status if not done}
    units = [u for u in group_cells([c for c, _ in status]) if any(c.key in todo for c in u.cells)]
    console.print(f"total: {len(status)} cells, {n_done} already done, {len(todo)} to compute in "
                  f"{len(units)} work units (database: {db or scenario.spec.output.db})")
    return 0


def _resolve(store, prefix: str, db: str) -> str:
    run_id = store.resolve_run_id(prefix)  # several runs starting with `prefix`: SwapHwError listing them
    if run_id is None:
        known = ", ".join(r["run_id"] for r in store.runs()) or "none"
        raise SwapHwError(f"{db}: --compare: no run matches {prefix!r}; runs: {known}")
    return run_id


def report_compare(args, store) -> int:
    import json

    from ..results.compare import compare_records, comparison_as_dicts, render_comparison, render_comparison_markdown
    from ..results.report import make_console

    ids = [_resolve(store, prefix, args.db) for prefix in args.compare]
    runs = [store.run(i) for i in ids]
    records = [store.records(i) for i in ids]
    for run_id, run_records in zip(ids, records):
        check_metric(args.metric, run_records, "--metric", args.db, run_id)
    comparison = compare_records(records[0], records[1], args.metric)
    if args.format == "table":
        render_comparison(comparison, f"{runs[0]['name']} ({ids[0]})", f"{runs[1]['name']} ({ids[1]})",
                          console=make_console())
        return 0
    rows = comparison_as_dicts(comparison)
    if args.format == "markdown":
        text = render_comparison_markdown(comparison, f"{runs[0]['name']} ({ids[0]})", f"{runs[1]['name']} ({ids[1]})")
    elif args.format == "json":
        text = json.dumps(rows, indent=1) + "\n"
    else:
        import csv
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["source"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    if args.out:
        write_out_file(args.out, text)
    else:
        print(text, end="")
    return 0


def report_plot(records, out_dir: str, metric: str, title: str, cell_logs=()) -> None:
    import sys

    from ..results.plots import write_plots

    check_plot_dir(out_dir)
    try:
        paths = write_plots(records, out_dir, metric=metric, title=title)
        paths += _pqi_curves(out_dir, cell_logs)
    except OSError as exc:
        raise _os_error(f"--plot {out_dir}", exc) from exc
    if not paths:
        raise SwapHwError(f"--plot: the run holds no {metric!r} values to plot")
    # stderr, so `report --plot DIR --format json > out.json` still gives clean JSON
    print(f"wrote {len(paths)} figure(s) to {out_dir}: " + ", ".join(p.name for p in paths), file=sys.stderr)


def _pqi_curves(out_dir: str, cell_logs) -> list[Path]:
    from ..results.plots import unique_stems
    from ..results.plots_pqi import plot_pqi_curve

    paths = []
    # Iterative pruners (sap, lottery) log every prune–retrain round: PQI and accuracy against the
    # remaining weights, one figure per pruned model (the paper's fall–rise–fall diagnostic).
    curves: dict[str, dict] = {}
    for cell in cell_logs:
        log = cell.get("prune_log_json") or {}
        name = f"pqi_{cell['pruner']}_s{cell['sparsity_label']}_{cell['source']}_r{cell['seed']}"
        if log.get("iterations") and name not in curves:
            curves[name] = cell
    stems = unique_stems({name: name for name in curves})  # a hash only where two slugs collide
    for name, cell in curves.items():
        paths.append(plot_pqi_curve(cell["prune_log_json"]["iterations"], Path(out_dir) / f"{stems[name]}.png",
                                    title=f"{cell['pruner']}, sparsity {cell['sparsity_label']}, replicate {cell['seed']}"))
    return paths


def cmd_export(args) -> int:
    from rich.table import Table

    from ..sweep.export import export_pruned
    from ..results.report import make_console

    if not Path(args.db).exists():  # a directory or a non-database: the Store says which
        raise SwapHwError(f"{args.db}: no results database here (run a scenario first, or pass --db)")
    result = export_pruned(args.db, args.run, args.pruner, args.sparsity, args.seed, args.out, source=args.source)
    meta = result.meta
    table = Table(title=f"{meta['pruner']} at sparsity {meta['sparsity_label']}, replicate {meta['seed']}, "
                        f"source {meta['source']} — run {meta['run']}")
    for col in ("layer", "shape", "weights", "kept", "sparsity"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for layer in result.layers:
        table.add_row(layer["name"], "×".join(map(str, layer["shape"])), str(layer["size"]), str(layer["kept"]),
                      f"{layer['sparsity']:.4f}")
    total = sum(layer["size"] for layer in result.layers)
    kept = sum(layer["kept"] for layer in result.layers)
    table.add_section()
    table.add_row("all pruned weights", "", str(total), str(kept), f"{1 - kept / total:.4f}" if total else "")
    console = make_console()
    console.print(table)
    check = "matches the run's recorded digest" if meta["verified"] else "sparsity matches the run (no digest recorded)"
    console.print(f"wrote {result.path} (state_dict + masks; weights {meta['weights_sha']}, {check})")
    return 0
