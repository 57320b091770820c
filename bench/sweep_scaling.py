"""Sweep throughput: cells per minute with 1 and 2 local workers, and where the time goes.

A fixed sweep on digits / MLPNet (d = 3 560): sources clean and gaussian(std=1); the one-shot
pruners registered among magnitude, woodfisher, lr, swap (or --pruners); sparsities 0.5, 0.7,
0.9; conditions digital and analog PCM (drift 1 s and 1 day, 2 programming draws); --repeats
replicates. The dense model is trained and cached before timing, so every run below starts from
the same cached model and only computes cells.

For each worker count it prints wall-clock seconds, cells per minute and the speed-up over one
worker, and checks that the records are identical. From the cells' logs it splits the computing
time into gradient collection (once per (replicate, source) unit: `gradient_seconds`), pruning
(once per (unit, pruner, sparsity): `prune_seconds`) and evaluation (per cell: `seconds` −
`prune_seconds`; dense reference cells are all evaluation); "other" is the rest of the wall time
× workers (process start, loading data and model in each worker, database writes, idle workers
at the end of the sweep).

    python bench/sweep_scaling.py [--repeats 6] [--workers 1,2] [--pruners magnitude,swap] [--threads 1]

One torch thread per worker by default (see bench/gradient_collection.py: on a shared machine
OpenMP threads spin-wait), so "1 worker" is one core and "2 workers" two.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swap_hw.config import parse_scenario_text  # noqa: E402
from swap_hw.sweep.executors import LocalExecutor, ProcessPoolExecutor  # noqa: E402
from swap_hw.pruners import PRUNERS  # noqa: E402
from swap_hw.sweep.prepare import prepare  # noqa: E402
from swap_hw.sweep.run import run_scenario  # noqa: E402
from swap_hw.results.store import Store  # noqa: E402

SCENARIO = """
seed: 0
repeats: {repeats}
model: {{train: {{epochs: 10}}}}
calibration: {{n: 500}}
sources: [clean, {{name: gaussian, std: 1.0}}]
pruners: [{pruners}]
sparsities: [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
conditions: [digital, {{name: analog, drift_times: [1, 3600, 86400, 31536000], draws: 3}}]
output: {{db: {db}, cache_dir: {cache}}}
"""


def time_split(db: str, run_id: str) -> dict[str, float]:
    """Seconds spent in gradient collection, pruning and evaluation, summed over the run's cells."""
    with Store(db) as store:
        cells = store.cell_logs(run_id)
    grad: dict[tuple, float] = {}
    prune: dict[tuple, float] = {}
    evaluation = 0.0
    for c in cells:
        log = c["prune_log_json"]
        if log is None:  # dense reference: evaluation only
            evaluation += c["seconds"]
            continue
        unit = (c["seed"], c["source"])
        grad[unit] = log.get("gradient_seconds", 0.0)
        prune[unit + (c["pruner"], c["sparsity_label"])] = log.get("prune_seconds", 0.0)
        evaluation += c["seconds"] - log.get("prune_seconds", 0.0)
    return {"gradients": sum(grad.values()), "pruning": sum(prune.values()), "evaluation": evaluation}


def records(db: str, run_id: str) -> list[tuple]:
    with Store(db) as store:
        return [(r["cell_key"], r["metric"], r["value"], r["drift_time"], r["draw"]) for r in store.records(run_id)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--pruners", help="comma-separated pruners (default: registered ones of magnitude, woodfisher, lr, swap)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pruners = args.pruners.split(",") if args.pruners else [
        p for p in ("magnitude", "woodfisher", "lr", "swap") if p in PRUNERS]
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        text = lambda db: SCENARIO.format(repeats=args.repeats, pruners=", ".join(pruners), db=db, cache=cache)  # noqa: E731
        scenario = parse_scenario_text(text(Path(tmp) / "warm.sqlite"), "sweep_scaling.yaml")
        t0 = time.perf_counter()
        prepare(scenario)  # train and cache the dense model outside the timings
        print(f"pruners: {', '.join(pruners)}; dense model trained and cached in {time.perf_counter() - t0:.1f} s")
        if not any(p.needs_gradients for p in scenario.pruners):
            print("note: none of these pruners needs gradients, so the runner collects none (gradients = 0%)")
        reference = None
        base_rate = None
        print(f"{'workers':>7} {'cells':>6} {'wall s':>8} {'cells/min':>10} {'speed-up':>9} "
              f"{'gradients':>10} {'pruning':>8} {'evaluation':>11} {'other':>7}  same records")
        for n in [int(w) for w in args.workers.split(",")]:
            db = str(Path(tmp) / f"w{n}.sqlite")
            scenario = parse_scenario_text(text(db), "sweep_scaling.yaml")
            executor = LocalExecutor() if n == 1 else ProcessPoolExecutor(n, torch_threads=args.threads)
            t0 = time.perf_counter()
            summary = run_scenario(scenario, executor=executor)
            wall = time.perf_counter() - t0
            rate = summary.computed / wall * 60
            base_rate = base_rate or rate
            split = time_split(db, summary.run_id)
            budget = wall * n
            other = max(budget - sum(split.values()), 0.0)
            fractions = {k: v / budget for k, v in split.items()}
            got = records(db, summary.run_id)
            same = "reference" if reference is None else ("yes" if got == reference else "NO")
            reference = reference or got
            print(f"{n:>7} {summary.computed:>6} {wall:>8.1f} {rate:>10.0f} {rate / base_rate:>8.2f}× "
                  f"{fractions['gradients']:>9.0%} {fractions['pruning']:>8.0%} {fractions['evaluation']:>10.0%} "
                  f"{other / budget:>7.0%}  {same}")
        print("fractions are of wall time × workers (worker-seconds)")


if __name__ == "__main__":
    main()
