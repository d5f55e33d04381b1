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
    from ptq3d.methods import list_methods

    methods = {m for m in list_methods() if m != "fp"}
    assert {(m, s) for m, s, _, _ in rows if m != "fp"} == {
        (m, s) for m in methods for s in ("w8a8", "w4a8", "w4a4")
    }
    assert ("fp", "fp32", "ok", "") in rows
    assert all(reason for _, _, status, reason in rows if status != "ok")  # failures say why
    assert (run_dir / "config.toml").is_file() and (run_dir / "reports" / "report.tex").is_file()
