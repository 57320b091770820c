"""Time of `python cli.py run SCENARIO` cold (empty cache and database) and warm (a re-run).

    python bench/run_time.py [scenarios/analog.yaml]

Cold: a fresh temporary results folder, so the dense model is trained and every cell computed.
Warm: the same command again, so every cell is found in the database and only the table is
printed. Targets for scenarios/analog.yaml on 2 cores: cold ≤ 180 s, warm ≤ 60 s. Each run is a
separate process, as a user would start it, so interpreter and import time are included.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed_run(scenario: str, out: Path) -> float:
    cmd = [sys.executable, str(ROOT / "cli.py"), "run", scenario, "--quiet",
           "--set", f"output.db={out / 'bench.sqlite'}", "--set", f"output.cache_dir={out / 'cache'}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"run failed ({proc.returncode}):\n{proc.stderr}")
    return seconds


def main() -> None:
    scenario = sys.argv[1] if len(sys.argv) > 1 else "scenarios/analog.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        cold = timed_run(scenario, out)
        warm = timed_run(scenario, out)
    print(f"scenario: {scenario}   cores: {os.cpu_count()}")
    print(f"cold run (train dense model, compute every cell): {cold:7.1f} s   target ≤ 180 s")
    print(f"warm run (every cell already in the database):    {warm:7.1f} s   target ≤ 60 s")


if __name__ == "__main__":
    main()
