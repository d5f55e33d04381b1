"""The notebook API: load_results takes a run directory or its store; latest_run; `ptq3d report` without an
argument reports the latest run under ./ptq3d-runs."""

from __future__ import annotations

import os
import time

import pytest

from ptq3d.errors import UserError
from ptq3d.harness.cli import main
from ptq3d.results import load_results
from ptq3d.results.read import latest_run
from tests.reports.stores import cell, scaled, write


def _run(root, name, label, mtime):
    run = root / name
    run.mkdir(parents=True)
    store = write(
        run / "results.sqlite", [cell("fp", "fp32"), cell("rtn", "w8a8", scaled({}, 0.01), label=label)]
    )
    os.utime(store, (mtime, mtime))
    return run


def test_load_results_takes_a_run_directory_or_its_store(tmp_path):
    run = _run(tmp_path, "r1", "A", time.time())
    by_dir, by_file = load_results(run), load_results(run / "results.sqlite")
    assert by_dir.path == by_file.path == run / "results.sqlite"
    assert len(by_dir.cells) == 2 and len(by_dir.scenes) == len(by_file.scenes) > 0
    lb = by_dir.leaderboard(n_resamples=100)
    assert list(lb["rank"]) == ["FP", "1"]
    with pytest.raises(UserError, match="without a results store"):
        load_results(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        load_results(tmp_path / "nope.sqlite")


def test_report_without_argument_reports_the_latest_run(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "ptq3d-runs"
    (runs / "cache").mkdir(parents=True)  # the shared FP cache is no run
    _run(runs, "20260101-000000", "old", time.time() - 100)
    new = _run(runs, "20260102-000000", "newest", time.time())
    monkeypatch.chdir(tmp_path)
    assert latest_run().resolve() == new.resolve()
    assert main(["report", "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert "latest run: ptq3d-runs/20260102-000000" in out and "newest" in out
    assert (new / "reports" / "report.md").is_file()
    monkeypatch.chdir(runs / "cache")
    assert main(["report"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no run under 'ptq3d-runs'" in err
