"""Trajectory metrics through evo: reference goldens (ATE, RPE), similarity invariance, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from metrics_testutil import load_golden
from scipy.spatial.transform import Rotation

from ptq3d.metrics import MetricInputError, trajectory_metrics
from ptq3d.metrics.trajectory import c2w_to_tum


@pytest.fixture(scope="module")
def golden():
    return load_golden("metrics_traj")


def test_tum_conversion_matches_golden(golden):
    arrays, meta = golden
    for case in meta["cases"]:
        k = case["case"]
        np.testing.assert_allclose(
            c2w_to_tum(arrays[f"case{k}.gt_c2w"]), arrays[f"case{k}.gt_tum"], atol=1e-12
        )
        np.testing.assert_allclose(
            c2w_to_tum(arrays[f"case{k}.pred_c2w"]), arrays[f"case{k}.pred_tum"], atol=1e-12
        )


def test_ate_rpe_match_golden(golden):
    arrays, meta = golden
    for case in meta["cases"]:
        k = case["case"]
        r = trajectory_metrics(
            arrays[f"case{k}.pred_c2w"], arrays[f"case{k}.gt_c2w"], arrays[f"case{k}.timestamps"]
        )
        assert r.ate == pytest.approx(case["ATE_rmse"], rel=1e-9)
        assert r.rpe_trans == pytest.approx(case["RPE_trans_rmse"], rel=1e-9)
        assert r.rpe_rot_deg == pytest.approx(case["RPE_rot_rmse_deg"], rel=1e-9)
        np.testing.assert_allclose(r.ape_errors, arrays[f"case{k}.ape_trans_errors"], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(
            r.rpe_trans_errors, arrays[f"case{k}.rpe_trans_errors"], rtol=1e-9, atol=1e-12
        )
        np.testing.assert_allclose(
            r.rpe_rot_errors_deg, arrays[f"case{k}.rpe_rot_errors_deg"], rtol=1e-9, atol=1e-10
        )
        np.testing.assert_allclose(r.sim3, arrays[f"case{k}.ape_alignment_sim3"], atol=1e-9)
        assert r.ape_errors.shape[0] == meta["poses_per_case"]


def _walk(n=12, seed=0):
    rng = np.random.default_rng(seed)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, :3] = Rotation.from_euler(
        "xyz", np.cumsum(rng.normal(scale=5, size=(n, 3)), 0), degrees=True
    ).as_matrix()
    c2w[:, :3, 3] = np.cumsum(rng.normal(size=(n, 3)), 0)
    return c2w


def test_ground_truth_in_a_similarity_frame_is_perfect():
    gt = _walk()
    S = np.eye(4)
    S[:3, :3] = 0.3 * Rotation.from_euler("z", 70, degrees=True).as_matrix()
    S[:3, 3] = [4, -1, 2]
    pred = S @ gt
    pred[:, :3, :3] /= 0.3  # keep rotation blocks orthonormal: camera-to-world of the scaled world
    r = trajectory_metrics(pred, gt)
    assert r.ate < 1e-9 and r.rpe_trans < 1e-9 and r.rpe_rot_deg < 1e-6


def test_bad_inputs():
    gt = _walk()
    bad = gt.copy()
    bad[4, 0, 3] = np.inf
    with pytest.raises(
        MetricInputError,
        match=r"predicted camera-to-world poses: non-finite pose entry inf at index \[4, 0, 3\]",
    ):
        trajectory_metrics(bad, gt)
    with pytest.raises(MetricInputError, match="shape mismatch"):
        trajectory_metrics(gt[:5], gt)
    with pytest.raises(MetricInputError, match="at least 3 poses"):
        trajectory_metrics(gt[:2], gt[:2])
