"""The command line end to end, as a user runs it: subprocesses, exit codes, printed output."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from snippets import TINY  # noqa: E402  (tests/ is on sys.path under pytest)


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=300)


def test_run_prints_table_and_report_rerenders_it(write_scenario, tmp_path):
    path = write_scenario(TINY)
    db = tmp_path / "results.sqlite"
    first = cli("run", str(path))
    assert first.returncode == 0, first.stderr
    assert "magnitude" in first.stdout and "dense" in first.stdout and "digital" in first.stdout
    second = cli("run", str(path))
    assert second.returncode == 0
    assert "0 cells computed" in second.stdout and "6 already in" in second.stdout

    as_json = cli("report", "--db", str(db), "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    records = json.loads(as_json.stdout)
    assert len(records) == 6 * 2
    assert {"run", "pruner", "source", "sparsity", "seed", "condition", "drift_time", "metric", "value"} <= set(records[0])
    as_csv = cli("report", "--db", str(db), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert len(rows) == len(records)
    table = cli("report", "--db", str(db))
    assert table.returncode == 0 and "magnitude" in table.stdout
    runs = cli("runs", "--db", str(db))
    assert runs.returncode == 0 and "finished" in runs.stdout


def test_config_errors_exit_2_with_one_line_and_touch_nothing(write_scenario, tmp_path):
    path = write_scenario(TINY.replace("[magnitude]", "[magnitude, wizard]"))
    out = cli("run", str(path))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert str(path) in lines[0] and "pruners[1]" in lines[0] and "valid:" in lines[0]
    assert not (tmp_path / "results.sqlite").exists()

    missing = cli("run", str(tmp_path / "absent.yaml"))
    assert missing.returncode == 2 and "file not found" in missing.stderr

    bad_set = cli("validate", str(write_scenario(TINY, "ok.yaml")), "--set", "sparsities=[2]")
    assert bad_set.returncode == 2 and "sparsities[0]" in bad_set.stderr

    no_db = cli("report", "--db", str(tmp_path / "none.sqlite"))
    assert no_db.returncode == 2 and "no results database" in no_db.stderr


def test_validate_counts_cells(write_scenario):
    out = cli("validate", str(write_scenario(TINY)))
    assert out.returncode == 0 and "6 cells" in out.stdout


def test_every_shipped_scenario_validates():
    from swap_hw.config import load_scenario

    paths = sorted((ROOT / "scenarios").glob("*.yaml"))
    assert paths, "scenarios/ holds no scenario"
    for path in paths:
        load_scenario(path)  # raises ConfigError naming file and field
        assert path.read_text().lstrip().startswith("#"), f"{path.name} must start with a comment saying what it asks"
