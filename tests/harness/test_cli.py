"""The CLI: run, report, compare, ls, validate; --help everywhere; exit code 2 with one line on user errors."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from ptq3d.harness.cli import build_parser, main
from tests.harness.conftest import GRID
from tests.harness.fakes import COMPONENTS

COMMANDS = ("run", "report", "compare", "ls", "validate")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert f"usage: ptq3d {command}" in capsys.readouterr().out


def test_top_level_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in COMMANDS)
    assert {a.dest for a in build_parser()._actions} >= {"help", "command"}


def _one_line_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_user_errors_exit_2_with_one_line(capsys, tmp_path, make_config):
    assert "does not exist" in _one_line_error(capsys, ["validate", str(tmp_path / "nope.toml")])
    assert "results store" in _one_line_error(capsys, ["report", str(tmp_path / "nope.sqlite")])
    bad = make_config(GRID.replace('"rtn"', '"rtm"'), name="bad.toml")
    assert "unknown method 'rtm'" in _one_line_error(capsys, ["validate", str(bad)])
    with pytest.raises(SystemExit) as e:  # argparse usage errors: also exit 2 with one line
        main(["ls", "nonsense"])
    assert e.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_validate_prints_the_grid(capsys, make_config):
    assert main(["validate", str(make_config()), "--list"]) == 0
    out = capsys.readouterr().out
    assert "ok (7 cells" in out and "toy | RTN | w4a4 | toy-smoke random/seed1" in out


def test_ls(capsys):
    assert main(["ls", "methods", "--components", COMPONENTS]) == 0
    assert capsys.readouterr().out.split() == ["rtn", "wonly", "nan", "boom"]
    assert main(["ls", "metrics", "--components", COMPONENTS]) == 0
    assert "depth.delta1" in capsys.readouterr().out


def test_run_report_compare(capsys, make_config, tmp_path):
    # no real-kernel stage: the toy emulated backend has no 4-bit activations, and a failed stage fails the cell
    cfg = make_config(GRID + 'real_backend = "none"\n')
    assert main(["run", str(cfg), "--no-progress"]) == 0
    out = capsys.readouterr().out
    store = tmp_path / "out" / "results.sqlite"
    assert "ran 7 cells, skipped 0 finished, 0 failed" in out and "Retained %" in out
    assert f"report: {tmp_path / 'out' / 'reports' / 'report.html'}" in out
    assert (tmp_path / "out" / "reports" / "report.tex").is_file()
    assert main(["run", str(cfg), "--no-progress", "--no-report"]) == 0
    assert "ran 0 cells, skipped 7 finished" in capsys.readouterr().out

    assert main(["report", str(tmp_path / "out"), "--out", str(tmp_path / "r"), "--format", "csv,md"]) == 0
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["report.csv", "report.md"]
    capsys.readouterr()
    assert "--format 'pdf'" in _one_line_error(capsys, ["report", str(store), "--format", "pdf"])

    # identical stores pass the gate
    assert main(["compare", str(store), str(store)]) == 0
    assert capsys.readouterr().out.strip().endswith("PASS")
    # inject a regression: the 4-bit RTN seed-1 abs_rel gets worse by 0.05
    new = tmp_path / "new.sqlite"
    shutil.copy(store, new)
    con = sqlite3.connect(new)
    (cid,) = con.execute(
        "SELECT cell_id FROM cells WHERE method='rtn' AND scheme='w4a4' AND calib_seed=1"
    ).fetchone()
    con.execute(
        "UPDATE metrics SET value = value + 0.05 WHERE cell_id=? AND stage='fake' AND scene='*' AND metric='depth.abs_rel'",
        (cid,),
    )
    con.commit()
    con.close()
    assert main(["compare", str(store), str(new), "--tolerance", "0.01"]) == 1
    out = capsys.readouterr().out
    assert "toy | RTN | w4a4 | toy-smoke | random/seed1: depth.abs_rel" in out and out.strip().endswith(
        "FAIL"
    )
    assert main(["compare", str(store), str(new), "--tolerance", "0.1"]) == 0  # within tolerance
    capsys.readouterr()
    assert main(["compare", str(store), str(new), "--metric-tolerance", "depth.abs_rel=0.1"]) == 0
    capsys.readouterr()
    # a cell that failed in the new store regresses
    con = sqlite3.connect(new)
    con.execute("UPDATE cells SET status='failed', reason='eval_fake: NaN' WHERE cell_id=?", (cid,))
    con.commit()
    con.close()
    assert main(["compare", str(store), str(new), "--tolerance", "1"]) == 1
    assert "failed in the new store: eval_fake: NaN" in capsys.readouterr().out
    assert "METRIC=TOLERANCE" in _one_line_error(
        capsys, ["compare", str(store), str(new), "--metric-tolerance", "x"]
    )
