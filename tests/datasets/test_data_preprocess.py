"""Preprocessing to the model resolution keeps intrinsics, depth and masks consistent with the image."""

from __future__ import annotations

import numpy as np
import pytest

from ptq3d.datasets.frames import Frame, assemble_scene
from ptq3d.datasets.geometry import project, unproject_depth
from ptq3d.datasets.preprocess import Preprocess, preprocess_view, resized_shape
from ptq3d.datasets.synthetic import CameraConfig, make_cameras, make_geometry, render
from ptq3d.errors import ConfigError


@pytest.mark.parametrize(
    "hw,mode,expected",
    [
        ((480, 640), "crop", (392, 518)),  # 7-Scenes / NRGBD -> 518x392
        ((4032, 6048), "crop", (350, 518)),  # ETH3D -> 518x350
        ((1896, 1066), "crop", (518, 518)),  # portrait CO3D: 924 high, centre-cropped to 518
        ((1896, 1066), "pad", (518, 518)),
        ((480, 640), "none", (480, 640)),
        ((480, 640), "squash", (518, 518)),  # FGQ's calibration resize, aspect ratio not kept
        ((1896, 1066), "squash", (518, 518)),
    ],
)
def test_output_shapes(hw, mode, expected):
    cfg = Preprocess(mode, 518)
    h, w = resized_shape(*hw, cfg)
    final = (min(h, 518), w) if mode == "crop" else ((518, 518) if mode in ("pad", "squash") else (h, w))
    assert final == expected
    if hw == (480, 640):
        img = np.zeros((*hw, 3), np.uint8)
        out = preprocess_view(img, np.ones(hw, np.float32), np.ones(hw, bool), np.eye(3), cfg)
        assert out[0].shape[:2] == out[1].shape == out[2].shape == expected


def test_resized_shape_pad_portrait():
    assert resized_shape(1896, 1066, Preprocess("pad", 518)) == (518, 294)  # round(291.2 / 14) * 14


def test_bad_config():
    with pytest.raises(ConfigError, match="multiple of 14"):
        Preprocess("crop", 100)
    with pytest.raises(ConfigError, match="not one of"):
        Preprocess("stretch", 518)


@pytest.fixture(scope="module")
def rendered():
    """A scene rendered at 90x120 (H x W) with 3 views; the geometry is kept for re-rendering."""
    geo = make_geometry(11)
    K, E = make_cameras(11, geo, 3, 90, 120, CameraConfig(fov_deg=(60, 60)))
    return geo, K, E, render(geo, K, E, 90, 120)


@pytest.mark.parametrize(
    "mode,size", [("crop", 56), ("crop", 112), ("pad", 84), ("crop", 70), ("squash", 84)]
)
def test_depth_matches_rendering_with_new_intrinsics(rendered, mode, size):
    """Render the same geometry with the preprocessed K: its depth must equal the preprocessed depth (up to the
    nearest-neighbour offset of at most half a source pixel)."""
    geo, K, E, r = rendered
    frames = [Frame(str(i), (r.images[i] * 255).round().astype(np.uint8), r.depth[i], r.valid[i], K[i], E[i])
              for i in range(3)]  # fmt: skip
    s = assemble_scene(frames, {"dataset": "synthetic", "scene": "x"}, Preprocess(mode, size, 14))
    H, W = s.image_size
    again = render(geo, s.intrinsics.double().numpy(), E, H, W)
    both = s.valid_mask.numpy() & again.valid
    assert both.sum() > 0.5 * s.valid_mask.numpy().size * (1 if mode == "crop" else 0.5)
    rel = np.abs(s.depth.numpy() - again.depth)[both] / again.depth[both]
    assert np.median(rel) < 0.01 and (rel < 0.05).mean() > 0.9
    if mode == "pad":  # padding is invalid and white
        assert not s.valid_mask[:, 0, :].any() or not s.valid_mask[:, :, 0].any()


def test_reprojection_between_views_is_preserved(rendered):
    """Unproject view 0's depth, project into view 1 and read view 1's depth there: the two z agree on visible
    surfaces (median relative difference) before and after preprocessing, and not with an unscaled K."""
    geo, K, E, r = rendered

    def consistency(depth, valid, Ks):
        pts = unproject_depth(depth[0], Ks[0], E[0])[valid[0]]
        uv, z = project(pts, Ks[1], E[1])
        H, W = depth.shape[1:]
        col, row = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
        inside = (col >= 0) & (col < W) & (row >= 0) & (row < H) & (z > 0)
        d1 = depth[1][row[inside], col[inside]]
        ok = d1 > 0
        return np.median(np.abs(d1[ok] - z[inside][ok]) / z[inside][ok])

    before = consistency(r.depth, r.valid, K)
    frames = [Frame(str(i), (r.images[i] * 255).round().astype(np.uint8), r.depth[i], r.valid[i], K[i], E[i])
              for i in range(3)]  # fmt: skip
    s = assemble_scene(frames, {}, Preprocess("crop", 56, 14))
    after = consistency(s.depth.numpy(), s.valid_mask.numpy(), s.intrinsics.double().numpy())
    wrong = consistency(s.depth.numpy(), s.valid_mask.numpy(), K)  # K not rescaled
    assert before < 5e-3 and after < 2e-2
    assert wrong > 5 * after


def test_points_are_unprojected_depth(rendered):
    geo, K, E, r = rendered
    frames = [Frame("0", (r.images[0] * 255).round().astype(np.uint8), r.depth[0], r.valid[0], K[0], E[0])]
    s = assemble_scene(frames, {})
    m = s.valid_mask[0].numpy()
    np.testing.assert_allclose(s.points[0].numpy()[m], r.points[0][m], atol=1e-4)
