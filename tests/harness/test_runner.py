"""run_cell: stages, metrics, failures, FP cache, backends, statistics (on the fake components)."""

from __future__ import annotations

import math

from ptq3d.harness.config import load_config
from ptq3d.harness.executors import InProcessExecutor, ProcessPoolExecutor
from ptq3d.harness.runner import run_cell
from ptq3d.results.records import AGGREGATE_SCENE, STAGES
from tests.harness.conftest import GRID


def _cells(make_config, body=GRID, run='schemes = ["w8a8", "w4a4"]'):
    return load_config(make_config(body, run=run)).cells()


def _agg(result, stage):
    return {m.metric: m for m in result.metrics if m.stage == stage and m.scene == AGGREGATE_SCENE}


def test_quantized_cell_runs_every_stage(make_config, tmp_path):
    cell = next(c for c in _cells(make_config) if c.method.name == "rtn" and c.scheme == "w4a4")
    r = run_cell(cell, tmp_path / "cache")
    assert [s.name for s in r.stages] == list(STAGES)
    status = {s.name: s.status for s in r.stages}
    # "auto" tried the emulated backend, which cannot run w4a4 here: the stage failed, so the cell counts as
    # failed (stage and reason recorded), and it still went on to bench what it could
    assert status["eval_real"] == "failed"
    assert not r.ok and r.failed_stage == "eval_real"
    assert r.reason == "eval_real: " + r.stages[4].note
    assert (
        r.stages[4].note
        == "backend emulated failed: NotImplementedError: the toy emulated backend has no 4-bit activation kernel"
    )
    assert r.costs["real_backend_error"] == r.stages[4].note and not any(m.stage == "real" for m in r.metrics)
    assert all(status[s] == "ok" for s in ("load", "fp_eval", "calibrate", "eval_fake", "bench"))
    assert all(s.cpu_peak_bytes > 0 and s.wall_s >= 0 for s in r.stages if s.status == "ok")
    # per-scene rows for the 2 toy-smoke scenes plus the aggregate with its standard error over scenes
    scenes = {m.scene for m in r.metrics if m.stage == "fake"}
    assert scenes == {"toy-smoke-00", "toy-smoke-01", AGGREGATE_SCENE}
    fp, fake = _agg(r, "fp"), _agg(r, "fake")
    per_scene = [
        m.value
        for m in r.metrics
        if m.stage == "fake" and m.metric == "depth.abs_rel" and m.scene != AGGREGATE_SCENE
    ]
    assert math.isclose(fake["depth.abs_rel"].value, sum(per_scene) / 2)
    assert math.isclose(fake["depth.abs_rel"].stderr, abs(per_scene[0] - per_scene[1]) / 2)
    assert fake["depth.abs_rel"].n == 2
    assert fake["depth.abs_rel"].value != fp["depth.abs_rel"].value  # 4-bit quantization changed something
    assert r.manifest["sites"] and r.stats["calibration"]["blocks"]
    assert {b["name"] for b in r.stats["outliers"]["blocks"]} == {"blocks.0", "blocks.1"}
    assert r.stats["fp_agreement"]["depth_rel_err"] > 0
    assert r.costs["latency_q"]["repeats"] == 2 and r.costs["model_bytes_q"] < r.costs["model_bytes_fp"]
    assert r.provenance["calibration_hash"] and r.provenance["model_hash"] and r.provenance["data_hash"]
    assert r.provenance["versions"]["torch"] and "device" in r.provenance


def test_reference_cell_skips_quantization(make_config, tmp_path):
    ref = _cells(make_config)[0]
    r = run_cell(ref, tmp_path / "cache")
    assert r.ok and ref.is_reference
    assert {s.name: s.status for s in r.stages}["calibrate"] == "skipped"
    assert {m.stage for m in r.metrics} == {"fp"}
    assert "latency_fp" in r.costs and "latency_q" not in r.costs


def test_emulated_backend_runs_real_stage_with_parity(make_config, tmp_path):
    cell = next(
        c for c in _cells(make_config, GRID + 'real_backend = "emulated"\n') if c.method.name == "rtn"
    )
    r = run_cell(cell, tmp_path / "cache")
    assert r.ok, r.reason
    assert {s.name: s.status for s in r.stages}["eval_real"] == "ok"
    assert _agg(r, "real")["depth.abs_rel"].value == _agg(r, "fake")["depth.abs_rel"].value
    assert r.stats["parity"]["depth_rel_err"] == 0.0
    assert r.costs["latency_backend"] == "emulated-cpu"


def test_auto_backend_runs_emulated_and_none_skips(make_config, tmp_path):
    cells = _cells(make_config, run='schemes = ["w8a8"]')
    auto = run_cell(next(c for c in cells if c.method.name == "rtn"), tmp_path / "cache")
    assert {s.name: s.note for s in auto.stages}["eval_real"] == "backend emulated"
    assert auto.costs["latency_backend"] == "emulated-cpu"
    none = _cells(make_config, GRID + 'real_backend = "none"\n', run='schemes = ["w8a8"]')
    r = run_cell(next(c for c in none if c.method.name == "rtn"), tmp_path / "cache")
    assert {s.name: (s.status, s.note) for s in r.stages}["eval_real"] == ("skipped", "real_backend = 'none'")
    assert r.costs["latency_backend"] == "fake-cpu"


def test_explicit_backend_errors_fail_the_cell(make_config, tmp_path):
    cell = next(
        c
        for c in _cells(make_config, GRID + 'real_backend = "emulated"\n')
        if c.scheme == "w4a4" and c.method.name == "rtn"
    )
    r = run_cell(cell, tmp_path / "cache")
    assert (
        not r.ok
        and r.reason
        == "eval_real: NotImplementedError: the toy emulated backend has no 4-bit activation kernel"
    )


def test_unavailable_backend_fails_the_cell(make_config, tmp_path):
    cell = next(c for c in _cells(make_config, GRID + 'real_backend = "triton"\n') if c.method.name == "rtn")
    r = run_cell(cell, tmp_path / "cache")
    assert not r.ok and r.reason.startswith("eval_real: real backend 'triton' is not available")


def test_nan_predictions_and_exceptions_become_failed_cells(make_config, tmp_path):
    body = GRID.replace('name = "wonly"', 'name = "nan"').replace(
        'name = "rtn"\nlabel = "RTN"', 'name = "boom"'
    )
    cells = _cells(make_config, body, run='schemes = ["w8a8"]')
    by = {
        c.method.name: run_cell(c, tmp_path / "cache")
        for c in cells
        if c.calibration and c.calibration.seed == 0
    }
    assert by["nan"].status == "failed"
    assert by["nan"].reason == (
        "eval_fake: non-finite values in fake predictions (depth, world_points) on scene 'toy-smoke-00'"
    )
    assert (
        by["boom"].status == "failed"
        and by["boom"].reason == "calibrate: RuntimeError: boom: this method always fails"
    )
    assert "RuntimeError" in by["boom"].provenance["traceback"]
    assert by["boom"].stages[-1].name == "calibrate" and by["boom"].stages[-1].status == "failed"


def test_unknown_components_is_a_failed_cell_not_a_crash(make_config, tmp_path):
    import dataclasses

    cell = dataclasses.replace(_cells(make_config)[0], components="no.such.module:X")
    r = run_cell(cell, None)
    assert not r.ok and "cannot import module 'no.such.module'" in r.reason


def test_fp_cache_makes_later_cells_skip_the_fp_pass(make_config, tmp_path):
    cells = _cells(make_config)
    results = list(InProcessExecutor().map(cells, str(tmp_path / "cache")))
    fp_passes = [r.counters["fp_passes"] for r in results]
    assert fp_passes[0] == 2 and sum(fp_passes) == 2  # one pass over the 2 scenes, for all 7 cells
    assert all(r.counters["fp_cache_hits"] == 2 for r in results[1:])
    # cached FP metrics equal freshly computed ones
    fresh = run_cell(cells[0], None)
    assert _agg(fresh, "fp")["depth.abs_rel"].value == _agg(results[3], "fp")["depth.abs_rel"].value
    assert fresh.counters["fp_passes"] == 2


def test_process_pool_executor_matches_in_process(make_config, tmp_path):
    cells = [
        c
        for c in _cells(make_config, GRID + "threads = 1\n", run='schemes = ["w4a4"]')
        if c.method.name == "wonly" or c.is_reference
    ]
    local = {
        r.cell_id: _agg(r, "fake" if not r.spec.is_reference else "fp")
        for r in InProcessExecutor().map(cells, None)
    }
    remote = list(ProcessPoolExecutor(workers=1).map(cells, None))
    assert {r.cell_id for r in remote} == set(local)
    for r in remote:
        got = _agg(r, "fake" if not r.spec.is_reference else "fp")
        assert {k: v.value for k, v in got.items()} == {k: v.value for k, v in local[r.cell_id].items()}
