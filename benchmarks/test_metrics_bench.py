"""Metric speed (pytest-benchmark). Not in the default test run (testpaths = tests); run with

    .venv/bin/python -m pytest benchmarks/test_metrics_bench.py --benchmark-only

Point-map metrics on two 500k-point clouds must take seconds, not minutes.
"""

from __future__ import annotations

import numpy as np
import pytest

from ptq3d.metrics import cloud_metrics, evaluate_point_maps

N_POINTS = 500_000


def _scene(S: int = 5, H: int = 400, W: int = 250, seed: int = 0):
    """Pixel-aligned GT / predicted maps [S, H, W, 3] (S*H*W = 500k points): wavy surfaces; the prediction is
    noisy (5 mm) and in another similarity frame."""
    rng = np.random.default_rng(seed)
    v, u = np.meshgrid(np.linspace(0, 1, H), np.linspace(0, 1, W), indexing="ij")
    gt = []
    for s in range(S):
        z = 2 + 0.3 * np.sin(3 * u + s) + 0.2 * np.cos(4 * v)
        gt.append(np.stack([(u - 0.5) * z + 0.3 * s, (v - 0.5) * z, z], -1))
    gt = np.stack(gt)
    pred = gt + rng.normal(scale=0.005, size=gt.shape)
    Q = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    pred = 1.7 * pred @ Q.T + np.array([0.3, -0.2, 1.0])
    return pred, gt, np.ones(gt.shape[:3], dtype=bool)


@pytest.fixture(scope="module")
def scene_500k():
    pred, gt, valid = _scene()
    assert valid.sum() == N_POINTS
    return pred, gt, valid


@pytest.mark.benchmark(group="pointmap-500k", min_rounds=1, warmup=False)
def test_bench_pointmap_pipeline_umeyama_icp_500k(benchmark, scene_500k):
    """Full Pi3 protocol: Umeyama Sim(3) + Open3D ICP + normals + Acc/Comp/NC on 500k vs 500k points."""
    pred, gt, valid = scene_500k
    r = benchmark.pedantic(evaluate_point_maps, args=(pred, gt, valid), rounds=1, iterations=1)
    assert r.metrics.acc < 0.01 and r.metrics.comp < 0.01 and r.metrics.nc > 0.9
    assert benchmark.stats.stats.max < 60.0  # "seconds, not minutes"


@pytest.mark.benchmark(group="pointmap-500k", min_rounds=1, warmup=False)
def test_bench_cloud_metrics_500k(benchmark, scene_500k):
    """Acc / Comp / NC only (two cKDTree queries + Open3D normals) on already aligned 500k-point clouds."""
    _, gt, _ = scene_500k
    rng = np.random.default_rng(1)
    g = gt.reshape(-1, 3)
    p = g + rng.normal(scale=0.005, size=g.shape)
    m = benchmark.pedantic(cloud_metrics, args=(p, g), rounds=1, iterations=1)
    assert m.acc < 0.01
    assert benchmark.stats.stats.max < 60.0
