"""Score one predicted scene against its ground truth, and aggregate per-scene scores over a dataset.

Conventions: Predictions / SceneSample extrinsics are OpenCV camera-from-world [S, 3, 4]; intrinsics are
pixels with pixel centres at +0.5 (a pixel (u, v) of integer index looks along K^-1 [u + 0.5, v + 0.5, 1]);
depth 0 = invalid. Predictions may carry a batch dimension of 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ptq3d.datasets.base import SceneSample
from ptq3d.metrics.depth import depth_metrics, depth_metrics_per_frame
from ptq3d.metrics.pointmap import evaluate_point_maps
from ptq3d.metrics.policy import AlignmentPolicy
from ptq3d.metrics.pose import inverse_se3, relative_pose_errors, to_homogeneous
from ptq3d.metrics.registry import MetricSpec, get_metric, list_metrics
from ptq3d.metrics.validation import MetricInputError, as_numpy
from ptq3d.models.base import Predictions

DEFAULT_TASKS: tuple[str, ...] = ("pose", "depth", "points")

TaskFn = Callable[[dict[str, torch.Tensor | None], SceneSample, AlignmentPolicy], Any]
_TASKS: dict[str, TaskFn] = {}


def register_task(name: str, fn: TaskFn) -> None:
    """fn(pred_scene, sample, policy) -> the result object the task's MetricSpec.fn read.
    pred_scene: Predictions tensors without the batch dim ("depth" [S,H,W], "world_points" [S,H,W,3],
    "extrinsics" [S,3,4], "intrinsics" [S,3,3] or None, ...)."""
    _TASKS[name] = fn


# --- geometry helpers ------------------------------------------------------------------------------------
def unproject_depth(
    depth: torch.Tensor, intrinsics: torch.Tensor, extrinsics: torch.Tensor, pixel_offset: float = 0.5
) -> torch.Tensor:
    """depth [S, H, W], intrinsics [S, 3, 3], extrinsics [S, 3, 4] camera-from-world -> world points
    [S, H, W, 3] (float64). Pixel (row i, column j) looks along K^-1 [j + pixel_offset, i + pixel_offset, 1]:
    0.5 = ptq3d's pixel-centre convention, 0.0 = the reference loaders' integer pixel coordinates."""
    d = depth.double()
    S, H, W = d.shape
    K = intrinsics.double()
    v, u = torch.meshgrid(
        torch.arange(H, dtype=torch.float64) + pixel_offset,
        torch.arange(W, dtype=torch.float64) + pixel_offset,
        indexing="ij",
    )
    fx, fy = K[:, 0, 0, None, None], K[:, 1, 1, None, None]
    cx, cy = K[:, 0, 2, None, None], K[:, 1, 2, None, None]
    cam = torch.stack([(u - cx) / fx * d, (v - cy) / fy * d, d], dim=-1)  # [S, H, W, 3]
    E = extrinsics.double()
    R, t = E[:, :3, :3], E[:, :3, 3]
    # X_world = R^T (X_cam - t)
    return torch.einsum("sji,shwj->shwi", R, cam - t[:, None, None, :])


def _resize_points(pts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[S, h, w, 3] -> [S, H, W, 3], bilinear with antialias (Pi3 mv_recon/eval.py)."""
    x = pts.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x.permute(0, 2, 3, 1)


def _resize_depth(depth: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[S, h, w] -> [S, H, W], bicubic (Pi3 video-depth eval)."""
    return F.interpolate(depth[:, None].float(), size=size, mode="bicubic", align_corners=False)[:, 0]


# --- the tasks -------------------------------------------------------------------------------------------
def _pose_task(pred: dict, sample: SceneSample, policy: AlignmentPolicy):
    return relative_pose_errors(pred["extrinsics"], sample.extrinsics, policy.pose_convention)


def _gt_depth(sample: SceneSample) -> torch.Tensor:
    # invalid GT pixels (valid_mask False) are zeroed so they take part in neither alignment nor scoring
    return torch.where(sample.valid_mask.bool(), sample.depth.float(), torch.zeros((), dtype=torch.float32))


def _depth_task(pred: dict, sample: SceneSample, policy: AlignmentPolicy):
    gt = _gt_depth(sample)
    d = pred["depth"]
    if d is None:
        raise MetricInputError("depth metrics: the prediction has no depth")
    if d.shape[0] != gt.shape[0]:
        raise MetricInputError(
            f"shape mismatch: predicted depth {list(d.shape)} vs ground-truth depth {list(gt.shape)}"
        )
    if tuple(d.shape[-2:]) != tuple(gt.shape[-2:]):
        d = _resize_depth(d, tuple(gt.shape[-2:]))
    return depth_metrics(
        d,
        gt,
        alignment=policy.depth,
        max_depth=policy.max_depth,
        post_clip_max=policy.post_clip_max,
        lr=policy.depth_lr,
    )


def _mono_depth_task(pred: dict, sample: SceneSample, policy: AlignmentPolicy):
    gt = _gt_depth(sample)
    d = pred["depth"]
    if d is None:
        raise MetricInputError("monocular depth metrics: the prediction has no depth")
    if d.shape[0] != gt.shape[0]:
        raise MetricInputError(
            f"shape mismatch: predicted depth {list(d.shape)} vs ground-truth depth {list(gt.shape)}"
        )
    if tuple(d.shape[-2:]) != tuple(gt.shape[-2:]):
        d = _resize_depth(d, tuple(gt.shape[-2:]))
    return depth_metrics_per_frame(
        d,
        gt,
        alignment=policy.mono_depth,
        max_depth=policy.max_depth,
        post_clip_max=policy.post_clip_max,
        lr=policy.depth_lr,
    )


PIXEL_OFFSETS = {"half": 0.5, "integer": 0.0}


def _gt_points(sample: SceneSample, policy: AlignmentPolicy) -> tuple[torch.Tensor, torch.Tensor]:
    valid = sample.valid_mask.bool()
    if sample.points is not None:
        pts = sample.points.double()
    else:
        offset = PIXEL_OFFSETS[policy.gt_pixel_centers]
        pts = unproject_depth(sample.depth, sample.intrinsics, sample.extrinsics, offset)
        valid = valid & (sample.depth > 0)
    return pts, valid & torch.isfinite(pts).all(-1)


def _pred_points(pred: dict, policy: AlignmentPolicy) -> torch.Tensor:
    if policy.point_source == "world_points":
        if pred["world_points"] is None:
            raise MetricInputError("point metrics: the prediction has no world_points")
        return pred["world_points"]
    if pred["intrinsics"] is None:
        raise MetricInputError(
            "point_source 'depth_unproject' needs predicted intrinsics, and this model predicts none "
            "(use point_source 'world_points'; Pi3's world points are its unprojected local points)"
        )
    return unproject_depth(pred["depth"], pred["intrinsics"], pred["extrinsics"])


def _points_task(pred: dict, sample: SceneSample, policy: AlignmentPolicy):
    gt, valid = _gt_points(sample, policy)
    pp = _pred_points(pred, policy)
    if pp.shape[0] != gt.shape[0]:
        raise MetricInputError(
            f"shape mismatch: predicted points {list(pp.shape)} vs ground-truth points {list(gt.shape)}"
        )
    if tuple(pp.shape[1:3]) != tuple(gt.shape[1:3]):
        pp = _resize_points(pp, tuple(gt.shape[1:3]))
    return evaluate_point_maps(
        pp,
        gt,
        valid,
        alignment=policy.points,
        icp_threshold=policy.icp_threshold,
        max_points=policy.max_points,
        center_crop=policy.center_crop,
        seed=policy.seed,
        pred_first_cam_w2c=pred["extrinsics"][0] if pred["extrinsics"] is not None else None,
        gt_first_cam_w2c=sample.extrinsics[0],
        fscore_threshold=policy.fscore_threshold,
    )


def _trajectory_task(pred: dict, sample: SceneSample, policy: AlignmentPolicy):
    from ptq3d.metrics.trajectory import trajectory_metrics

    pred_c2w = inverse_se3(to_homogeneous(as_numpy(pred["extrinsics"])))
    gt_c2w = inverse_se3(to_homogeneous(as_numpy(sample.extrinsics)))
    return trajectory_metrics(pred_c2w, gt_c2w)


register_task("pose", _pose_task)
register_task("depth", _depth_task)
register_task("depth_mono", _mono_depth_task)
register_task("points", _points_task)
register_task("trajectory", _trajectory_task)


# --- public API ------------------------------------------------------------------------------------------
def _scene_prediction(pred: Predictions, num_frames: int) -> dict[str, torch.Tensor | None]:
    """Drop a batch dim of 1 and check the frame count."""
    ext = pred.extrinsics
    batched = ext is not None and ext.dim() == 4
    if batched and ext.shape[0] != 1:
        raise MetricInputError(
            f"evaluate_scene scores one scene: predictions have batch size {ext.shape[0]}; slice one scene first"
        )
    out: dict[str, torch.Tensor | None] = {}
    for name in ("depth", "depth_conf", "world_points", "points_conf", "extrinsics", "intrinsics"):
        t = getattr(pred, name)
        if t is not None:
            t = t.detach().cpu()
            if batched:
                t = t[0]
            if t.shape[0] != num_frames:
                raise MetricInputError(
                    f"shape mismatch: predicted {name} has {t.shape[0]} frames ({list(t.shape)}), "
                    f"the scene has {num_frames}"
                )
        out[name] = t
    return out


def _available_tasks(sample: SceneSample) -> list[str]:
    tasks = []
    if sample.num_frames >= 2:
        tasks.append("pose")
    if bool((sample.valid_mask.bool() & (sample.depth > 0)).any()):
        tasks += ["depth", "points"]
    elif sample.points is not None and bool(sample.valid_mask.any()):
        tasks.append("points")
    return tasks


def evaluate_scene(
    pred: Predictions,
    sample: SceneSample,
    metrics: Sequence[str] | None = None,
    alignment: AlignmentPolicy | None = None,
) -> dict[str, float]:
    """Score one predicted scene against its ground truth.

    Args:
        pred: Predictions of this scene (batch dim 1, or none); extrinsics OpenCV camera-from-world.
        sample: the scene's SceneSample.
        metrics: registered metric names (list_metrics()); None = every metric of the pose / depth / points
            tasks the sample has ground truth for (trajectory and per-frame depth.mono.* only on request).
        alignment: the AlignmentPolicy (default AlignmentPolicy()); record policy.to_dict() with the results.
    Returns:
        {metric name: value}, plus the count metrics that pooled / weighted aggregation needs.
    """
    policy = alignment or AlignmentPolicy()
    if metrics is None:
        tasks = set(_available_tasks(sample))
        specs = [get_metric(n) for n in list_metrics() if get_metric(n).task in tasks]
    else:
        specs = [get_metric(n) for n in metrics]
        specs += [get_metric(s.weight_key) for s in specs if s.weight_key]
    scene = _scene_prediction(pred, sample.num_frames)
    out: dict[str, float] = {}
    results: dict[str, Any] = {}
    for spec in specs:
        if spec.name in out:
            continue
        if spec.task not in results:
            if spec.task not in _TASKS:
                raise MetricInputError(
                    f"metric '{spec.name}': no computation registered for task '{spec.task}'"
                )
            results[spec.task] = _TASKS[spec.task](scene, sample, policy)
        out[spec.name] = float(spec.fn(results[spec.task]))
    return out


def scene_groups(samples: Sequence[SceneSample]) -> list[str] | None:
    """The group of every scene for grouped aggregation, or None when the protocol does not group.

    CO3D scenes group by category (meta "category", else the part of meta "scene" before "/"), as VGGT and
    QuantVGGT aggregate pose per category; every other dataset keeps its own aggregation (None)."""
    datasets = {s.meta.get("dataset") for s in samples}
    if datasets != {"co3d"}:
        if "co3d" in datasets:
            raise MetricInputError(
                f"scene_groups: CO3D scenes mixed with {sorted(map(str, datasets - {'co3d'}))}"
            )
        return None
    out = []
    for s in samples:
        cat = s.meta.get("category") or str(s.meta.get("scene", "")).partition("/")[0]
        if not cat:
            raise MetricInputError(
                f"scene_groups: CO3D scene {s.meta.get('scene')!r} has no category in its meta"
            )
        out.append(str(cat))
    return out


def _pooled(x: np.ndarray, w: np.ndarray, name: str, weight_key: str) -> tuple[float, float]:
    """Weighted mean and its ratio-estimator standard error (NaN below 2 items)."""
    if w.sum() <= 0:
        raise MetricInputError(f"aggregate: weights '{weight_key}' of metric '{name}' sum to 0")
    n = x.size
    mean = float(np.sum(w * x) / w.sum())
    se = float(np.sqrt(n / (n - 1) * np.sum(w**2 * (x - mean) ** 2)) / w.sum()) if n > 1 else float("nan")
    return mean, se


def aggregate(
    per_scene: Iterable[dict[str, float]],
    specs: Sequence[MetricSpec | str] | None = None,
    groups: Sequence[str] | None = None,
) -> dict[str, tuple[float, float]]:
    """Combine per-scene results into {name: (value, standard error)} following each spec's aggregation.

    Scenes without a metric are skipped for it. Standard errors: mean -> std(ddof=1) / sqrt(n);
    pooled / weighted -> the ratio-estimator error sqrt(n / (n - 1) * sum w^2 (x - mean)^2) / sum w;
    sum -> 0; NaN when fewer than 2 scenes contribute.
    groups: one label per scene (`scene_groups`; CO3D categories) or None. Specs with grouped=True are then
    pooled within each group (weighted by weight_key: for AUC, a mean over pairs, this equals the AUC of the
    group's concatenated pairs) and averaged over groups with equal weight; their error is over groups.
    """
    scenes = list(per_scene)
    if groups is not None and len(groups) != len(scenes):
        raise MetricInputError(f"aggregate: {len(groups)} group labels for {len(scenes)} scenes")
    if specs is None:
        names = list(dict.fromkeys(k for s in scenes for k in s))
        specs = [get_metric(n) for n in names]
    out: dict[str, tuple[float, float]] = {}
    for spec in specs:
        spec = get_metric(spec) if isinstance(spec, str) else spec
        idx = [i for i, s in enumerate(scenes) if spec.name in s]
        rows = [scenes[i] for i in idx]
        if not rows:
            continue
        x = np.array([s[spec.name] for s in rows], dtype=np.float64)
        n = x.size
        if groups is not None and spec.grouped:
            missing = [i for i, s in zip(idx, rows, strict=True) if spec.weight_key not in s]
            if missing:
                raise MetricInputError(
                    f"aggregate: metric '{spec.name}' needs '{spec.weight_key}' in every scene (missing in scene {missing[0]})"
                )
            w = np.array([s[spec.weight_key] for s in rows], dtype=np.float64)
            labels = [groups[i] for i in idx]
            per_group = np.array(
                [
                    _pooled(
                        x[[k for k, g in enumerate(labels) if g == group]],
                        w[[k for k, g in enumerate(labels) if g == group]],
                        spec.name,
                        spec.weight_key,
                    )[0]
                    for group in dict.fromkeys(labels)
                ]
            )
            g = per_group.size
            se = float(per_group.std(ddof=1) / np.sqrt(g)) if g > 1 else float("nan")
            out[spec.name] = (float(per_group.mean()), se)
        elif spec.aggregation == "sum":
            out[spec.name] = (float(x.sum()), 0.0)
        elif spec.aggregation == "mean":
            se = float(x.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
            out[spec.name] = (float(x.mean()), se)
        else:
            missing = [i for i, s in enumerate(rows) if spec.weight_key not in s]
            if missing:
                raise MetricInputError(
                    f"aggregate: metric '{spec.name}' needs '{spec.weight_key}' in every scene (missing in scene {missing[0]})"
                )
            w = np.array([s[spec.weight_key] for s in rows], dtype=np.float64)
            out[spec.name] = _pooled(x, w, spec.name, spec.weight_key)
    return out
