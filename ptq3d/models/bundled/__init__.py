"""Bundled default weights. `vggt-tiny-synthetic`: a tiny VGGT (same architecture code as VGGT-1B) trained by
`ptq3d train-tiny` on procedurally generated scenes (ptq3d.datasets.synthetic, training seeds only). The model
card with the training run and the held-out metrics is README.md beside the weights file.
"""

from __future__ import annotations

from pathlib import Path

from ptq3d.models.layers import DinoV2Config
from ptq3d.models.vggt.config import VGGTConfig

BUNDLED_DIR = Path(__file__).resolve().parent
VGGT_TINY_SYNTHETIC_WEIGHTS = BUNDLED_DIR / "vggt_tiny_synthetic.safetensors"
# the same configuration with massive activations on its special tokens (sinks.py; model card: README.md)
VGGT_TINY_SYNTHETIC_SINKS_WEIGHTS = BUNDLED_DIR / "vggt_tiny_synthetic_sinks.safetensors"
VGGT_TINY_SYNTHETIC_IMAGE_SIZE = (112, 112)  # (H, W) it was trained at: an 8 x 8 patch grid


def vggt_tiny_synthetic_config() -> VGGTConfig:
    """The bundled model: images 112x112 (8x8 patches of 14), a 2-block DINOv2-style patch embed of width 128
    (4 heads, 4 registers), 4 frame/global pairs at width 128 (4 heads, qk-norm, 2-D RoPE, camera + 4 register
    tokens), a 1-block camera trunk at width 256 (4 heads, 4 refinement iterations), DPT depth and point heads
    with 32 features reading aggregator layers (0, 1, 2, 3).

    LayerScale starts at 0.1 in the aggregator and camera trunk (VGGT-1B: 0.01): with 0.01 a short training run
    leaves the residual branches of the aggregator so small that quantizing them hardly changes depth or points
    (measured: RTN W4A4 moved depth AbsRel by 0.0001 after 300 steps), and the benchmark would measure nothing."""
    dim, heads = 128, 4
    return VGGTConfig(
        img_size=VGGT_TINY_SYNTHETIC_IMAGE_SIZE[1],
        dino=DinoV2Config(
            img_size=VGGT_TINY_SYNTHETIC_IMAGE_SIZE[1],
            embed_dim=dim,
            depth=2,
            num_heads=heads,
            num_register_tokens=4,
        ),
        embed_dim=dim,
        depth=4,
        num_heads=heads,
        init_values=0.1,
        camera_trunk_depth=1,
        camera_num_heads=heads,
        camera_init_values=0.1,
        dpt_features=32,
        dpt_out_channels=(32, 64, 128, 128),
        dpt_intermediate_layer_idx=(0, 1, 2, 3),
    )
