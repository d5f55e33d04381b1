"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The goldens made with the official code (shared/reference). Override with $PTQ3D_REFERENCE.
    A missing folder is a failure, not a skip: conformance must be proven on every run."""
    path = Path(os.environ.get("PTQ3D_REFERENCE", REPO.parent / "shared" / "reference"))
    if not (path / "README.md").is_file():
        pytest.fail(
            f"reference goldens not found at {path} (expected README.md there); set PTQ3D_REFERENCE to the "
            "shared/reference folder",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is ~10x faster than two that contend. Test
    folders that want it request it from an autouse fixture of their conftest."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
