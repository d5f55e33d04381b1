"""Depth metrics: reference goldens for median / scale / scale&shift / metric, weighted aggregate, known values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from metrics_testutil import load_golden

from ptq3d.metrics import MetricInputError, aggregate, depth_metrics
from ptq3d.metrics.depth import REFERENCE_KEYS

# tolerances from the golden README: median / metric ~1e-6 relative, IRLS scale ~1e-5; scale&shift uses
# torch Adam with the reference settings, so it is held to 1e-5 too (measured: <= 1e-7).
RTOL = {"median": 1e-6, "metric": 1e-6, "scale": 1e-5, "scale&shift": 1e-5}


@pytest.fixture(scope="module")
def golden():
    return load_golden("metrics_depth")


def _run(arrays, case, mode):
    k, kw = case["case"], case["kwargs"]
    return depth_metrics(
        arrays[f"case{k}.pred_depth"],
        arrays[f"case{k}.gt_depth"],
        alignment=mode,
        max_depth=kw["max_depth"],
        post_clip_max=kw.get("post_clip_max"),
        custom_mask=arrays[f"case{k}.custom_mask"] if kw["custom_mask"] else None,
    )


@pytest.mark.parametrize("mode", ["median", "scale", "scale&shift", "metric"])
def test_depth_evaluation_matches_golden(golden, mode):
    arrays, meta = golden
    for case in meta["cases"]:
        ref = case["results"][mode]
        r = _run(arrays, case, mode)
        n = ref["metrics"]["valid_pixels"]
        assert r.metrics["valid_pixels"] == n
        for ours, theirs in REFERENCE_KEYS.items():
            # delta metrics are pixel counts: allow one pixel flipping under float differences
            tol = dict(abs=1.0 / n) if ours.startswith("delta") else dict(rel=RTOL[mode], abs=1e-12)
            assert r.metrics[ours] == pytest.approx(ref["metrics"][theirs], **tol), (case["case"], ours)
        if mode != "metric":
            assert r.scale == pytest.approx(ref["scale_s"], rel=RTOL[mode])
        if mode == "scale&shift":
            assert r.shift == pytest.approx(ref["shift_t"], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("mode", ["median", "scale"])
def test_aligned_prediction_matches_golden(golden, mode):
    arrays, meta = golden
    for case in meta["cases"]:
        k = case["case"]
        gt = arrays[f"case{k}.gt_depth"]
        mask = gt > 0
        if case["kwargs"]["max_depth"] is not None:
            mask &= gt < case["kwargs"]["max_depth"]
        r = _run(arrays, case, mode)
        np.testing.assert_allclose(
            r.aligned.numpy(), arrays[f"case{k}.{mode}.aligned_pred_full"][mask], rtol=1e-6
        )


@pytest.mark.parametrize("mode", ["median", "scale", "scale&shift", "metric"])
def test_weighted_aggregate_matches_golden(golden, mode):
    arrays, meta = golden
    per_scene = []
    for case in meta["cases"]:
        r = _run(arrays, case, mode)
        per_scene.append({f"depth.{k}": v for k, v in r.metrics.items()})
    agg = aggregate(per_scene)
    ref = meta["aggregate_weighted_by_valid_pixels"][mode]
    total = sum(s["depth.valid_pixels"] for s in per_scene)
    for ours, theirs in REFERENCE_KEYS.items():
        if ours == "valid_pixels":
            assert agg["depth.valid_pixels"][0] == total
            continue
        tol = dict(abs=1.0 / total * len(per_scene)) if ours.startswith("delta") else dict(rel=RTOL[mode])
        assert agg[f"depth.{ours}"][0] == pytest.approx(ref[theirs], **tol), ours


@pytest.mark.parametrize("mode", ["median", "scale", "scale&shift", "metric"])
def test_ground_truth_as_prediction_is_perfect(mode):
    gt = torch.rand(2, 8, 10, generator=torch.Generator().manual_seed(0)) * 5 + 0.5
    gt[0, 0, :3] = 0  # invalid pixels
    r = depth_metrics(gt.clone(), gt, alignment=mode)
    # the fitted alignments (IRLS scale, Adam scale&shift) land on 1 (and 0) to float32 rounding, not exactly
    assert r.metrics["abs_rel"] < 1e-6 and r.metrics["rmse"] < 1e-5
    assert r.metrics["delta<1.25"] == 1 and r.metrics["delta<1"] == 0
    assert r.metrics["valid_pixels"] == 2 * 8 * 10 - 3


def test_known_scale_error():
    gt = torch.rand(3, 6, 7) * 4 + 1
    r = depth_metrics(1.5 * gt, gt, alignment="metric")
    assert r.metrics["abs_rel"] == pytest.approx(0.5)
    assert r.metrics["log_rmse"] == pytest.approx(np.log(1.5), rel=1e-6)
    # ratio 1.5 lies between 1.25 and 1.25^2
    assert r.metrics["delta<1.25"] == 0 and r.metrics["delta<1.25^2"] == 1.0
    for mode in ("median", "scale"):
        assert depth_metrics(1.5 * gt, gt, alignment=mode).metrics["abs_rel"] < 1e-6


def test_median_is_the_lower_middle_value_and_max_depth_masks():
    gt = torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0])
    pred = torch.ones(5)
    r = depth_metrics(pred, gt, alignment="median", max_depth=50)
    assert r.scale == 2.0  # torch.median of [1, 2, 3, 4] is 2 (lower middle), not 2.5
    assert r.metrics["valid_pixels"] == 4


def test_post_clip_and_custom_mask():
    gt = torch.tensor([1.0, 2.0, 3.0, 4.0])
    pred = torch.tensor([1.0, 2.0, 3.0, 10.0])
    r = depth_metrics(pred, gt, alignment="metric", post_clip_max=4.0)
    assert r.metrics["abs_rel"] == 0.0
    r = depth_metrics(pred, gt, alignment="metric", custom_mask=torch.tensor([True, True, True, False]))
    assert r.metrics["abs_rel"] == 0.0 and r.metrics["valid_pixels"] == 3


def test_bad_inputs():
    gt = torch.rand(2, 4, 5) + 1
    with pytest.raises(MetricInputError, match="shape mismatch"):
        depth_metrics(gt[:, :3], gt)
    with pytest.raises(MetricInputError, match="no valid pixels"):
        depth_metrics(gt, torch.zeros_like(gt))
    bad = gt.clone()
    bad[1, 2, 3] = float("nan")
    with pytest.raises(MetricInputError, match="non-finite"):
        depth_metrics(bad, gt)
    with pytest.raises(MetricInputError, match="unknown depth alignment 'lstsq'"):
        depth_metrics(gt, gt, alignment="lstsq")
