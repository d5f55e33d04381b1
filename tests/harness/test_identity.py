"""Issue 20.1-20.3: cell identity by content, unique labels, metrics that cannot be computed (fake components)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ptq3d.errors import ConfigError
from ptq3d.harness import identity
from ptq3d.harness.cli import main
from ptq3d.harness.config import load_config
from ptq3d.harness.runner import run_cell
from ptq3d.harness.sweep import run_grid
from ptq3d.results.records import AGGREGATE_SCENE
from ptq3d.results.store import ResultsStore
from tests.harness.fakes import COMPONENTS, RTN_GRID, FakeComponents, ToyModel, rtn_grid

BODY = RTN_GRID


def _config(
    tmp_path: Path, body: str = BODY, components: str = COMPONENTS, schemes='["w8a8"]', **fmt
) -> Path:
    return rtn_grid(tmp_path, body, components, schemes, weights=fmt.get("weights", ""))


def _save_toy(path: Path, seed: int) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    save_file({k: v.contiguous() for k, v in ToyModel(8).state_dict().items()}, str(path))


def _fp_abs_rel(store_path: Path) -> list[float]:
    with ResultsStore(store_path, readonly=True) as st:
        return [
            r["value"]
            for r in st.metric_rows(AGGREGATE_SCENE)
            if r["stage"] == "fp" and r["metric"] == "depth.abs_rel"
        ]


def test_checkpoint_replaced_in_place_is_recomputed(tmp_path, capsys):
    ckpt = tmp_path / "toy.safetensors"
    _save_toy(ckpt, seed=1)
    cfg = _config(tmp_path, weights=f'weights = "{ckpt}"')
    assert main(["run", str(cfg), "--no-report", "--no-progress"]) == 0
    store = tmp_path / "out" / "results.sqlite"
    before = _fp_abs_rel(store)
    _save_toy(ckpt, seed=2)  # same path, same size, new weights
    capsys.readouterr()
    assert main(["run", str(cfg), "--no-report", "--no-progress"]) == 0
    out = capsys.readouterr().out
    # one line names what changed; nothing is skipped as "finished"
    assert "2 finished cells with changed inputs (model.weights_sha256:" in out
    assert "ran 2 cells, skipped 0 finished" in out
    after = _fp_abs_rel(store)
    assert len(before) == len(after) == 2  # one row per cell: the stale cells were replaced, not kept beside
    assert not math.isclose(before[0], after[0])
    fresh = run_cell(load_config(cfg).cells()[0], None)  # the number the new weights give from scratch
    expect = next(
        m.value
        for m in fresh.metrics
        if m.stage == "fp" and m.scene == AGGREGATE_SCENE and m.metric == "depth.abs_rel"
    )
    assert after == [expect, expect]
    with ResultsStore(store, readonly=True) as st:
        assert {c["status"] for c in st.cells()} == {"ok"}


def test_an_interrupted_recompute_leaves_the_old_cells_stale_not_ranked(tmp_path):
    ckpt = tmp_path / "toy.safetensors"
    _save_toy(ckpt, seed=1)
    cfg_path = _config(tmp_path, weights=f'weights = "{ckpt}"')
    cfg = load_config(cfg_path)
    identity.prepare(cfg)
    run_grid(cfg)
    _save_toy(ckpt, seed=2)
    cfg = load_config(cfg_path)
    identity.prepare(cfg)
    lines = identity.mark_changed(Path(cfg.output_dir) / "results.sqlite", cfg.cells())
    assert len(lines) == 1 and "weights_sha256" in lines[0]
    with ResultsStore(Path(cfg.output_dir) / "results.sqlite", readonly=True) as st:
        cells = st.cells()
    assert {c["status"] for c in cells} == {"stale"} and "inputs changed" in cells[0]["reason"]


def test_dataset_files_and_method_version_are_part_of_the_cell_id(tmp_path, monkeypatch):
    root = tmp_path / "data"
    (root / "scene").mkdir(parents=True)
    pose = root / "scene" / "pose.txt"
    pose.write_text("1 0 0 0\n")
    body = BODY.replace('name = "toy-smoke"', f'name = "toy-data"\nroot = "{root}"')

    def ids() -> list[str]:
        cfg = load_config(_config(tmp_path, body))
        identity.prepare(cfg)
        return [c.cell_id for c in cfg.cells()]

    first = ids()
    assert ids() == first  # deterministic
    pose.write_text("3 0 0 0\n")  # same size, new content: a sheared pose must not reuse old numbers
    second = ids()
    assert set(second).isdisjoint(first)
    monkeypatch.setattr(FakeComponents, "method_version", lambda self, name: "2", raising=False)
    third = ids()  # a new method code version: none of its cells is resumed; the FP reference is unchanged
    assert third[0] == second[0] and set(third[1:]).isdisjoint(second[1:])


def test_file_hash_cache_is_keyed_by_stat_and_survives_processes(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 100)
    cache = tmp_path / "hashes.json"
    h1 = identity.file_sha256(f, cache)
    assert json.loads(cache.read_text())  # persisted for the next process
    f.write_bytes(b"b" * 100)
    assert identity.file_sha256(f, cache) != h1


def test_scheme_spellings_are_one_scheme(tmp_path):
    cfg = load_config(_config(tmp_path, schemes='["w8a8", "W8A8", " w8a8 "]'))
    assert cfg.schemes == ["w8a8"] and len(cfg.cells()) == 2  # FP + one rtn cell
    cfg.schemes = ["w8a8", "W8A8", " w8a8 "]  # a RunConfig built in Python is normalised before it runs
    notes = identity.prepare(cfg)
    assert cfg.schemes == ["w8a8"] and len(notes) == 2 and "'W8A8'" in notes[0] and len(cfg.cells()) == 2


def test_two_models_with_one_label_are_refused(tmp_path, capsys):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    _save_toy(a, 1)
    _save_toy(b, 2)
    body = BODY.replace(
        "{weights}", f'weights = "{a}"\nlabel = "M"\n[[models]]\nname = "toy"\nweights = "{b}"\nlabel = "M"'
    )
    assert main(["run", str(_config(tmp_path, body)), "--no-report", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "[[models]][0] and [[models]][1] are both labelled 'M' but differ in weights" in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_identical_models_run_once(tmp_path):
    body = BODY.replace("{weights}", '[[models]]\nname = "toy"')
    cfg = load_config(_config(tmp_path, body))
    notes = identity.prepare(cfg)
    assert notes == ["[[models]][1] repeats [[models]][0] ('toy'): it runs once"] and len(cfg.cells()) == 2


def test_a_method_labelled_fp_is_refused(tmp_path, capsys):
    body = BODY.replace('label = "RTN"', 'label = "fp"')
    assert main(["validate", str(_config(tmp_path, body))]) == 2
    err = capsys.readouterr().err
    assert "is labelled 'fp', which is reserved for the full-precision reference row" in err


def test_the_store_never_keeps_two_cells_in_one_row(tmp_path):
    import dataclasses

    cell = load_config(_config(tmp_path)).cells()[1]
    r1 = run_cell(cell, None)
    other = dataclasses.replace(cell, model=dataclasses.replace(cell.model, weights_sha256="ab" * 32))
    r2 = run_cell(other, None)
    assert r1.cell_id != r2.cell_id and cell.row_key == other.row_key
    with ResultsStore(tmp_path / "s.sqlite") as st:
        st.write_cell(r1)
        assert st.write_cell(r2) == [r1.cell_id]
        assert st.cell_ids() == {r2.cell_id}


# --- metrics that cannot be computed (20.3) ---------------------------------------------------------------


class NanMetricComponents(FakeComponents):
    """depth.abs_rel is NaN on quantized predictions (as for a depth that collapsed to 0)."""

    def predict(self, model, images):
        pred = super().predict(model, images)
        pred.raw = {"quantized": hasattr(model, "wbits")}
        return pred

    def evaluate(self, pred, scene, ref, metrics):
        out = super().evaluate(pred, scene, ref, metrics)
        if (pred.raw or {}).get("quantized"):
            out["depth.abs_rel"] = float("nan")
        return out


def test_a_nan_metric_fails_the_cell_with_the_reason(tmp_path):
    cfg = load_config(_config(tmp_path, components="tests.harness.test_identity:NanMetricComponents"))
    fp, rtn = (run_cell(c, None) for c in cfg.cells())
    assert fp.ok
    assert not rtn.ok and rtn.failed_stage == "eval_fake"
    assert rtn.reason == "eval_fake: metric depth.abs_rel = nan on scene 'toy-smoke-00' (fake predictions)"
    assert {s.name: s.status for s in rtn.stages}["eval_fake"] == "failed"


def test_a_missing_metric_fails_the_cell(tmp_path, monkeypatch):
    cfg = load_config(_config(tmp_path))
    orig = FakeComponents.evaluate
    monkeypatch.setattr(
        FakeComponents,
        "evaluate",
        lambda self, *a: {k: v for k, v in orig(self, *a).items() if k != "depth.delta1"},
    )
    r = run_cell(cfg.cells()[0], None)
    assert (
        not r.ok
        and r.reason == "fp_eval: metric depth.delta1 missing for scene 'toy-smoke-00' (fp predictions)"
    )


def test_a_cached_fp_metrics_file_of_nan_is_not_reused(tmp_path):
    cfg = load_config(_config(tmp_path))
    cache = tmp_path / "cache"
    first = run_cell(cfg.cells()[0], cache)
    entries = sorted(cache.rglob("*.json"))
    assert entries
    for e in entries:
        e.write_text(json.dumps({k: float("nan") for k in json.loads(e.read_text())}))
    again = run_cell(cfg.cells()[0], cache)
    assert again.ok and again.counters["fp_metric_cache_hits"] == 0
    fp = {(m.scene, m.metric): m.value for m in again.metrics}
    assert fp == {(m.scene, m.metric): m.value for m in first.metrics}
    assert all(math.isfinite(v) for e in entries for v in json.loads(e.read_text()).values())  # rewritten


def test_label_check_runs_at_validate(tmp_path):
    body = BODY.replace("{weights}", 'label = "X"\n[[models]]\nname = "toy-wide"\nlabel = "X"')
    with pytest.raises(ConfigError, match="both labelled 'X' but differ in name"):
        cfg = load_config(_config(tmp_path, body))
        identity.check_labels(cfg)


def test_the_registry_version_is_the_method_code_version(monkeypatch):
    from ptq3d.harness.components import get_components
    from ptq3d.methods import get_method

    real = get_components("real")
    assert get_method("rtn").version == "1" and identity.method_version(real, "rtn") == "1"
    monkeypatch.setattr(get_method("rtn"), "version", "2")
    assert identity.method_version(real, "rtn") == "2"


def test_calibration_data_files_are_part_of_the_cell_id(tmp_path):
    """A calibration protocol whose files change in place gives new ids to the cells that calibrate on it;
    the FP reference, which does not calibrate, keeps its id."""
    root = tmp_path / "calib"
    (root / "scene").mkdir(parents=True)
    frame = root / "scene" / "frame.txt"
    frame.write_text("1 0 0 0\n")
    body = BODY.replace('protocol = "toy-heldout"', f'protocol = "toy-data"\nroot = "{root}"')

    def ids() -> list[str]:
        cfg = load_config(_config(tmp_path, body))
        identity.prepare(cfg)
        cells = cfg.cells()
        assert all(c.calibration is None or c.calibration.data_hash for c in cells)
        return [c.cell_id for c in cells]

    first = ids()
    frame.write_text("9 0 0 0\n")
    second = ids()
    assert second[0] == first[0] and set(second[1:]).isdisjoint(first[1:])
