"""Fixtures for the methods tests: the toy GeometryModel and calibration scenes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from toy_model import ToyGeometryModel, toy_scenes  # noqa: E402

from ptq3d.calibration.sets import CalibrationSet  # noqa: E402


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    return ToyGeometryModel(seed=0)


@pytest.fixture(scope="module")
def toy_calib():
    return CalibrationSet(toy_scenes(4, seed=1), builder="random", seed=1)


@pytest.fixture(scope="module")
def toy_images():
    return torch.stack([s.images for s in toy_scenes(2, seed=99)])


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on the shared 2-core CI machine a second OpenMP thread makes the many small ops of
    the calibration loops wait for a descheduled thread (measured 10-20x slower under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
