"""Pi3's prediction heads (yyfz/Pi3 `pi3/models/layers/transformer_head.py`, `camera_head.py`).

All heads read the decoder output [B*S, P, 2C] (register tokens first) frame by frame.
- TransformerDecoder: Linear -> RoPE blocks -> Linear, on [B*S, P, C].
- LinearPts3d: one Linear per patch token, unfolded to 14x14 pixels by pixel shuffle.
- CameraHead: residual MLPs, average over patches, MLP, translation (3) + 9-vector rotation made
  orthogonal by SVD; returns camera-to-world 4x4 (OpenCV axes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ptq3d.models.layers import Block, RotaryPositionEmbedding2D


class TransformerDecoder(nn.Module):
    """projects: Linear(in_dim -> dec_embed_dim); blocks: pre-norm RoPE blocks without qk-norm or LayerScale
    (LayerNorm eps 1e-6); linear_out: Linear(dec_embed_dim -> out_dim).

    forward(hidden [N, P, in_dim], pos [N, P, 2] long) -> [N, P, out_dim]; attention is within each row N.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        dec_embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        rope: RotaryPositionEmbedding2D | None = None,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.projects = nn.Linear(in_dim, dec_embed_dim)
        self.blocks = nn.ModuleList(
            [
                Block(
                    dim=dec_embed_dim,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=True,
                    proj_bias=True,
                    ffn_bias=True,
                    init_values=None,
                    qk_norm=False,
                    rope=rope,
                    norm_eps=norm_eps,
                )
                for _ in range(depth)
            ]
        )
        self.linear_out = nn.Linear(dec_embed_dim, out_dim)

    def forward(self, hidden: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.projects(hidden)
        for blk in self.blocks:
            hidden = blk(hidden, pos=pos)
        return self.linear_out(hidden)


class LinearPts3d(nn.Module):
    """Per-token linear head: proj Linear(dec_embed_dim -> output_dim * patch_size^2).

    forward(tokens [N, h*w, D] patch tokens in raster order, (H, W)) -> [N, H, W, output_dim], where
    channel c*p^2 + i*p + j of token (y, x) lands on pixel (y*p + i, x*p + j) (pixel shuffle).
    """

    def __init__(self, patch_size: int, dec_embed_dim: int, output_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(dec_embed_dim, output_dim * patch_size**2)

    def forward(self, tokens: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
        H, W = image_hw
        n = tokens.shape[0]
        feat = self.proj(tokens).transpose(-1, -2).reshape(n, -1, H // self.patch_size, W // self.patch_size)
        return F.pixel_shuffle(feat, self.patch_size).permute(0, 2, 3, 1)


class ResConvBlock(nn.Module):
    """x + relu(L3(relu(L2(relu(L1(x)))))) with three Linear(dim, dim) (1x1 convs written as Linear)."""

    def __init__(self, dim: int):
        super().__init__()
        self.res_conv1 = nn.Linear(dim, dim)
        self.res_conv2 = nn.Linear(dim, dim)
        self.res_conv3 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.res_conv1(x))
        y = F.relu(self.res_conv2(y))
        y = F.relu(self.res_conv3(y))
        return x + y


def svd_orthogonalize(m: torch.Tensor) -> torch.Tensor:
    """9-vectors [N, 9] -> rotations [N, 3, 3] in SO(3) (Levinson et al. 2020, "An analysis of SVD for deep
    rotation estimation"), as Pi3 does it: rows L2-normalised, transposed, the closest rotation
    V diag(1, 1, det(V U^T)) U^T of the SVD M^T = U S V^T."""
    m = F.normalize(m.reshape(-1, 3, 3), p=2, dim=-1).transpose(-1, -2)
    u, _, vh = torch.linalg.svd(m)
    v = vh.transpose(-1, -2)
    det = torch.det(v @ u.transpose(-1, -2))
    v = torch.cat([v[:, :, :-1], v[:, :, -1:] * det.view(-1, 1, 1)], dim=2)
    return v @ u.transpose(-1, -2)


class CameraHead(nn.Module):
    """feat [N, h*w, dim] patch tokens -> camera-to-world poses [N, 4, 4] (OpenCV axes).

    res_conv: 2 ResConvBlocks; average over the h x w patch grid; more_mlps: Linear-ReLU-Linear-ReLU;
    fc_t: translation (3); fc_rot: 9-vector -> SVD orthogonalisation.
    """

    def __init__(self, dim: int = 512):
        super().__init__()
        self.res_conv = nn.ModuleList([ResConvBlock(dim) for _ in range(2)])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.more_mlps = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU())
        self.fc_t = nn.Linear(dim, 3)
        self.fc_rot = nn.Linear(dim, 9)

    def forward(self, feat: torch.Tensor, patch_h: int, patch_w: int) -> torch.Tensor:
        n = feat.shape[0]
        for blk in self.res_conv:
            feat = blk(feat)
        feat = feat.permute(0, 2, 1).reshape(n, -1, patch_h, patch_w)
        feat = self.more_mlps(self.avgpool(feat).reshape(n, -1))
        feat = feat.float()  # pose math in fp32 even under autocast, as the reference
        t = self.fc_t(feat)
        rot = svd_orthogonalize(self.fc_rot(feat))
        pose = torch.zeros(n, 4, 4, dtype=rot.dtype, device=rot.device)
        pose[:, :3, :3] = rot
        pose[:, :3, 3] = t
        pose[:, 3, 3] = 1.0
        return pose
