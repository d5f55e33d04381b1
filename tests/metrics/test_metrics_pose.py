"""Relative pose metrics: reference goldens (VGGT/QuantVGGT and Pi3 conventions), exact known errors, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from metrics_testutil import load_golden, look_at_w2c
from scipy.spatial.transform import Rotation

from ptq3d.metrics import MetricInputError, aggregate, get_metric, relative_pose_errors
from ptq3d.metrics.pose import AUC_THRESHOLDS, rotation_to_quaternion

CONVENTIONS = ("vggt", "pi3")


@pytest.fixture(scope="module")
def golden():
    return load_golden("metrics_pose")


def _errors(arrays, k, conv):
    return relative_pose_errors(arrays[f"case{k}.pred_w2c"], arrays[f"case{k}.gt_w2c"], conv)


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_pair_errors_match_golden(golden, conv):
    arrays, meta = golden
    for k in range(meta["num_cases"]):
        e = _errors(arrays, k, conv)
        np.testing.assert_array_equal(e.pair_i, arrays[f"case{k}.pair_i"])
        np.testing.assert_array_equal(e.pair_j, arrays[f"case{k}.pair_j"])
        np.testing.assert_allclose(
            e.rot_err_deg, arrays[f"case{k}.{conv}.rel_rot_err_deg"], rtol=0, atol=1e-9
        )
        np.testing.assert_allclose(
            e.trans_err_deg, arrays[f"case{k}.{conv}.rel_trans_err_deg"], rtol=0, atol=1e-9
        )


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_auc_rra_rta_match_golden(golden, conv):
    arrays, meta = golden
    for k, case in enumerate(meta["cases"]):
        e = _errors(arrays, k, conv)
        m = case["metrics"]
        for thr in AUC_THRESHOLDS:
            assert e.auc(thr) == pytest.approx(m[f"{conv}.AUC@{thr}"], abs=1e-12)
            assert e.rra(thr) == pytest.approx(m[f"{conv}.RRA@{thr}"], abs=1e-12)
            assert e.rta(thr) == pytest.approx(m[f"{conv}.RTA@{thr}"], abs=1e-12)
        assert e.rot_err_deg.mean() == pytest.approx(m[f"{conv}.rot_err_mean"], abs=1e-9)
        assert e.trans_err_deg.mean() == pytest.approx(m[f"{conv}.trans_err_mean"], abs=1e-9)


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_registry_aggregation_matches_golden_pooled_and_mean(golden, conv):
    arrays, meta = golden
    names = [f"pose.auc@{t}" for t in AUC_THRESHOLDS] + [f"pose.auc@{t}.pooled" for t in AUC_THRESHOLDS]
    names += (
        [f"pose.rra@{t}" for t in AUC_THRESHOLDS]
        + [f"pose.rta@{t}" for t in AUC_THRESHOLDS]
        + ["pose.n_pairs"]
    )
    per_scene = []
    for k in range(meta["num_cases"]):
        e = _errors(arrays, k, conv)
        per_scene.append({n: get_metric(n).fn(e) for n in names})
    agg = aggregate(per_scene, names)
    ref = meta["aggregate"]
    for t in AUC_THRESHOLDS:
        assert agg[f"pose.auc@{t}"][0] == pytest.approx(ref[f"{conv}.mean_of_cases.AUC@{t}"], abs=1e-12)
        assert agg[f"pose.auc@{t}.pooled"][0] == pytest.approx(ref[f"{conv}.pooled.AUC@{t}"], abs=1e-12)
        assert agg[f"pose.rra@{t}"][0] == pytest.approx(ref[f"{conv}.pooled.RRA@{t}"], abs=1e-12)
        assert agg[f"pose.rta@{t}"][0] == pytest.approx(ref[f"{conv}.pooled.RTA@{t}"], abs=1e-12)
    assert agg["pose.n_pairs"][0] == sum(s["pose.n_pairs"] for s in per_scene)


def _ring(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([look_at_w2c(rng.normal(size=3) * 0.3 + [3 * np.cos(a), 0.5, 3 * np.sin(a)], np.zeros(3))
                     for a in np.linspace(0, 2, n)])  # fmt: skip


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_ground_truth_as_prediction_is_perfect_and_similarity_invariant(conv):
    gt = _ring()
    e = relative_pose_errors(gt, gt, conv)
    assert e.rot_err_deg.max() < 1e-5 and e.trans_err_deg.max() < 1e-5  # the 1e-15 clamp gives ~3.6e-6
    for t in AUC_THRESHOLDS:
        assert e.auc(t) == 1.0 and e.rra(t) == 1.0 and e.rta(t) == 1.0
    # the same cameras in another similarity frame (world' = s Q world + c) score the same
    s, Q, c = (
        2.7,
        Rotation.from_euler("xyz", [10, -40, 70], degrees=True).as_matrix(),
        np.array([1.0, -2.0, 0.5]),
    )
    pred = np.concatenate([gt[:, :, :3] @ Q.T, (s * gt[:, :, 3:] - gt[:, :, :3] @ Q.T @ c[:, None])], axis=2)
    e2 = relative_pose_errors(pred, gt, conv)
    assert e2.rot_err_deg.max() < 1e-5 and e2.trans_err_deg.max() < 1e-5


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_ten_degree_rotation_of_one_camera(conv):
    gt = _ring(n=6)
    k = 3
    pred = gt.copy()
    # rotate camera k by 10 deg about an arbitrary axis through its own centre: only its orientation changes
    Rz = Rotation.from_rotvec(np.radians(10) * np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8]))
    Rz = Rz.as_matrix()
    pred[k] = Rz @ gt[k]
    e = relative_pose_errors(pred, gt, conv)
    involves_k = (e.pair_i == k) | (e.pair_j == k)
    np.testing.assert_allclose(e.rot_err_deg[involves_k], 10.0, atol=1e-7)
    assert e.rot_err_deg[~involves_k].max() < 1e-5
    n = 6
    assert e.rra(5) == pytest.approx((n - 2) / n)  # pairs without camera k: C(n-1, 2) / C(n, 2)
    assert e.rra(15) == 1.0


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_known_translation_direction_error(conv):
    # two cameras, identity rotations; camera 1's centre moves on a circle by 20 deg around camera 0
    gt = np.stack([np.eye(4)[:3], np.eye(4)[:3]])
    gt[1, :, 3] = -np.array([1.0, 0.0, 0.0])
    pred = gt.copy()
    theta = np.radians(20.0)
    pred[1, :, 3] = -5.0 * np.array([np.cos(theta), np.sin(theta), 0.0])  # scale does not matter
    e = relative_pose_errors(pred, gt, conv)
    assert e.trans_err_deg[0] == pytest.approx(20.0, abs=1e-9)
    assert e.rot_err_deg[0] < 1e-5
    assert e.auc(30) == pytest.approx(10 / 30)  # max error 20 -> in bin [20, 21): counts from threshold 21 on
    assert e.auc(15) == 0.0 and e.rta(30) == 1.0 and e.rta(15) == 0.0 and e.rra(3) == 1.0


def test_auc_histogram_edges():
    # errors >= threshold stay in the denominator; the last bin is closed as in np.histogram
    from ptq3d.metrics.pose import auc_at

    rot = np.array([0.5, 2.5, 3.0, 50.0])
    assert auc_at(rot, np.zeros(4), 3) == pytest.approx(np.mean([1 / 4, 1 / 4, 3 / 4]))


def test_quaternion_conversion_matches_scipy():
    Rs = Rotation.random(200, random_state=1)
    q = rotation_to_quaternion(Rs.as_matrix())
    ref = Rs.as_quat()[:, [3, 0, 1, 2]]
    np.testing.assert_allclose(np.abs(np.sum(q * ref, axis=1)), 1.0, atol=1e-12)


def test_bad_inputs():
    gt = _ring(n=4)
    bad = gt.copy()
    bad[2, 1, 1] = np.nan
    with pytest.raises(
        MetricInputError, match=r"predicted extrinsics: non-finite pose entry nan at index \[2, 1, 1\]"
    ):
        relative_pose_errors(bad, gt)
    with pytest.raises(MetricInputError, match="shape mismatch"):
        relative_pose_errors(gt[:3], gt)
    with pytest.raises(MetricInputError, match=r"expected extrinsics \[N, 3, 4\]"):
        relative_pose_errors(gt[:, :2], gt[:, :2])
    with pytest.raises(MetricInputError, match="at least 2"):
        relative_pose_errors(gt[:1], gt[:1])
    with pytest.raises(MetricInputError, match="unknown pose convention 'vgg'"):
        relative_pose_errors(gt, gt, "vgg")
