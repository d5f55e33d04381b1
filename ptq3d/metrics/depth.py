"""Depth metrics (AbsRel, delta < 1.25, ...) with the reference per-sequence alignments.

Semantics of Pi3 evaluation `utils/depth.py::depth_evaluation` (from CUT3R `eval/monodepth/tools.py`),
computed in torch float32 like the reference so that results agree to float rounding:
- valid = gt > 0 (and gt < max_depth when given); ONE alignment is solved over all valid pixels of all frames.
- alignment "median": s = median(gt) / median(pred), torch.median (the LOWER middle value for even counts);
  "scale": IRLS (Weiszfeld) L1 scale, s0 = mean(gt) / mean(pred), 10 reweightings, s >= 1e-3;
  "scale&shift": L1 fit of s, t with torch Adam (lr 1e-4 by default, <= 1000 steps, stop when the loss changes
  < 1e-6, tested after each step as the reference does), s0 = median ratio, t0 = 0; "metric": none. The
  reference function takes the learning rate as an argument (`lr`), so a protocol can set it per dataset
  (AlignmentPolicy.depth_lr).
- post_clip_min / post_clip_max clamp the aligned prediction; custom_mask [same shape as gt] then restricts
  the scored pixels (it does not affect the alignment).
- Abs Rel = mean |p - g| / g; Sq Rel = mean (p - g)^2 / g; RMSE; Log RMSE (p clamped >= 1e-5);
  delta < 1.25^k = mean(max(p / g, g / p) < 1.25^k) for k = 0 (1.), 1, 2, 3; valid_pixels = scored count.
Over a dataset the reference averages sequences weighted by valid_pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ptq3d.metrics.validation import MetricInputError, check_same_shape

DepthAlignment = Literal["median", "scale", "scale&shift", "metric"]
DEPTH_ALIGNMENTS: tuple[str, ...] = ("median", "scale", "scale&shift", "metric")

# our metric key -> the key in the reference's returned dict
REFERENCE_KEYS: dict[str, str] = {
    "abs_rel": "Abs Rel",
    "sq_rel": "Sq Rel",
    "rmse": "RMSE",
    "log_rmse": "Log RMSE",
    "delta<1": "δ < 1.",
    "delta<1.25": "δ < 1.25",
    "delta<1.25^2": "δ < 1.25^2",
    "delta<1.25^3": "δ < 1.25^3",
    "valid_pixels": "valid_pixels",
}


@dataclass
class DepthResult:
    """metrics: our keys (see REFERENCE_KEYS) -> value; scale / shift: the fitted alignment (1, 0 for metric);
    aligned: [N] the aligned prediction at the (alignment-)valid pixels, float32; fit_steps: Adam steps of the
    scale&shift fit (0 for the other alignments)."""

    metrics: dict[str, float]
    alignment: str
    scale: float
    shift: float
    aligned: torch.Tensor
    fit_steps: int = 0


def _to_tensor(x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    return x.detach().cpu().to(torch.float32)


def scale_irls(pred: torch.Tensor, gt: torch.Tensor, iters: int = 10) -> torch.Tensor:
    """L1-optimal scale by iteratively reweighted least squares; pred, gt [N] float32 -> scalar tensor."""
    s = torch.nanmean(gt) / torch.nanmean(pred)
    for _ in range(iters):
        w = 1.0 / ((s * pred - gt).abs() + 1e-8)
        s = torch.sum(w * pred * gt) / torch.sum(w * pred**2)
    return s.clamp(min=1e-3)


@dataclass(frozen=True)
class ScaleShiftFit:
    """scale, shift: the fitted s, t; steps: optimiser steps taken (max_iters when it never converged)."""

    scale: float
    shift: float
    steps: int


def scale_shift_l1_adam(
    pred: torch.Tensor,
    gt: torch.Tensor,
    s_init: float,
    lr: float = 1e-4,
    max_iters: int = 1000,
    tol: float = 1e-6,
) -> ScaleShiftFit:
    """L1 (LAD) fit of gt ~ s pred + t with torch Adam, as the reference (`absolute_value_scaling2`).

    Each iteration computes the loss at the current (s, t), steps, and only then tests convergence: it stops
    when that loss differs from the previous iteration's by < tol. So the step of the converging iteration is
    taken, and a fit that converges at iteration i has taken i + 1 steps (the test runs AFTER the step)."""
    s = torch.tensor([s_init], dtype=pred.dtype, requires_grad=True)
    t = torch.tensor([0.0], dtype=pred.dtype, requires_grad=True)
    opt = torch.optim.Adam([s, t], lr=lr)
    prev = None
    steps = 0
    with torch.enable_grad():
        for _ in range(max_iters):
            opt.zero_grad()
            loss = torch.sum(torch.abs(s * pred + t - gt))
            loss.backward()
            opt.step()
            steps += 1
            if prev is not None and torch.abs(prev - loss) < tol:
                break
            prev = loss.item()
    return ScaleShiftFit(s.detach().item(), t.detach().item(), steps)


def depth_metrics(
    pred_depth,
    gt_depth,
    alignment: DepthAlignment = "median",
    max_depth: float | None = None,
    custom_mask=None,
    post_clip_min: float | None = None,
    post_clip_max: float | None = None,
    lr: float = 1e-4,
    max_iters: int = 1000,
) -> DepthResult:
    """Score a predicted depth sequence against GT after one per-sequence alignment.

    Args:
        pred_depth, gt_depth: same shape, e.g. [S, H, W] (numpy or torch; computed in float32). gt 0 = invalid.
        alignment: "median" | "scale" | "scale&shift" | "metric".
        max_depth: GT beyond this is invalid (the reference function's own default is 80; the video-depth
            scripts pass 70 for Sintel / Bonn and None for KITTI / NYU).
        custom_mask: bool, same shape; restricts the scored pixels after alignment.
        post_clip_min, post_clip_max: clamp the aligned prediction.
    Returns:
        DepthResult (metrics keyed as in REFERENCE_KEYS).
    """
    if alignment not in DEPTH_ALIGNMENTS:
        raise MetricInputError(
            f"unknown depth alignment '{alignment}' (known: {', '.join(DEPTH_ALIGNMENTS)})"
        )
    pred_full, gt_full = _to_tensor(pred_depth), _to_tensor(gt_depth)
    check_same_shape("predicted depth", pred_full, "ground-truth depth", gt_full)
    mask = gt_full > 0
    if max_depth is not None:
        mask &= gt_full < max_depth
    if not bool(mask.any()):
        raise MetricInputError(
            "depth metrics: the ground truth has no valid pixels (all <= 0 or >= max_depth)"
        )
    pred, gt = pred_full[mask], gt_full[mask]
    if not bool(torch.isfinite(pred).all()):
        bad = int((~torch.isfinite(pred)).sum())
        raise MetricInputError(f"predicted depth: {bad} non-finite values at valid ground-truth pixels")

    s, t, steps = 1.0, 0.0, 0
    if alignment == "median":
        st = torch.median(gt) / torch.median(pred)
        pred = pred * st
        s = st.item()
    elif alignment == "scale":
        st = scale_irls(pred, gt)
        pred = st * pred
        s = st.item()
    elif alignment == "scale&shift":
        s_init = (torch.median(gt) / torch.median(pred)).item()
        fit = scale_shift_l1_adam(pred, gt, s_init, lr=lr, max_iters=max_iters)
        s, t, steps = fit.scale, fit.shift, fit.steps
        pred = s * pred + t
    aligned = pred

    if post_clip_min is not None:
        pred = torch.clamp(pred, min=post_clip_min)
    if post_clip_max is not None:
        pred = torch.clamp(pred, max=post_clip_max)
    if custom_mask is not None:
        cm = (
            _to_tensor(custom_mask).bool()
            if not isinstance(custom_mask, torch.Tensor)
            else custom_mask.bool()
        )
        check_same_shape("custom_mask", cm, "ground-truth depth", gt_full)
        keep = cm.cpu()[mask]
        pred, gt = pred[keep], gt[keep]
    if pred.numel() == 0:
        raise MetricInputError("depth metrics: no pixels left to score after custom_mask")

    diff = pred - gt
    metrics = {
        "abs_rel": torch.mean(torch.abs(diff) / gt).item(),
        "sq_rel": torch.mean(diff**2 / gt).item(),
        "rmse": torch.sqrt(torch.mean(diff**2)).item(),
    }
    pred = torch.clamp(pred, min=1e-5)
    metrics["log_rmse"] = torch.sqrt(torch.mean((torch.log(pred) - torch.log(gt)) ** 2)).item()
    ratio = torch.maximum(pred / gt, gt / pred)
    for key, thr in (
        ("delta<1", 1.0),
        ("delta<1.25", 1.25),
        ("delta<1.25^2", 1.25**2),
        ("delta<1.25^3", 1.25**3),
    ):
        metrics[key] = torch.mean((ratio < thr).float()).item()
    metrics["valid_pixels"] = float(pred.shape[0])
    return DepthResult(
        metrics=metrics, alignment=alignment, scale=float(s), shift=float(t), aligned=aligned, fit_steps=steps
    )


def depth_metrics_per_frame(
    pred_depth,
    gt_depth,
    alignment: DepthAlignment = "scale",
    max_depth: float | None = None,
    post_clip_max: float | None = None,
    lr: float = 1e-4,
    max_iters: int = 1000,
) -> DepthResult:
    """Monocular depth: each frame aligned on its own (Pi3 / CUT3R `monodepth/eval.py`), then the per-frame
    metrics averaged with weights = their valid pixels (the reference's np.average(..., weights=valid_pixels)).

    Args:
        pred_depth, gt_depth: [S, H, W] (numpy or torch); gt 0 = invalid.
        alignment: per-frame alignment ("scale" = IRLS, Pi3's monodepth config; "median" = the reference
            function's fallback branch; "scale&shift"; "metric").
    Returns:
        DepthResult whose metrics are the valid-pixel-weighted frame means and valid_pixels their sum; scale /
        shift are NaN (there is one per frame) and aligned is the concatenation of the frames' aligned pixels.
    Frames without a valid GT pixel weigh 0 in the reference and are skipped here; none at all is an error.
    """
    pred_full, gt_full = _to_tensor(pred_depth), _to_tensor(gt_depth)
    check_same_shape("predicted depth", pred_full, "ground-truth depth", gt_full)
    if gt_full.dim() != 3:
        raise MetricInputError(f"per-frame depth metrics: expected [S, H, W], got {list(gt_full.shape)}")
    frames = []
    for i in range(gt_full.shape[0]):
        valid = gt_full[i] > 0
        if max_depth is not None:
            valid &= gt_full[i] < max_depth
        if bool(valid.any()):
            frames.append(
                depth_metrics(
                    pred_full[i], gt_full[i], alignment, max_depth, post_clip_max=post_clip_max, lr=lr,
                    max_iters=max_iters,
                )
            )  # fmt: skip
    if not frames:
        raise MetricInputError(
            "per-frame depth metrics: no frame has a valid ground-truth pixel (all <= 0 or >= max_depth)"
        )
    w = np.array([f.metrics["valid_pixels"] for f in frames], dtype=np.float64)
    metrics = {
        k: float(np.average([f.metrics[k] for f in frames], weights=w))
        for k in REFERENCE_KEYS
        if k != "valid_pixels"
    }
    metrics["valid_pixels"] = float(w.sum())
    return DepthResult(
        metrics=metrics,
        alignment=f"per-frame {alignment}",
        scale=float("nan"),
        shift=float("nan"),
        aligned=torch.cat([f.aligned for f in frames]),
        fit_steps=sum(f.fit_steps for f in frames),
    )
