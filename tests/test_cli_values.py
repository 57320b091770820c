"""Output paths and values given on the command line: each bad one is one line naming the flag and
value and saying what is allowed, exit 2, found before any work, and the database untouched."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from swap_hw.cli import main

from snippets import tiny_with_output  # noqa: E402  (tests/ is on sys.path under pytest)


@pytest.fixture
def db(finished, tmp_path):
    copy = tmp_path / "copy.sqlite"
    shutil.copy(finished[1], copy)
    return copy


def error_line(capsys, argv: list[str], *needles: str) -> str:
    """Run the CLI; it must exit 2 with exactly one line on stderr, `error: …`, holding `needles`."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def snapshot(db: Path) -> tuple:
    conn = sqlite3.connect(db)
    try:
        return tuple(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                     for t in ("runs", "cells", "measurements", "run_cells"))
    finally:
        conn.close()


# --- output paths ------------------------------------------------------------------------------------------------


def test_export_to_a_directory(capsys, monkeypatch, db, tmp_path):
    def prepare(*args, **kwargs):
        raise AssertionError("export recomputed the model before checking where to write it")

    monkeypatch.setattr("swap_hw.sweep.export.prepare", prepare)
    target = tmp_path / "models"
    target.mkdir()
    before = snapshot(db)
    error_line(capsys, ["export", str(target), "--db", str(db), "--pruner", "magnitude", "--sparsity", "0.5",
                        "--seed", "0"], str(target), "is a directory", "pruned.pt")
    assert list(target.iterdir()) == []
    under_file = tmp_path / "plain"
    under_file.write_text("x")
    error_line(capsys, ["export", str(under_file / "m.pt"), "--db", str(db), "--pruner", "magnitude",
                        "--sparsity", "0.5", "--seed", "0"], str(under_file), "is a file, not a folder")
    assert under_file.read_text() == "x" and snapshot(db) == before


def test_report_plot_to_an_existing_file(capsys, db, tmp_path):
    figure = tmp_path / "figure.png"
    figure.write_bytes(b"mine")
    error_line(capsys, ["report", "--db", str(db), "--plot", str(figure)], f"--plot {figure}", "is a file",
               "folder")
    assert figure.read_bytes() == b"mine"
    error_line(capsys, ["report", "--db", str(db), "--plot", str(figure / "sub")], "is under", "which is a file")


def test_report_out_into_a_missing_folder(capsys, db, tmp_path):
    missing = tmp_path / "no_such_folder"
    before = snapshot(db)
    error_line(capsys, ["report", "--db", str(db), "--format", "csv", "--out", str(missing / "r.csv")],
               f"--out {missing / 'r.csv'}", "does not exist")
    assert not missing.exists()
    # --compare writes through the same check
    error_line(capsys, ["report", "--db", str(db), "--compare", "a", "b", "--format", "json", "--out",
                        str(missing / "c.json")], "does not exist")
    assert not missing.exists() and snapshot(db) == before


def test_report_out_that_is_a_directory(capsys, db, tmp_path):
    error_line(capsys, ["report", "--db", str(db), "--format", "json", "--out", str(tmp_path)],
               f"--out {tmp_path}", "is a directory", "file path")


# --- values ------------------------------------------------------------------------------------------------------


def test_set_value_that_is_not_yaml(capsys, tmp_path):
    scenario = tmp_path / "s.yaml"
    scenario.write_text(tiny_with_output(tmp_path / "r.sqlite", tmp_path / "cache"))
    error_line(capsys, ["run", str(scenario), "--set", "sparsities=[0.5", "--quiet"],
               str(scenario), "sparsities", "'[0.5'", "not valid YAML", "e.g.")
    assert not (tmp_path / "r.sqlite").exists()


def test_set_without_equals(capsys, tmp_path):
    scenario = tmp_path / "s.yaml"
    scenario.write_text(tiny_with_output(tmp_path / "r.sqlite", tmp_path / "cache"))
    error_line(capsys, ["run", str(scenario), "--set", "sparsities", "--quiet"],
               str(scenario), "sparsities", "--set takes path.to.field=value")
    assert not (tmp_path / "r.sqlite").exists()


def test_report_unknown_metric_lists_the_runs_metrics(capsys, db, tmp_path):
    before = snapshot(db)
    error_line(capsys, ["report", "--db", str(db), "--metric", "acc"], str(db), "--metric 'acc'",
               "valid: accuracy, loss")
    error_line(capsys, ["report", "--db", str(db), "--metric", "acc", "--format", "markdown"], "valid: accuracy, loss")
    error_line(capsys, ["report", "--db", str(db), "--metric", "acc", "--plot", str(tmp_path / "figs")],
               "valid: accuracy, loss")
    assert not (tmp_path / "figs").exists() or list((tmp_path / "figs").iterdir()) == []
    # json and csv print every metric: --metric plays no part there
    assert main(["report", "--db", str(db), "--metric", "acc", "--format", "json"]) == 0
    assert snapshot(db) == before


def test_report_compare_unknown_metric(capsys, db, finished):
    run_id = finished[2]
    error_line(capsys, ["report", "--db", str(db), "--compare", run_id, run_id, "--metric", "acc"],
               "--metric 'acc'", "valid: accuracy, loss")


def test_run_unknown_metric_says_so_after_saving_the_run(capsys, tmp_path):
    scenario = tmp_path / "s.yaml"
    scenario.write_text(tiny_with_output(tmp_path / "r.sqlite", tmp_path / "cache"))
    error_line(capsys, ["run", str(scenario), "--metric", "acc", "--quiet"], "--metric 'acc'", "valid: accuracy, loss")
    assert snapshot(tmp_path / "r.sqlite")[1] == 6  # the cells are saved: report --metric accuracy shows them


def test_report_run_prefix_matching_several_runs(capsys, db, finished):
    run_id = finished[2]
    twin = run_id[:3] + ("0" if run_id[3] != "0" else "1") + run_id[4:]
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO runs (run_id, name, resolved_json, root_seed, started_at, status) "
                 "SELECT ?, name, resolved_json, root_seed, started_at + 1, status FROM runs WHERE run_id = ?",
                 (twin, run_id))
    conn.commit()
    conn.close()
    before = snapshot(db)
    error_line(capsys, ["report", "--db", str(db), "--run", run_id[:3]], str(db), f"run {run_id[:3]!r} is ambiguous",
               run_id, twin, "give more of the id")
    error_line(capsys, ["report", "--db", str(db), "--compare", run_id[:3], run_id], "is ambiguous")
    error_line(capsys, ["export", str(db.parent / "m.pt"), "--db", str(db), "--run", run_id[:3], "--pruner",
                        "magnitude", "--sparsity", "0.5", "--seed", "0"], "is ambiguous")
    # a longer prefix picks one
    capsys.readouterr()
    assert main(["report", "--db", str(db), "--run", run_id[:5], "--format", "json"]) == 0
    assert snapshot(db) == before


def test_report_run_prefix_is_not_a_pattern(capsys, db, finished):
    # '%' and '_' are SQL LIKE wildcards; a prefix is text, so '_' matches no run id (hex digits)
    error_line(capsys, ["report", "--db", str(db), "--run", "_"], "no run matches '_'", finished[2])
