"""The driver: resume, retry, FP cache reuse across runs."""

from __future__ import annotations

from ptq3d.harness.config import load_config
from ptq3d.harness.sweep import run_grid
from ptq3d.results.store import ResultsStore
from tests.harness.conftest import GRID


def test_rerun_skips_finished_cells(make_config):
    # no real-kernel stage: the toy emulated backend has no 4-bit activations, and a failed stage fails the cell
    cfg = load_config(make_config(GRID + 'real_backend = "none"\n'))
    first = run_grid(cfg)
    assert first.total == 7 and first.ran == 7 and first.skipped == 0 and not first.failed
    second = run_grid(cfg)
    assert second.ran == 0 and second.skipped == 7
    with ResultsStore(first.store_path) as st:
        assert len(st.cells()) == 7 and len(st.runs()) == 2


def test_warm_fp_cache_skips_fp_passes(make_config, tmp_path):
    cfg = load_config(make_config())
    cold = run_grid(cfg, tmp_path / "a.sqlite")
    assert cold.counters["fp_passes"] == 2  # 2 scenes, once for all cells
    warm = run_grid(cfg, tmp_path / "b.sqlite")  # a fresh store: every cell reruns, the FP cache is warm
    assert warm.ran == 7
    assert warm.counters["fp_passes"] == 0 and warm.counters["fp_cache_hits"] == 7 * 2
    assert warm.counters["fp_metric_cache_hits"] == 7 * 2


def test_failed_cells_are_kept_and_retried_on_request(make_config):
    cfg = load_config(make_config(GRID.replace('name = "wonly"', 'name = "nan"'), run='schemes = ["w8a8"]'))
    s = run_grid(cfg)
    assert len(s.failed) == 2 and all("non-finite" in why for _, why in s.failed)
    assert run_grid(cfg).ran == 0
    retry = run_grid(cfg, retry_failed=True)
    assert retry.ran == 2 and retry.skipped == 3
