"""Aligning a predicted point map to ground truth before scoring it.

- `umeyama_sim3`: closed-form similarity (scale c, rotation R, translation t) with c R x + t ~ y, least squares
  over pixel-aligned correspondences, with the reflection fix (Umeyama 1991). Pi3 / FGQ / TAPTQ / VGGT paper.
- `median_scale_shift`: the CUT3R / Spann3R / QuantVGGT protocol (Regr3D_t_ScaleShiftInv with gt_scale=True):
  in the first camera's frame, remove each cloud's joint median depth, rescale the prediction by the ratio
  of median distances to the median centre (GT / pred, pred factor clipped to [1e-3, 1e3]), then add back the
  GT median depth.
- `icp_point_to_point`: Open3D point-to-point ICP (rigid, no scale), identity init, default criteria
  (30 iterations, relative fitness / rmse 1e-6), max correspondence distance 0.1 m in the references.
Everything is float64 numpy; point arrays are [n, 3].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ptq3d.metrics.validation import MetricInputError, check_nonempty


@dataclass
class Sim3:
    """y = c R x + t. c: scale; R: [3, 3]; t: [3]."""

    c: float
    R: np.ndarray
    t: np.ndarray

    def apply(self, points: np.ndarray) -> np.ndarray:
        """points [..., 3] -> [..., 3]."""
        return self.c * (points @ self.R.T) + self.t

    def matrix(self) -> np.ndarray:
        """[4, 4] with c R in the top-left block."""
        out = np.eye(4)
        out[:3, :3] = self.c * self.R
        out[:3, 3] = self.t
        return out


def umeyama_sim3(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> Sim3:
    """Least-squares similarity mapping src [n, 3] onto dst [n, 3] (row i of each is one correspondence)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3:
        raise MetricInputError(
            f"umeyama: expected two [n, 3] arrays of equal shape, got {src.shape} and {dst.shape}"
        )
    if src.shape[0] < 3:
        raise MetricInputError(f"umeyama: need at least 3 correspondences, got {src.shape[0]}")
    mu_src, mu_dst = src.mean(axis=0), dst.mean(axis=0)
    xs, ys = src - mu_src, dst - mu_dst
    var_src = np.mean(np.sum(xs**2, axis=1))
    cov = ys.T @ xs / src.shape[0]  # [3, 3], dst x src
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:  # a reflection is no rotation
        S[2, 2] = -1.0
    R = U @ S @ Vt
    c = float(np.trace(np.diag(D) @ S) / var_src) if with_scale else 1.0
    t = mu_dst - c * R @ mu_src
    return Sim3(c, R, t)


@dataclass
class ICPResult:
    """transformation [4, 4] rigid, applied to the source; fitness / inlier_rmse as Open3D reports them."""

    transformation: np.ndarray
    fitness: float
    inlier_rmse: float


def icp_point_to_point(
    source: np.ndarray, target: np.ndarray, threshold: float = 0.1, max_iteration: int = 30
) -> ICPResult:
    """Open3D point-to-point ICP of source [n, 3] onto target [m, 3], identity initialisation."""
    import open3d as o3d

    check_nonempty("ICP source (prediction)", source)
    check_nonempty("ICP target (ground truth)", target)
    src = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(source, dtype=np.float64)))
    tgt = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(target, dtype=np.float64)))
    reg = o3d.pipelines.registration.registration_icp(
        src,
        tgt,
        threshold,
        np.eye(4),
        o3d.pipelines.registration.TransformationEstimationPointToPoint(),
        o3d.pipelines.registration.ICPConvergenceCriteria(max_iteration=max_iteration),
    )
    return ICPResult(np.asarray(reg.transformation).copy(), float(reg.fitness), float(reg.inlier_rmse))


def apply_rigid(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """[4, 4] rigid transform applied to points [..., 3]."""
    return points @ T[:3, :3].T + T[:3, 3]


@dataclass
class MedianScaleShift:
    """Record of the CUT3R alignment: pred_shift_z / gt_shift_z (median depths), pred_scale / gt_scale (median
    distances to the median centre after the shift; pred_scale clipped), factor = gt_scale / pred_scale."""

    pred_shift_z: float
    gt_shift_z: float
    pred_scale: float
    gt_scale: float

    @property
    def factor(self) -> float:
        return self.gt_scale / self.pred_scale


def _lower_nanmedian(x: np.ndarray) -> float:
    # torch.nanmedian: the lower of the two middle values for an even count, as the reference uses
    return float(torch.nanmedian(torch.from_numpy(np.ascontiguousarray(x))).item())


def median_scale_shift(
    pred_cam: np.ndarray, gt_cam: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray, MedianScaleShift]:
    """Median depth shift + median-distance scale in the first camera's frame.

    Args:
        pred_cam, gt_cam: [S, H, W, 3] points in the (pred / GT) first camera's frame.
        valid: [S, H, W] bool; statistics use valid pixels only (joint over all frames).
    Returns:
        pred_aligned, gt_aligned [S, H, W, 3] in the GT first-camera frame (GT median depth added back to both),
        and the fitted record.
    """
    pred = np.array(pred_cam, dtype=np.float64)
    gt = np.array(gt_cam, dtype=np.float64)
    if not valid.any():
        raise MetricInputError("median scale-shift alignment: no valid pixels")
    gt_shift = _lower_nanmedian(gt[..., 2][valid])
    pred_shift = _lower_nanmedian(pred[..., 2][valid])
    gt[..., 2] -= gt_shift
    pred[..., 2] -= pred_shift

    def median_dist(p: np.ndarray) -> float:
        pv = p[valid]
        centre = torch.nanmedian(torch.from_numpy(pv), dim=0).values.numpy()  # per-axis lower median
        return _lower_nanmedian(np.linalg.norm(pv - centre, axis=-1))

    gt_scale = median_dist(gt)
    pred_scale = float(np.clip(median_dist(pred), 1e-3, 1e3))  # keep predictions out of absurd ranges
    pred *= gt_scale / pred_scale
    pred[..., 2] += gt_shift
    gt[..., 2] += gt_shift
    return pred, gt, MedianScaleShift(pred_shift, gt_shift, pred_scale, gt_scale)
