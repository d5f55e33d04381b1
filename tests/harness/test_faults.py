"""Issue 20.6 and 16.4: faults end in one line and lose nothing (corrupt store, full disk, Ctrl-C, a dead
worker, --out naming a file), and failed cells make `ptq3d run` exit 3 (fake components)."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

import pytest

from ptq3d.harness import fpcache
from ptq3d.harness.cli import main
from ptq3d.harness.config import load_config
from ptq3d.harness.executors import ProcessPoolExecutor
from ptq3d.harness.runner import run_cell
from ptq3d.harness.sweep import run_grid
from ptq3d.results.store import DiskFullError, ResultsStore, repair_store
from tests.harness.fakes import COMPONENTS, FakeComponents, rtn_grid

FLAG = "PTQ3D_TEST_FAULT_FLAG"  # a file whose existence arms a fault once (seen by spawned workers too)


def _config(tmp_path: Path, components: str = COMPONENTS, schemes='["w8a8", "w4a8"]', backend="none") -> Path:
    return rtn_grid(tmp_path, components=components, schemes=schemes, backend=backend)


def _arm(tmp_path: Path, monkeypatch) -> Path:
    flag = tmp_path / "armed"
    flag.touch()
    monkeypatch.setenv(FLAG, str(flag))
    return flag


def _disarm_once() -> bool:
    """True (once) when the test armed the fault."""
    flag = os.environ.get(FLAG)
    if flag and Path(flag).exists():
        Path(flag).unlink()
        return True
    return False


class InterruptOnceComponents(FakeComponents):
    """Ctrl-C arrives while the w4a8 cell calibrates."""

    def quantize(self, model, method, scheme, *args, **kwargs):
        if scheme == "w4a8" and _disarm_once():
            raise KeyboardInterrupt
        return super().quantize(model, method, scheme, *args, **kwargs)


class ExitOnceComponents(FakeComponents):
    """The worker process dies (os._exit) while quantizing the w4a8 cell: once, or every time when the
    flag file is named 'always'."""

    def quantize(self, model, method, scheme, *args, **kwargs):
        flag = os.environ.get(FLAG)
        if scheme == "w4a8" and flag and (Path(flag).name == "always" or _disarm_once()):
            os._exit(7)
        return super().quantize(model, method, scheme, *args, **kwargs)


def _one_line(text: str) -> str:
    lines = [x for x in text.splitlines() if x.strip()]
    assert len(lines) == 1, text
    return lines[0]


# --- corrupt store ------------------------------------------------------------------------------------------


def test_corrupt_store_is_one_line_then_repair_keeps_what_is_readable(tmp_path, capsys):
    cfg = _config(tmp_path)
    store = tmp_path / "out" / "results.sqlite"
    store.parent.mkdir(parents=True)
    store.write_bytes(os.urandom(8192))  # overwritten with garbage
    assert main(["run", str(cfg), "--no-report", "--no-progress"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "is corrupt" in err or "not a readable ptq3d results store" in err
    assert f"ptq3d store repair {store.parent}" in err
    assert main(["store", "repair", str(store.parent)]) == 0
    out = capsys.readouterr().out
    moved = list(store.parent.glob("results.sqlite.corrupt-*"))
    assert len(moved) == 1 and moved[0].read_bytes()[:16] != b"SQLite format 3\x00"  # kept, not deleted
    assert "kept 0 cells" in out
    assert main(["run", str(cfg), "--no-report", "--no-progress"]) == 0
    with ResultsStore(store, readonly=True) as st:
        assert len(st.cell_ids("ok")) == 3


def test_repair_keeps_every_readable_cell_and_refuses_a_healthy_store(tmp_path):
    cfg = load_config(_config(tmp_path))
    summary = run_grid(cfg)
    with ResultsStore(summary.store_path, readonly=True) as st:
        ids = st.cell_ids()
    from ptq3d.errors import UserError

    with pytest.raises(UserError, match="nothing to repair"):
        repair_store(summary.store_path)
    con = sqlite3.connect(summary.store_path)
    page = con.execute("PRAGMA page_size").fetchone()[0]
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'runs'").fetchone()[0]
    con.close()
    with open(summary.store_path, "r+b") as f:  # garbage over the runs table's page: integrity_check fails
        f.seek((root - 1) * page)
        f.write(b"\xff" * page)
    out = repair_store(summary.store_path)
    assert set(out["kept"]) == ids and not out["lost"]
    with ResultsStore(summary.store_path, readonly=True) as st:
        assert st.cell_ids() == ids and len(st.metric_rows()) > 0


# --- full disk ----------------------------------------------------------------------------------------------


def test_enospc_in_the_fp_cache_stops_the_run_without_failed_cells(tmp_path, monkeypatch, capsys):
    cfg = _config(tmp_path)

    def full(f, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.toml").write_text(cfg.read_text())  # so the first write is the FP cache's
    monkeypatch.setattr(fpcache, "_write_all", full)
    assert main(["run", str(cfg), "--no-report", "--no-progress"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "disk full while writing" in err and "rerun the same command to resume" in err
    cache = tmp_path / "out" / "cache"
    assert not [p for p in cache.rglob("*") if p.is_file()]  # no half-written entry, no temporary file
    with ResultsStore(tmp_path / "out" / "results.sqlite", readonly=True) as st:
        assert st.cell_ids("failed") == set()  # nothing a resume would skip
    monkeypatch.undo()
    assert main(["run", str(cfg), "--no-report", "--no-progress"]) == 0
    assert "ran 3 cells, skipped 0" in capsys.readouterr().out


def test_a_full_database_rolls_the_cell_back(tmp_path):
    cells = load_config(_config(tmp_path)).cells()
    a, b = (run_cell(c, None) for c in cells[:2])
    with ResultsStore(tmp_path / "s.sqlite") as st:
        st.write_cell(a)
        pages = st.conn.execute("PRAGMA page_count").fetchone()[0]
        st.conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own SQLITE_FULL on the next write
        with pytest.raises(DiskFullError, match="disk full while writing"):
            st.write_cell(b)
        assert st.cell_ids() == {a.cell_id} and {r["cell_id"] for r in st.metric_rows()} == {a.cell_id}


# --- Ctrl-C -------------------------------------------------------------------------------------------------


def test_ctrl_c_is_one_line_with_the_resume_command(tmp_path, monkeypatch, capsys):
    cfg = _config(tmp_path, components="tests.harness.test_faults:InterruptOnceComponents")
    _arm(tmp_path, monkeypatch)
    assert main(["run", str(cfg), "--no-report", "--no-progress"]) == 130
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("ptq3d run: interrupted;") and f"resume with: ptq3d run {cfg} --out" in err
    with ResultsStore(tmp_path / "out" / "results.sqlite", readonly=True) as st:
        finished = st.cell_ids()
        assert {c["scheme"] for c in st.cells()} == {"fp32", "w8a8"}  # the interrupted cell left no row
    assert main(["run", str(cfg), "--no-report", "--no-progress"]) == 0
    assert "ran 1 cells, skipped 2 finished" in capsys.readouterr().out
    with ResultsStore(tmp_path / "out" / "results.sqlite", readonly=True) as st:
        assert finished < st.cell_ids("ok")


# --- a dead worker ------------------------------------------------------------------------------------------


def test_process_pool_retries_a_worker_that_died_once(tmp_path, monkeypatch):
    # one cell on one worker keeps it to two process spawns (the slow test below runs a whole grid)
    cells = load_config(
        _config(tmp_path, components="tests.harness.test_faults:ExitOnceComponents", schemes='["w4a8"]')
    ).cells()[1:]
    flag = _arm(tmp_path, monkeypatch)
    (result,) = ProcessPoolExecutor(workers=1, max_retries=2).map(cells, None)
    assert not flag.exists()  # the fault fired: the first worker died mid-cell
    assert result.ok, result.reason
    assert result.provenance["executor"]["attempts"] == 2
    assert "BrokenProcessPool" in result.provenance["executor"]["attempt_errors"][0]


@pytest.mark.slow
def test_process_pool_records_a_cell_whose_worker_always_dies(tmp_path, monkeypatch):
    cells = load_config(_config(tmp_path, components="tests.harness.test_faults:ExitOnceComponents")).cells()
    always = tmp_path / "always"
    always.touch()
    monkeypatch.setenv(FLAG, str(always))
    results = {r.spec.scheme: r for r in ProcessPoolExecutor(workers=2, max_retries=1).map(cells, None)}
    assert results["fp32"].ok and results["w8a8"].ok  # cells beside the dying one are retried and finish
    bad = results["w4a8"]
    assert not bad.ok and bad.failed_stage == "worker" and "died 2 times" in bad.reason


# --- loud failures and exit codes ---------------------------------------------------------------------------


def test_a_failed_stage_fails_the_cell_and_run_exits_3(tmp_path, capsys):
    # "auto" picks the toy emulated backend, which cannot run w4a4: the real-kernel stage fails on that cell
    # (as TAPTQ's did on every cell while "Failed" said 0)
    cfg = _config(tmp_path, schemes='["w8a8", "w4a4"]', backend="auto")
    assert main(["run", str(cfg), "--no-report", "--no-progress"]) == 3
    out = capsys.readouterr().out
    assert "1 failed" in out and "failed: toy | RTN | w4a4" in out and "exit code 3" in out
    with ResultsStore(tmp_path / "out" / "results.sqlite", readonly=True) as st:
        (bad,) = [c for c in st.cells() if c["status"] == "failed"]
    assert bad["failed_stage"] == "eval_real" and bad["reason"].startswith(
        "eval_real: backend emulated failed"
    )
    # a resume that skips the failed cell still reports it
    assert main(["run", str(cfg), "--no-report", "--no-progress"]) == 3


def test_out_naming_an_existing_file_is_one_line(tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("x")
    assert main(["run", str(_config(tmp_path)), "--out", str(target), "--no-progress"]) == 2
    assert "is an existing file" in _one_line(capsys.readouterr().err)
    assert target.read_text() == "x"


def test_disk_full_inside_a_stage_is_not_a_failed_cell(tmp_path, monkeypatch):
    cell = load_config(_config(tmp_path)).cells()[1]

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", "/tmp/x")

    monkeypatch.setattr(FakeComponents, "quantize", full)
    with pytest.raises(DiskFullError, match="disk full while writing '/tmp/x'"):
        run_cell(cell, None)


def test_enospc_while_writing_reports_is_one_line(tmp_path, monkeypatch, capsys):
    import ptq3d.reports

    def full(*a, **k):
        raise OSError(
            errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "reports" / "report.html")
        )

    monkeypatch.setattr(ptq3d.reports, "write_reports", full)
    assert main(["run", str(_config(tmp_path)), "--no-progress"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "disk full while writing" in err and "report.html" in err
    with ResultsStore(tmp_path / "out" / "results.sqlite", readonly=True) as st:
        assert len(st.cell_ids("ok")) == 3  # everything computed was stored first
