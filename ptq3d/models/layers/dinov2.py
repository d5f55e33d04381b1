"""DINOv2 vision transformer with register tokens (Oquab et al. 2023; Darcet et al. 2024, "Vision
Transformers Need Registers"), the image encoder of VGGT and Pi3.

Token layout inside the encoder: [cls, registers (R), patches (h*w)]. The learned `pos_embed` covers
cls + the (img_size/patch)^2 training grid and is resized bicubically to other grids; registers get no
position embedding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ptq3d.models.layers.block import Block
from ptq3d.models.layers.patch_embed import PatchEmbed

# (embed_dim, depth, num_heads) of the DINOv2 ViT/14 sizes.
VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "giant": (1536, 40, 24),  # "giant2" as in VGGT's copy, with the plain GELU MLP
}


@dataclass(frozen=True)
class DinoV2Config:
    """Encoder hyper-parameters. Defaults: ViT-L/14 with 4 registers as built inside VGGT.

    interpolate_offset / interpolate_antialias: pos-embed resizing. offset 0 resizes to an exact size
    (VGGT: 0.0, antialias True); offset > 0 uses scale factors (grid + offset) / M (DINOv2 hub default
    0.1, antialias False).
    """

    img_size: int = 518
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    init_values: float | None = 1.0
    norm_eps: float = 1e-6
    interpolate_offset: float = 0.0
    interpolate_antialias: bool = True
    mask_token: bool = True

    @classmethod
    def of_size(cls, size: str, **overrides) -> DinoV2Config:
        """size in VIT_SIZES ('small', 'base', 'large', 'giant'); overrides any other field."""
        if size not in VIT_SIZES:
            raise ValueError(f"unknown DINOv2 size '{size}' (known: {', '.join(VIT_SIZES)})")
        dim, depth, heads = VIT_SIZES[size]
        return cls(**{"embed_dim": dim, "depth": depth, "num_heads": heads, **overrides})


class DinoVisionTransformer(nn.Module):
    """DINOv2 ViT/14 with registers.

    Keys: cls_token [1,1,C], pos_embed [1, 1+M*M, C] (M = img_size/patch), register_tokens [1,R,C],
    mask_token [1,C] (optional; unused at inference), patch_embed.proj, blocks.i, norm.
    forward(images [N, 3, H, W] normalised) -> x_norm_patchtokens [N, (H/14)*(W/14), C].
    The steps are exposed separately (prepare_tokens, blocks, finalize) so the blocks can be run one at a time.
    """

    def __init__(self, config: DinoV2Config | None = None):
        super().__init__()
        cfg = config or DinoV2Config()
        self.config = cfg
        C = cfg.embed_dim
        self.patch_size = cfg.patch_size
        self.num_register_tokens = cfg.num_register_tokens
        self.patch_embed = PatchEmbed(cfg.patch_size, 3, C)
        grid = cfg.img_size // cfg.patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, C))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, C))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, cfg.num_register_tokens, C)) if cfg.num_register_tokens else None
        )
        self.mask_token = nn.Parameter(torch.zeros(1, C)) if cfg.mask_token else None
        self.blocks = nn.ModuleList(
            [
                Block(
                    C,
                    cfg.num_heads,
                    mlp_ratio=cfg.mlp_ratio,
                    init_values=cfg.init_values,
                    qk_norm=False,
                    rope=None,
                    norm_eps=cfg.norm_eps,
                )
                for _ in range(cfg.depth)
            ]
        )
        self.norm = nn.LayerNorm(C, eps=cfg.norm_eps)
        # random init of the tokens as DINOv2 (Linear layers keep PyTorch's default init)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)

    def interpolate_pos_encoding(self, grid_h: int, grid_w: int, dtype: torch.dtype) -> torch.Tensor:
        """pos_embed resized to a grid_h x grid_w patch grid -> [1, 1 + grid_h*grid_w, C] (cls first)."""
        n_train = self.pos_embed.shape[1] - 1
        M = int(math.isqrt(n_train))
        if n_train != M * M:
            raise ValueError(f"pos_embed holds {n_train} patch positions, not a square grid")
        if grid_h == grid_w == M:
            return self.pos_embed.to(dtype)
        pos = self.pos_embed.float()
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        C = pos.shape[-1]
        off = self.config.interpolate_offset
        kwargs: dict = (
            {"scale_factor": ((grid_h + off) / M, (grid_w + off) / M)} if off else {"size": (grid_h, grid_w)}
        )
        patch_pos = F.interpolate(
            patch_pos.reshape(1, M, M, C).permute(0, 3, 1, 2),
            mode="bicubic",
            antialias=self.config.interpolate_antialias,
            **kwargs,
        )
        if tuple(patch_pos.shape[-2:]) != (grid_h, grid_w):
            raise RuntimeError(
                f"pos_embed interpolation gave {tuple(patch_pos.shape[-2:])}, not {(grid_h, grid_w)}"
            )
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, C)
        return torch.cat((cls_pos, patch_pos), dim=1).to(dtype)

    def prepare_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] -> tokens [N, 1 + R + h*w, C]: patch embed, cls, pos embed, registers."""
        H, W = images.shape[-2:]
        x = self.patch_embed(images)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x), dim=1)
        x = x + self.interpolate_pos_encoding(H // self.patch_size, W // self.patch_size, x.dtype)
        if self.register_tokens is not None:
            regs = self.register_tokens.expand(x.shape[0], -1, -1).to(x.dtype)
            x = torch.cat((x[:, :1], regs, x[:, 1:]), dim=1)
        return x

    def finalize(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the last block [N, 1 + R + h*w, C] -> x_norm_patchtokens [N, h*w, C]."""
        return self.norm(x)[:, 1 + self.num_register_tokens :]

    def forward_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """DINOv2's output dict: x_norm_clstoken [N,C], x_norm_regtokens [N,R,C], x_norm_patchtokens
        [N,h*w,C], x_prenorm [N,1+R+h*w,C]."""
        x = self.prepare_tokens(images)
        for blk in self.blocks:
            x = blk(x)
        x_norm = self.norm(x)
        R = self.num_register_tokens
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1 : R + 1],
            "x_norm_patchtokens": x_norm[:, R + 1 :],
            "x_prenorm": x,
        }

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.prepare_tokens(images)
        for blk in self.blocks:
            x = blk(x)
        return self.finalize(x)
