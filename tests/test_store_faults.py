"""The results database when it is not what it should be: a directory, not a database, damaged, from
a newer swap_hw, read-only, locked, a full disk mid-run, two runs at once. Each is met through the
command line: one line naming the file, exit 2 (bad input) or 1 (a fault while running), no
traceback, nothing trained first, and the database untouched or consistent afterwards."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from swap_hw.cli import main
from swap_hw.results import store as store_module
from swap_hw.results.store import SCHEMA_VERSION

from snippets import tiny_with_output  # noqa: E402  (tests/ is on sys.path under pytest)

ROOT = Path(__file__).resolve().parents[1]
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture
def db_copy(finished, tmp_path):
    """A private copy of the finished database (the original stays clean for the other tests)."""
    db = finished[1]
    copy = tmp_path / "copy.sqlite"
    shutil.copy(db, copy)
    return copy


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if a run gets as far as loading data or training the dense model."""

    def prepare(*args, **kwargs):
        raise AssertionError("the run trained before finding the database unusable")

    monkeypatch.setattr("swap_hw.sweep.run.prepare", prepare)


@pytest.fixture
def fresh_scenario(tmp_path):
    """TINY with its own (empty) dense-model cache: a run of it would have to train first."""
    path = tmp_path / "fresh.yaml"
    path.write_text(tiny_with_output(tmp_path / "fresh.sqlite", tmp_path / "fresh_cache"))
    return path


def error_line(capsys, argv: list[str], code: int, *needles: str) -> str:
    """Run the CLI; it must exit `code` with exactly one line on stderr, `error: …`, holding `needles`."""
    capsys.readouterr()
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def count(db: Path, table: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def consistent(db: Path) -> tuple[int, int]:
    """(cells, measurements); every cell has its measurements and no measurement is orphaned."""
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        bare = conn.execute("SELECT COUNT(*) FROM cells c WHERE NOT EXISTS "
                            "(SELECT 1 FROM measurements m WHERE m.cell_key = c.cell_key)").fetchone()[0]
        orphans = conn.execute("SELECT COUNT(*) FROM measurements m WHERE NOT EXISTS "
                               "(SELECT 1 FROM cells c WHERE c.cell_key = m.cell_key)").fetchone()[0]
        dup = conn.execute("SELECT COUNT(*) FROM (SELECT cell_key, metric, draw, grid_json, COUNT(*) n "
                           "FROM measurements GROUP BY 1, 2, 3, 4 HAVING n > 1)").fetchone()[0]
        assert bare == orphans == dup == 0
        return (conn.execute("SELECT COUNT(*) FROM cells").fetchone()[0],
                conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0])
    finally:
        conn.close()


# --- not a usable database: bad input, exit 2 -------------------------------------------------------------


def test_db_that_is_a_directory(capsys, tmp_path, fresh_scenario, no_training):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    line = error_line(capsys, ["run", str(fresh_scenario), "--db", str(folder), "--quiet"], 2,
                      str(folder), "is a directory")
    assert "--db" in line
    error_line(capsys, ["report", "--db", str(folder)], 2, str(folder), "is a directory")
    error_line(capsys, ["runs", "--db", str(folder)], 2, str(folder), "is a directory")
    assert list(folder.iterdir()) == []  # nothing created inside


def test_db_that_is_not_a_database(capsys, tmp_path, fresh_scenario, no_training):
    notes = tmp_path / "notes.txt"
    notes.write_text("these are my notes, not a database\n" * 50)
    before = notes.read_bytes()
    error_line(capsys, ["run", str(fresh_scenario), "--db", str(notes), "--quiet"], 2,
               str(notes), "not a SQLite database")
    error_line(capsys, ["report", "--db", str(notes)], 2, str(notes), "not a SQLite database")
    assert notes.read_bytes() == before
    assert not Path(f"{notes}-wal").exists() and not Path(f"{notes}-journal").exists()


def test_db_under_a_file(capsys, tmp_path, fresh_scenario, no_training):
    blocker = tmp_path / "plain_file"
    blocker.write_text("x")
    error_line(capsys, ["run", str(fresh_scenario), "--db", str(blocker / "sub" / "r.sqlite"), "--quiet"], 2,
               str(blocker), "is a file, not a folder")
    assert blocker.read_text() == "x"


def test_truncated_database_is_called_damaged(capsys, db_copy, fresh_scenario, no_training):
    size = db_copy.stat().st_size
    with open(db_copy, "r+b") as f:
        f.truncate(size // 2)
    before = db_copy.read_bytes()
    error_line(capsys, ["report", "--db", str(db_copy)], 2, str(db_copy), "damaged", "new --db")
    error_line(capsys, ["run", str(fresh_scenario), "--db", str(db_copy), "--quiet"], 2, str(db_copy), "damaged")
    assert db_copy.read_bytes() == before  # not "repaired", not extended


def test_database_from_a_newer_swap_hw_is_refused(capsys, db_copy, fresh_scenario, no_training):
    newer = SCHEMA_VERSION + 7
    with sqlite3.connect(db_copy) as conn:
        conn.execute(f"PRAGMA user_version = {newer}")
    conn.close()
    cells = count(db_copy, "cells")
    for argv in (["report", "--db", str(db_copy)], ["runs", "--db", str(db_copy)],
                 ["run", str(fresh_scenario), "--db", str(db_copy), "--quiet"],
                 ["run", str(fresh_scenario), "--db", str(db_copy), "--dry-run"]):
        error_line(capsys, argv, 2, str(db_copy), f"written by a newer swap_hw (schema {newer} > {SCHEMA_VERSION})",
                   "upgrade")
    conn = sqlite3.connect(db_copy)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == newer  # not stamped down, not migrated
    conn.close()
    assert count(db_copy, "cells") == cells


# --- unwritable: a fault, exit 1, found before any training --------------------------------------------------


def _open_read_only(monkeypatch):
    """Make every connection the Store opens read-only at the SQLite level (mode=ro): the real
    'attempt to write a readonly database' that a chmod 0444 file gives a non-root user, also as root."""
    real = sqlite3.connect

    def connect(database, *args, **kwargs):
        if kwargs.pop("uri", False):
            return real(database, *args, uri=True, **kwargs)
        return real(f"file:{database}?mode=ro", *args, uri=True, **kwargs)

    monkeypatch.setattr(store_module.sqlite3, "connect", connect)


def test_read_only_database_fails_before_training(capsys, monkeypatch, db_copy, fresh_scenario, no_training):
    cells = consistent(db_copy)
    _open_read_only(monkeypatch)
    error_line(capsys, ["run", str(fresh_scenario), "--db", str(db_copy), "--quiet"], 1,
               str(db_copy), "read-only", "--db")
    # reading still works: report falls back to reading the read-only file as it is
    capsys.readouterr()
    assert main(["report", "--db", str(db_copy), "--format", "json"]) == 0
    assert '"magnitude"' in capsys.readouterr().out
    monkeypatch.undo()
    assert consistent(db_copy) == cells


@pytest.mark.skipif(AS_ROOT, reason="running as root: chmod does not stop root writing; "
                                    "test_read_only_database_fails_before_training covers it with a mode=ro connection")
def test_chmod_read_only_file_fails_before_training(capsys, db_copy, fresh_scenario, no_training):
    cells = consistent(db_copy)
    db_copy.chmod(0o444)
    try:
        error_line(capsys, ["run", str(fresh_scenario), "--db", str(db_copy), "--quiet"], 1, str(db_copy), "read-only")
    finally:
        db_copy.chmod(0o644)
    assert consistent(db_copy) == cells


@pytest.mark.skipif(AS_ROOT, reason="running as root: chmod does not stop root writing; "
                                    "test_read_only_database_fails_before_training covers it with a mode=ro connection")
def test_chmod_read_only_folder_fails_before_training(capsys, tmp_path, fresh_scenario, no_training):
    folder = tmp_path / "locked_folder"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        error_line(capsys, ["run", str(fresh_scenario), "--db", str(folder / "r.sqlite"), "--quiet"], 1,
                   str(folder / "r.sqlite"))
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


class FailingConnection:
    """A sqlite3 connection that raises `error` at the `after`-th write of a cell, as a disk that
    fills up or turns read-only while a run writes its cells would."""

    def __init__(self, conn, error: sqlite3.Error, after: int):
        self._conn, self._error, self._left = conn, error, after

    def execute(self, sql, *args):
        if sql.startswith("INSERT OR IGNORE INTO cells"):
            if self._left == 0:
                raise self._error
            self._left -= 1
        return self._conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._conn, name)


def _fail_cell_writes(monkeypatch, error: sqlite3.Error, after: int) -> None:
    real_open = store_module.Store._open

    def _open(self):
        real_open(self)
        if not self.read_only:
            self.conn = FailingConnection(self.conn, error, after)

    monkeypatch.setattr(store_module.Store, "_open", _open)


@pytest.mark.parametrize("message, needle", [
    ("attempt to write a readonly database", "read-only"),
    ("database or disk is full", "the disk is full"),
])
def test_fault_while_writing_cells_keeps_what_finished(capsys, monkeypatch, tmp_path, message, needle):
    db = tmp_path / "mid.sqlite"
    scenario = tmp_path / "mid.yaml"
    scenario.write_text(tiny_with_output(db, tmp_path / "cache"))
    _fail_cell_writes(monkeypatch, sqlite3.OperationalError(message), after=2)
    error_line(capsys, ["run", str(scenario), "--quiet"], 1, str(db), needle, "while writing a finished cell")
    monkeypatch.undo()
    assert consistent(db)[0] == 2  # the two cells before the fault, whole; the one in flight not at all
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT status FROM runs").fetchone()[0] == "interrupted"
    conn.close()
    # the same command resumes: the 4 missing cells, nothing doubled
    assert main(["run", str(scenario), "--quiet"]) == 0
    assert consistent(db) == (6, 12)


def test_locked_database_is_a_fault_naming_the_file(capsys, monkeypatch, db_copy, fresh_scenario, no_training):
    cells = consistent(db_copy)
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_S", 0.3)
    holder = sqlite3.connect(db_copy, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holding the write lock past the busy timeout
    try:
        error_line(capsys, ["run", str(fresh_scenario), "--db", str(db_copy), "--quiet"], 1,
                   str(db_copy), "locked by another process", "waited 0.3 s")
        error_line(capsys, ["report", "--db", str(db_copy)], 1, str(db_copy), "locked")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert consistent(db_copy) == cells


# --- two runs at once -------------------------------------------------------------------------------------------


def test_two_runs_on_one_database_at_once_lose_and_double_nothing(tmp_path):
    db = tmp_path / "shared.sqlite"
    scenario = tmp_path / "shared.yaml"
    scenario.write_text(tiny_with_output(db, tmp_path / "cache"))
    procs = [subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "run", str(scenario), "--quiet"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "Traceback" not in err
    assert consistent(db) == (6, 12)
    conn = sqlite3.connect(db)
    runs = conn.execute("SELECT run_id, invocations, status FROM runs").fetchall()
    planned = conn.execute("SELECT COUNT(*) FROM run_cells").fetchone()[0]
    conn.close()
    assert len(runs) == 1 and runs[0][1] == 2 and runs[0][2] == "finished"
    assert planned == 6


def test_dry_run_against_a_directory_is_refused(tmp_path, capsys):
    from swap_hw.cli import main as cli_main

    from snippets import TINY  # noqa: E402

    scenario = tmp_path / "s.yaml"
    scenario.write_text(TINY)
    folder = tmp_path / "adir"
    folder.mkdir()
    assert cli_main(["run", str(scenario), "--dry-run", "--db", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "is a directory" in err and err.count("\n") == 1
