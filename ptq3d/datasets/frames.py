"""`Frame`: one decoded view as a loader reads it, and `assemble_scene`, which preprocesses frames and stacks
them into a `SceneSample`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ptq3d.datasets.base import SceneSample
from ptq3d.datasets.geometry import unproject_depth
from ptq3d.datasets.preprocess import Preprocess, pad_to, preprocess_view
from ptq3d.errors import DataError


@dataclass
class Frame:
    """image uint8 [H, W, 3]; depth float32 [H, W] metres (0 = invalid); valid bool [H, W];
    K [3, 3] pixels; extrinsic [3, 4] OpenCV camera-from-world (float64); frame_id as the dataset names it."""

    frame_id: str
    image: np.ndarray
    depth: np.ndarray
    valid: np.ndarray
    K: np.ndarray
    extrinsic: np.ndarray


def check_same_size(frame: Frame, what: str, arr: np.ndarray, source: str) -> None:
    if arr.shape[:2] != frame.image.shape[:2]:
        raise DataError(
            f"{source}: {what} is {arr.shape[1]}x{arr.shape[0]} but the image is "
            f"{frame.image.shape[1]}x{frame.image.shape[0]} (W x H)"
        )


def assemble_scene(
    frames: list[Frame], meta: dict[str, Any], preprocess: Preprocess | None = None, with_points: bool = True
) -> SceneSample:
    """Preprocess every frame, pad them to a common size if they differ (as VGGT does), stack into a SceneSample.
    meta gets 'frame_ids', 'num_frames', 'image_size' (H, W), 'original_sizes' and 'preprocess'."""
    if not frames:
        raise DataError(
            f"{meta.get('dataset', 'dataset')} scene '{meta.get('scene', '?')}': no frames to load"
        )
    cfg = preprocess or Preprocess(mode="none")
    views = []
    for f in frames:
        img, dep, val, K = preprocess_view(
            f.image, f.depth.astype(np.float32), f.valid.astype(bool), f.K, cfg
        )
        val = val & (dep > 0) & np.isfinite(dep)
        dep = np.where(val, dep, 0.0).astype(np.float32)
        views.append([img, dep, val, K])
    H = max(v[0].shape[0] for v in views)
    W = max(v[0].shape[1] for v in views)
    views = [list(pad_to(*v, H, W)) for v in views]
    images = np.stack([v[0] for v in views]).astype(np.float32) / 255.0
    depth = np.stack([v[1] for v in views])
    valid = np.stack([v[2] for v in views])
    Ks = np.stack([v[3] for v in views])
    Es = np.stack([np.asarray(f.extrinsic, dtype=np.float64)[:3, :4] for f in frames])
    points = None
    if with_points:
        pts = np.stack([unproject_depth(depth[i], Ks[i], Es[i]) for i in range(len(frames))])
        points = torch.from_numpy(np.where(valid[..., None], pts, 0.0).astype(np.float32))
    meta = dict(meta)
    meta.update(
        frame_ids=[f.frame_id for f in frames],
        num_frames=len(frames),
        image_size=(H, W),
        original_sizes=[tuple(int(s) for s in f.image.shape[:2]) for f in frames],
        preprocess={"mode": cfg.mode, "size": cfg.size, "patch_size": cfg.patch_size},
    )
    return SceneSample(
        images=torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
        depth=torch.from_numpy(depth),
        valid_mask=torch.from_numpy(valid),
        intrinsics=torch.from_numpy(Ks.astype(np.float32)),
        extrinsics=torch.from_numpy(Es.astype(np.float32)),
        points=points,
        meta=meta,
    )


class InvalidFrame(DataError):
    """A frame the dataset itself marks invalid (e.g. an NRGBD pose of nan). `kind` names the condition; a
    protocol may list it as skippable, otherwise it is an error like any other DataError."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


def read_frames(reader, frame_ids: list, skippable: tuple[str, ...] = ()) -> tuple[list[Frame], list[dict]]:
    """Call reader(frame_id) -> Frame for each id; frames raising InvalidFrame of a skippable kind are dropped with
    a warning and reported as {'frame_id', 'kind', 'reason'}."""
    import warnings

    frames, skipped = [], []
    for fid in frame_ids:
        try:
            frames.append(reader(fid))
        except InvalidFrame as exc:
            if exc.kind not in skippable:
                raise
            warnings.warn(f"skipping frame {fid}: {exc}", stacklevel=2)
            skipped.append({"frame_id": str(fid), "kind": exc.kind, "reason": str(exc)})
    return frames, skipped
