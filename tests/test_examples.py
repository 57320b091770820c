"""The examples run end to end, as a user would run them, on small settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_custom_model_through_the_python_api(tmp_path):
    out = run(["examples/custom_model.py", "--quick", "--db", str(tmp_path / "api.sqlite")])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "analog" in out.stdout and "magnitude" in out.stdout and "swap" in out.stdout
    assert "weights are exactly zero" in out.stdout
    assert (tmp_path / "api.sqlite").is_file()


def test_custom_model_by_factory_in_a_scenario_file(tmp_path):
    out = run(["cli.py", "run", "examples/custom_model.yaml", "--quiet", "--set", "repeats=1",
               "--set", "sparsities=[0.3]", "--set", "model.train.epochs=3",
               "--set", f"output.db={tmp_path / 'factory.sqlite'}", "--set", f"output.cache_dir={tmp_path / 'cache'}"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("one_shot") == 6  # 2 sources × 3 pruners
