"""Issue 18.1: metric behaviour checked against the reference code on constructed cases with hand-checked values.

- CO3D pose: pairs pooled within a category, then the mean over categories (VGGT test_co3d.py, QuantVGGT).
- Depth scale&shift: the convergence test runs after the optimiser step (CUT3R / Pi3 absolute_value_scaling2).
- A centre crop larger than the image is refused.
- GT unprojection at +0.5 pixel centres or at the reference loaders' integer coordinates.
- Per-frame monocular depth, precision / recall / F-score, the per-dataset depth-fit learning rate.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptq3d.datasets.base import SceneSample
from ptq3d.errors import ConfigError
from ptq3d.metrics import (
    AlignmentPolicy,
    MetricInputError,
    aggregate,
    cloud_metrics,
    depth_metrics,
    depth_metrics_per_frame,
    evaluate_point_maps,
    evaluate_scene,
    get_metric,
    scene_groups,
    unproject_depth,
)
from ptq3d.metrics.depth import scale_shift_l1_adam
from ptq3d.metrics.evaluate import _gt_points
from ptq3d.metrics.pose import PoseErrors
from ptq3d.models.base import Predictions


# --- CO3D per-category pose aggregation ----------------------------------------------------------------------
def _errors(max_err_deg: list[float]) -> PoseErrors:
    e = np.asarray(max_err_deg, dtype=np.float64)
    idx = np.arange(e.size)
    return PoseErrors(e, np.zeros_like(e), idx, idx + 1, "vggt")


def _scene(max_err_deg: list[float]) -> dict[str, float]:
    e = _errors(max_err_deg)
    names = ("pose.auc@30", "pose.rra@5", "pose.n_pairs")
    return {n: float(get_metric(n).fn(e)) for n in names}


def test_auc_of_constructed_errors_is_hand_checked():
    # an error of 14.5 deg falls in the 1-deg bin [14, 15): P(e < k) = 1 for k = 15..30, i.e. 16 of 30 steps
    assert _scene([14.5])["pose.auc@30"] == pytest.approx(16 / 30)
    assert _scene([0.0] * 45)["pose.auc@30"] == 1.0 and _scene([31.0] * 45)["pose.auc@30"] == 0.0


def test_co3d_auc_pools_pairs_within_a_category_then_averages_categories():
    # category "a": 2 sequences of 45 pairs (all pairs perfect, all pairs lost); "b": 6 sequences, all perfect
    seqs = [[0.0] * 45, [40.0] * 45] + [[0.0] * 45] * 6
    groups = ["a", "a"] + ["b"] * 6
    per_scene = [_scene(s) for s in seqs]
    by_category = aggregate(per_scene, ["pose.auc@30", "pose.rra@5"], groups=groups)
    # a = 45 / 90 = 0.5, b = 1.0 -> (0.5 + 1.0) / 2; the per-sequence mean would be 7 / 8
    assert by_category["pose.auc@30"][0] == pytest.approx(0.75)
    assert by_category["pose.rra@5"][0] == pytest.approx(7 / 8)  # not reported per category: pooled pairs
    assert by_category["pose.auc@30"][1] == pytest.approx(np.std([0.5, 1.0], ddof=1) / np.sqrt(2))
    assert aggregate(per_scene, ["pose.auc@30"])["pose.auc@30"][0] == pytest.approx(7 / 8)


def test_pooling_within_a_category_weights_sequences_by_their_pairs():
    # one category: 45 perfect pairs and 15 lost pairs pool to 45 / 60, not the sequence mean 0.5
    per_scene = [_scene([0.0] * 45), _scene([50.0] * 15)]
    pooled = aggregate(per_scene, ["pose.auc@30"], groups=["c", "c"])["pose.auc@30"][0]
    concatenated = _scene([0.0] * 45 + [50.0] * 15)["pose.auc@30"]
    assert pooled == pytest.approx(0.75) == pytest.approx(concatenated)


def test_scene_groups_reads_co3d_categories_and_leaves_other_datasets_alone():
    def sample(meta):
        z = torch.ones(2, 2, 2)
        e = torch.eye(3, 4).expand(2, 3, 4)
        return SceneSample(torch.zeros(2, 3, 2, 2), z, z.bool(), torch.eye(3).expand(2, 3, 3), e, None, meta)

    co3d = [
        sample({"dataset": "co3d", "scene": "apple/1", "category": "apple"}),
        sample({"dataset": "co3d", "scene": "bench/7"}),
    ]
    assert scene_groups(co3d) == ["apple", "bench"]
    assert scene_groups([sample({"dataset": "7scenes", "scene": "stairs/seq-01"})]) is None
    with pytest.raises(MetricInputError, match="mixed"):
        scene_groups([*co3d, sample({"dataset": "7scenes", "scene": "x"})])
    with pytest.raises(MetricInputError, match="2 group labels for 3 scenes"):
        aggregate([_scene([0.0])] * 3, ["pose.auc@30"], groups=["a", "b"])


def test_builtin_auc_description_states_the_aggregation():
    spec = get_metric("pose.auc@30")
    assert spec.grouped and "per-category" not in spec.description and "category" in spec.description
    assert not get_metric("pose.auc@30.pooled").grouped  # Pi3: every pair of every scene, never grouped


# --- depth scale & shift: the convergence test after the step ------------------------------------------------
def test_scale_shift_fit_tests_convergence_after_the_step():
    # pred == gt and s0 = 1: the loss is 0 at once and the L1 gradient is 0, so Adam never moves. The reference
    # loop computes loss 0, steps, stores it; computes loss 0 again, steps, THEN sees no change: 2 steps
    # (testing before the step, as ptq3d did, stops after 1).
    x = torch.tensor([1.0, 2.0, 3.0])
    fit = scale_shift_l1_adam(x, x.clone(), 1.0)
    assert fit.steps == 2 and (fit.scale, fit.shift) == (1.0, 0.0)
    # never converging: exactly max_iters steps
    assert scale_shift_l1_adam(x, 5 * x + 3, 1.0, max_iters=7).steps == 7


def test_scale_shift_first_adam_step_moves_by_the_learning_rate():
    # median ratio s0 = 4 / 2 = 2, t0 = 0; residuals s p + t - g = [0, 0, -1]: both gradients are negative, and
    # Adam's first step moves each parameter by lr against the gradient's sign
    pred, gt = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 7.0])
    for lr in (1e-4, 1e-2):
        r = depth_metrics(pred, gt, alignment="scale&shift", lr=lr, max_iters=1)
        assert r.fit_steps == 1
        assert r.scale == pytest.approx(2 + lr, rel=1e-5) and r.shift == pytest.approx(lr, rel=1e-4)


def _depth_scene(gt: torch.Tensor) -> SceneSample:
    S = gt.shape[0]
    K = torch.tensor([[2.0, 0, 2], [0, 2, 2], [0, 0, 1]]).expand(S, 3, 3)
    return SceneSample(
        torch.zeros(S, 3, *gt.shape[1:]), gt, gt > 0, K, torch.eye(3, 4).expand(S, 3, 4), None, {"scene": "d"}
    )


def _pred(depth: torch.Tensor) -> Predictions:
    S, H, W = depth.shape
    return Predictions(
        depth=depth[None],
        depth_conf=torch.ones(1, S, H, W),
        world_points=torch.zeros(1, S, H, W, 3),
        points_conf=torch.ones(1, S, H, W),
        extrinsics=torch.eye(3, 4).expand(1, S, 3, 4),
        intrinsics=None,
    )


def test_depth_fit_learning_rate_is_a_policy_setting():
    gt = torch.tensor([[[2.0, 4.0, 7.0]]])
    pred = torch.tensor([[[1.0, 2.0, 3.0]]])
    slow = evaluate_scene(
        _pred(pred), _depth_scene(gt), ["depth.abs_rel"], AlignmentPolicy(depth="scale&shift")
    )
    fast = evaluate_scene(
        _pred(pred), _depth_scene(gt), ["depth.abs_rel"], AlignmentPolicy(depth="scale&shift", depth_lr=1e-2)
    )
    assert fast["depth.abs_rel"] != slow["depth.abs_rel"]
    with pytest.raises(ConfigError, match="depth_lr=0"):
        AlignmentPolicy(depth_lr=0)


# --- centre crop ---------------------------------------------------------------------------------------------
def test_center_crop_larger_than_the_image_is_refused():
    H = W = 112
    v, u = np.meshgrid(np.arange(H, dtype=float), np.arange(W, dtype=float), indexing="ij")
    gt = np.stack([u, v, 5 + 0.01 * u], -1)[None]
    valid = np.ones((1, H, W), bool)
    with pytest.raises(MetricInputError, match=r"center_crop=224 px is larger than the 112x112 image"):
        evaluate_point_maps(gt, gt, valid, alignment="none", center_crop=224)
    whole = evaluate_point_maps(gt, gt, valid, alignment="none", center_crop=112, max_points=500)
    assert whole.num_valid == H * W


# --- GT unprojection convention ------------------------------------------------------------------------------
def test_unprojection_pixel_centres_half_and_integer():
    # K: f = 2, c = (1, 1); depth 2 at pixel (row 0, col 0), identity camera
    K = torch.tensor([[[2.0, 0, 1], [0, 2, 1], [0, 0, 1]]])
    E = torch.eye(3, 4)[None]
    d = torch.full((1, 2, 2), 2.0)
    half = unproject_depth(d, K, E, 0.5)[0, 0, 0]
    integer = unproject_depth(d, K, E, 0.0)[0, 0, 0]
    assert half.tolist() == [-0.5, -0.5, 2.0]  # (0.5 - 1) / 2 * 2
    assert integer.tolist() == [-1.0, -1.0, 2.0]  # (0 - 1) / 2 * 2
    # the documented size of the difference: z * 0.5 * sqrt(1/fx^2 + 1/fy^2)
    assert float(torch.linalg.norm(half - integer)) == pytest.approx(2 * 0.5 * np.sqrt(2) / 2)


def test_policy_picks_the_unprojection_and_presets_follow_the_reference():
    gt = torch.full((1, 4, 4), 2.0)
    sample = _depth_scene(gt)
    pts = {}
    for centres in ("half", "integer"):
        policy = AlignmentPolicy(points="none", gt_pixel_centers=centres, max_points=None)
        pts[centres] = _gt_points(sample, policy)[0]
    assert torch.allclose(
        pts["half"][..., :2] - pts["integer"][..., :2], torch.tensor(0.5, dtype=torch.float64)
    )  # 0.5 px z / f
    for name in ("vggt", "pi3", "cut3r", "quantvggt"):
        assert AlignmentPolicy.preset(name).gt_pixel_centers == "integer"
    assert AlignmentPolicy().gt_pixel_centers == "half"
    with pytest.raises(ConfigError, match="gt_pixel_centers='centre'"):
        AlignmentPolicy(gt_pixel_centers="centre")


# --- monocular (per-frame) depth -----------------------------------------------------------------------------
def test_per_frame_depth_aligns_each_frame_and_weights_by_valid_pixels():
    gt = torch.rand(2, 5, 8) * 3 + 1
    gt[0, :3] = 0  # frame 0: 16 valid pixels, frame 1: 40
    pred = torch.stack([2 * gt[0], 3 * gt[1]])
    mono = depth_metrics_per_frame(pred, gt, alignment="scale")
    assert mono.metrics["abs_rel"] < 1e-6 and mono.metrics["valid_pixels"] == 56
    assert depth_metrics(pred, gt, alignment="scale").metrics["abs_rel"] > 0.05  # one scale cannot fit both
    metric = depth_metrics_per_frame(pred, gt, alignment="metric")
    assert metric.metrics["abs_rel"] == pytest.approx((16 * 1 + 40 * 2) / 56, rel=1e-6)
    with pytest.raises(MetricInputError, match="no frame has a valid"):
        depth_metrics_per_frame(pred, torch.zeros_like(gt))


def test_mono_depth_metrics_are_registered_and_evaluated_on_request():
    gt = torch.rand(2, 4, 4) + 1
    out = evaluate_scene(_pred(torch.stack([2 * gt[0], 5 * gt[1]])), _depth_scene(gt), ["depth.mono.abs_rel"])
    assert out["depth.mono.abs_rel"] < 1e-6 and out["depth.mono.valid_pixels"] == 32
    assert get_metric("depth.mono.abs_rel").aggregation == "weighted"


# --- precision / recall / F-score ----------------------------------------------------------------------------
def test_precision_recall_fscore_at_a_distance_threshold():
    gt = np.array([[0.0, 0, 0], [10, 0, 0], [20, 0, 0], [30, 0, 0]])
    pred = np.array([[0.01, 0, 0], [10.2, 0, 0], [20, 0, 0]])
    up = lambda n: np.tile([0.0, 0, 1], (n, 1))  # noqa: E731
    m = cloud_metrics(pred, gt, pred_normals=up(3), gt_normals=up(4), threshold=0.05)
    # pred -> GT distances 0.01, 0.2, 0: 2 of 3 within 0.05; GT -> pred 0.01, 0.2, 0, 10: 2 of 4
    assert m.precision == pytest.approx(2 / 3) and m.recall == pytest.approx(0.5)
    assert m.fscore == pytest.approx(4 / 7)
    assert cloud_metrics(
        pred, gt, pred_normals=up(3), gt_normals=up(4), threshold=0.5
    ).fscore == pytest.approx(2 * 1 * 0.75 / 1.75)
    for name in ("points.precision", "points.recall", "points.fscore"):
        assert get_metric(name).higher_is_better
    with pytest.raises(ConfigError, match="fscore_threshold"):
        AlignmentPolicy(fscore_threshold=-1)
