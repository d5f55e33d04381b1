"""A run killed with SIGKILL mid-grid resumes: no finished cell is recomputed or lost."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from tests.harness.fakes import write_config

REPO = Path(__file__).resolve().parents[2]


def _ok_cells(store: Path) -> set[tuple]:
    if not store.exists():
        return set()
    try:
        con = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)
        rows = con.execute("SELECT method, scheme, calib_seed FROM cells WHERE status = 'ok'").fetchall()
        con.close()
        return set(rows)
    except sqlite3.OperationalError:  # the writer holds the lock, or the schema is not there yet
        return set()


def test_sigkill_mid_grid_then_resume(tmp_path):
    log = tmp_path / "quantize.log"
    out = tmp_path / "out"
    body = f"""
[[models]]
name = "toy"
[[methods]]
name = "rtn"
config = {{ sleep = 0.3, log = "{log}" }}
[[protocols]]
name = "toy-smoke"
[calibration]
protocol = "toy-heldout"
num_scenes = 2
seeds = [0, 1]
[eval]
bench = false
outlier_stats = false
threads = 1
real_backend = "none"
"""
    cfg = write_config(
        tmp_path / "kill.toml", body, f'schemes = ["w8a8", "w4a8", "w4a4"]\noutput_dir = "{out}"'
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "ptq3d", "run", str(cfg), "--no-report", "--no-progress", "--allow-imports"]
    store = out / "results.sqlite"
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while len(_ok_cells(store)) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished_before = _ok_cells(store)
    # 1 FP reference + 3 schemes x 2 seeds; we killed it part-way (at least the reference and 2 rtn cells done)
    assert 3 <= len(finished_before) < 7, proc.stderr.read().decode()[-2000:]

    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    after = _ok_cells(store)
    assert len(after) == 7 and finished_before <= after  # nothing lost, everything finished

    runs = Counter(
        (r["method"], r["scheme"], r["seed"]) for r in map(json.loads, log.read_text().splitlines())
    )
    for method, scheme, seed in finished_before:
        if method == "rtn":
            assert runs[(method, scheme, seed)] == 1, f"{scheme}/seed{seed} was recomputed after the resume"
    assert set(runs) == {(m, s, seed) for m, s, seed in after if m == "rtn"}
