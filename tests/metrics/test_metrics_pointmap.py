"""Point-map metrics: reference goldens (Part A metrics, Part B Umeyama + ICP pipeline), known offsets, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from metrics_testutil import load_golden
from scipy.spatial.transform import Rotation

from ptq3d.metrics import MetricInputError, cloud_metrics, evaluate_point_maps
from ptq3d.metrics.alignment import median_scale_shift, umeyama_sim3

METRIC_KEYS = ("acc", "acc_med", "comp", "comp_med", "nc1", "nc1_med", "nc2", "nc2_med", "nc", "nc_med")


@pytest.fixture(scope="module")
def golden():
    return load_golden("metrics_pointmap")


def _cases(meta, part):
    return [c for c in meta["cases"] if c["part"] == part]


def _assert_metrics(ours: dict, ref: dict, rtol: float):
    for k in METRIC_KEYS:
        assert ours[k] == pytest.approx(ref[k], rel=rtol, abs=0), k
    assert ours["chamfer"] == pytest.approx(ref["chamfer(overall)=(acc+comp)/2"], rel=rtol)


def test_part_a_metrics_with_open3d_normals(golden):
    arrays, meta = golden
    for case in _cases(meta, "A"):
        k = case["case"]
        gt, pred = arrays[f"A.case{k}.gt_points"], arrays[f"A.case{k}.pred_points"]
        assert (gt.shape[0], pred.shape[0]) == (case["n_gt"], case["n_pred"])
        _assert_metrics(cloud_metrics(pred, gt).as_dict(), case["metrics"], 1e-9)


def test_part_a_metrics_with_stored_float32_normals(golden):
    arrays, meta = golden
    for case in _cases(meta, "A"):
        k = case["case"]
        m = cloud_metrics(
            arrays[f"A.case{k}.pred_points"],
            arrays[f"A.case{k}.gt_points"],
            pred_normals=arrays[f"A.case{k}.pred_normals"],
            gt_normals=arrays[f"A.case{k}.gt_normals"],
        )
        _assert_metrics(m.as_dict(), case["metrics_with_float32_normals"], 1e-9)


def test_part_b_umeyama_icp_pipeline(golden):
    arrays, meta = golden
    for case in _cases(meta, "B"):
        k = case["case"]
        pre = f"B.case{k}."
        r = evaluate_point_maps(arrays[pre + "pred_pts"], arrays[pre + "gt_pts"], arrays[pre + "valid_mask"])
        assert r.num_valid == case["n_valid"]
        assert r.sim3.c == pytest.approx(float(arrays[pre + "umeyama_c"]), rel=1e-10)
        np.testing.assert_allclose(r.sim3.R, arrays[pre + "umeyama_R"], atol=1e-10)
        np.testing.assert_allclose(r.sim3.t, arrays[pre + "umeyama_t"][:, 0], atol=1e-10)
        valid = arrays[pre + "valid_mask"]
        np.testing.assert_allclose(r.sim3.apply(arrays[pre + "pred_pts"].astype(np.float64))[valid],
                                   arrays[pre + "pred_after_umeyama_valid"], atol=1e-10)  # fmt: skip
        thr = case["icp"]["threshold"]
        assert thr == 0.1
        np.testing.assert_allclose(r.icp.transformation, arrays[pre + "icp_transformation"], atol=1e-9)
        assert r.icp.fitness == pytest.approx(case["icp"]["fitness"], rel=1e-9)
        assert r.icp.inlier_rmse == pytest.approx(case["icp"]["inlier_rmse"], rel=1e-9)
        np.testing.assert_allclose(r.pred_points, arrays[pre + "pred_final_points"], atol=1e-9)
        _assert_metrics(r.metrics.as_dict(), case["metrics"], 1e-9)


def test_part_b_umeyama_only(golden):
    arrays, meta = golden
    for case in _cases(meta, "B"):
        pre = f"B.case{case['case']}."
        r = evaluate_point_maps(
            arrays[pre + "pred_pts"], arrays[pre + "gt_pts"], arrays[pre + "valid_mask"], alignment="umeyama"
        )
        assert r.icp is None
        _assert_metrics(r.metrics.as_dict(), case["metrics_umeyama_only_no_icp"], 1e-9)


def _grid_cloud(n=12, spacing=1.0):
    g = np.arange(n) * spacing
    return np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)


def test_known_translation_offset_gives_known_accuracy():
    gt = _grid_cloud()
    pred = gt + np.array([0.05, 0.0, 0.0])  # far below half the grid spacing: nearest neighbour = own point
    m = cloud_metrics(pred, gt)
    for k in ("acc", "acc_med", "comp", "comp_med", "chamfer"):
        assert getattr(m, k) == pytest.approx(0.05, abs=1e-12)


def _surface_map(S=2, H=30, W=40):
    v, u = np.meshgrid(np.linspace(-1, 1, H), np.linspace(-1, 1, W), indexing="ij")
    maps = []
    for s in range(S):
        z = 3.0 + 0.3 * np.sin(2 * u + s) + 0.2 * v**2
        maps.append(np.stack([u * z * 0.6 + 0.2 * s, v * z * 0.5, z], -1))
    return np.stack(maps)


@pytest.mark.parametrize("alignment", ["umeyama_icp", "umeyama", "icp", "none"])
def test_ground_truth_as_prediction_is_perfect(alignment):
    gt = _surface_map()
    valid = np.ones(gt.shape[:3], bool)
    r = evaluate_point_maps(gt.copy(), gt, valid, alignment=alignment)
    assert r.metrics.acc < 1e-9 and r.metrics.comp < 1e-9 and r.metrics.chamfer < 1e-9
    assert r.metrics.nc == pytest.approx(1.0, abs=1e-9) and r.metrics.nc_med == pytest.approx(1.0, abs=1e-9)


def test_umeyama_recovers_a_similarity_transform():
    gt = _surface_map()
    valid = np.ones(gt.shape[:3], bool)
    valid[0, :5] = False
    Q = Rotation.from_euler("zyx", [30, -20, 65], degrees=True).as_matrix()
    pred = 0.4 * gt @ Q.T + np.array([1.0, 2.0, -3.0])
    pred[~valid] = 1e3  # invalid pixels must not influence anything
    r = evaluate_point_maps(pred, gt, valid, alignment="umeyama_icp")
    assert r.sim3.c == pytest.approx(1 / 0.4, rel=1e-9)
    assert r.metrics.acc < 1e-9 and r.metrics.comp < 1e-9
    assert r.num_valid == valid.sum() and r.pred_points.shape == (valid.sum(), 3)
    sim = umeyama_sim3(gt[valid], pred[valid])
    assert sim.c == pytest.approx(0.4) and np.allclose(sim.R, Q)


def test_median_scale_shift_in_first_camera_frame():
    gt = _surface_map()
    valid = np.ones(gt.shape[:3], bool)
    # GT world = camera-0 frame moved by a rigid transform; the prediction lives in its own camera-0 frame at 3x scale
    Q = Rotation.from_euler("xyz", [5, 40, -10], degrees=True).as_matrix()
    gt_w2c0 = np.concatenate([Q, np.array([[0.5], [-0.2], [1.0]])], axis=1)
    gt_world = (gt - gt_w2c0[:, 3]) @ Q  # so that gt_w2c0 maps gt_world back to `gt` (camera frame)
    pred = 3.0 * gt
    r = evaluate_point_maps(pred, gt_world, valid, alignment="median_scale_shift_icp",
                            pred_first_cam_w2c=np.eye(4)[:3], gt_first_cam_w2c=gt_w2c0)  # fmt: skip
    assert r.median.factor == pytest.approx(1 / 3, rel=1e-9)
    assert r.metrics.acc < 1e-9 and r.metrics.comp < 1e-9
    # median depth shift and scale computed with torch's lower median
    p, g, rec = median_scale_shift(pred, gt, valid)
    assert rec.gt_shift_z == pytest.approx(float(np.sort(gt[..., 2].ravel())[(gt[..., 2].size - 1) // 2]))
    np.testing.assert_allclose(p, g, atol=1e-9)


def test_subsampling_and_crop_are_seeded_and_bounded():
    gt = _surface_map(S=2, H=40, W=60)
    valid = np.ones(gt.shape[:3], bool)
    noisy = gt + np.random.default_rng(0).normal(scale=0.01, size=gt.shape)
    a = evaluate_point_maps(noisy, gt, valid, max_points=500, seed=3)
    b = evaluate_point_maps(noisy, gt, valid, max_points=500, seed=3)
    assert a.pred_points.shape == (500, 3) and a.num_valid == valid.sum()
    assert a.metrics == b.metrics
    c = evaluate_point_maps(noisy, gt, valid, center_crop=20)
    assert c.pred_points.shape[0] == 2 * 20 * 20


def test_bad_inputs():
    gt = _surface_map()
    valid = np.ones(gt.shape[:3], bool)
    with pytest.raises(MetricInputError, match="shape mismatch"):
        evaluate_point_maps(gt[:, :10], gt, valid)
    with pytest.raises(MetricInputError, match="no valid pixels"):
        evaluate_point_maps(gt, gt, np.zeros_like(valid))
    nan_pred = gt.copy()
    nan_pred[1, 2, 3, 0] = np.nan
    with pytest.raises(MetricInputError, match="non-finite coordinate"):
        evaluate_point_maps(nan_pred, gt, valid)
    with pytest.raises(MetricInputError, match="unknown point alignment"):
        evaluate_point_maps(gt, gt, valid, alignment="umeyama+icp")
    with pytest.raises(MetricInputError, match="needs the first camera"):
        evaluate_point_maps(gt, gt, valid, alignment="median_scale_shift")
    with pytest.raises(MetricInputError, match="empty"):
        cloud_metrics(np.zeros((0, 3)), gt.reshape(-1, 3))
    with pytest.raises(MetricInputError, match=r"expected a point cloud \[n, 3\]"):
        cloud_metrics(np.zeros((10, 2)), gt.reshape(-1, 3))
