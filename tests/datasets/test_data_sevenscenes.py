"""7-Scenes: the real kapture sample (stairs) and synthetic scenes written in the 7-Scenes layout."""

from __future__ import annotations

import numpy as np
import pytest
from datasets_paths import SAMPLES
from PIL import Image

from ptq3d.datasets import sevenscenes
from ptq3d.datasets.geometry import invert_pose, to_4x4

ROOT = SAMPLES / "7scenes"


def test_real_split_files_crlf():
    assert sevenscenes.read_split(ROOT / "stairs" / "TestSplit.txt") == ["seq-01", "seq-04"]
    assert sevenscenes.read_split(ROOT / "stairs" / "TrainSplit.txt") == ["seq-02", "seq-03"]
    assert sevenscenes.list_sequences(ROOT, "test") == ["stairs/seq-01", "stairs/seq-04"]


def test_real_sequence_pose_and_depth():
    s = sevenscenes.load_7scenes_sequence(ROOT, "stairs", "seq-02")
    assert s.meta["frame_ids"] == ["000000", "000001", "000002"]
    assert s.meta["depth_source"] == "raw"  # the sample has no registered depth.proj.png
    assert s.image_size == (480, 640)
    for i, fid in enumerate(s.meta["frame_ids"]):
        c2w = np.loadtxt(ROOT / "stairs" / "seq-02" / f"frame-{fid}.pose.txt")
        np.testing.assert_allclose(to_4x4(s.extrinsics[i].double().numpy()) @ c2w, np.eye(4), atol=1e-5)
        raw = np.array(Image.open(ROOT / "stairs" / "seq-02" / f"frame-{fid}.depth.png")).astype(np.int64)
        ok = (raw > 0) & (raw < 65535)
        assert (raw == 65535).any()  # this sample has both invalid markers
        np.testing.assert_array_equal(s.valid_mask[i].numpy(), ok)
        np.testing.assert_allclose(s.depth[i].numpy()[ok], raw[ok] / 1000.0, rtol=1e-6)
        assert (s.depth[i].numpy()[~ok] == 0).all()
    K = s.intrinsics[0].numpy()
    np.testing.assert_allclose(K, [[525, 0, 320], [0, 525, 240], [0, 0, 1]])
    # the colour is the kapture JPEG (the real release has .color.png)
    assert 0.05 < s.images.mean() < 0.95


def test_real_first_pose_value():
    # frame-000000 of seq-01 holds 9.3817085e-001 ... -1.4903377e+000 in its first row
    s = sevenscenes.load_7scenes_sequence(ROOT, "stairs", "seq-01", ["000000"])
    c2w = to_4x4(invert_pose(s.extrinsics[0].double().numpy()))
    np.testing.assert_allclose(c2w[0], [0.93817085, -0.26860735, 0.21809216, -1.4903377], atol=1e-5)


def test_synthetic_round_trip(sevenscenes_root, scene):
    root, focal = sevenscenes_root
    s = sevenscenes.load_7scenes_sequence(root, "syn", "seq-01", focal=focal)
    assert s.meta["depth_source"] == "proj"
    np.testing.assert_allclose(s.extrinsics, scene.extrinsics, atol=1e-5)
    np.testing.assert_allclose(s.intrinsics, scene.intrinsics, rtol=1e-6)
    assert s.valid_mask.equal(scene.valid_mask & (scene.depth <= 10))
    m = s.valid_mask
    assert (s.depth[m] - scene.depth[m]).abs().max() <= 5.01e-4  # millimetre PNG
    assert (s.images - scene.images).abs().max() <= 0.5 / 255 + 1e-6  # lossless PNG
    assert sevenscenes.list_sequences(root, "test") == ["syn/seq-01"]
    assert sevenscenes.list_sequences(root, "train") == ["syn/seq-02"]


@pytest.mark.parametrize("source", ["raw", "proj"])
def test_depth_sources_agree_on_synthetic(sevenscenes_root, source):
    root, focal = sevenscenes_root
    s = sevenscenes.load_7scenes_sequence(root, "syn", "seq-02", focal=focal, depth_source=source)
    ref = sevenscenes.load_7scenes_sequence(root, "syn", "seq-02", focal=focal, depth_source="auto")
    assert s.meta["depth_source"] == source
    assert s.depth.equal(ref.depth)  # the writer stores the same camera for both


def test_depth_range_filter(tmp_path, scene):
    # depth beyond 10 m is dropped, as every eval loader does
    far = type(scene)(
        scene.images, scene.depth * 0 + 12.0, scene.valid_mask, scene.intrinsics, scene.extrinsics
    )
    focal = sevenscenes.write_7scenes_scene(tmp_path, "far", {1: far})
    s = sevenscenes.load_7scenes_sequence(tmp_path, "far", "seq-01", focal=focal)
    assert not s.valid_mask.any()
