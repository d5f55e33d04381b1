"""Fixtures for the VGGT tests: the tiny reference model with its golden weights and I/O."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from ptq3d.models import load_model
from ptq3d.models.vggt import VGGTConfig


@pytest.fixture(scope="session")
def vggt_tiny_meta(reference_dir) -> dict:
    return json.loads((reference_dir / "vggt_tiny.json").read_text())


@pytest.fixture(scope="session")
def vggt_tiny_io(reference_dir, vggt_tiny_meta) -> dict:
    return load_file(str(reference_dir / vggt_tiny_meta["files"]["io"]["path"]))


@pytest.fixture(scope="session")
def vggt_tiny_config(vggt_tiny_meta) -> VGGTConfig:
    """The configuration recorded in the reference JSON (not hard-coded)."""
    return VGGTConfig.from_reference_json(vggt_tiny_meta)


@pytest.fixture(scope="session")
def vggt_tiny(reference_dir, vggt_tiny_meta, vggt_tiny_config):
    """VGGTAdapter of the reference tiny model with its weights (eval mode, float32, CPU). Do not mutate;
    tests that modify the model build their own with `fresh_vggt_tiny`."""
    return load_model(vggt_tiny_config, weights=reference_dir / vggt_tiny_meta["files"]["state"]["path"])


@pytest.fixture
def fresh_vggt_tiny(reference_dir, vggt_tiny_meta, vggt_tiny_config):
    return load_model(vggt_tiny_config, weights=reference_dir / vggt_tiny_meta["files"]["state"]["path"])
