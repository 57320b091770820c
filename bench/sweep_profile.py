"""Where a sweep's time goes: `bench/replicate_mnist.py --quick`, profiled per protocol.

    python bench/sweep_profile.py [--protocols one_shot,multi_stage,gradual] [--repeats 1]
                                  [--sparsities 0.5,0.9,0.98] [--pruners lr,swap] [--full-products | --compare]
                                  [--mnist ../shared/data/mnist] [--cprofile 25] [--dump DIR] [--verbose]

docs/sweeps.md ("Where a sweep's time goes") has the figures: one protocol per command with
`--sparsities 0.5,0.9,0.98 --compare`.

Runs the scenarios of `bench/replicate_mnist.py --quick` (MLPNet on the fixed 8k/2k MNIST split;
magnitude / lr / swap / woodfisher × 5 sparsities × {clean, gaussian STD 2 PROP 0.25}; the digital
condition) through the ordinary runner and LocalExecutor (1 torch thread) into a FRESH temporary
database, and prints per protocol the wall time (seconds, and % of the protocol's total) split into

  gradients   GradientSource.collect, plus the staged protocols' masking of pruned columns
  solve       Pruner.prune (the solver: selection, IHT/CG, Sinkhorn, Woodbury, …)
  finetune    the gradual protocol's masked fine-tuning epochs (staged.finetune_stage)
  evaluate    Condition.evaluate on the test split (the digital condition here)
  store       every Store call of the run (open, plan, one transaction per cell, finish)
  prepare     loading the data and the dense model (trained once and cached in results/cache)
  other       the rest: planning, per-cell model copies, weight digests, the protocols' glue

Each item is timed EXCLUSIVELY by wrappers this script installs around those functions (a
function called inside another's timed call, e.g. a gradient collection inside a solve, counts
once, for the innermost item), so the items add up to the total. The cells' own logs
(`gradient_seconds`, `prune_seconds`, the stages' `gradient_seconds` / `finetune_seconds`) are read
back from the store and printed beside them as a cross-check, with the solve split by pruner.
Nothing in swap_hw is changed: the wrappers are removed when the script ends.

`--repeats` defaults to 1 (replicate_mnist's --quick runs 5; the cost per replicate is the same,
so the split is too); `--sparsities` / `--pruners` reduce the grid further (a 10-minute budget);
lr and swap run with `cg_columns: support` (their CG backsolve's products on X's support columns);
`--full-products` runs them at the package's default `cg_columns: all` (all d columns, the
arithmetic of every published record, bit for bit); `--compare` runs each protocol both ways in
one run and prints the ratios; `--cprofile N` also prints each protocol's N most expensive functions (cProfile,
cumulative; it slows the run, so its times are not the table's). `--dump DIR` writes each protocol's
records (values and prune logs without timings) as JSON, to compare two versions of the code.
The dense model cache is results/cache (replicate_mnist's), so "prepare" is a load once it exists.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import io
import json
import os
import pstats
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

ITEMS = ["gradients", "solve", "finetune", "evaluate", "store", "prepare", "other"]


class ExclusiveTimers:
    """Wall time per item, exclusive of nested timed calls (a stack of open calls)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.detail: dict[str, float] = defaultdict(float)  # "item/what" → exclusive seconds
        self._stack: list[list] = []  # [item, start, time spent in nested timed calls]
        self._patches: list[tuple[object, str, object]] = []

    def wrap(self, owner: object, attr: str, item: str, detail=None) -> None:
        """Time calls of owner.attr as `item`; `detail(args)`, if given, names a sub-item too."""
        original = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
        timers = self

        @functools.wraps(original)
        def timed(*args, **kwargs):
            frame = [item, time.perf_counter(), 0.0]
            timers._stack.append(frame)
            try:
                return original(*args, **kwargs)
            finally:
                timers._stack.pop()
                elapsed = time.perf_counter() - frame[1]
                timers.seconds[item] += elapsed - frame[2]
                timers.calls[item] += 1
                if detail is not None:
                    timers.detail[f"{item}/{detail(args)}"] += elapsed - frame[2]
                if timers._stack:
                    timers._stack[-1][2] += elapsed

        setattr(owner, attr, timed)
        self._patches.append((owner, attr, original))

    def restore(self) -> None:
        for owner, attr, original in reversed(self._patches):
            setattr(owner, attr, original)
        self._patches.clear()

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()
        self.detail.clear()


def install(timers: ExclusiveTimers) -> None:
    """Wrap the functions each item is made of (see the module docstring)."""
    import swap_hw.deploy as deploy_pkg
    import swap_hw.sweep.run as run_mod
    from swap_hw.deploy.base import CONDITIONS
    from swap_hw.gradients.base import GradientSource
    from swap_hw.protocols import staged
    from swap_hw.pruners.base import Pruner
    from swap_hw.results.store import Store

    _ = deploy_pkg  # registers every condition
    timers.wrap(GradientSource, "collect", "gradients")
    timers.wrap(staged, "mask_gradient_columns", "gradients")
    timers.wrap(Pruner, "prune", "solve", detail=lambda args: args[0].name)
    timers.wrap(staged, "finetune_stage", "finetune")
    for name in CONDITIONS.names():
        cls = CONDITIONS.get(name)
        if "evaluate" in cls.__dict__:
            timers.wrap(cls, "evaluate", "evaluate")
    for attr in ("__init__", "done_keys", "start_run", "set_run_info", "plan_cells", "relabel_cells",
                 "write_cell", "finish_run", "close"):
        timers.wrap(Store, attr, "store")
    timers.wrap(run_mod, "prepare", "prepare")


def scenario_for(protocol: str, repeats: int, npz: Path, sparsities: str | None, pruners: str | None,
                 cg_columns: str = "support"):
    """replicate_mnist's --quick scenario of `protocol`, optionally on fewer sparsities / pruners,
    with lr and swap's `cg_columns` set (support: the fast products; all: replicate_mnist's own)."""
    import replicate_mnist

    from swap_hw.config import parse_scenario_text

    text = replicate_mnist.scenario_text(npz, protocol, repeats, quick=True)
    if sparsities:
        text = text.replace(f"sparsities: {replicate_mnist.SPARSITIES}", f"sparsities: [{sparsities}]")
    line = f"pruners: [{replicate_mnist.pruner_entries(protocol)}]"
    keep = [p.strip() for p in pruners.split(",")] if pruners else None
    chosen = []
    for name, entry in replicate_mnist.pruner_list(protocol).items():
        if keep is not None and name not in keep:
            continue
        if name in ("lr", "swap") and cg_columns != "all":
            entry = (entry[:-1] if entry.startswith("{") else "{name: " + entry) + f", cg_columns: {cg_columns}}}"
        chosen.append(entry)
    assert line in text
    text = text.replace(line, f"pruners: [{', '.join(chosen)}]")
    return parse_scenario_text(text, f"replicate_mnist_{protocol}.yaml")


def log_seconds(records: list[dict]) -> dict[str, float]:
    """The timings the cells logged themselves, summed over cells (one per prune: a cell's log is
    shared by its conditions, and a unit's gradient_seconds by its cells)."""
    out: dict[str, float] = defaultdict(float)
    seen_units: set[tuple] = set()
    for r in records:
        log = r["prune_log"] or {}
        if not log:
            continue
        out["prune_seconds (whole protocol)"] += log.get("prune_seconds", 0.0)
        unit = (r["source"], r["seed"])
        if unit not in seen_units:
            seen_units.add(unit)
            out["unit gradient_seconds"] += log.get("gradient_seconds", 0.0)
        proto = log.get(log.get("protocol", ""), {})
        for stage in proto.get("stages", []) if isinstance(proto, dict) else []:
            out["stage gradient_seconds"] += stage.get("gradient_seconds", 0.0)
            out["stage finetune_seconds"] += stage.get("finetune_seconds", 0.0)
    return dict(out)


TIMING_KEYS = {"seconds", "gradient_seconds", "prune_seconds", "finetune_seconds", "finished_at"}


def strip_timings(value):
    """A record without its wall-clock fields (what two versions of the code must agree on)."""
    if isinstance(value, dict):
        return {k: strip_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [strip_timings(v) for v in value]
    return value


def cell_records(db: Path, run_id: str) -> list[dict]:
    """One entry per cell: labels, measurements and the prune log (from the store)."""
    from swap_hw.results.store import Store

    with Store(db) as store:
        logs = store.cell_logs(run_id)
        values = store.records(run_id)
    by_key: dict[str, list] = defaultdict(list)
    for r in values:
        by_key[r["cell_key"]].append({"metric": r["metric"], "value": r["value"]})
    out = []
    for c in logs:
        out.append({"cell_key": c["cell_key"], "pruner": c["pruner"], "source": c["source"],
                    "sparsity": c["sparsity_label"], "seed": c["seed"], "realised": c["sparsity"],
                    "prune_log": c["prune_log_json"],
                    "measurements": sorted(by_key[c["cell_key"]], key=lambda m: m["metric"])})
    return sorted(out, key=lambda r: r["cell_key"])


def _printer(start: float):
    def on_event(kind, **info):
        if kind == "cell":
            r = info["record"]
            print(f"  {time.perf_counter() - start:7.1f} s  {info['done']}/{info['todo']}  {r.pruner} "
                  f"{r.source} s={r.sparsity_label} seed {r.seed}: {r.seconds:.2f} s", flush=True)
    return on_event


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mnist", default=str(ROOT.parent / "shared/data/mnist"))
    ap.add_argument("--protocols", default="one_shot,multi_stage,gradual")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--sparsities", default=None, help="comma list replacing the 5 sparsities (a reduced run)")
    ap.add_argument("--pruners", default=None, help="comma list of pruner names to keep (a reduced run)")
    ap.add_argument("--verbose", action="store_true", help="print every cell as it finishes")
    ap.add_argument("--full-products", action="store_true",
                    help="lr / swap at cg_columns: all (the package's default, the arithmetic of every "
                    "published record) instead of cg_columns: support")
    ap.add_argument("--compare", action="store_true",
                    help="run each protocol at cg_columns: all, then support, and print the ratios (one run)")
    ap.add_argument("--cprofile", type=int, default=0, metavar="N")
    ap.add_argument("--dump", default=None, metavar="DIR")
    args = ap.parse_args()

    import torch
    from replicate_mnist import make_npz

    from swap_hw.sweep.executors import LocalExecutor
    from swap_hw.sweep.run import run_scenario

    npz = make_npz(Path(args.mnist), ROOT / "results/bench/mnist_8k2k.npz")
    timers = ExclusiveTimers()
    install(timers)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="sweep_profile_") as tmp:
            variants = ["all", "support"] if args.compare else ["all" if args.full_products else "support"]
            for protocol, cg_columns in [(p.strip(), v) for p in args.protocols.split(",") if p.strip()
                                         for v in variants]:
                db = Path(tmp) / f"{protocol}_{cg_columns}.sqlite"
                scenario = scenario_for(protocol, args.repeats, npz, args.sparsities, args.pruners, cg_columns)
                timers.reset()
                profiler = cProfile.Profile() if args.cprofile else None
                start = time.perf_counter()
                with (profiler or contextlib.nullcontext()):
                    summary = run_scenario(scenario, db=str(db), executor=LocalExecutor(torch_threads=1),
                                           on_event=_printer(start) if args.verbose else None)
                total = time.perf_counter() - start
                split = {k: timers.seconds.get(k, 0.0) for k in ITEMS if k != "other"}
                split["other"] = total - sum(split.values())
                records = cell_records(db, summary.run_id)
                rows.append((protocol, cg_columns, summary.computed, total, split, dict(timers.calls),
                             log_seconds(records), dict(timers.detail)))
                print(f"{protocol} (cg_columns: {cg_columns}): {summary.computed} cells in {total:.1f} s "
                      f"(dense model {'loaded' if summary.dense_was_cached else 'trained'})", flush=True)
                if profiler is not None:
                    stream = io.StringIO()
                    pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(args.cprofile)
                    print(stream.getvalue(), flush=True)
                if args.dump:
                    Path(args.dump).mkdir(parents=True, exist_ok=True)
                    (Path(args.dump) / f"{protocol}_{cg_columns}.json").write_text(
                        json.dumps(strip_timings(records), indent=1, sort_keys=True))
    finally:
        timers.restore()

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{args.repeats} replicate(s) per protocol, sparsities {args.sparsities or 'all 5'}, "
          f"pruners {args.pruners or 'all 4'}, 1 torch thread (torch {torch.__version__}), "
          f"{os.cpu_count()} cores, load average {load:.2f} at the end\n")
    print("| protocol | cg_columns | cells | total s | " + " | ".join(ITEMS) + " |")
    print("|---|---|---:|---:|" + "---:|" * len(ITEMS))
    for protocol, cg_columns, cells, total, split, *_ in rows:
        parts = [f"{split[k]:.1f} ({100 * split[k] / total:.0f} %)" if split[k] >= 0.05 else "–" for k in ITEMS]
        print(f"| {protocol} | {cg_columns} | {cells} | {total:.1f} | " + " | ".join(parts) + " |")
    print("\nsolve by pruner (s), calls per item, and the cells' own logged timings (s, summed) as a cross-check:")
    for protocol, cg_columns, _, _, _, calls, logged, detail in rows:
        print(f"  {protocol} ({cg_columns}): " + ", ".join(f"{k}: {v:.1f}" for k, v in sorted(detail.items())))
        print(f"  {protocol} ({cg_columns}): calls {dict(sorted(calls.items()))}")
        print(f"  {protocol} ({cg_columns}): logged {{" + ", ".join(f"{k}: {v:.1f}" for k, v in logged.items()) + "}")
    if args.compare:
        print("\ncg_columns all → support, seconds (×: all / support), measured in this one run:")
        print("| protocol | lr + swap solve | solve | total |")
        print("|---|---:|---:|---:|")
        by = {(r[0], r[1]): r for r in rows}
        for protocol in dict.fromkeys(r[0] for r in rows):
            old, new = by[(protocol, "all")], by[(protocol, "support")]

            def regression(row):
                return sum(v for k, v in row[7].items() if k in ("solve/lr", "solve/swap"))

            figures = [(regression(old), regression(new)), (old[4]["solve"], new[4]["solve"]), (old[3], new[3])]
            print(f"| {protocol} | " + " | ".join(f"{a:.1f} → {b:.1f} ({a / b:.2f}×)" for a, b in figures) + " |")


if __name__ == "__main__":
    main()
