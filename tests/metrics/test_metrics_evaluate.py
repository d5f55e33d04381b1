"""Registry, AlignmentPolicy, evaluate_scene (Predictions vs SceneSample) and aggregate."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from metrics_testutil import make_scene, predictions_from_gt
from scipy.spatial.transform import Rotation

from ptq3d.errors import ConfigError, UserError
from ptq3d.metrics import (
    AlignmentPolicy,
    MetricInputError,
    MetricSpec,
    aggregate,
    evaluate_scene,
    get_metric,
    list_metrics,
    register_metric,
    relative_pose_errors,
    unproject_depth,
)
from ptq3d.metrics.registry import _REGISTRY


# --- registry --------------------------------------------------------------------------------------------
def test_registry_lists_every_task_and_declares_direction():
    names = list_metrics()
    for n in ("pose.auc@30", "pose.auc@30.pooled", "pose.rra@5", "depth.abs_rel", "depth.delta<1.25",
              "points.acc", "points.comp_med", "points.nc", "points.chamfer", "traj.ate", "traj.rpe_rot"):  # fmt: skip
        assert n in names
    assert set(list_metrics("trajectory")) == {"traj.ate", "traj.rpe_trans", "traj.rpe_rot"}
    assert (
        get_metric("pose.auc@30").higher_is_better is True
        and get_metric("points.acc").higher_is_better is False
    )
    assert get_metric("depth.abs_rel").aggregation == "weighted"
    assert get_metric("depth.abs_rel").weight_key == "depth.valid_pixels"
    assert get_metric("pose.auc@30.pooled").aggregation == "pooled"
    assert get_metric("points.acc").unit == "m" and get_metric("pose.rot_err_mean").unit == "deg"


def test_unknown_metric_suggests_a_name():
    with pytest.raises(UserError, match=r"unknown metric 'pose.auc30'; did you mean 'pose.auc@30'\?"):
        get_metric("pose.auc30")


def test_register_metric_rejects_duplicates_and_bad_specs():
    spec = MetricSpec("test.const", lambda r: 1.0, True, "mean", "pose", "count")
    try:
        register_metric(spec)
        with pytest.raises(UserError, match="already registered"):
            register_metric(spec)
        register_metric(dataclasses.replace(spec, version=2), replace=True)
        assert get_metric("test.const").version == 2
    finally:
        _REGISTRY.pop("test.const", None)
    with pytest.raises(UserError, match="needs a weight_key"):
        MetricSpec("test.x", lambda r: 1.0, True, "pooled", "pose", "count")
    with pytest.raises(UserError, match="unknown aggregation 'median'"):
        MetricSpec("test.x", lambda r: 1.0, True, "median", "pose", "count")


# --- policy ----------------------------------------------------------------------------------------------
def test_alignment_policy_validation_presets_and_record():
    with pytest.raises(ConfigError, match="points='sim3' is not one of"):
        AlignmentPolicy(points="sim3")
    with pytest.raises(UserError, match="unknown alignment policy field 'pose'"):
        AlignmentPolicy.from_dict({"pose": "vggt"})
    with pytest.raises(UserError, match="did you mean 'pi3'"):
        AlignmentPolicy.preset("pi33")
    p = AlignmentPolicy.preset("cut3r", max_points=1000)
    assert p.points == "median_scale_shift_icp" and p.center_crop == 224 and p.max_points == 1000
    assert AlignmentPolicy.from_dict(p.to_dict()) == p


# --- evaluate_scene --------------------------------------------------------------------------------------
def test_unproject_depth_inverts_projection(scene):
    pts = unproject_depth(scene.depth, scene.intrinsics, scene.extrinsics)
    E, K = scene.extrinsics.double(), scene.intrinsics.double()
    cam = torch.einsum("sij,shwj->shwi", E[:, :, :3], pts) + E[:, None, None, :, 3]
    uvw = torch.einsum("sij,shwj->shwi", K, cam)
    valid = scene.depth > 0
    u = uvw[..., 0] / uvw[..., 2]
    H, W = scene.depth.shape[1:]
    assert torch.allclose(
        u[valid], (torch.arange(W, dtype=torch.float64) + 0.5).expand(*scene.depth.shape)[valid]
    )
    assert torch.allclose(cam[..., 2][valid], scene.depth.double()[valid], atol=1e-5)


def test_ground_truth_as_prediction_scores_perfectly(scene):
    out = evaluate_scene(predictions_from_gt(scene), scene, alignment=AlignmentPolicy())
    assert out["pose.auc@30"] == 1.0 and out["pose.auc@3"] == 1.0 and out["pose.rra@3"] == 1.0
    assert out["pose.n_pairs"] == 6
    assert out["depth.abs_rel"] < 1e-6 and out["depth.delta<1.25"] == 1.0
    assert out["depth.valid_pixels"] == int(scene.valid_mask.sum())
    assert out["points.acc"] < 1e-5 and out["points.comp"] < 1e-5 and out["points.nc"] > 1 - 1e-6
    assert not any(k.startswith("traj.") for k in out)  # trajectory only on request
    t = evaluate_scene(predictions_from_gt(scene), scene, metrics=["traj.ate", "traj.rpe_rot"])
    assert set(t) == {"traj.ate", "traj.rpe_rot"} and t["traj.ate"] < 1e-5


@pytest.mark.parametrize("convention", ["vggt", "pi3"])
def test_ten_degree_rotation_of_one_predicted_camera(scene, convention):
    pred = predictions_from_gt(scene)
    k = 2
    R10 = torch.tensor(Rotation.from_euler("y", 10, degrees=True).as_matrix(), dtype=torch.float32)
    pred.extrinsics[0, k] = R10 @ pred.extrinsics[0, k]  # rotate camera k about its own centre
    out = evaluate_scene(pred, scene, metrics=["pose.rra@5", "pose.rra@15", "pose.rot_err_mean"],
                         alignment=AlignmentPolicy(pose_convention=convention))  # fmt: skip
    S = scene.num_frames
    assert out["pose.rra@5"] == pytest.approx((S - 2) / S) and out["pose.rra@15"] == 1.0
    e = relative_pose_errors(pred.extrinsics[0], scene.extrinsics, convention)
    involves = (e.pair_i == k) | (e.pair_j == k)
    np.testing.assert_allclose(e.rot_err_deg[involves], 10.0, atol=2e-3)  # float32 inputs
    assert out["pose.rot_err_mean"] == pytest.approx(10.0 * involves.sum() / involves.size, abs=2e-3)


def test_known_point_offset_and_depth_scale(scene):
    pred = predictions_from_gt(scene)
    pred.depth = pred.depth * 3.0
    out = evaluate_scene(pred, scene, metrics=["depth.abs_rel"], alignment=AlignmentPolicy(depth="metric"))
    assert out["depth.abs_rel"] == pytest.approx(2.0, rel=1e-6)
    out = evaluate_scene(pred, scene, metrics=["depth.abs_rel"], alignment=AlignmentPolicy(depth="median"))
    assert out["depth.abs_rel"] < 1e-6
    # a prediction in another similarity frame is recovered by Umeyama; "none" sees the full offset
    pred.world_points = 2.0 * pred.world_points + 0.5
    out = evaluate_scene(pred, scene, metrics=["points.acc", "points.comp"])
    assert out["points.acc"] < 1e-5 and out["points.comp"] < 1e-5
    out = evaluate_scene(pred, scene, metrics=["points.acc"], alignment=AlignmentPolicy(points="none"))
    assert out["points.acc"] > 0.4


def test_depth_unproject_source_and_subsampling(scene):
    pred = predictions_from_gt(scene)
    pol = AlignmentPolicy(point_source="depth_unproject", max_points=200)
    out = evaluate_scene(pred, scene, metrics=["points.acc", "points.n_points"], alignment=pol)
    assert out["points.n_points"] == 200 and out["points.acc"] < 1e-5
    pred.intrinsics = None
    with pytest.raises(MetricInputError, match="needs predicted intrinsics"):
        evaluate_scene(pred, scene, metrics=["points.acc"], alignment=pol)


def test_prediction_at_another_resolution_is_resized(scene):
    pred = predictions_from_gt(scene)
    pred.depth = torch.nn.functional.interpolate(pred.depth, scale_factor=2, mode="nearest")
    out = evaluate_scene(pred, scene, metrics=["depth.abs_rel"], alignment=AlignmentPolicy(depth="metric"))
    assert out["depth.abs_rel"] < 0.05


def test_evaluate_scene_bad_inputs(scene):
    pred = predictions_from_gt(scene)
    two = dataclasses.replace(pred, extrinsics=pred.extrinsics.expand(2, -1, -1, -1))
    with pytest.raises(MetricInputError, match="batch size 2; slice one scene first"):
        evaluate_scene(two, scene)
    short = dataclasses.replace(pred, depth=pred.depth[:, :2])
    with pytest.raises(MetricInputError, match="predicted depth has 2 frames"):
        evaluate_scene(short, scene)
    nan = dataclasses.replace(pred, extrinsics=pred.extrinsics.clone())
    nan.extrinsics[0, 1, 0, 3] = float("nan")
    with pytest.raises(
        MetricInputError, match=r"predicted extrinsics: non-finite pose entry nan at index \[1, 0, 3\]"
    ):
        evaluate_scene(nan, scene, metrics=["pose.auc@30"])
    with pytest.raises(UserError, match="unknown metric"):
        evaluate_scene(pred, scene, metrics=["points.accuracy"])
    empty = make_scene()
    empty.valid_mask[:] = False
    assert not any(k.startswith(("depth.", "points.")) for k in evaluate_scene(pred, empty))
    with pytest.raises(MetricInputError, match="no valid pixels"):
        evaluate_scene(pred, empty, metrics=["points.acc"])


# --- aggregate -------------------------------------------------------------------------------------------
def test_aggregate_mean_pooled_weighted_sum_and_stderr():
    scenes = [
        {"points.acc": 1.0, "pose.auc@30.pooled": 0.5, "pose.n_pairs": 10, "depth.abs_rel": 0.1, "depth.valid_pixels": 100},
        {"points.acc": 3.0, "pose.auc@30.pooled": 1.0, "pose.n_pairs": 30, "depth.abs_rel": 0.3, "depth.valid_pixels": 300},
        {"points.acc": 2.0},
    ]  # fmt: skip
    agg = aggregate(scenes)
    assert agg["points.acc"][0] == 2.0
    assert agg["points.acc"][1] == pytest.approx(np.std([1, 3, 2], ddof=1) / np.sqrt(3))
    assert agg["pose.auc@30.pooled"][0] == pytest.approx((0.5 * 10 + 1.0 * 30) / 40)
    assert agg["depth.abs_rel"][0] == pytest.approx((0.1 * 100 + 0.3 * 300) / 400)
    assert agg["pose.n_pairs"] == (40.0, 0.0)
    assert np.isnan(aggregate(scenes[:1])["points.acc"][1])  # one scene: no error estimate
    with pytest.raises(MetricInputError, match="needs 'pose.n_pairs'"):
        aggregate([{"pose.auc@30.pooled": 0.5}], ["pose.auc@30.pooled"])


def test_pooled_auc_equals_auc_of_concatenated_pairs():
    from ptq3d.metrics.pose import auc_at

    rng = np.random.default_rng(0)
    errs = [(rng.uniform(0, 40, n), rng.uniform(0, 40, n)) for n in (3, 10, 45)]
    spec = get_metric("pose.auc@15.pooled")
    scenes = [{spec.name: auc_at(r, t, 15), "pose.n_pairs": r.size} for r, t in errs]
    pooled = auc_at(np.concatenate([e[0] for e in errs]), np.concatenate([e[1] for e in errs]), 15)
    assert aggregate(scenes, [spec])[spec.name][0] == pytest.approx(pooled, abs=1e-12)
