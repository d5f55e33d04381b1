"""Seeded random inits of small VGGT configurations of our own code, shared by the method tests (each builds in
well under a second). Never the golden weights: their ternary matrices quantize losslessly."""

from __future__ import annotations

import torch

from ptq3d.models import load_model
from ptq3d.models.layers import DinoV2Config
from ptq3d.models.vggt.config import VGGTConfig


def small_vggt_config(
    dim: int = 64,
    heads: int = 4,
    depth: int = 2,
    img: int = 56,
    init_values: float | None = None,
    dpt_idx: tuple[int, ...] = (0, 0, 1, 1),
    dpt_out_channels: tuple[int, ...] = (16, 16, 32, 32),
) -> VGGTConfig:
    """A 1-block DINOv2-style embed (4 registers) and `depth` frame/global pairs at width `dim`, `img`x`img`
    images; init_values None keeps VGGT's LayerScale init (0.01), larger values make random blocks matter."""
    extra = {} if init_values is None else {"init_values": init_values}
    return VGGTConfig(
        img_size=img,
        dino=DinoV2Config(img_size=img, embed_dim=dim, depth=1, num_heads=heads, num_register_tokens=4),
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        camera_trunk_depth=1,
        camera_num_heads=heads,
        dpt_features=16,
        dpt_out_channels=dpt_out_channels,
        dpt_intermediate_layer_idx=dpt_idx,
        **extra,
    )


def small_vggt(seed: int = 0, **config):
    """load_model(small_vggt_config(**config)) after torch.manual_seed(seed), in eval mode."""
    torch.manual_seed(seed)
    return load_model(small_vggt_config(**config))


def visible_branch_vggt(seed: int = 0, depth: int = 2, dpt_idx: tuple[int, ...] = (0, 0, 1, 1)):
    """small_vggt with LayerScale 0.5, so each block's own error is visible at its output (VGGT-1B's 0.01 would
    hide it), and narrow DPT heads (8, 16, 32, 32): the learned-transform methods' test model."""
    return small_vggt(seed, depth=depth, init_values=0.5, dpt_idx=dpt_idx, dpt_out_channels=(8, 16, 32, 32))
