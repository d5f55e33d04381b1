"""ResultsStore: round trip, one transaction per cell, schema check."""

from __future__ import annotations

import math
import sqlite3

import pytest

from ptq3d.errors import UserError
from ptq3d.harness.config import load_config
from ptq3d.harness.runner import run_cell
from ptq3d.results.records import MetricRow
from ptq3d.results.store import ResultsStore
from tests.harness.conftest import GRID


def _result(make_config, tmp_path, method="rtn"):
    cell = next(c for c in load_config(make_config()).cells() if c.method.name == method)
    return run_cell(cell, tmp_path / "cache")


def test_round_trip(make_config, tmp_path):
    r = _result(make_config, tmp_path)
    r.metrics.append(MetricRow("fake", "weird", "depth.abs_rel", float("nan")))
    with ResultsStore(tmp_path / "s.sqlite") as st:
        st.write_cell(r, "run-1")
        st.write_cell(r, "run-2")  # rewriting a cell replaces it
        assert (
            st.cell_ids() == {r.cell_id}
            and st.cell_ids("ok") == {r.cell_id}
            and st.cell_ids("failed") == set()
        )
        (cell,) = st.cells()
        assert cell["run_id"] == "run-2" and cell["method"] == "rtn" and cell["scheme"] == "w8a8"
        assert cell["calib_seed"] == 0 and cell["spec"]["method"]["label"] == "RTN"
        assert cell["manifest"] == r.manifest and cell["costs"]["calib_time_s"] == r.costs["calib_time_s"]
        assert cell["provenance"]["git"] == r.provenance["git"]
        rows = st.metric_rows()
        assert len(rows) == len(r.metrics)
        assert math.isnan(next(x["value"] for x in rows if x["scene"] == "weird"))
        assert {s["stage"] for s in st.stage_rows()} == {s.name for s in r.stages}
        assert st.metric_info()["depth.delta1"]["higher_is_better"] is True
        assert st.metric_info()["depth.pixels"]["higher_is_better"] is None


def test_a_cell_is_written_atomically(make_config, tmp_path):
    r = _result(make_config, tmp_path)
    st = ResultsStore(tmp_path / "s.sqlite")
    r.stages[0].name = None  # violates NOT NULL on stages.stage: the insert fails half-way through the cell
    with pytest.raises(sqlite3.IntegrityError):
        st.write_cell(r)
    assert st.cell_ids() == set() and st.metric_rows() == []  # nothing of the cell was kept
    st.close()


def test_failed_cells_are_stored_with_reason(make_config, tmp_path):
    cfg = load_config(make_config(GRID.replace('name = "wonly"', 'name = "boom"')))
    cell = next(c for c in cfg.cells() if c.method.name == "boom")
    r = run_cell(cell, None)
    with ResultsStore(tmp_path / "s.sqlite") as st:
        st.write_cell(r)
        (c,) = st.cells()
        assert c["status"] == "failed" and "boom" in c["reason"]


def test_readonly_open_checks_the_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ResultsStore(tmp_path / "none.sqlite", readonly=True)
    bad = tmp_path / "bad.sqlite"
    bad.write_text("not a database at all" * 100)
    with pytest.raises(UserError, match="not a readable ptq3d results store"):
        ResultsStore(bad, readonly=True)


def test_a_store_written_before_slot_ids_is_upgraded_in_place(make_config, tmp_path):
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)  # the version-1 layout without cells.slot_id and cells.failed_stage
    con.executescript(
        "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT);"
        "INSERT INTO meta VALUES ('schema_version', '1');"
        "CREATE TABLE cells(cell_id TEXT PRIMARY KEY, run_id TEXT, status TEXT NOT NULL, reason TEXT, model TEXT,"
        " model_label TEXT, method TEXT, method_label TEXT, scheme TEXT, protocol TEXT, calib_builder TEXT,"
        " calib_seed INTEGER, spec TEXT, costs TEXT, manifest TEXT, stats TEXT, provenance TEXT, counters TEXT,"
        " started_at REAL, finished_at REAL);"
    )
    r = _result(make_config, tmp_path)
    old_spec = {
        **r.spec.to_dict(),
        "model": {k: v for k, v in r.spec.to_dict()["model"].items() if k != "weights_sha256"},
    }
    con.execute(
        "INSERT INTO cells(cell_id, status, spec) VALUES ('old-id', 'ok', ?)",
        (__import__("json").dumps(old_spec),),
    )
    con.commit()
    con.close()
    with ResultsStore(path) as st:  # opening for writing adds the columns and fills slot_id from each spec
        assert st.slots()[r.spec.slot_id]["cell_id"] == "old-id"
        assert st.write_cell(r) == ["old-id"]  # the same row recomputed: the old cell is replaced
        assert [c["cell_id"] for c in st.cells()] == [r.cell_id] and st.cells()[0]["failed_stage"] is None
