"""`ptq3d run` with no config: the embedded default suite, end to end (minutes: marked slow)."""

from __future__ import annotations

import sqlite3

import pytest

from ptq3d.harness.cli import main


@pytest.mark.slow
def test_default_suite_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--no-progress"]) == 0
    out = capsys.readouterr().out
    runs = tmp_path / "ptq3d-runs"
    (run_dir,) = [p for p in runs.iterdir() if p.name != "cache"]  # ./ptq3d-runs/<timestamp>/
    assert (runs / "cache" / "fp").is_dir()  # the FP cache shared by timestamped runs
    assert run_dir.name[:2] == "20"
    assert f"report: {run_dir / 'reports' / 'report.html'}" in out and "Retained %" in out
    con = sqlite3.connect(run_dir / "results.sqlite")
    rows = con.execute("SELECT method, scheme, status, reason FROM cells").fetchall()
    from ptq3d.harness.default_suite import WEIGHT_ONLY_METHODS
    from ptq3d.methods import list_methods

    methods = {m for m in list_methods() if m != "fp"}
    assert {(m, s) for m, s, _, _ in rows if m != "fp"} == {
        (m, s) for m in methods for s in ("w8a8", "w4a8", "w4a4")
    } | {(m, "w4a16") for m in WEIGHT_ONLY_METHODS}
    assert (run_dir / "sensitivity").is_dir() and "Sensitivity" in (
        run_dir / "reports" / "report.html"
    ).read_text()
    assert ("fp", "fp32", "ok", "") in rows
    assert all(reason for _, _, status, reason in rows if status != "ok")  # failures say why
    assert (run_dir / "config.toml").is_file() and (run_dir / "reports" / "report.tex").is_file()


@pytest.mark.parametrize(
    "paper, epochs, expect_cal, expect_cfg",
    [
        ({"num_scenes": 64, "frames": 4, "epochs": 15}, True, {"num_scenes": 4, "frames": 4}, {"epochs": 1}),
        ({"num_scenes": 40, "frames": 10}, False, {"num_scenes": 4, "frames": 4}, {}),
        ({"num_scenes": 8, "frames": 10}, False, {"num_scenes": 2, "frames": 4}, {}),
        ({"num_scenes": 24}, False, {"num_scenes": 3}, {}),
        ({"builder": "random"}, False, {"num_scenes": 4}, {}),
    ],
)
def test_paper_settings_are_scaled_to_the_tiny_pool(paper, epochs, expect_cal, expect_cfg):
    from ptq3d.harness.default_suite import CALIBRATION_SEEDS, scale_to_tiny

    cal, cfg = scale_to_tiny(paper, epochs)
    assert cal == {**expect_cal, "seeds": list(CALIBRATION_SEEDS)} and cfg == expect_cfg
