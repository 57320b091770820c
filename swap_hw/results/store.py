"""The results database: one SQLite file, written only by the coordinating process.

Tables:
- runs:         one row per scenario (run_id = hash of the resolved config, so running the same
                scenario again resumes the same run): scenario text, resolved config, root seed,
                package versions, git commit, start/end, how many times it was invoked.
- cells:        one row per finished cell, keyed by `cell_key` = hash of everything that determines
                the cell (data, model, training, calibration, source, replicate, pruner, sparsity,
                condition, protocol, root seed). Cells are shared between runs with equal keys.
- measurements: the long-format values of a cell: metric, value, draw (the repetition), grid (the
                condition's grid coordinates: every numeric tag, e.g. drift_time, eps) and the
                other, descriptive tags (e.g. attack=pgd). Every grid tag is stored, read and
                reported the same way, whatever the condition calls it.
- run_cells:    which cells a run planned, so a report of a run shows exactly its grid.

Schema version 2 (PRAGMA user_version); a version-1 database (drift_time a column of its own, other
tags in tags_json) is migrated in place, in one transaction, the first time it is opened for
writing.

A cell and its measurements are written in one transaction: a crash loses at most the cell in
flight, and a finished cell is never half-written. The `records` view joins everything into the
long format the reports and exports read.

Faults: every sqlite3 error leaves the Store as a one-line `SwapHwError` naming the file (see
`_translate`): a directory, a file that is not a SQLite database, a damaged one, or one written by a
newer swap_hw is bad input (exit 2); a read-only file or folder, a lock held past the busy timeout,
a full disk or an I/O error is a `RunFault` (exit 1). Opening for writing writes (one transaction
that creates, migrates and stamps the schema version), so an unwritable or locked database is
found when it is opened, before any work, not when the first cell is written.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from ..errors import RunFault, SwapHwError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    scenario_file TEXT,
    scenario_text TEXT,
    resolved_json TEXT NOT NULL,
    root_seed INTEGER NOT NULL,
    versions_json TEXT,
    git_commit TEXT,
    started_at REAL,
    finished_at REAL,
    status TEXT,
    invocations INTEGER DEFAULT 0,
    info_json TEXT
);
CREATE TABLE IF NOT EXISTS cells (
    cell_key TEXT PRIMARY KEY,
    pruner TEXT NOT NULL,
    pruner_json TEXT,
    source TEXT NOT NULL,
    source_json TEXT,
    sparsity_label TEXT NOT NULL,
    sparsity REAL,
    seed INTEGER NOT NULL,
    condition TEXT NOT NULL,
    condition_json TEXT,
    protocol TEXT NOT NULL,
    prune_log_json TEXT,
    provenance_json TEXT,
    seconds REAL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS run_cells (
    run_id TEXT NOT NULL,
    cell_key TEXT NOT NULL,
    PRIMARY KEY (run_id, cell_key)
);
"""

# The measurements and the view over them: created with the schema, or by the version-1 migration.
MEASUREMENTS = """
CREATE TABLE IF NOT EXISTS measurements (
    cell_key TEXT NOT NULL REFERENCES cells(cell_key),
    metric TEXT NOT NULL,
    value REAL,
    draw INTEGER,
    grid_json TEXT,
    tags_json TEXT
);
CREATE INDEX IF NOT EXISTS measurements_cell ON measurements(cell_key);
CREATE VIEW IF NOT EXISTS records AS
    SELECT rc.run_id AS run, c.pruner, c.source, c.sparsity_label, c.sparsity, c.seed,
           c.condition, c.protocol, json_extract(m.grid_json, '$.drift_time') AS drift_time, m.draw,
           m.metric, m.value, m.grid_json, m.tags_json, c.cell_key, m.rowid AS measurement
    FROM run_cells rc JOIN cells c ON c.cell_key = rc.cell_key
    JOIN measurements m ON m.cell_key = c.cell_key;
"""
SCHEMA_VERSION = 2

# How long a write waits for another process's write transaction (e.g. a second `run` writing a
# cell) before it gives up with a RunFault saying the database is locked.
BUSY_TIMEOUT_S = 60.0

# The repetition tag: values with different draws are averaged within a replicate, never columns.
DRAW = "draw"

RECORD_FIELDS = (
    "run", "pruner", "source", "sparsity_label", "sparsity", "seed", "condition", "protocol",
    "drift_time", "draw", "metric", "value",
)


def split_tags(tags: dict[str, Any]) -> tuple[int | None, dict[str, float], dict[str, Any]]:
    """(draw, grid, other tags) of a measurement's tags: every numeric tag but `draw` is a grid
    coordinate of its condition (drift_time, eps, …); text tags (attack=pgd) only describe it."""
    draw, grid, other = None, {}, {}
    for key, value in tags.items():
        if key == DRAW:
            draw = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            grid[key] = float(value)
        else:
            other[key] = value
    return draw, grid, other


@dataclass
class CellRecord:
    """A finished cell, ready to be written."""

    cell_key: str
    pruner: str
    source: str
    sparsity_label: str  # "0.9" or "auto"
    sparsity: float | None  # the realised sparsity (for auto: the chosen target)
    seed: int  # replicate index
    condition: str
    protocol: str
    measurements: list[dict[str, Any]]  # {metric, value, tags}
    pruner_json: dict | None = None
    source_json: dict | None = None
    condition_json: dict | None = None
    prune_log: dict | None = None
    provenance: dict | None = None
    seconds: float = 0.0


def _dumps(obj: Any) -> str | None:
    return None if obj is None else json.dumps(obj, sort_keys=True, default=_jsonable)


def _loads(text: str | None, empty: Any = None) -> Any:
    return json.loads(text) if text else empty


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


_F = TypeVar("_F", bound=Callable[..., Any])


class ReadOnlyDatabase(RunFault):
    """The database file or its folder is not writable (reading it may still work)."""


def _code(exc: sqlite3.Error) -> str:
    """The SQLite error name (SQLITE_READONLY_DIRECTORY, …), or one derived from the message."""
    name = getattr(exc, "sqlite_errorname", None)  # Python ≥ 3.11
    if name:
        return name
    text = str(exc).lower()
    for needle, code in (("readonly", "SQLITE_READONLY"), ("locked", "SQLITE_BUSY"), ("malformed", "SQLITE_CORRUPT"),
                         ("not a database", "SQLITE_NOTADB"), ("disk is full", "SQLITE_FULL"),
                         ("unable to open", "SQLITE_CANTOPEN"), ("disk i/o", "SQLITE_IOERR")):
        if needle in text:
            return code
    return "SQLITE_ERROR"


def _translate(path: Path, exc: sqlite3.Error, doing: str, timeout: float = BUSY_TIMEOUT_S) -> SwapHwError:
    """A sqlite3 error as the one line a user can act on, naming the file. Bad input (the file is not
    a usable results database): SwapHwError; a fault of the machine or of another process: RunFault."""
    code = _code(exc)
    if code.startswith("SQLITE_READONLY"):
        where = "its folder" if code == "SQLITE_READONLY_DIRECTORY" else "the file or its folder"
        return ReadOnlyDatabase(f"{path}: the results database is read-only ({where} is not writable; found "
                                f"while {doing}); make it writable, or pass another --db")
    if code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return RunFault(f"{path}: the results database is locked by another process (waited {timeout:g} s while "
                        f"{doing}); let that process finish, then run the same command again, or pass another --db")
    if code == "SQLITE_FULL":
        return RunFault(f"{path}: the disk is full (while {doing}); free some space and run the same command "
                        "again: finished cells are kept")
    if code.startswith("SQLITE_CORRUPT"):
        return SwapHwError(f"{path}: the results database is damaged (database disk image is malformed, found "
                           f"while {doing}); keep it aside and pass a new --db")
    if code == "SQLITE_NOTADB":
        return SwapHwError(f"{path}: not a SQLite database (file is not a database); pass a results database "
                           "written by swap_hw, or a new file, with --db")
    if code.startswith("SQLITE_CANTOPEN"):
        return RunFault(f"{path}: cannot open or create the results database (while {doing}); its folder must "
                        "exist and be writable, or pass another --db")
    if code.startswith("SQLITE_IOERR"):
        return RunFault(f"{path}: disk I/O error while {doing} ({exc}); check the disk, then run the same "
                        "command again")
    return RunFault(f"{path}: database error while {doing}: {' '.join(str(exc).split())}")


def _guarded(doing: str) -> Callable[[_F], _F]:
    """Method decorator: a sqlite3 error leaves the Store as `_translate`'s one-line error."""

    def wrap(method: _F) -> _F:
        @functools.wraps(method)
        def guarded(self: "Store", *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except sqlite3.Error as exc:
                raise _translate(self.path, exc, doing, self.timeout) from exc

        return guarded  # type: ignore[return-value]

    return wrap


class Store:
    """The results database at `path`. `read_only`: open an existing file without creating,
    migrating or writing anything (for looking, e.g. `run --dry-run`).

    Opening for writing writes (creates or migrates the schema and stamps its version, in one
    transaction), so a read-only, locked or unusable database fails here, before any work. Every
    sqlite3 error leaves the Store as a one-line SwapHwError or RunFault naming the file."""

    def __init__(self, path: str | Path, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        self.timeout = BUSY_TIMEOUT_S
        self.conn: sqlite3.Connection | None = None
        if self.path.is_dir():
            raise SwapHwError(f"{self.path}: is a directory, not a results database; pass a file with --db, "
                              f"e.g. {self.path / 'swap_hw.sqlite'}")
        if not read_only:
            self._make_folder()
        try:
            self._open()
        except BaseException as exc:
            if self.conn is not None:
                self.conn.close()
            if isinstance(exc, sqlite3.Error):
                raise _translate(self.path, exc, "opening it", self.timeout) from exc
            raise

    def _make_folder(self) -> None:
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            why = exc.strerror or str(exc)
            if isinstance(exc, PermissionError) or exc.errno in (errno.EROFS, errno.ENOSPC, errno.EIO):
                raise RunFault(f"{self.path}: cannot create its folder {folder} ({why}); pass another --db") from exc
            blocker = next((a for a in (folder, *folder.parents) if a.exists()), folder)
            if not blocker.is_dir():
                raise SwapHwError(f"{self.path}: {blocker} is a file, not a folder; pass another --db") from exc
            raise SwapHwError(f"{self.path}: cannot create its folder {folder} ({why}); pass another --db") from exc

    def _open(self) -> None:
        if self.read_only:
            self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=self.timeout,
                                        isolation_level=None)
        else:
            self.conn = sqlite3.connect(str(self.path), timeout=self.timeout, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        # reading the header: "file is not a database" / "malformed" surface here
        self.version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        self._refuse_newer(self.version)
        if self.read_only:
            return
        self._use_wal()
        self.conn.execute("PRAGMA synchronous=NORMAL")
        # One write transaction: the schema, its migrations, and the version stamp, which is a real
        # write, so a read-only file or folder fails here (BEGIN IMMEDIATE alone does not notice a
        # read-only file), and a second process opening the same file at the same time waits.
        with self._transaction():
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            self._refuse_newer(version)  # stamped by another process since the first look
            self._execute_all(SCHEMA)
            if "info_json" not in self._columns("runs"):  # added after version 1; NULL for older runs
                self.conn.execute("ALTER TABLE runs ADD COLUMN info_json TEXT")
            if "drift_time" in self._columns("measurements"):
                self._migrate_from_v1()
            self._execute_all(MEASUREMENTS)
            self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self.version = SCHEMA_VERSION

    def _use_wal(self) -> None:
        """Switch to write-ahead logging (readers never block the writer). Not inside a transaction;
        and SQLite does not wait for a lock here, so a second process creating the same file at the
        same moment retries until the busy timeout, as every other write waits."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self.conn.execute("PRAGMA journal_mode=WAL").fetchone()
                return
            except sqlite3.OperationalError as exc:
                if not _code(exc).startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _refuse_newer(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise SwapHwError(f"{self.path}: written by a newer swap_hw (schema {version} > {SCHEMA_VERSION}); "
                              "upgrade swap_hw to use it, or pass another --db")

    @contextlib.contextmanager
    def _transaction(self):
        """BEGIN IMMEDIATE … COMMIT; rolled back on any exception (including one in BEGIN itself)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                try:
                    self.conn.execute("ROLLBACK")
                except sqlite3.Error:  # the connection is gone; SQLite rolls back on its own
                    pass
            raise

    def _execute_all(self, script: str) -> None:
        """Run a script statement by statement (executescript would commit the open transaction)."""
        for statement in script.split(";"):
            if statement.strip():
                self.conn.execute(statement)

    def _columns(self, table: str) -> list[str]:
        return [r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")]

    def _migrate_from_v1(self) -> None:
        """Version 1 kept drift_time in a column and every other tag in tags_json; version 2 keeps
        every grid tag (drift_time among them) in grid_json. Rows keep their order; runs inside the
        opening transaction."""
        old = self.conn.execute(
            "SELECT cell_key, metric, value, drift_time, draw, tags_json FROM measurements ORDER BY rowid").fetchall()
        self.conn.execute("DROP VIEW IF EXISTS records")
        self.conn.execute("DROP TABLE measurements")
        self._execute_all(MEASUREMENTS)
        rows = []
        for r in old:
            tags = _loads(r["tags_json"], {})
            if r["drift_time"] is not None:
                tags["drift_time"] = r["drift_time"]
            _, grid, other = split_tags(tags)
            rows.append((r["cell_key"], r["metric"], r["value"], r["draw"], _dumps(grid) if grid else None,
                         _dumps(other) if other else None))
        self.conn.executemany("INSERT INTO measurements (cell_key, metric, value, draw, grid_json, tags_json)"
                              " VALUES (?,?,?,?,?,?)", rows)

    def _has_table(self, name: str) -> bool:
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- runs ---------------------------------------------------------------------------------

    @_guarded("starting the run")
    def start_run(self, run_id: str, name: str, scenario_file: str, scenario_text: str,
                  resolved: dict, root_seed: int, versions: dict, git_commit: str | None) -> None:
        now = time.time()
        with self._transaction():
            row = self.conn.execute("SELECT run_id FROM runs WHERE run_id=?", (run_id,)).fetchone()
            if row is None:
                self.conn.execute(
                    "INSERT INTO runs (run_id, name, scenario_file, scenario_text, resolved_json, root_seed,"
                    " versions_json, git_commit, started_at, status, invocations) VALUES (?,?,?,?,?,?,?,?,?,?,1)",
                    (run_id, name, scenario_file, scenario_text, _dumps(resolved), root_seed,
                     _dumps(versions), git_commit, now, "running"),
                )
            else:
                self.conn.execute(
                    "UPDATE runs SET status='running', invocations=invocations+1, versions_json=?,"
                    " git_commit=?, scenario_text=? WHERE run_id=?",
                    (_dumps(versions), git_commit, scenario_text, run_id),
                )

    @_guarded("recording the planned cells")
    def plan_cells(self, run_id: str, cell_keys: Iterable[str]) -> None:
        rows = [(run_id, k) for k in cell_keys]
        with self._transaction():
            self.conn.executemany("INSERT OR IGNORE INTO run_cells (run_id, cell_key) VALUES (?, ?)", rows)

    @_guarded("relabelling cells")
    def relabel_cells(self, labels: Iterable[tuple[str, str, str, str]]) -> int:
        """Set (pruner, source, condition) display labels of existing cells, given as
        (cell_key, pruner, source, condition); returns how many changed.

        A label lists the parameters that differ from the defaults of the code that wrote it, so a
        cell reused after a default changed (same resolved parameters, same key) would keep a stale
        label and split one configuration into two rows of a report. Its key, not its label, says
        what it is, so the label follows the current code."""
        rows = [(p, s, c, k, p, s, c) for k, p, s, c in labels]
        with self._transaction():
            cur = self.conn.executemany(
                "UPDATE cells SET pruner=?, source=?, condition=? WHERE cell_key=?"
                " AND (pruner IS NOT ? OR source IS NOT ? OR condition IS NOT ?)", rows)
        return cur.rowcount

    @_guarded("recording what the run works on")
    def set_run_info(self, run_id: str, info: dict) -> None:
        """What the run works on (data sizes and range, model, dense accuracy), shown with its table."""
        self.conn.execute("UPDATE runs SET info_json=? WHERE run_id=?", (_dumps(info), run_id))

    @_guarded("reading the run")
    def run_info(self, run_id: str) -> dict:
        row = self.conn.execute("SELECT info_json FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return _loads(row["info_json"], {}) if row else {}

    @_guarded("finishing the run")
    def finish_run(self, run_id: str, status: str = "finished") -> None:
        self.conn.execute("UPDATE runs SET status=?, finished_at=? WHERE run_id=?", (status, time.time(), run_id))

    @_guarded("listing the runs")
    def runs(self) -> list[dict]:
        rows = self.conn.execute(
            "SELECT r.run_id, r.name, r.scenario_file, r.status, r.started_at, r.finished_at, r.invocations,"
            " json_extract(r.resolved_json, '$.files') AS files_json,"
            " (SELECT COUNT(*) FROM run_cells rc WHERE rc.run_id=r.run_id) AS planned,"
            " (SELECT COUNT(*) FROM run_cells rc JOIN cells c ON c.cell_key=rc.cell_key"
            "   WHERE rc.run_id=r.run_id) AS done FROM runs r ORDER BY r.started_at"
        ).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["files"] = _loads(d.pop("files_json"), {})  # user file → content digest the run read
            out.append(d)
        return out

    @_guarded("reading the run")
    def run(self, run_id: str) -> dict | None:
        row = self.conn.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return dict(row) if row else None

    @_guarded("looking up the run")
    def resolve_run_id(self, prefix: str | None) -> str | None:
        """The newest run if `prefix` is None, else the unique run whose id starts with it; None if
        no run does. A prefix that several runs start with raises SwapHwError listing them."""
        if self.read_only and not self._has_table("runs"):
            return None
        if prefix is None:
            row = self.conn.execute("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
            return row["run_id"] if row else None
        rows = self.conn.execute("SELECT run_id FROM runs WHERE substr(run_id, 1, ?) = ? ORDER BY started_at",
                                 (len(prefix), prefix)).fetchall()
        if len(rows) > 1:
            ids = ", ".join(r["run_id"] for r in rows[:10]) + (", …" if len(rows) > 10 else "")
            raise SwapHwError(f"{self.path}: run {prefix!r} is ambiguous: {len(rows)} runs start with it ({ids}); "
                              "give more of the id")
        return rows[0]["run_id"] if rows else None

    # --- cells --------------------------------------------------------------------------------

    @_guarded("reading the finished cells")
    def done_keys(self, keys: Iterable[str] | None = None) -> set[str]:
        """The keys of finished cells (among `keys`, or all)."""
        if self.read_only and not self._has_table("cells"):  # not (yet) a results database
            return set()
        if keys is None:
            return {r[0] for r in self.conn.execute("SELECT cell_key FROM cells")}
        keys = list(keys)
        done: set[str] = set()
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            q = f"SELECT cell_key FROM cells WHERE cell_key IN ({','.join('?' * len(chunk))})"
            done.update(r[0] for r in self.conn.execute(q, chunk))
        return done

    @_guarded("writing a finished cell")
    def write_cell(self, cell: CellRecord) -> bool:
        """Write a finished cell and its measurements atomically. False if it was already there
        (e.g. written meanwhile by another process running the same scenario)."""
        with self._transaction():
            cur = self.conn.execute(
                "INSERT OR IGNORE INTO cells (cell_key, pruner, pruner_json, source, source_json, sparsity_label,"
                " sparsity, seed, condition, condition_json, protocol, prune_log_json, provenance_json, seconds,"
                " finished_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (cell.cell_key, cell.pruner, _dumps(cell.pruner_json), cell.source, _dumps(cell.source_json),
                 cell.sparsity_label, cell.sparsity, cell.seed, cell.condition, _dumps(cell.condition_json),
                 cell.protocol, _dumps(cell.prune_log), _dumps(cell.provenance), cell.seconds, time.time()),
            )
            inserted = cur.rowcount == 1
            if inserted:
                rows = []
                for m in cell.measurements:
                    draw, grid, other = split_tags(dict(m.get("tags") or {}))
                    rows.append((cell.cell_key, m["metric"], float(m["value"]) if m["value"] is not None else None,
                                 draw, _dumps(grid) if grid else None, _dumps(other) if other else None))
                self.conn.executemany(
                    "INSERT INTO measurements (cell_key, metric, value, draw, grid_json, tags_json)"
                    " VALUES (?,?,?,?,?,?)", rows)
        return inserted

    @_guarded("reading the records")
    def records(self, run_id: str) -> list[dict]:
        """The long-format records of a run: RECORD_FIELDS, `grid` (tag → coordinate, drift_time
        included) and `tag_<name>` for each descriptive tag."""
        rows = self.conn.execute(
            "SELECT * FROM records WHERE run=? ORDER BY pruner, source, sparsity, seed, condition, drift_time, draw, cell_key,"
            " measurement", (run_id,)).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            del d["measurement"]
            d["grid"] = _loads(d.pop("grid_json"), {})
            tags = _loads(d.pop("tags_json"), {})
            d.update({f"tag_{k}": v for k, v in tags.items()})
            out.append(d)
        return out

    @_guarded("reading a finished cell")
    def finished_cell(self, run_id: str, pruner: str, source: str, sparsity_label: str, seed: int) -> dict | None:
        """One finished cell of a run by its labels (any of its conditions): realised sparsity and
        prune log, or None."""
        row = self.conn.execute(
            "SELECT c.sparsity, c.prune_log_json FROM run_cells rc JOIN cells c ON c.cell_key = rc.cell_key"
            " WHERE rc.run_id=? AND c.pruner=? AND c.source=? AND c.sparsity_label=? AND c.seed=? LIMIT 1",
            (run_id, pruner, source, sparsity_label, int(seed))).fetchone()
        if row is None:
            return None
        return {"sparsity": row["sparsity"], "prune_log": _loads(row["prune_log_json"])}

    @_guarded("reading the cells' logs")
    def cell_logs(self, run_id: str) -> list[dict]:
        rows = self.conn.execute(
            "SELECT c.* FROM run_cells rc JOIN cells c ON c.cell_key = rc.cell_key WHERE rc.run_id=?"
            " ORDER BY c.pruner, c.source, c.sparsity, c.seed", (run_id,)).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            for k in ("pruner_json", "source_json", "condition_json", "prune_log_json", "provenance_json"):
                d[k] = _loads(d.get(k))
            out.append(d)
        return out
