"""VGGT's Alternating-Attention aggregator (`vggt/models/aggregator.py`).

images [B, S, 3, H, W] in [0, 1] -> ImageNet normalisation -> DINOv2 patch tokens [B*S, h*w, C]
-> prepend camera (1) and register (R) tokens -> depth x (frame block on [B*S, P, C], global block on
[B, S*P, C]) -> list of depth tensors [B, S, P, 2C] = concat(frame output, global output).

The first frame is the reference: it gets slot 0 of `camera_token` / `register_token`, every other frame
slot 1. RoPE positions are per frame: (row+1, col+1) for patches, (0, 0) for the special tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from ptq3d.models.layers import Block, DinoVisionTransformer, RotaryPositionEmbedding2D, grid_positions
from ptq3d.models.vggt.config import VGGTConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def first_frame_tokens(token: torch.Tensor, B: int, S: int) -> torch.Tensor:
    """token [1, 2, X, C] -> [B*S, X, C]: slot 0 for frame 0 of every scene, slot 1 for frames 1..S-1."""
    first = token[:, :1].expand(B, 1, *token.shape[2:])
    rest = token[:, 1:].expand(B, S - 1, *token.shape[2:])
    return torch.cat([first, rest], dim=1).reshape(B * S, *token.shape[2:])


class Aggregator(nn.Module):
    """Keys: camera_token [1,2,1,C], register_token [1,2,R,C], patch_embed.* (DINOv2), frame_blocks.i,
    global_blocks.i. forward(images [B,S,3,H,W]) -> (list of depth [B,S,P,2C], patch_start_idx)."""

    def __init__(self, config: VGGTConfig):
        super().__init__()
        cfg = config
        C = cfg.embed_dim
        self.patch_size = cfg.patch_size
        self.patch_start_idx = cfg.patch_start_idx
        self.patch_embed = DinoVisionTransformer(cfg.dino)
        self.rope = RotaryPositionEmbedding2D(cfg.rope_freq) if cfg.rope_freq > 0 else None

        def make_block() -> Block:
            return Block(
                C,
                cfg.num_heads,
                mlp_ratio=cfg.mlp_ratio,
                init_values=cfg.init_values,
                qk_norm=cfg.qk_norm,
                rope=self.rope,
                norm_eps=cfg.norm_eps,
            )

        self.frame_blocks = nn.ModuleList([make_block() for _ in range(cfg.depth)])
        self.global_blocks = nn.ModuleList([make_block() for _ in range(cfg.depth)])
        self.camera_token = nn.Parameter(torch.zeros(1, 2, 1, C))
        self.register_token = nn.Parameter(torch.zeros(1, 2, cfg.num_register_tokens, C))
        nn.init.normal_(self.camera_token, std=1e-6)  # as upstream
        nn.init.normal_(self.register_token, std=1e-6)
        self.register_buffer(
            "_resnet_mean", torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1), persistent=False
        )
        self.register_buffer("_resnet_std", torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1), persistent=False)

    def reset_constant_buffers(self) -> None:
        """Refill the non-persistent normalisation buffers (after `to_empty` on a meta-built model)."""
        with torch.no_grad():
            self._resnet_mean.copy_(torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1))
            self._resnet_std.copy_(torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1))

    # --- pieces, in execution order (the adapter runs them one by one) ---------------------------
    def encoder_input(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, S, 3, H, W] in [0, 1] -> DINOv2 block input [B*S, 1 + R_dino + h*w, C]."""
        B, S, _, H, W = images.shape
        x = (images - self._resnet_mean) / self._resnet_std
        return self.patch_embed.prepare_tokens(x.reshape(B * S, 3, H, W))

    def tokens_from_encoder(self, dino_out: torch.Tensor, B: int, S: int) -> torch.Tensor:
        """Last DINOv2 block output [B*S, T, C] -> aggregator tokens [B*S, P, C]: final norm, patch tokens,
        camera and register tokens prepended."""
        patches = self.patch_embed.finalize(dino_out)
        cam = first_frame_tokens(self.camera_token, B, S).to(patches.dtype)
        reg = first_frame_tokens(self.register_token, B, S).to(patches.dtype)
        return torch.cat([cam, reg, patches], dim=1)

    def positions(self, B: int, S: int, H: int, W: int, device: torch.device) -> torch.Tensor | None:
        """RoPE positions [B*S, P, 2] (long) for images of size H x W, or None without RoPE."""
        if self.rope is None:
            return None
        return grid_positions(B * S, H // self.patch_size, W // self.patch_size, self.patch_start_idx, device)

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """images [B, S, 3, H, W] -> (first aggregator block input [B*S, P, C], pos [B*S, P, 2] or None)."""
        B, S, _, H, W = images.shape
        x = self.encoder_input(images)
        for blk in self.patch_embed.blocks:
            x = blk(x)
        return self.tokens_from_encoder(x, B, S), self.positions(B, S, H, W, images.device)

    @staticmethod
    def run_frame_block(block: nn.Module, x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        """x [B, S, P, C], pos [B*S, P, 2] -> attention within each frame on [B*S, P, C] -> [B, S, P, C]."""
        B, S, P, C = x.shape
        return block(x.reshape(B * S, P, C), pos=pos).reshape(B, S, P, C)

    @staticmethod
    def run_global_block(block: nn.Module, x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        """x [B, S, P, C], pos [B*S, P, 2] -> attention over all frames on [B, S*P, C] -> [B, S, P, C]."""
        B, S, P, C = x.shape
        gpos = None if pos is None else pos.reshape(B, S * P, 2)
        return block(x.reshape(B, S * P, C), pos=gpos).reshape(B, S, P, C)

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], int]:
        B, S = images.shape[:2]
        tokens, pos = self.embed(images)
        x = tokens.reshape(B, S, *tokens.shape[1:])
        outputs = []
        for frame_blk, global_blk in zip(self.frame_blocks, self.global_blocks, strict=True):
            x = self.run_frame_block(frame_blk, x, pos)
            frame_out = x
            x = self.run_global_block(global_blk, x, pos)
            outputs.append(torch.cat([frame_out, x], dim=-1))
        return outputs, self.patch_start_idx
