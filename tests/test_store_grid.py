"""Grid tags: every numeric tag of any condition is stored, read and reported the same way
(drift_time is one of them), and a version-1 database migrates in place."""

from __future__ import annotations

import csv
import io
import json
import sqlite3

from swap_hw.results.report import records_csv, summarize
from swap_hw.results.store import SCHEMA_VERSION, CellRecord, Store

# The version-1 tables as the previous release wrote them (frozen here on purpose: it is the format
# the migration reads).
V1 = """
CREATE TABLE runs (run_id TEXT PRIMARY KEY, name TEXT NOT NULL, scenario_file TEXT, scenario_text TEXT,
    resolved_json TEXT NOT NULL, root_seed INTEGER NOT NULL, versions_json TEXT, git_commit TEXT,
    started_at REAL, finished_at REAL, status TEXT, invocations INTEGER DEFAULT 0);
CREATE TABLE cells (cell_key TEXT PRIMARY KEY, pruner TEXT NOT NULL, pruner_json TEXT, source TEXT NOT NULL,
    source_json TEXT, sparsity_label TEXT NOT NULL, sparsity REAL, seed INTEGER NOT NULL, condition TEXT NOT NULL,
    condition_json TEXT, protocol TEXT NOT NULL, prune_log_json TEXT, provenance_json TEXT, seconds REAL,
    finished_at REAL);
CREATE TABLE measurements (cell_key TEXT NOT NULL REFERENCES cells(cell_key), metric TEXT NOT NULL, value REAL,
    drift_time REAL, draw INTEGER, tags_json TEXT);
CREATE INDEX measurements_cell ON measurements(cell_key);
CREATE TABLE run_cells (run_id TEXT NOT NULL, cell_key TEXT NOT NULL, PRIMARY KEY (run_id, cell_key));
CREATE VIEW records AS
    SELECT rc.run_id AS run, c.pruner, c.source, c.sparsity_label, c.sparsity, c.seed,
           c.condition, c.protocol, m.drift_time, m.draw, m.metric, m.value, m.tags_json, c.cell_key
    FROM run_cells rc JOIN cells c ON c.cell_key = rc.cell_key JOIN measurements m ON m.cell_key = c.cell_key;
"""


def make_v1(path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(V1)
    conn.execute("INSERT INTO runs (run_id, name, resolved_json, root_seed, started_at, status) "
                 "VALUES ('r1', 'old', '{}', 0, 1.0, 'finished')")
    for key, cond in (("k_an", "analog"), ("k_adv", "adversarial")):
        conn.execute("INSERT INTO cells (cell_key, pruner, source, sparsity_label, sparsity, seed, condition, protocol)"
                     " VALUES (?, 'lr', 'clean', '0.5', 0.5, 0, ?, 'one_shot')", (key, cond))
        conn.execute("INSERT INTO run_cells VALUES ('r1', ?)", (key,))
    rows = [("k_an", "accuracy", 0.9, 1.0, 0, None), ("k_an", "accuracy", 0.8, 3600.0, 0, None),
            ("k_adv", "accuracy", 0.7, None, 0, json.dumps({"eps": 0.05, "attack": "pgd"})),
            ("k_adv", "accuracy", 0.4, None, 0, json.dumps({"eps": 0.1, "attack": "pgd"}))]
    conn.executemany("INSERT INTO measurements VALUES (?,?,?,?,?,?)", rows)
    conn.commit()
    conn.close()


def test_a_version_1_database_migrates_and_reports(tmp_path):
    db = tmp_path / "old.sqlite"
    make_v1(db)
    with Store(db) as store:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        records = store.records("r1")
    assert len(records) == 4
    by_value = {r["value"]: r for r in records}
    assert by_value[0.8]["grid"] == {"drift_time": 3600.0} and by_value[0.8]["drift_time"] == 3600.0
    assert by_value[0.4]["grid"] == {"eps": 0.1} and by_value[0.4]["tag_attack"] == "pgd"
    assert by_value[0.4]["drift_time"] is None
    summary = summarize(records)
    labels = [summary.column_label(c) for c in summary.columns]
    assert labels == ["adversarial eps=0.05", "adversarial eps=0.1", "analog @ 1s", "analog @ 1h"]
    rows = list(csv.DictReader(io.StringIO(records_csv(records))))
    assert {(r["condition"], r["drift_time"], r["eps"]) for r in rows} == {
        ("analog", "1.0", ""), ("analog", "3600.0", ""), ("adversarial", "", "0.05"), ("adversarial", "", "0.1")}
    with Store(db) as store:  # a second open finds version 2: nothing moves again
        assert len(store.records("r1")) == 4


def test_any_numeric_tag_is_a_grid_coordinate(tmp_path):
    """A condition whose grid tag is not called drift_time gets columns, CSV fields and a stored
    coordinate just the same; draws are averaged, text tags only describe."""
    with Store(tmp_path / "x.sqlite") as store:
        store.start_run("r", "t", "t.yaml", "", {}, 0, {}, None)
        keys = []
        for seed in (0, 1):
            ms = [{"metric": "accuracy", "value": 0.5 + 0.1 * t / 100 + 0.01 * k,
                   "tags": {"temperature": float(t), "draw": k, "chip": "A"}}
                  for t in (300, 350) for k in (0, 1)]
            record = CellRecord(cell_key=f"c{seed}", pruner="lr", source="clean", sparsity_label="0.5", sparsity=0.5,
                                seed=seed, condition="thermal", protocol="one_shot", measurements=ms)
            assert store.write_cell(record)
            keys.append(record.cell_key)
        store.plan_cells("r", keys)
        records = store.records("r")
        stored = store.conn.execute("SELECT DISTINCT grid_json, tags_json FROM measurements").fetchall()
    assert {tuple(r) for r in stored} == {('{"temperature": 300.0}', '{"chip": "A"}'),
                                         ('{"temperature": 350.0}', '{"chip": "A"}')}
    summary = summarize(records)
    assert [summary.column_label(c) for c in summary.columns] == ["thermal temperature=300", "thermal temperature=350"]
    mean, ci, n = summary.cells[("clean", "lr", "0.5")][summary.columns[1]]
    assert n == 2 and abs(mean - (0.5 + 0.35 + 0.005)) < 1e-12  # draws averaged within each replicate
    header = records_csv(records).splitlines()[0].split(",")
    assert header[-1] == "temperature" and "chip" not in header
