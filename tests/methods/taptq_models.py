"""Small seeded VGGT / Pi3 models and synthetic calibration scenes for the TAPTQ tests (each builds in < 0.1 s)."""

from __future__ import annotations

import small_models
import torch

from ptq3d.calibration.sets import CalibrationSet
from ptq3d.datasets.synthetic import generate_scene
from ptq3d.models.pi3 import Pi3, Pi3Adapter
from ptq3d.models.pi3.config import Pi3Config, Pi3EncoderConfig, Pi3HeadDecoderConfig


def small_pi3_config(dim: int = 64, img: int = 56) -> Pi3Config:
    head = Pi3HeadDecoderConfig(dec_embed_dim=32, depth=1, num_heads=2, out_dim=32)
    return Pi3Config(
        img_size=img,
        encoder=Pi3EncoderConfig(embed_dim=dim, depth=1, num_heads=2),
        dec_embed_dim=dim,
        dec_num_heads=2,
        dec_depth=2,
        point_decoder=head,
        camera_decoder=head,
    )


def small_vggt(seed: int = 0, dim: int = 64, depth: int = 2, img: int = 56):
    """2 heads, VGGT's LayerScale init, the DPT heads reading the first and the last pair."""
    return small_models.small_vggt(
        seed, dim=dim, heads=2, depth=depth, img=img, dpt_idx=(0, 0, depth - 1, depth - 1)
    )


def small_pi3(seed: int = 0, **kw):
    torch.manual_seed(seed)
    return Pi3Adapter(Pi3(small_pi3_config(**kw)), name="pi3-small").eval()


def scenes(n: int, first_seed: int = 0, frames: int = 3, size: int = 56):
    return [generate_scene(first_seed + i, num_frames=frames, height=size, width=size) for i in range(n)]


def calib(n: int = 3, first_seed: int = 0, frames: int = 3, size: int = 56) -> CalibrationSet:
    return CalibrationSet(scenes(n, first_seed, frames, size), builder="random", seed=first_seed)


def heldout_images(n: int = 2, frames: int = 3, size: int = 56) -> torch.Tensor:
    return torch.stack(
        [
            generate_scene(1_000_000_000 + i, num_frames=frames, height=size, width=size).images
            for i in range(n)
        ]
    )
