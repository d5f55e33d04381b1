"""Point-map reconstruction metrics: accuracy, completeness, normal consistency, Chamfer ("Overall").

Definitions (identical in Pi3 / CUT3R / Spann3R / QuantVGGT `mv_recon` utils; notes section 2.6):
- accuracy: for every PREDICTED point, the distance to its nearest GT point; acc = mean, acc_med = median.
- completeness: for every GT point, the distance to its nearest predicted point; comp, comp_med.
- normals: Open3D `estimate_normals()` defaults (KNN 30) on each cloud after alignment; sign arbitrary.
- nc1 = |n_gt[nn(pred)] . n_pred| over predicted points; nc2 = |n_gt . n_pred[nn(gt)]| over GT points;
  nc = (nc1 + nc2) / 2 and nc_med = (nc1_med + nc2_med) / 2.
- chamfer = (acc + comp) / 2 (VGGT's "Overall").
- precision / recall at a distance threshold tau (GT units): the fraction of predicted points within tau of a GT
  point / of GT points within tau of a predicted point (the reference mv_recon utils' `completion_ratio` with
  dist_th = 0.05 is the recall); fscore = 2 P R / (P + R) (0 when both are 0).
Units are those of the GT (metres). Medians are numpy's (mean of the two middle values).

`evaluate_point_maps` runs a whole protocol on pixel-aligned maps [S, H, W, 3]: alignment (see
`PointAlignment`), optional centre crop and seeded subsampling, then the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.spatial import cKDTree

from ptq3d.metrics.alignment import (
    ICPResult,
    MedianScaleShift,
    Sim3,
    apply_rigid,
    icp_point_to_point,
    median_scale_shift,
    umeyama_sim3,
)
from ptq3d.metrics.validation import (
    MetricInputError,
    as_numpy,
    check_finite,
    check_nonempty,
    check_same_shape,
    check_shape,
)

PointAlignment = Literal[
    "umeyama_icp", "umeyama", "median_scale_shift_icp", "median_scale_shift", "icp", "none"
]
POINT_ALIGNMENTS: tuple[str, ...] = (
    "umeyama_icp",
    "umeyama",
    "median_scale_shift_icp",
    "median_scale_shift",
    "icp",
    "none",
)


@dataclass
class PointCloudMetrics:
    """Scores of one predicted cloud against one GT cloud (distances in GT units, nc in [0, 1])."""

    acc: float
    acc_med: float
    comp: float
    comp_med: float
    nc1: float
    nc1_med: float
    nc2: float
    nc2_med: float
    precision: float = float("nan")
    recall: float = float("nan")
    threshold: float = float("nan")

    @property
    def fscore(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else 0.0

    @property
    def nc(self) -> float:
        return (self.nc1 + self.nc2) / 2

    @property
    def nc_med(self) -> float:
        return (self.nc1_med + self.nc2_med) / 2

    @property
    def chamfer(self) -> float:
        return (self.acc + self.comp) / 2

    def as_dict(self) -> dict[str, float]:
        names = (
            "acc",
            "acc_med",
            "comp",
            "comp_med",
            "nc1",
            "nc1_med",
            "nc2",
            "nc2_med",
            "nc",
            "nc_med",
            "chamfer",
            "precision",
            "recall",
            "fscore",
        )
        return {k: float(getattr(self, k)) for k in names}


def estimate_normals(points: np.ndarray) -> np.ndarray:
    """Unit normals [n, 3] from Open3D's `estimate_normals()` with its defaults (KNN 30, fast computation)."""
    import open3d as o3d

    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, dtype=np.float64)))
    pcd.estimate_normals()
    return np.asarray(pcd.normals).copy()


def _checked_cloud(name: str, points) -> np.ndarray:
    arr = as_numpy(points)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise MetricInputError(f"{name}: expected a point cloud [n, 3], got {list(arr.shape)}")
    check_nonempty(name, arr)
    check_finite(name, arr, "coordinate")
    return arr


def cloud_metrics(
    pred_points,
    gt_points,
    pred_normals: np.ndarray | None = None,
    gt_normals: np.ndarray | None = None,
    workers: int = -1,
    threshold: float = 0.05,
) -> PointCloudMetrics:
    """Acc / Comp / NC, and precision / recall at `threshold` (GT units), of pred_points [n, 3] against
    gt_points [m, 3] (already aligned).

    Normals [n, 3] / [m, 3] are estimated with Open3D defaults when not given."""
    if not threshold > 0:
        raise MetricInputError(f"point metrics: the precision / recall threshold {threshold} must be > 0")
    pred = _checked_cloud("predicted points", pred_points)
    gt = _checked_cloud("ground-truth points", gt_points)
    pn = estimate_normals(pred) if pred_normals is None else as_numpy(pred_normals)
    gn = estimate_normals(gt) if gt_normals is None else as_numpy(gt_normals)
    check_same_shape("predicted points", pred, "predicted normals", pn)
    check_same_shape("ground-truth points", gt, "ground-truth normals", gn)
    dist_acc, nn_gt = cKDTree(gt).query(pred, workers=workers)  # pred -> nearest GT
    dist_comp, nn_pred = cKDTree(pred).query(gt, workers=workers)  # GT -> nearest pred
    nc1 = np.abs(np.sum(gn[nn_gt] * pn, axis=-1))
    nc2 = np.abs(np.sum(gn * pn[nn_pred], axis=-1))
    return PointCloudMetrics(
        acc=float(np.mean(dist_acc)),
        acc_med=float(np.median(dist_acc)),
        comp=float(np.mean(dist_comp)),
        comp_med=float(np.median(dist_comp)),
        nc1=float(np.mean(nc1)),
        nc1_med=float(np.median(nc1)),
        nc2=float(np.mean(nc2)),
        nc2_med=float(np.median(nc2)),
        precision=float(np.mean(dist_acc < threshold)),
        recall=float(np.mean(dist_comp < threshold)),
        threshold=float(threshold),
    )


@dataclass
class PointMapResult:
    """Metrics of one scene plus the record of how the prediction was aligned.

    pred_points / gt_points: the final scored clouds [n, 3] (pixel-aligned rows)."""

    metrics: PointCloudMetrics
    alignment: str
    pred_points: np.ndarray
    gt_points: np.ndarray
    sim3: Sim3 | None = None
    median: MedianScaleShift | None = None
    icp: ICPResult | None = None
    num_valid: int = 0


def center_crop_mask(shape_shw: tuple[int, int, int], crop: int) -> np.ndarray:
    """[S, H, W] bool: True in the central crop x crop window of every view (CUT3R: 224 px).

    A crop larger than the image is refused: the reference slices [c - crop/2 : c + crop/2] with a negative start
    that Python wraps, so on a 112 px image a 224 crop keeps only the bottom-right corner quarter, and clamping
    to the image instead would keep all of it; neither is the protocol, so the caller must choose a crop that
    fits (or none)."""
    S, H, W = shape_shw
    if crop > H or crop > W:
        raise MetricInputError(
            f"center_crop={crop} px is larger than the {H}x{W} image (the reference's slicing would wrap to a "
            "corner); use a crop <= the image size or center_crop=None"
        )
    m = np.zeros(shape_shw, dtype=bool)
    cy, cx = H // 2, W // 2
    half = crop // 2
    m[:, max(cy - half, 0) : cy + half, max(cx - half, 0) : cx + half] = True
    return m


def evaluate_point_maps(
    pred_pts,
    gt_pts,
    valid,
    alignment: PointAlignment = "umeyama_icp",
    icp_threshold: float = 0.1,
    max_points: int | None = None,
    center_crop: int | None = None,
    seed: int = 0,
    pred_first_cam_w2c: np.ndarray | None = None,
    gt_first_cam_w2c: np.ndarray | None = None,
    fscore_threshold: float = 0.05,
) -> PointMapResult:
    """Align a predicted point map to GT, then score it.

    Args:
        pred_pts, gt_pts: [S, H, W, 3] pixel-aligned world points (pred in any frame / scale).
        valid: [S, H, W] bool GT validity; only these pixels are aligned and scored.
        alignment: "umeyama_icp" (Pi3 eval: Sim(3) on valid pixels, then ICP), "umeyama" (VGGT paper),
            "median_scale_shift_icp" (CUT3R / QuantVGGT; needs both first-camera extrinsics),
            "median_scale_shift", "icp" (rigid ICP only) or "none".
        icp_threshold: ICP max correspondence distance in GT units (0.1 m; 100 for DTU's mm).
        max_points: if set, score a seeded random subset of at most this many valid pixels (same pixels for
            pred and GT) after the global alignment, before ICP; keeps big scenes fast.
        center_crop: keep only the central crop x crop pixels of each view after the global alignment; a crop
            larger than the image raises MetricInputError (see center_crop_mask).
        pred_first_cam_w2c, gt_first_cam_w2c: [3, 4] or [4, 4] OpenCV camera-from-world of view 0 of the
            prediction / GT, for the median protocols (which work in the first camera's frame).
        fscore_threshold: distance (GT units) for precision / recall / F-score.
    """
    if alignment not in POINT_ALIGNMENTS:
        raise MetricInputError(
            f"unknown point alignment '{alignment}' (known: {', '.join(POINT_ALIGNMENTS)})"
        )
    pred = as_numpy(pred_pts)
    gt = as_numpy(gt_pts)
    valid = as_numpy(valid, dtype=bool)
    check_shape("predicted point map", pred, (-1, -1, -1, 3))
    check_same_shape("predicted point map", pred, "ground-truth point map", gt)
    check_same_shape("ground-truth point map [..., :3]", gt[..., 0], "valid mask", valid)
    valid = valid & np.isfinite(gt).all(-1)
    if not valid.any():
        raise MetricInputError("point-map metrics: the ground truth has no valid pixels (empty cloud)")
    check_finite("predicted point map (valid pixels)", pred[valid], "coordinate")

    sim3 = median = icp = None
    if alignment.startswith("umeyama"):
        sim3 = umeyama_sim3(pred[valid], gt[valid])
        pred = sim3.apply(pred)
    elif alignment.startswith("median_scale_shift"):
        if pred_first_cam_w2c is None or gt_first_cam_w2c is None:
            raise MetricInputError(
                f"point alignment '{alignment}' needs the first camera of prediction and GT"
            )
        pw, gw = _homog(pred_first_cam_w2c), _homog(gt_first_cam_w2c)
        pred_c, gt_c, median = median_scale_shift(apply_rigid(pw, pred), apply_rigid(gw, gt), valid)
        gt_c2w = np.linalg.inv(gw)  # both clouds back into the GT world frame
        pred, gt = apply_rigid(gt_c2w, pred_c), apply_rigid(gt_c2w, gt_c)

    keep = valid
    if center_crop is not None:
        keep = keep & center_crop_mask(valid.shape, center_crop)
    idx = np.flatnonzero(keep.reshape(-1))
    if idx.size == 0:
        raise MetricInputError("point-map metrics: no valid pixels left after the centre crop (empty cloud)")
    num_valid = int(idx.size)
    if max_points is not None and idx.size > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=max_points, replace=False))
    pred_v = pred.reshape(-1, 3)[idx]
    gt_v = gt.reshape(-1, 3)[idx]

    if alignment.endswith("icp"):
        icp = icp_point_to_point(pred_v, gt_v, threshold=icp_threshold)
        pred_v = apply_rigid(icp.transformation, pred_v)
    return PointMapResult(
        metrics=cloud_metrics(pred_v, gt_v, threshold=fscore_threshold),
        alignment=alignment,
        pred_points=pred_v,
        gt_points=gt_v,
        sim3=sim3,
        median=median,
        icp=icp,
        num_valid=num_valid,
    )


def _homog(T) -> np.ndarray:
    T = as_numpy(T)
    if T.shape == (4, 4):
        return T
    if T.shape != (3, 4):
        raise MetricInputError(f"camera extrinsics: expected [3, 4] or [4, 4], got {list(T.shape)}")
    out = np.eye(4)
    out[:3] = T
    return out
