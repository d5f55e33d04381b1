"""Fixtures for the harness tests: run configurations on the fake components (tests/harness/fakes.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.fakes import write_config

GRID = """
[[models]]
name = "toy"
[[methods]]
name = "rtn"
label = "RTN"
[[methods]]
name = "wonly"
[[protocols]]
name = "toy-smoke"
[calibration]
protocol = "toy-heldout"
num_scenes = 2
seeds = [0, 1]
[eval]
bench_repeats = 2
"""


@pytest.fixture
def make_config(tmp_path: Path):
    """make_config(body=GRID, run='schemes = [...]') -> path of a TOML config using the fake components,
    writing its store under tmp_path/out."""

    def make(body: str = GRID, run: str = 'schemes = ["w8a8", "w4a4"]', name: str = "grid.toml") -> Path:
        out = tmp_path / "out"
        return write_config(tmp_path / name, body, run + f'\noutput_dir = "{out}"')

    return make


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread(one_torch_thread):
    """Every test here runs the tiny models on one torch thread (tests/conftest.py)."""
