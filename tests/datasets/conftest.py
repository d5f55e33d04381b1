"""Fixtures: small synthetic scenes written in each dataset's on-disk format (the loaders read files they did not
write in memory)."""

from __future__ import annotations

import pytest

from ptq3d.datasets import co3d, eth3d, nrgbd, sevenscenes
from ptq3d.datasets.synthetic import CameraConfig, generate_scene

# one field of view for every fixture scene: 7-Scenes stores no intrinsics, so a scene's sequences share a focal
CAMERA = CameraConfig(fov_deg=(60.0, 60.0))


@pytest.fixture(scope="session")
def scene():
    """4 views, 48x64 (H x W), seed 5."""
    return generate_scene(5, num_frames=4, height=48, width=64, camera=CAMERA)


@pytest.fixture(scope="session")
def scene_b():
    return generate_scene(6, num_frames=4, height=48, width=64, camera=CAMERA)


@pytest.fixture()
def co3d_root(tmp_path, scene, scene_b):
    co3d.write_co3d_category(tmp_path, "synthetic", {"seq_a": scene, "seq_b": scene_b})
    return tmp_path


@pytest.fixture()
def sevenscenes_root(tmp_path, scene, scene_b):
    focal = sevenscenes.write_7scenes_scene(tmp_path, "syn", {1: scene, 2: scene_b}, test=[1])
    return tmp_path, focal


@pytest.fixture()
def nrgbd_root(tmp_path, scene):
    nrgbd.write_nrgbd_scene(tmp_path / "room", scene)
    return tmp_path


@pytest.fixture()
def eth3d_root(tmp_path, scene):
    eth3d.write_eth3d_scene(tmp_path / "court", scene)
    return tmp_path
