"""Relative camera pose metrics over all frame pairs: RRE / RTE, RRA@tau / RTA@tau, AUC@tau.

Inputs are OpenCV camera-from-world extrinsics [N, 3, 4] or [N, 4, 4] (x right, y down, z forward).
Pairs are all (i, j) with i < j in `torch.combinations` order, N (N-1) / 2 of them.

Two conventions exist in the reference evaluations (see notes/datasets_and_metrics.md section 2.6):
- "vggt" (VGGT evaluation/test_co3d.py, QuantVGGT run_co3d.py): both pred and GT are first re-expressed
  relative to camera 0 (E_k <- E_k inv(E_0)); the relative pose of a pair is inv(E_i) E_j.
- "pi3" (Pi3 relpose/metric.py): no first-camera step; the relative pose of a pair is E_j inv(E_i).

Errors (degrees): rotation = geodesic angle from quaternions, arccos(1 - 2 clamp(1 - <q_pred, q_gt>^2, 1e-15));
translation = angle between the relative translation directions, sign-invariant (so at most 90 degrees).
AUC@tau = mean of the cumulative 1-degree histogram of max(rot, trans) on [0, tau], normalised by the pair count.
VGGT averages AUC per category (mean); Pi3 pools all pairs of a dataset (pair-count weighted, same thing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ptq3d.metrics.validation import MetricInputError, as_numpy, check_finite, check_same_shape, check_shape

PoseConvention = Literal["vggt", "pi3"]
POSE_CONVENTIONS: tuple[str, ...] = ("vggt", "pi3")
AUC_THRESHOLDS: tuple[int, ...] = (30, 15, 5, 3)

_EPS = 1e-15  # the reference's clamp, so a perfect pair reads ~3.6e-6 deg, not 0
_NONFINITE_TRANS_ERR_RAD = 1e6  # the reference's default_err for NaN/inf translation angles


def to_homogeneous(extrinsics: np.ndarray) -> np.ndarray:
    """[N, 3, 4] or [N, 4, 4] -> [N, 4, 4] with last row [0, 0, 0, 1]."""
    if extrinsics.shape[-2] == 4:
        return extrinsics.copy()
    out = np.zeros(extrinsics.shape[:-2] + (4, 4), dtype=extrinsics.dtype)
    out[..., :3, :] = extrinsics
    out[..., 3, 3] = 1.0
    return out


def inverse_se3(T: np.ndarray) -> np.ndarray:
    """Closed-form inverse of rigid transforms [..., 4, 4]: [R^T | -R^T t]."""
    R, t = T[..., :3, :3], T[..., :3, 3:]
    out = np.zeros_like(T)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3:] = -Rt @ t
    out[..., 3, 3] = 1.0
    return out


def rotation_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] -> unit quaternions [..., 4] (w, x, y, z), sign arbitrary.

    Picks, per matrix, the best-conditioned of the four standard closed forms (largest denominator)."""
    m = R
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # 4 * q_k^2 for k = w, x, y, z
    q_sq = np.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], axis=-1
    )
    q_abs = np.sqrt(np.maximum(q_sq, 0.0))
    # row k: the quaternion (times 2 q_k) derived from the k-th component
    cands = np.stack(
        [
            np.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], axis=-1),
            np.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], axis=-1),
            np.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], axis=-1),
            np.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], axis=-1),
        ],
        axis=-2,
    )
    cands = cands / (2.0 * np.maximum(q_abs, 0.1))[..., None]
    best = np.argmax(q_abs, axis=-1)
    q = np.take_along_axis(cands, best[..., None, None], axis=-2)[..., 0, :]
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def pair_index(n: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairs i < j of n frames, in torch.combinations order: (0,1), (0,2), ..., (n-2, n-1)."""
    return np.triu_indices(n, k=1)


def rotation_error_deg(R_gt: np.ndarray, R_pred: np.ndarray) -> np.ndarray:
    """Geodesic angle between rotations [P, 3, 3] via quaternions, degrees [P]."""
    q_gt, q_pred = rotation_to_quaternion(R_gt), rotation_to_quaternion(R_pred)
    dot_sq = np.sum(q_gt * q_pred, axis=-1) ** 2
    loss = np.maximum(1.0 - dot_sq, _EPS)
    return np.degrees(np.arccos(np.clip(1.0 - 2.0 * loss, -1.0, 1.0)))


def translation_error_deg(t_gt: np.ndarray, t_pred: np.ndarray) -> np.ndarray:
    """Sign-invariant angle between translation directions [P, 3], degrees [P] in [0, 90]."""
    t_gt = t_gt / (np.linalg.norm(t_gt, axis=-1, keepdims=True) + _EPS)
    t_pred = t_pred / (np.linalg.norm(t_pred, axis=-1, keepdims=True) + _EPS)
    loss = np.maximum(1.0 - np.sum(t_gt * t_pred, axis=-1) ** 2, _EPS)
    with np.errstate(invalid="ignore"):
        err = np.arccos(np.sqrt(1.0 - loss))
    err = np.where(np.isfinite(err), err, _NONFINITE_TRANS_ERR_RAD)
    err = np.degrees(err)
    # The reference also folds err with 180 - err (direction ambiguity); a no-op here since err <= 90.
    return np.minimum(err, np.abs(180.0 - err))


@dataclass
class PoseErrors:
    """Per-pair errors of one scene. rot_err_deg, trans_err_deg: [P]; pair_i, pair_j: [P] frame indices."""

    rot_err_deg: np.ndarray
    trans_err_deg: np.ndarray
    pair_i: np.ndarray
    pair_j: np.ndarray
    convention: str

    @property
    def num_pairs(self) -> int:
        return int(self.rot_err_deg.shape[0])

    def auc(self, threshold: int) -> float:
        return auc_at(self.rot_err_deg, self.trans_err_deg, threshold)

    def rra(self, threshold: float) -> float:
        """Fraction of pairs with rotation error < threshold (Pi3 prints x100)."""
        return float(np.mean(self.rot_err_deg < threshold))

    def rta(self, threshold: float) -> float:
        return float(np.mean(self.trans_err_deg < threshold))


def auc_at(rot_err_deg: np.ndarray, trans_err_deg: np.ndarray, threshold: int) -> float:
    """AUC@threshold: histogram of max(rot, trans) with integer bin edges 0..threshold, divided by the number
    of pairs (errors >= threshold only count in the denominator), then the mean of its cumulative sum."""
    max_err = np.maximum(rot_err_deg, trans_err_deg)
    hist, _ = np.histogram(max_err, bins=np.arange(int(threshold) + 1))
    return float(np.mean(np.cumsum(hist.astype(np.float64) / float(max_err.shape[0]))))


def _checked_poses(name: str, extrinsics) -> np.ndarray:
    arr = as_numpy(extrinsics)
    if arr.ndim != 3 or arr.shape[-2:] not in ((3, 4), (4, 4)):
        raise MetricInputError(f"{name}: expected extrinsics [N, 3, 4] or [N, 4, 4], got {list(arr.shape)}")
    check_finite(name, arr, "pose entry")
    return to_homogeneous(arr)


def relative_pose_errors(pred_w2c, gt_w2c, convention: PoseConvention = "vggt") -> PoseErrors:
    """Per-pair relative rotation / translation errors of one scene.

    Args:
        pred_w2c, gt_w2c: [N, 3, 4] or [N, 4, 4] OpenCV camera-from-world (numpy or torch; computed in float64).
        convention: "vggt" (first-camera alignment, inv(E_i) E_j) or "pi3" (E_j inv(E_i)).
    Returns:
        PoseErrors with [N (N-1) / 2] errors in degrees.
    """
    if convention not in POSE_CONVENTIONS:
        raise MetricInputError(
            f"unknown pose convention '{convention}' (known: {', '.join(POSE_CONVENTIONS)})"
        )
    pred = _checked_poses("predicted extrinsics", pred_w2c)
    gt = _checked_poses("ground-truth extrinsics", gt_w2c)
    check_same_shape("predicted extrinsics", pred, "ground-truth extrinsics", gt)
    check_shape("extrinsics", gt, (4, 4), min_lead=2)
    if convention == "vggt":
        # "DO NOT REMOVE" step of the reference: express every camera relative to camera 0
        pred = pred @ inverse_se3(pred[0])
        gt = gt @ inverse_se3(gt[0])
    i, j = pair_index(gt.shape[0])
    if convention == "vggt":
        rel_gt, rel_pred = inverse_se3(gt[i]) @ gt[j], inverse_se3(pred[i]) @ pred[j]
    else:
        rel_gt, rel_pred = gt[j] @ inverse_se3(gt[i]), pred[j] @ inverse_se3(pred[i])
    rot = rotation_error_deg(rel_gt[:, :3, :3], rel_pred[:, :3, :3])
    trans = translation_error_deg(rel_gt[:, :3, 3], rel_pred[:, :3, 3])
    return PoseErrors(rot, trans, i.astype(np.int64), j.astype(np.int64), convention)
