"""Image to patch tokens."""

from __future__ import annotations

import torch
from torch import nn


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: Conv2d(in_chans, embed_dim, kernel=stride=patch_size) (key `proj`).

    forward(images [N, in_chans, H, W]) -> tokens [N, (H/p)*(W/p), embed_dim] in raster order.
    H and W must be multiples of the patch size.
    """

    def __init__(self, patch_size: int = 14, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(
                f"PatchEmbed: image size {H}x{W} is not a multiple of the patch size {self.patch_size}"
            )
        return self.proj(x).flatten(2).transpose(1, 2)
