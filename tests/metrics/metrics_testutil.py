"""Helpers for the metric tests: the reference goldens (shared/reference) and a small synthetic scene."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ptq3d.datasets.base import SceneSample
from ptq3d.metrics.evaluate import unproject_depth
from ptq3d.models.base import Predictions

REFERENCE_DIR = Path(
    os.environ.get("PTQ3D_REFERENCE", Path(__file__).resolve().parents[3] / "shared" / "reference")
)


def load_golden(stem: str) -> tuple[dict[str, np.ndarray], dict]:
    """(npz arrays, JSON sidecar) of metrics golden `stem`. A missing golden fails the test (never a skip):
    conformance must be proven on every run."""
    npz, js = REFERENCE_DIR / f"{stem}.npz", REFERENCE_DIR / f"{stem}.json"
    if not npz.exists() or not js.exists():
        pytest.fail(
            f"reference golden {npz} not found (set PTQ3D_REFERENCE to shared/reference)", pytrace=False
        )
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads(js.read_text())


def look_at_w2c(centre: np.ndarray, target: np.ndarray) -> np.ndarray:
    """OpenCV camera-from-world [3, 4] of a camera at `centre` looking at `target` (y roughly down)."""
    z = target - centre
    z = z / np.linalg.norm(z)
    x = np.cross(np.array([0.0, -1.0, 0.0]), z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])  # rows: camera axes in world coordinates
    return np.concatenate([R, (-R @ centre)[:, None]], axis=1)


def make_scene(num_frames: int = 4, H: int = 24, W: int = 32, seed: int = 0) -> SceneSample:
    """Cameras on an arc looking at a wavy surface; depth [S, H, W] > 0 with a few invalid pixels."""
    rng = np.random.default_rng(seed)
    ext = []
    for k in range(num_frames):
        a = np.radians(-20 + 40 * k / max(num_frames - 1, 1))
        centre = np.array([3 * np.sin(a), 0.2 * k, -3 * np.cos(a)])
        ext.append(look_at_w2c(centre, np.zeros(3)))
    f = 30.0
    K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])
    v, u = np.meshgrid(np.linspace(0, 1, H), np.linspace(0, 1, W), indexing="ij")
    depth = np.stack([2.5 + 0.3 * np.sin(4 * u + k) + 0.2 * np.cos(3 * v) for k in range(num_frames)])
    depth = depth + rng.uniform(0, 0.01, depth.shape)
    valid = np.ones_like(depth, dtype=bool)
    valid[:, :2, :3] = False
    depth[~valid] = 0.0
    return SceneSample(
        images=torch.rand(num_frames, 3, H, W, generator=torch.Generator().manual_seed(seed)),
        depth=torch.tensor(depth, dtype=torch.float32),
        valid_mask=torch.tensor(valid),
        intrinsics=torch.tensor(np.stack([K] * num_frames), dtype=torch.float32),
        extrinsics=torch.tensor(np.stack(ext), dtype=torch.float32),
        meta={"dataset": "synthetic", "scene": f"s{seed}"},
    )


def predictions_from_gt(sample: SceneSample) -> Predictions:
    """A perfect prediction (batch dim 1): GT depth, cameras, and GT depth unprojected as world points."""
    pts = unproject_depth(sample.depth, sample.intrinsics, sample.extrinsics).float()
    S, H, W = sample.depth.shape
    return Predictions(
        depth=sample.depth[None].clone(),
        depth_conf=torch.ones(1, S, H, W),
        world_points=pts[None],
        points_conf=torch.ones(1, S, H, W),
        extrinsics=sample.extrinsics[None].clone(),
        intrinsics=sample.intrinsics[None].clone(),
    )
