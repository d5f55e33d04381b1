"""The results store: one SQLite file, one row per cell, written in one transaction per cell.

Tables
- cells(cell_id PK, run_id, status, reason, model, model_label, method, method_label, scheme, protocol,
  calib_builder, calib_seed, spec, costs, manifest, stats, provenance, counters, started_at, finished_at):
  JSON text in spec/costs/manifest/stats/provenance/counters.
- metrics(cell_id, stage, scene, metric, value, stderr, n): per-scene rows and the aggregate over scenes
  (scene = "*", stderr = standard error over scenes). stage "fp" | "fake" | "real".
- stages(cell_id, stage, wall_s, cpu_peak_bytes, cpu_delta_bytes, cuda_peak_bytes, status, note).
- metric_info(metric PK, higher_is_better, unit, aggregation): how to read each metric (reports need no
  registry to rank).
- runs(run_id PK, started_at, config, provenance): one row per `ptq3d run` invocation.

A cell is inserted in a single transaction (its old rows, if any, replaced), so a run killed at any moment
leaves every cell either complete or absent; resuming skips the cell ids already present.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

from ptq3d.errors import UserError
from ptq3d.results.records import CellResult

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS runs(run_id TEXT PRIMARY KEY, started_at REAL, config TEXT, provenance TEXT);
CREATE TABLE IF NOT EXISTS cells(
    cell_id TEXT PRIMARY KEY, run_id TEXT, status TEXT NOT NULL, reason TEXT,
    model TEXT, model_label TEXT, method TEXT, method_label TEXT, scheme TEXT, protocol TEXT,
    calib_builder TEXT, calib_seed INTEGER,
    spec TEXT, costs TEXT, manifest TEXT, stats TEXT, provenance TEXT, counters TEXT,
    started_at REAL, finished_at REAL);
CREATE TABLE IF NOT EXISTS metrics(
    cell_id TEXT NOT NULL, stage TEXT NOT NULL, scene TEXT NOT NULL, metric TEXT NOT NULL,
    value REAL, stderr REAL, n INTEGER,
    PRIMARY KEY(cell_id, stage, scene, metric));
CREATE TABLE IF NOT EXISTS stages(
    cell_id TEXT NOT NULL, stage TEXT NOT NULL, wall_s REAL, cpu_peak_bytes INTEGER, cpu_delta_bytes INTEGER,
    cuda_peak_bytes INTEGER, status TEXT, note TEXT, PRIMARY KEY(cell_id, stage));
CREATE TABLE IF NOT EXISTS metric_info(metric TEXT PRIMARY KEY, higher_is_better INTEGER, unit TEXT, aggregation TEXT);
"""

JSON_COLUMNS = ("spec", "costs", "manifest", "stats", "provenance", "counters")


def _json(obj: Any) -> str:
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(obj), default=str)


def _float(v: Any) -> float:
    return float("nan") if v is None else float(v)


class ResultsStore:
    """`ResultsStore(path)` opens (creating if needed) a store. Use as a context manager or call close()."""

    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = Path(path)
        if readonly:
            if not self.path.is_file():
                raise UserError(f"results store '{self.path}' does not exist")
            self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            try:
                self._check_schema()
            except sqlite3.DatabaseError as exc:
                raise UserError(f"'{self.path}' is not a ptq3d results store ({exc})") from None
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=60)
            with self.conn:
                self.conn.executescript(_SCHEMA)
                self.conn.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            self._check_schema()
        self.conn.row_factory = sqlite3.Row

    def _check_schema(self) -> None:
        try:
            row = self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise UserError(f"'{self.path}' is not a ptq3d results store ({exc})") from None
        if row is None or int(row[0]) != SCHEMA_VERSION:
            raise UserError(
                f"results store '{self.path}' has schema version {row[0] if row else 'none'}, "
                f"this ptq3d reads version {SCHEMA_VERSION}"
            )

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- writing ----------------------------------------------------------------------------------------
    def record_run(self, run_id: str, config_text: str, provenance: dict[str, Any]) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO runs(run_id, started_at, config, provenance) VALUES (?, ?, ?, ?)",
                (run_id, time.time(), config_text, _json(provenance)),
            )

    def write_cell(self, result: CellResult, run_id: str = "") -> None:
        """Insert (or replace) one cell with its metrics and stages in one transaction."""
        spec = result.spec
        cid = result.cell_id
        cal = spec.calibration
        with self.conn:  # one transaction: all rows of the cell or none
            for table in ("metrics", "stages", "cells"):
                self.conn.execute(f"DELETE FROM {table} WHERE cell_id = ?", (cid,))
            self.conn.execute(
                "INSERT INTO cells VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    cid,
                    run_id,
                    result.status,
                    result.reason,
                    spec.model.name,
                    spec.model.display,
                    spec.method.name,
                    spec.method.display,
                    spec.scheme,
                    spec.protocol.name,
                    cal.builder if cal else None,
                    cal.seed if cal else None,
                    _json(spec.to_dict()),
                    _json(result.costs),
                    _json(result.manifest),
                    _json(result.stats),
                    _json(result.provenance),
                    _json(result.counters),
                    result.started_at,
                    result.finished_at,
                ),
            )
            self.conn.executemany(
                "INSERT OR REPLACE INTO metrics VALUES (?,?,?,?,?,?,?)",
                [
                    (
                        cid,
                        m.stage,
                        m.scene,
                        m.metric,
                        None if not math.isfinite(m.value) else m.value,
                        m.stderr,
                        m.n,
                    )
                    for m in result.metrics
                ],
            )
            self.conn.executemany(
                "INSERT OR REPLACE INTO stages VALUES (?,?,?,?,?,?,?,?)",
                [
                    (
                        cid,
                        s.name,
                        s.wall_s,
                        s.cpu_peak_bytes,
                        s.cpu_delta_bytes,
                        s.cuda_peak_bytes,
                        s.status,
                        s.note,
                    )
                    for s in result.stages
                ],
            )
            self.conn.executemany(
                "INSERT OR REPLACE INTO metric_info VALUES (?,?,?,?)",
                [
                    (
                        name,
                        None if info.get("higher_is_better") is None else int(bool(info["higher_is_better"])),
                        info.get("unit", ""),
                        info.get("aggregation", "mean"),
                    )
                    for name, info in result.metric_info.items()
                ],
            )

    # --- reading ----------------------------------------------------------------------------------------
    def cell_ids(self, status: str | None = None) -> set[str]:
        if status is None:
            rows = self.conn.execute("SELECT cell_id FROM cells")
        else:
            rows = self.conn.execute("SELECT cell_id FROM cells WHERE status = ?", (status,))
        return {r[0] for r in rows}

    def cells(self) -> list[dict[str, Any]]:
        """Every cell row as a dict with JSON columns decoded, ordered by start time."""
        out = []
        for row in self.conn.execute("SELECT * FROM cells ORDER BY started_at, cell_id"):
            d = dict(row)
            for k in JSON_COLUMNS:
                d[k] = json.loads(d[k]) if d[k] else {}
            out.append(d)
        return out

    def metric_rows(self, scene: str | None = None) -> list[dict[str, Any]]:
        """Metric rows (optionally only one scene, e.g. "*" for aggregates); NULL values read back as NaN."""
        q = "SELECT * FROM metrics" + (" WHERE scene = ?" if scene is not None else "")
        rows = self.conn.execute(q, (scene,) if scene is not None else ())
        return [{**dict(r), "value": _float(r["value"])} for r in rows]

    def stage_rows(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM stages")]

    def metric_info(self) -> dict[str, dict[str, Any]]:
        out = {}
        for r in self.conn.execute("SELECT * FROM metric_info"):
            hib = r["higher_is_better"]
            out[r["metric"]] = {
                "higher_is_better": None if hib is None else bool(hib),
                "unit": r["unit"],
                "aggregation": r["aggregation"],
            }
        return out

    def runs(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM runs ORDER BY started_at")]
