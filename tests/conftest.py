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
