"""Trajectory metrics through evo: ATE (APE translation RMSE) and RPE (translation / rotation, delta 1 frame).

Protocol of Pi3 evaluation `relpose/evo_utils.py` (from CUT3R): camera-to-world poses -> TUM rows
(x y z qw qx qy qz, rotation via scipy) with timestamps = frame index; `sync.associate_trajectories`;
ATE = `main_ape.ape(ref, est, translation_part, align=True, correct_scale=True)` (Sim(3) Umeyama of the
estimate onto the reference positions) RMSE; RPE = `main_rpe.rpe(..., delta=1, delta_unit=frames,
rel_delta_tol=0.01, all_pairs=True, align=True, correct_scale=True)` RMSE, rotation in degrees.
As in the reference, evo aligns the estimate in place, so the two RPE calls see the already aligned
trajectory (their own Sim(3) is then the identity up to rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptq3d.metrics.pose import to_homogeneous
from ptq3d.metrics.validation import MetricInputError, as_numpy, check_finite, check_same_shape


def c2w_to_tum(c2w: np.ndarray) -> np.ndarray:
    """Camera-to-world [N, 4, 4] (or [N, 3, 4]) -> TUM rows [N, 7]: x y z qw qx qy qz."""
    from scipy.spatial.transform import Rotation

    c2w = to_homogeneous(np.asarray(c2w, dtype=np.float64))
    xyzw = Rotation.from_matrix(c2w[:, :3, :3]).as_quat()
    return np.concatenate([c2w[:, :3, 3], xyzw[:, 3:], xyzw[:, :3]], axis=1)


@dataclass
class TrajectoryResult:
    """ate / rpe_trans in GT units, rpe_rot in degrees (RMSE each); per-pose / per-pair error arrays;
    sim3 [4, 4] the APE alignment (s R | t) of the estimate onto the reference."""

    ate: float
    rpe_trans: float
    rpe_rot_deg: float
    ape_errors: np.ndarray
    rpe_trans_errors: np.ndarray
    rpe_rot_errors_deg: np.ndarray
    sim3: np.ndarray


def _checked_c2w(name: str, poses) -> np.ndarray:
    arr = as_numpy(poses)
    if arr.ndim != 3 or arr.shape[-2:] not in ((3, 4), (4, 4)):
        raise MetricInputError(
            f"{name}: expected camera-to-world poses [N, 4, 4] or [N, 3, 4], got {list(arr.shape)}"
        )
    check_finite(name, arr, "pose entry")
    return to_homogeneous(arr)


def trajectory_metrics(pred_c2w, gt_c2w, timestamps: np.ndarray | None = None) -> TrajectoryResult:
    """ATE / RPE of a predicted trajectory against GT.

    Args:
        pred_c2w, gt_c2w: [N, 4, 4] or [N, 3, 4] camera-to-world (pred in any similarity frame), N >= 3.
        timestamps: [N] (default: frame index), used for both, as the reference does.
    """
    from evo.core import metrics as evo_metrics
    from evo.core import sync
    from evo.core.trajectory import PoseTrajectory3D
    from evo.main_ape import ape
    from evo.main_rpe import rpe

    pred = _checked_c2w("predicted camera-to-world poses", pred_c2w)
    gt = _checked_c2w("ground-truth camera-to-world poses", gt_c2w)
    check_same_shape("predicted poses", pred, "ground-truth poses", gt)
    if gt.shape[0] < 3:
        raise MetricInputError(
            f"trajectory metrics: need at least 3 poses for a Sim(3) alignment, got {gt.shape[0]}"
        )
    ts = np.arange(gt.shape[0], dtype=np.float64) if timestamps is None else as_numpy(timestamps)

    def traj(tum: np.ndarray) -> PoseTrajectory3D:
        return PoseTrajectory3D(
            positions_xyz=tum[:, :3], orientations_quat_wxyz=tum[:, 3:], timestamps=ts.copy()
        )

    ref, est = sync.associate_trajectories(traj(c2w_to_tum(gt)), traj(c2w_to_tum(pred)))
    ape_res = ape(
        ref, est, pose_relation=evo_metrics.PoseRelation.translation_part, align=True, correct_scale=True
    )
    rpe_kw = dict(
        delta=1,
        delta_unit=evo_metrics.Unit.frames,
        rel_delta_tol=0.01,
        all_pairs=True,
        align=True,
        correct_scale=True,
    )
    rpe_t = rpe(ref, est, pose_relation=evo_metrics.PoseRelation.translation_part, **rpe_kw)
    rpe_r = rpe(ref, est, pose_relation=evo_metrics.PoseRelation.rotation_angle_deg, **rpe_kw)
    return TrajectoryResult(
        ate=float(ape_res.stats["rmse"]),
        rpe_trans=float(rpe_t.stats["rmse"]),
        rpe_rot_deg=float(rpe_r.stats["rmse"]),
        ape_errors=np.asarray(ape_res.np_arrays["error_array"]),
        rpe_trans_errors=np.asarray(rpe_t.np_arrays["error_array"]),
        rpe_rot_errors_deg=np.asarray(rpe_r.np_arrays["error_array"]),
        sim3=np.asarray(ape_res.np_arrays["alignment_transformation_sim3"]),
    )
