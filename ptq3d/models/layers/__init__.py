"""Transformer layers shared by our VGGT and Pi3 implementations (state_dict key names as upstream)."""

from ptq3d.models.layers.attention import Attention
from ptq3d.models.layers.block import Block
from ptq3d.models.layers.dinov2 import VIT_SIZES, DinoV2Config, DinoVisionTransformer
from ptq3d.models.layers.mlp import LayerScale, Mlp
from ptq3d.models.layers.patch_embed import PatchEmbed
from ptq3d.models.layers.rope import RotaryPositionEmbedding2D, grid_positions

__all__ = [
    "VIT_SIZES",
    "Attention",
    "Block",
    "DinoV2Config",
    "DinoVisionTransformer",
    "LayerScale",
    "Mlp",
    "PatchEmbed",
    "RotaryPositionEmbedding2D",
    "grid_positions",
]
