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

One cell per row: cells.slot_id is the hash of a cell's row key (labels, scheme, protocol, calibration
builder and seed, see CellSpec.row_key). Writing a cell removes any other cell of the same slot in the same
transaction (a cell recomputed because its inputs changed replaces the stale one), so no report can merge two
different cells into one row. cells.failed_stage names the stage a failed cell failed in; status "stale" marks
a finished cell whose inputs changed, until its recomputation replaces it (reports rank only status "ok").

Faults: a file that is not a readable SQLite store raises StoreCorruptError at open, naming the way out
(`ptq3d store repair RUN_DIR`, see repair_store); a full disk raises DiskFullError (the cell's transaction is
rolled back, nothing half-written).
"""

from __future__ import annotations

import errno
import json
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

from ptq3d.errors import UserError
from ptq3d.results.records import CellResult

SCHEMA_VERSION = 1
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class StoreCorruptError(UserError):
    """The results store file is not a readable SQLite database (or lacks the ptq3d tables)."""


class DiskFullError(UserError):
    """No space left while writing a store, cache or report file: the run stops, nothing half-written."""


def is_disk_full(exc: BaseException) -> bool:
    """An OSError with ENOSPC/EDQUOT, or SQLite's SQLITE_FULL ("database or disk is full")."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    return isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc)


def disk_full_error(where: str | Path, exc: BaseException) -> DiskFullError:
    return DiskFullError(
        f"disk full while writing '{where}' ({exc}); nothing half-written was kept: free space and rerun "
        "the same command to resume (finished cells are stored)"
    )


def _repair_hint(path: Path) -> str:
    return (
        f"run `ptq3d store repair {path.parent}` to move it aside and keep its readable cells, "
        "or choose another --out"
    )


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
CREATE TABLE IF NOT EXISTS metric_info(metric TEXT PRIMARY KEY, higher_is_better INTEGER, unit TEXT, aggregation TEXT,
    weight_key TEXT);
"""
# columns added after version 1 shipped: added in place when a store is opened for writing (readers of either
# layout work, since they select by name)
_ADDED_CELL_COLUMNS = {"slot_id": "TEXT", "failed_stage": "TEXT"}
_CELL_COLUMNS = (
    "cell_id", "run_id", "status", "reason", "model", "model_label", "method", "method_label", "scheme",
    "protocol", "calib_builder", "calib_seed", "spec", "costs", "manifest", "stats", "provenance", "counters",
    "started_at", "finished_at", "slot_id", "failed_stage",
)  # fmt: skip

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
        if self.path.is_dir():
            raise UserError(f"results store '{self.path}' is a directory, not a file")
        if readonly:
            if not self.path.is_file():
                raise UserError(f"results store '{self.path}' does not exist")
            self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            self._check_schema()
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except FileExistsError:
                raise UserError(
                    f"cannot create results store '{self.path}': '{self.path.parent}' is a file"
                ) from None
            self.conn = sqlite3.connect(self.path, timeout=60)
            try:
                with self.conn:
                    self.conn.executescript(_SCHEMA)
                    self.conn.execute(
                        "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                        (str(SCHEMA_VERSION),),
                    )
                    have = {r[1] for r in self.conn.execute("PRAGMA table_info(cells)")}
                    for column, kind in _ADDED_CELL_COLUMNS.items():
                        if column not in have:
                            self.conn.execute(f"ALTER TABLE cells ADD COLUMN {column} {kind}")
                    if "slot_id" not in have:
                        self._backfill_slots()
                    info_cols = {r[1] for r in self.conn.execute("PRAGMA table_info(metric_info)")}
                    if "weight_key" not in info_cols:  # stores written before weight keys were kept
                        self.conn.execute("ALTER TABLE metric_info ADD COLUMN weight_key TEXT")
            except sqlite3.DatabaseError as exc:
                self.conn.close()
                if is_disk_full(exc):
                    raise disk_full_error(self.path, exc) from None
                raise StoreCorruptError(
                    f"results store '{self.path}' is corrupt ({exc}): {_repair_hint(self.path)}"
                ) from None
            self._check_schema()
        self.conn.row_factory = sqlite3.Row

    def _backfill_slots(self) -> None:
        """slot_id of rows written before the column existed, from their stored spec (rows whose spec cannot
        be read keep NULL: they match no slot)."""
        from ptq3d.results.records import CellSpec

        for cid, spec in self.conn.execute("SELECT cell_id, spec FROM cells").fetchall():
            try:
                slot = CellSpec.from_dict(json.loads(spec)).slot_id
            except (TypeError, KeyError, ValueError):
                continue
            self.conn.execute("UPDATE cells SET slot_id = ? WHERE cell_id = ?", (slot, cid))

    def _check_schema(self) -> None:
        try:
            row = self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise StoreCorruptError(
                f"'{self.path}' is not a readable ptq3d results store ({exc}): {_repair_hint(self.path)}"
            ) from None
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
        try:
            with self.conn:
                self.conn.execute(
                    "INSERT OR REPLACE INTO runs(run_id, started_at, config, provenance) VALUES (?, ?, ?, ?)",
                    (run_id, time.time(), config_text, _json(provenance)),
                )
        except sqlite3.OperationalError as exc:
            if is_disk_full(exc):
                raise disk_full_error(self.path, exc) from None
            raise

    def write_cell(self, result: CellResult, run_id: str = "") -> list[str]:
        """Insert (or replace) one cell with its metrics and stages in one transaction; any other cell of the
        same slot (row key) is removed in that transaction. Returns the cell ids it replaced. A full disk
        raises DiskFullError with the transaction rolled back."""
        try:
            return self._write_cell(result, run_id)
        except sqlite3.OperationalError as exc:
            if is_disk_full(exc):
                raise disk_full_error(self.path, exc) from None
            raise

    def _write_cell(self, result: CellResult, run_id: str) -> list[str]:
        spec = result.spec
        cid = result.cell_id
        slot = spec.slot_id
        cal = spec.calibration
        with self.conn:  # one transaction: all rows of the cell or none
            replaced = [
                r[0]
                for r in self.conn.execute(
                    "SELECT cell_id FROM cells WHERE slot_id = ? AND cell_id != ?", (slot, cid)
                )
            ]
            for old in [*replaced, cid]:
                for table in ("metrics", "stages", "cells"):
                    self.conn.execute(f"DELETE FROM {table} WHERE cell_id = ?", (old,))
            self.conn.execute(
                f"INSERT INTO cells({', '.join(_CELL_COLUMNS)}) VALUES ({', '.join('?' * len(_CELL_COLUMNS))})",
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
                    slot,
                    result.failed_stage or None,
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
                "INSERT OR REPLACE INTO metric_info(metric, higher_is_better, unit, aggregation, weight_key) "
                "VALUES (?,?,?,?,?)",
                [
                    (
                        name,
                        None if info.get("higher_is_better") is None else int(bool(info["higher_is_better"])),
                        info.get("unit", ""),
                        info.get("aggregation", "mean"),
                        info.get("weight_key"),
                    )
                    for name, info in result.metric_info.items()
                ],
            )
        return replaced

    def mark_stale(self, cell_ids: dict[str, str]) -> None:
        """Set status "stale" (reason: what changed) on finished cells whose inputs changed, so no report ranks
        them while their recomputation is pending; cell_ids: cell id -> reason."""
        try:
            with self.conn:
                self.conn.executemany(
                    "UPDATE cells SET status = 'stale', reason = ? WHERE cell_id = ?",
                    [(reason, cid) for cid, reason in cell_ids.items()],
                )
        except sqlite3.OperationalError as exc:
            if is_disk_full(exc):
                raise disk_full_error(self.path, exc) from None
            raise

    # --- reading ----------------------------------------------------------------------------------------
    def slots(self) -> dict[str, dict[str, Any]]:
        """slot_id -> {cell_id, status, spec (decoded)} of every stored cell (the slot recomputed from the
        stored spec for rows written before slot_id existed)."""
        from ptq3d.results.records import CellSpec

        out = {}
        for r in self.conn.execute("SELECT cell_id, status, spec, slot_id FROM cells"):
            spec = json.loads(r["spec"]) if r["spec"] else {}
            slot = r["slot_id"]
            if not slot:
                try:
                    slot = CellSpec.from_dict(spec).slot_id
                except (KeyError, TypeError):
                    continue
            out[slot] = {"cell_id": r["cell_id"], "status": r["status"], "spec": spec}
        return out

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
                "weight_key": r["weight_key"] if "weight_key" in r.keys() else None,  # noqa: SIM118 (Row: in = values)
            }
        return out

    def runs(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM runs ORDER BY started_at")]


def _integrity_ok(path: Path) -> bool:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            ok = conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            return (
                ok
                and conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() is not None
            )
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return False


def repair_store(path: str | Path) -> dict[str, Any]:
    """Move a corrupt store aside (`<name>.corrupt-<time>`) and start a new one at `path` holding every cell
    that can still be read whole (its row, metrics and stages), plus the readable runs and metric_info.

    Returns {"moved_to", "kept", "lost", "index_readable"} (lost: cell ids whose rows could not be read;
    index_readable False: not even the list of cells could be read, the new store is empty). A healthy store
    is left alone (UserError)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"results store '{path}' does not exist")
    if _integrity_ok(path):
        raise UserError(
            f"results store '{path}' is readable and passes SQLite's integrity check: nothing to repair"
        )
    moved = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    path.replace(moved)
    for suffix in (
        "-wal",
        "-shm",
        "-journal",
    ):  # a journal of the corrupt file must not be replayed into the new one
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.replace(moved.with_name(moved.name + suffix))
    kept: list[str] = []
    lost: list[str] = []
    try:
        old = sqlite3.connect(f"file:{moved}?mode=ro", uri=True)
        old.row_factory = sqlite3.Row
        ids = [r[0] for r in old.execute("SELECT cell_id FROM cells")]
    except sqlite3.DatabaseError:  # not even the list of cells can be read: the new store starts empty
        ResultsStore(path).close()
        return {"moved_to": str(moved), "kept": kept, "lost": lost, "index_readable": False}
    with ResultsStore(path) as new:
        for table in ("runs", "metric_info"):
            try:
                rows = [dict(r) for r in old.execute(f"SELECT * FROM {table}")]
            except sqlite3.DatabaseError:
                continue
            _insert(new.conn, table, rows)
        for cid in ids:
            try:
                parts = {
                    t: [dict(r) for r in old.execute(f"SELECT * FROM {t} WHERE cell_id = ?", (cid,))]
                    for t in ("cells", "metrics", "stages")
                }
            except sqlite3.DatabaseError:
                lost.append(cid)
                continue
            with new.conn:
                for table, rows in parts.items():
                    _insert(new.conn, table, rows)
            kept.append(cid)
    old.close()
    return {"moved_to": str(moved), "kept": kept, "lost": lost, "index_readable": True}


def _insert(conn: sqlite3.Connection, table: str, rows: list[dict[str, Any]]) -> None:
    have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
    for row in rows:
        cols = [c for c in row if c in have]
        conn.execute(
            f"INSERT OR REPLACE INTO {table}({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            [row[c] for c in cols],
        )
