"""ETH3D / COLMAP text: the real maupertuis model and synthetic scenes in ETH3D's layout (pinhole and
THIN_PRISM_FISHEYE)."""

from __future__ import annotations

import numpy as np
import pytest
from datasets_paths import SAMPLES

from ptq3d.datasets import eth3d
from ptq3d.datasets.colmap import Camera, read_colmap_text
from ptq3d.datasets.geometry import quat_wxyz_to_rotmat

MAUP = SAMPLES / "colmap_text_maupertuis"


def test_maupertuis_model_values():
    m = read_colmap_text(MAUP / "reconstruction")
    cam = m.cameras[1]
    assert (cam.model, cam.width, cam.height) == ("SIMPLE_PINHOLE", 1919, 1079)
    np.testing.assert_allclose(cam.K, [[1847.53, 0, 959.5], [0, 1847.53, 539.5], [0, 0, 1]])
    im = m.images[4]  # "4 0.860298 0.0113506 0.344769 0.375358 -7.96417 -4.99505 4.3645 1 03.jpg"
    assert im.name == "03.jpg" and im.camera_id == 1
    np.testing.assert_allclose(im.tvec, [-7.96417, -4.99505, 4.3645])
    R = im.extrinsic[:, :3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)
    q = np.array([0.860298, 0.0113506, 0.344769, 0.375358])
    np.testing.assert_allclose(R, quat_wxyz_to_rotmat(q / np.linalg.norm(q)), atol=1e-12)
    assert len(m.points) == 1039
    assert m.points[708].track[0] == (2, 4561)


def test_maupertuis_points_reproject_onto_their_observations():
    # the strongest check of the pose convention: each 3-D point lands on its 2-D observations
    m = read_colmap_text(MAUP / "reconstruction")
    errs = []
    for p in m.points.values():
        for image_id, idx in p.track:
            im = m.images[image_id]
            cam = m.cameras[im.camera_id]
            X = im.extrinsic[:, :3] @ p.xyz + im.extrinsic[:, 3]
            errs.append(np.linalg.norm(cam.project(X) - im.xys[idx]))
    assert np.median(errs) < 1.0 and np.percentile(errs, 95) < 4.0


def test_maupertuis_scene_loader():
    from ptq3d.datasets import load_colmap_text_scene
    from ptq3d.datasets.preprocess import Preprocess

    s = load_colmap_text_scene(MAUP / "reconstruction", MAUP / "images", Preprocess("crop", 112))
    assert s.meta["frame_ids"] == ["00.jpg", "01.jpg", "02.jpg", "03.jpg"]
    m = read_colmap_text(MAUP / "reconstruction")
    np.testing.assert_allclose(s.extrinsics[3].double().numpy(), m.images[4].extrinsic, atol=1e-5)


def test_synthetic_pinhole_round_trip(eth3d_root, scene):
    s = eth3d.load_eth3d_scene(eth3d_root, "court")
    assert s.meta["frame_ids"] == [f"dslr_images/DSC_{i:04d}.JPG" for i in range(4)]
    assert s.meta["camera_models"] == ["PINHOLE"]
    np.testing.assert_allclose(s.extrinsics, scene.extrinsics, atol=1e-5)
    np.testing.assert_allclose(s.intrinsics, scene.intrinsics, rtol=1e-6)
    assert s.valid_mask.equal(scene.valid_mask)
    assert s.depth.equal(scene.depth)  # raw float32: exact


def test_synthetic_points3d_reproject(eth3d_root):
    m = read_colmap_text(eth3d_root / "court" / eth3d.CALIBRATION)
    for p in m.points.values():
        im = m.images[p.track[0][0]]
        X = im.extrinsic[:, :3] @ p.xyz + im.extrinsic[:, 3]
        assert np.linalg.norm(m.cameras[im.camera_id].project(X) - im.xys[p.track[0][1]]) < 1e-4


def test_thin_prism_fisheye_undistortion(tmp_path, scene):
    dist = {"k1": 0.03, "k2": -0.01, "p1": 1e-3, "p2": -5e-4, "k3": 1e-3, "sx1": 1e-3, "sy1": -1e-3}
    eth3d.write_eth3d_scene(tmp_path / "d", scene, distortion=dist)
    cams = read_colmap_text(tmp_path / "d" / eth3d.CALIBRATION).cameras
    assert {c.model for c in cams.values()} == {"THIN_PRISM_FISHEYE"}
    s = eth3d.load_eth3d_scene(tmp_path, "d")
    np.testing.assert_allclose(s.intrinsics, scene.intrinsics, rtol=1e-6)
    both = (s.valid_mask & scene.valid_mask).numpy()
    assert both.mean() > 0.9
    rel = np.abs(s.depth.numpy() - scene.depth.numpy())[both] / scene.depth.numpy()[both]
    # nearest resampling there and back: most pixels land on their own source pixel
    assert np.median(rel) < 1e-6 and (rel < 0.01).mean() > 0.9


def test_thin_prism_model_matches_colmap_formula():
    p = np.array([500.0, 510.0, 320.0, 240.0, 0.1, -0.02, 1e-3, 2e-3, 0.01, -0.003, 4e-3, -2e-3])
    cam = Camera(1, "THIN_PRISM_FISHEYE", 640, 480, p)
    x, y = np.array([0.3, -0.2]), np.array([0.1, 0.4])
    r = np.hypot(x, y)
    u, v = x * np.arctan(r) / r, y * np.arctan(r) / r
    k1, k2, p1, p2, k3, k4, sx1, sy1 = p[4:]
    r2 = u * u + v * v
    radial = k1 * r2 + k2 * r2**2 + k3 * r2**3 + k4 * r2**4
    du = u * radial + 2 * p1 * u * v + p2 * (r2 + 2 * u * u) + sx1 * r2
    dv = v * radial + 2 * p2 * u * v + p1 * (r2 + 2 * v * v) + sy1 * r2
    xd, yd = cam.distort(x, y)
    np.testing.assert_allclose(xd, u + du, rtol=1e-14)
    np.testing.assert_allclose(yd, v + dv, rtol=1e-14)


@pytest.mark.parametrize("model,params", [("OPENCV", [500, 500, 320, 240, 0.1, 0.01, 1e-3, 1e-3]),
                                          ("SIMPLE_RADIAL", [500, 320, 240, 0.05]),
                                          ("OPENCV_FISHEYE", [500, 500, 320, 240, 0.1, 0.01, 0.0, 0.0])])  # fmt: skip
def test_other_models_reduce_to_pinhole_without_distortion(model, params):
    cam = Camera(1, model, 640, 480, np.array(params, dtype=float))
    n_pin = 3 if model.startswith("SIMPLE") else 4
    zero = np.concatenate([cam.params[:n_pin], np.zeros(len(params) - n_pin)])
    flat = Camera(1, model, 640, 480, zero)
    x, y = np.array([0.01, 0.2]), np.array([-0.02, 0.1])
    xd, yd = flat.distort(x, y)
    if model == "OPENCV_FISHEYE":  # equidistant projection even without k's
        r = np.hypot(x, y)
        np.testing.assert_allclose(xd, x * np.arctan(r) / r)
    else:
        np.testing.assert_allclose((xd, yd), (x, y))
    assert not np.allclose(cam.distort(x, y)[0], xd)
