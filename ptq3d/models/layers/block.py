"""Pre-norm transformer block shared by DINOv2, VGGT's aggregator and camera trunk, and Pi3's decoders."""

from __future__ import annotations

import torch
from torch import nn

from ptq3d.models.layers.attention import Attention
from ptq3d.models.layers.mlp import LayerScale, Mlp
from ptq3d.models.layers.rope import RotaryPositionEmbedding2D


class Block(nn.Module):
    """x += ls1(attn(norm1(x), pos)); x += ls2(mlp(norm2(x))).

    forward(x [B, N, dim], pos [B, N, 2] long or None) -> [B, N, dim].
    norm1/norm2: LayerNorm(dim, eps=norm_eps); mlp hidden width int(dim * mlp_ratio);
    init_values None (or 0) -> no LayerScale (Identity, no `ls*.gamma` keys);
    qk_norm -> per-head LayerNorm on q and k (eps qk_norm_eps); rope -> 2-D RoPE applied after qk-norm.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        init_values: float | None = None,
        qk_norm: bool = False,
        rope: RotaryPositionEmbedding2D | None = None,
        norm_eps: float = 1e-5,
        qk_norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            proj_bias=proj_bias,
            qk_norm=qk_norm,
            qk_norm_eps=qk_norm_eps,
            rope=rope,
        )
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), bias=ffn_bias)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), pos=pos))
        return x + self.ls2(self.mlp(self.norm2(x)))
