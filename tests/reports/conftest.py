"""A small finished grid on the fake components, shared by the report tests (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ptq3d.harness.config import load_config
from ptq3d.harness.sweep import run_grid
from ptq3d.results.store import ResultsStore
from tests.harness.fakes import XSS, write_config

XSS_TOML = XSS.replace('"', '\\"')

BODY = f"""
[[models]]
name = "toy"
label = "Toy"
[[methods]]
name = "rtn"
label = "RTN"
[[methods]]
name = "wonly"
label = "W-only"
[[methods]]
name = "wonly"
label = "{XSS_TOML}"
config = {{ clip = 0.9 }}
[[methods]]
name = "boom"
[[protocols]]
name = "toy-smoke"
[[protocols]]
name = "toy-xss"
[calibration]
protocol = "toy-heldout"
num_scenes = 2
seeds = [0, 1]
[eval]
real_backend = "auto"
bench_repeats = 2
"""


@pytest.fixture(scope="session")
def grid_store(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("grid")
    cfg = write_config(tmp / "grid.toml", BODY, f'schemes = ["w8a8", "w4a8"]\noutput_dir = "{tmp / "out"}"')
    summary = run_grid(load_config(cfg))
    with ResultsStore(summary.store_path, readonly=True) as store:
        statuses = [c["status"] for c in store.cells()]
    assert summary.ran == 26 and statuses.count("failed") == 8  # 'boom': 2 schemes x 2 protocols x 2 seeds
    return summary.store_path


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread(one_torch_thread):
    """Every test here runs the tiny models on one torch thread (tests/conftest.py)."""
