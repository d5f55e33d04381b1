"""NRGBD: synthetic scenes written in the NRGBD layout (OpenGL poses, focal.txt, nan poses)."""

from __future__ import annotations

import numpy as np
import pytest

from ptq3d.datasets import nrgbd
from ptq3d.errors import DataError


def test_round_trip(nrgbd_root, scene):
    s = nrgbd.load_nrgbd_scene(nrgbd_root, "room")
    np.testing.assert_allclose(s.extrinsics, scene.extrinsics, atol=1e-5)
    np.testing.assert_allclose(s.intrinsics, scene.intrinsics, rtol=1e-6)
    m = s.valid_mask
    assert m.equal(scene.valid_mask & (scene.depth <= 10))
    assert (s.depth[m] - scene.depth[m]).abs().max() <= 5.01e-4
    assert s.meta["focal"] == pytest.approx(float(scene.intrinsics[0, 0, 0]), rel=1e-6)
    assert s.meta["num_skipped"] == 0


def test_poses_file_is_opengl_camera_to_world(nrgbd_root, scene):
    poses = nrgbd.read_poses(nrgbd_root / "room")
    E = scene.extrinsics[1].double().numpy()
    R, t = E[:, :3], E[:, 3]
    np.testing.assert_allclose(poses[1][:3, 3], -R.T @ t, atol=1e-6)  # camera centre
    # OpenGL: the camera looks down its -z axis, so column 2 is minus the OpenCV viewing direction
    np.testing.assert_allclose(poses[1][:3, 2], -R[2], atol=1e-6)
    np.testing.assert_allclose(poses[1][:3, 1], -R[1], atol=1e-6)


def test_nan_pose_skipped_and_counted(tmp_path, scene):
    nrgbd.write_nrgbd_scene(tmp_path / "r", scene, nan_frames=(1,))
    with pytest.warns(UserWarning, match="skipping frame 1"):
        s = nrgbd.load_nrgbd_scene(tmp_path, "r")
    assert s.meta["frame_ids"] == ["0", "2", "3"]
    assert s.meta["num_skipped"] == 1 and s.meta["skipped_frames"][0]["kind"] == "nan_pose"
    np.testing.assert_allclose(s.extrinsics[1], scene.extrinsics[2], atol=1e-5)
    with pytest.raises(DataError, match="pose of frame 1 is nan"):
        nrgbd.load_nrgbd_scene(tmp_path, "r", skippable=())
