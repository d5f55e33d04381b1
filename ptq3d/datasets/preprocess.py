"""Resize views to the model resolution the way VGGT's `load_and_preprocess_images` does, keeping intrinsics,
depth and valid masks consistent with the image.

Modes (`size` = 518 and `patch_size` = 14 for VGGT; smaller for tests):
- "crop": width becomes `size`, height `round(H * size / W / patch) * patch`; a height above `size` is centre
  cropped to `size`.
- "pad":  the longer side becomes `size`, the other is rounded to a multiple of `patch`; then the image is
  padded to `size` x `size`, centred, with white (1.0), as VGGT does. Padded depth is 0 (invalid).
- "squash": both sides become `size` (a `size` x `size` image) without keeping the aspect ratio, as FGQ
  calibrates (CO3D clips resized to 518x518); fx and fy scale independently.
- "none": no change.

Images use bicubic resampling on uint8 (PIL, as VGGT). Depth and masks use nearest sampling at pixel
centres: output pixel i reads source pixel floor((i + 0.5) * old / new), so a depth value stays the depth of a
real surface. Intrinsics follow exactly: with the corner-origin pixel convention a resize by (sx, sy) maps
(fx, cx) -> (sx fx, sx cx) and (fy, cy) -> (sy fy, sy cy); a crop subtracts its offset from the principal
point and a pad adds its offset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ptq3d.errors import ConfigError

MODES = ("crop", "pad", "squash", "none")


@dataclass(frozen=True)
class Preprocess:
    """How views are brought to the model resolution (see module docstring)."""

    mode: str = "crop"
    size: int = 518
    patch_size: int = 14

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"preprocessing mode '{self.mode}' is not one of {', '.join(MODES)}")
        if self.mode != "none" and (self.size <= 0 or self.size % self.patch_size):
            raise ConfigError(
                f"preprocessing size {self.size} must be a positive multiple of {self.patch_size}"
            )


def _round_to_patch(x: float, patch: int) -> int:
    return max(patch, round(x / patch) * patch)  # Python round(), as VGGT


def resized_shape(height: int, width: int, cfg: Preprocess) -> tuple[int, int]:
    """(new_h, new_w) after the resize step, before crop/pad."""
    if cfg.mode == "none":
        return height, width
    if cfg.mode == "squash":
        return cfg.size, cfg.size
    if cfg.mode == "crop" or width >= height:
        return _round_to_patch(height * (cfg.size / width), cfg.patch_size), cfg.size
    return cfg.size, _round_to_patch(width * (cfg.size / height), cfg.patch_size)


def _nearest_index(old: int, new: int) -> np.ndarray:
    return np.minimum(np.floor((np.arange(new) + 0.5) * (old / new)).astype(np.int64), old - 1)


def resize_nearest(arr: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """Nearest sampling at pixel centres of [H, W, ...] arrays."""
    rows = _nearest_index(arr.shape[0], new_h)
    cols = _nearest_index(arr.shape[1], new_w)
    return arr[rows][:, cols]


def pad_to(image, depth, valid, K, height: int, width: int):
    """Centre-pad a view to (height, width): white image, zero depth, invalid mask; K shifted."""
    h, w = image.shape[:2]
    top, left = (height - h) // 2, (width - w) // 2
    if top == 0 and left == 0 and h == height and w == width:
        return image, depth, valid, K
    img = np.full((height, width, 3), 255, dtype=np.uint8)
    img[top : top + h, left : left + w] = image
    dep = np.zeros((height, width), dtype=np.float32)
    dep[top : top + h, left : left + w] = depth
    val = np.zeros((height, width), dtype=bool)
    val[top : top + h, left : left + w] = valid
    K = K.copy()
    K[0, 2] += left
    K[1, 2] += top
    return img, dep, val, K


def preprocess_view(
    image: np.ndarray, depth: np.ndarray, valid: np.ndarray, K: np.ndarray, cfg: Preprocess
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One view: image uint8 [H, W, 3], depth float32 [H, W], valid bool [H, W], K [3, 3] ->
    the same four at the model resolution."""
    if cfg.mode == "none":
        return image, depth, valid, K
    h, w = image.shape[:2]
    new_h, new_w = resized_shape(h, w, cfg)
    img = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC))
    dep = resize_nearest(depth, new_h, new_w)
    val = resize_nearest(valid, new_h, new_w)
    K = np.asarray(K, dtype=np.float64).copy()
    K[0] *= new_w / w
    K[1] *= new_h / h
    if cfg.mode == "crop" and new_h > cfg.size:
        top = (new_h - cfg.size) // 2
        img, dep, val = img[top : top + cfg.size], dep[top : top + cfg.size], val[top : top + cfg.size]
        K[1, 2] -= top
    if cfg.mode == "pad":
        img, dep, val, K = pad_to(img, dep, val, K, cfg.size, cfg.size)
    return np.ascontiguousarray(img), np.ascontiguousarray(dep), np.ascontiguousarray(val), K
