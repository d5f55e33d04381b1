"""CO3D v2: viewpoint conversion against the PyTorch3D goldens, the PoseDiffusion sample, and synthetic scenes
written in the CO3D layout."""

from __future__ import annotations

import numpy as np
import pytest
from datasets_paths import REFERENCE, SAMPLES

from ptq3d.datasets import co3d
from ptq3d.datasets.geometry import project
from ptq3d.datasets.preprocess import Preprocess, resized_shape

GOLDEN = REFERENCE / "co3d_viewpoint.npz"


def _groups(npz) -> list[str]:
    return sorted({k.split(".")[0] for k in npz.files})


@pytest.fixture(scope="module")
def golden():
    return np.load(GOLDEN)


def test_golden_has_both_formats(golden):
    fmts = {str(golden[f"{g}.format"]) for g in _groups(golden)}
    assert fmts == {"ndc_isotropic", "ndc_norm_image_bounds"}


def test_viewpoint_conversion_matches_golden(golden):
    for g in _groups(golden):
        args = [golden[f"{g}.{k}"] for k in ("R", "T", "focal_length", "principal_point", "image_size_hw")]
        R, t, K = co3d.co3d_viewpoint_to_opencv(*args, str(golden[f"{g}.format"]))
        np.testing.assert_allclose(R, golden[f"{g}.opencv_R"], rtol=0, atol=1e-9, err_msg=g)
        np.testing.assert_allclose(t, golden[f"{g}.opencv_t"], rtol=1e-9, atol=1e-9, err_msg=g)
        Kg = golden[f"{g}.opencv_K"]
        np.testing.assert_allclose(K, Kg, rtol=1e-9, atol=1e-9 * np.abs(Kg).max(), err_msg=g)
        f, p = co3d.co3d_isotropic_ndc(*args[2:], str(golden[f"{g}.format"]))
        np.testing.assert_allclose(f, golden[f"{g}.p3d_focal_length_ndc_isotropic"], rtol=1e-9, err_msg=g)
        np.testing.assert_allclose(p, golden[f"{g}.p3d_principal_point_ndc_isotropic"], atol=1e-9, err_msg=g)


def test_projection_matches_pytorch3d_screen(golden):
    groups = [g for g in _groups(golden) if f"{g}.proj.world_points" in golden.files]
    assert groups
    for g in groups:
        args = [golden[f"{g}.{k}"] for k in ("R", "T", "focal_length", "principal_point", "image_size_hw")]
        R, t, K = co3d.co3d_viewpoint_to_opencv(*args, str(golden[f"{g}.format"]))
        uv, z = project(golden[f"{g}.proj.world_points"], K, np.concatenate([R, t[:, None]], 1))
        np.testing.assert_allclose(uv, golden[f"{g}.proj.opencv_uv"], rtol=1e-9)
        np.testing.assert_allclose(uv, golden[f"{g}.proj.pytorch3d_screen_f64"][:, :2], rtol=1e-9)
        np.testing.assert_allclose(1.0 / z, golden[f"{g}.proj.pytorch3d_screen_f64"][:, 2], rtol=1e-9)


def test_posediffusion_sample_matches_real_apple_golden(golden):
    # Small model resolution keeps the test light; K is checked through the preprocessing's exact mapping.
    pre = Preprocess("crop", 112)
    sample = co3d.load_co3d_posediffusion_sample(SAMPLES / "co3d_posediffusion_sample" / "apple", pre)
    names = [str(n) for n in golden["real_apple.image_names"]]
    assert sample.meta["frame_ids"] == names
    H, W = (int(v) for v in golden["real_apple.image_size_hw"])
    assert sample.meta["original_sizes"] == [(H, W)] * len(names)
    new_h, new_w = resized_shape(H, W, pre)
    K = golden["real_apple.opencv_K"].copy()
    K[:, 0] *= new_w / W
    K[:, 1] *= new_h / H
    K[:, 1, 2] -= (new_h - min(new_h, 112)) // 2
    np.testing.assert_allclose(sample.intrinsics.double().numpy(), K, rtol=1e-6)
    E = sample.extrinsics.double().numpy()
    np.testing.assert_allclose(E[:, :, :3], golden["real_apple.opencv_R"], atol=1e-6)
    np.testing.assert_allclose(E[:, :, 3], golden["real_apple.opencv_t"], rtol=1e-6, atol=1e-5)
    centres = -np.einsum("sji,sj->si", E[:, :, :3], E[:, :, 3])
    np.testing.assert_allclose(centres, golden["real_apple.camera_centre_world"], rtol=1e-5, atol=1e-4)
    assert not sample.valid_mask.any() and sample.meta["has_depth"] is False


@pytest.mark.parametrize("fmt", co3d.INTRINSICS_FORMATS)
def test_opencv_to_viewpoint_round_trip(golden, fmt):
    rng = np.random.default_rng(0)
    from scipy.spatial.transform import Rotation

    R_cv = Rotation.random(random_state=1).as_matrix()
    t_cv = rng.normal(size=3)
    K = np.array([[900.0, 0, 530.0], [0, 910.0, 950.0], [0, 0, 1]])
    vp = co3d.opencv_to_co3d_viewpoint(R_cv, t_cv, K, (1896, 1066), fmt)
    R2, t2, K2 = co3d.co3d_viewpoint_to_opencv(vp["R"], vp["T"], vp["focal_length"], vp["principal_point"],
                                               (1896, 1066), fmt)  # fmt: skip
    np.testing.assert_allclose(R2, R_cv, atol=1e-12)
    np.testing.assert_allclose(t2, t_cv, atol=1e-12)
    np.testing.assert_allclose(K2, K, atol=1e-9)


def test_depth_is_float16_bits_times_scale():
    values = np.array([[0.5, 1.25], [3.0, 0.0]], dtype=np.float16)
    png = values.view(np.uint16)
    d = co3d.decode_co3d_depth(png, 2.0)
    np.testing.assert_array_equal(d, np.array([[1.0, 2.5], [6.0, 0.0]], np.float32))
    nan_inf = np.array([[np.nan, np.inf]], dtype=np.float16).view(np.uint16)
    np.testing.assert_array_equal(co3d.decode_co3d_depth(nan_inf, 1.0), [[0.0, 0.0]])


@pytest.mark.parametrize("fmt,scale", [("ndc_isotropic", 1.0), ("ndc_norm_image_bounds", 0.37)])
def test_synthetic_round_trip(tmp_path, scene, fmt, scale):
    co3d.write_co3d_category(tmp_path, "cat", {"s": scene}, intrinsics_format=fmt, scale_adjustment=scale)
    back = co3d.load_co3d_sequence(tmp_path, "cat", "s")
    np.testing.assert_allclose(back.extrinsics, scene.extrinsics, atol=1e-5)
    np.testing.assert_allclose(back.intrinsics, scene.intrinsics, rtol=1e-6)
    assert back.valid_mask.equal(scene.valid_mask)
    m = scene.valid_mask
    rel = (back.depth[m] - scene.depth[m]).abs() / scene.depth[m]
    assert rel.max() <= 2.0**-11 + 1e-6  # float16 precision
    assert (back.images - scene.images).abs().mean() < 0.03  # JPEG
    assert back.meta["frame_ids"] == ["0", "1", "2", "3"]
    assert back.meta["intrinsics_format"] == fmt
    # frame_number is 0-based, the file suffix 1-based: frame 0 is frame000001.jpg
    assert (tmp_path / "cat" / "s" / "images" / "frame000001.jpg").is_file()
    pts = back.points[m]
    assert (pts - scene.points[m]).norm(dim=-1).max() < 5e-3 * scene.depth.max()


def test_viewpoint_quality_and_length_filters(tmp_path, scene, scene_b):
    co3d.write_co3d_category(tmp_path, "cat", {"good": scene, "bad": scene_b, "odd": scene},
                             viewpoint_quality={"good": 0.9, "bad": 0.3, "odd": 0.51})  # fmt: skip
    idx = co3d.Co3dCategory(tmp_path, "cat")
    assert list(idx.select_sequences()) == ["good", "odd"]
    assert list(idx.select_sequences(min_viewpoint_quality=None)) == ["good", "bad", "odd"]
    assert idx.select_sequences(min_frames=5) == {}
    assert list(idx.select_sequences(max_translation_sum=1e-3)) == []
    assert idx.select_sequences()["good"] == [0, 1, 2, 3]


def test_frame_subset_in_given_order(co3d_root, scene):
    s = co3d.load_co3d_sequence(co3d_root, "synthetic", "seq_a", [2, 0])
    assert s.meta["frame_ids"] == ["2", "0"]
    np.testing.assert_allclose(s.extrinsics[0], scene.extrinsics[2], atol=1e-5)
