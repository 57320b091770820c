"""What the Python API costs over the command line: the same scenario, cold each time (a fresh
database and dense-model cache), through `cli.main(["run", ...])` and through
`swap_hw.Study.from_yaml(...).run()`, in one process, alternating, `--rounds` times each.

    python bench/api_overhead.py [--scenario scenarios/analog.yaml] [--set repeats=2] [--rounds 3]

Prints every time, the medians and the API's overhead in percent (target: at most 5 %). The two
paths must also give the same records, which is checked.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import swap_hw as sh  # noqa: E402
from swap_hw.cli import main as cli_main  # noqa: E402
from swap_hw.results.store import Store  # noqa: E402


def values(db: Path) -> list[tuple]:
    with Store(db) as store:
        run = store.resolve_run_id(None)
        return [(r["cell_key"], r["metric"], r["value"]) for r in store.records(run)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="scenarios/analog.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=None,
                    help="scenario override (repeatable); default: repeats=2")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    overrides = args.overrides if args.overrides is not None else ["repeats=2"]
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {"cli": [], "api": []}
    records: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for path in (("cli", "api") if r % 2 == 0 else ("api", "cli")):
                where = Path(tmp) / f"{path}{r}"
                sets = [*overrides, f"output.db={where / 'db.sqlite'}", f"output.cache_dir={where / 'cache'}"]
                t0 = time.perf_counter()
                if path == "cli":
                    argv = ["run", args.scenario, "--quiet"]
                    for s in sets:
                        argv += ["--set", s]
                    assert cli_main(argv) == 0
                else:
                    sh.Study.from_yaml(args.scenario, overrides=sets).run(progress=False)
                times[path].append(time.perf_counter() - t0)
                records.setdefault(path, values(where / "db.sqlite"))
    assert records["cli"] == records["api"], "the CLI and the API gave different records"
    cli, api = statistics.median(times["cli"]), statistics.median(times["api"])
    print(f"\n{args.scenario} {' '.join(overrides)}, cold, {args.rounds} rounds, "
          f"{torch.get_num_threads()} torch thread, {platform.machine()}")
    print(f"cli: {', '.join(f'{t:.1f}' for t in times['cli'])} s   median {cli:.1f} s")
    print(f"api: {', '.join(f'{t:.1f}' for t in times['api'])} s   median {api:.1f} s")
    print(f"API overhead: {100 * (api - cli) / cli:+.1f} % (target ≤ 5 %); records identical: yes")


if __name__ == "__main__":
    main()
