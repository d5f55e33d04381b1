"""SceneSample: one multi-view scene as every loader, the synthetic generator and the metrics see it.

Conventions: extrinsics OpenCV camera-from-world [S, 3, 4]; intrinsics [S, 3, 3] in pixels (pixel centres at
+0.5, so a centred principal point is (W/2, H/2)); depth in metres with 0 = invalid.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class SceneSample:
    """images [S, 3, H, W] float32 in [0, 1]; depth [S, H, W] float32 (0 = invalid); valid_mask [S, H, W] bool;
    intrinsics [S, 3, 3] float32; extrinsics [S, 3, 4] float32 (camera-from-world);
    points [S, H, W, 3] float32 world points or None; meta: dataset, scene, frame_ids, protocol version, ...
    """

    images: torch.Tensor
    depth: torch.Tensor
    valid_mask: torch.Tensor
    intrinsics: torch.Tensor
    extrinsics: torch.Tensor
    points: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[-2]), int(self.images.shape[-1])

    def as_batch(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The images as a batch of one scene, [1, S, 3, H, W] float32, on `device` (None: where they are)."""
        x = self.images.unsqueeze(0).float()
        return x if device is None else x.to(device)

    def content_hash(self) -> str:
        """SHA-256 (hex, 16 chars) over the tensors and the scene identity, stable across processes."""
        h = hashlib.sha256()
        for t in (self.images, self.depth, self.valid_mask, self.intrinsics, self.extrinsics):
            arr = np.ascontiguousarray(t.detach().cpu().numpy())
            h.update(str(arr.dtype).encode() + str(arr.shape).encode())
            h.update(arr.tobytes())
        h.update(
            repr((self.meta.get("dataset"), self.meta.get("scene"), self.meta.get("frame_ids"))).encode()
        )
        return h.hexdigest()[:16]
