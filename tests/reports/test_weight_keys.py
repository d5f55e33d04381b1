"""A weighted metric's per-scene weights come from the weight key its registry entry names, stored per metric in
metric_info: depth.mono.* is weighted by depth.mono.valid_pixels, not by depth.valid_pixels (what the old
name-prefix rule picked). Stores written before the column existed keep the prefix rule."""

from __future__ import annotations

import sqlite3

import numpy as np

from ptq3d.results.read import load_results
from ptq3d.results.scores import _Board
from ptq3d.results.store import ResultsStore
from tests.reports import stores

MONO = {
    "higher_is_better": False,
    "unit": "ratio",
    "aggregation": "weighted",
    "weight_key": "depth.mono.valid_pixels",
}
COUNT = {"higher_is_better": None, "unit": "count", "aggregation": "sum"}


def _store(tmp_path):
    n = stores.N_SCENES
    fp = {
        **stores.FP,
        "depth.mono.abs_rel": np.full(n, 0.1),
        "depth.mono.valid_pixels": np.arange(1, n + 1, dtype=float),
        "depth.valid_pixels": np.full(n, 1000.0),
    }
    cells = [stores.cell("fp", "fp32", fp=fp), stores.cell("rtn", "w4a8", stores.scaled({}, base=fp), fp=fp)]
    for c in cells:
        c.metric_info.update(
            {"depth.mono.abs_rel": MONO, "depth.mono.valid_pixels": COUNT, "depth.valid_pixels": COUNT}
        )
    return stores.write(tmp_path / "s.sqlite", cells), cells


def test_weights_come_from_the_stored_weight_key(tmp_path):
    path, cells = _store(tmp_path)
    with ResultsStore(path, readonly=True) as st:
        assert st.metric_info()["depth.mono.abs_rel"]["weight_key"] == "depth.mono.valid_pixels"
    res = load_results(path)
    board = _Board(res, "fake", 100, 0.95, 0)
    w = board.weights(cells[1].cell_id, "fake", "depth.mono.abs_rel", stores.scenes())
    assert w.tolist() == list(range(1, stores.N_SCENES + 1))


def test_an_old_store_without_the_column_keeps_the_prefix_rule(tmp_path):
    path, cells = _store(tmp_path)
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE metric_info DROP COLUMN weight_key")
    con.commit()
    con.close()
    res = load_results(path)
    assert res.metric_info["depth.mono.abs_rel"]["weight_key"] is None
    w = _Board(res, "fake", 100, 0.95, 0).weights(
        cells[1].cell_id, "fake", "depth.mono.abs_rel", stores.scenes()
    )
    assert w.tolist() == [1000.0] * stores.N_SCENES
    with ResultsStore(path):  # opening for writing adds the column back, empty
        pass
    assert load_results(path).metric_info["depth.mono.abs_rel"]["weight_key"] is None
