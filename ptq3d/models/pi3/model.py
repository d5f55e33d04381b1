"""Pi3 (Wang et al. 2025, "pi^3: Scalable Permutation-Equivariant Visual Geometry Learning"), our own code
with the official module tree and state_dict key names (yyfz/Pi3 `pi3/models/pi3.py::Pi3`).

Pipeline for images [B, S, 3, H, W] in [0, 1] (H, W multiples of 14, h = H/14, w = W/14):
1. ImageNet normalisation with the persistent buffers image_mean / image_std.
2. encoder (DINOv2 ViT/14 with registers): final-norm patch tokens [B*S, h*w, C_enc].
3. 5 shared register tokens prepended -> [B*S, P, C], P = 5 + h*w; RoPE positions (row+1, col+1),
   (0, 0) for the registers.
4. decoder: blocks alternate frame attention (even i, tokens as [B*S, P, C]) and global attention
   (odd i, [B, S*P, C]); the output joins the last two blocks' outputs -> [B*S, P, 2C].
5. point / conf / camera TransformerDecoders (frame-wise) and heads on the patch tokens.

Outputs (float32):
- local_points [B, S, H, W, 3]: camera-frame points (x*z, y*z, z), z = exp(z'); z is the depth map.
- conf [B, S, H, W, 1]: raw confidence logits (users apply a sigmoid).
- camera_poses [B, S, 4, 4]: camera-to-world, OpenCV axes, in a model-chosen world frame and scale.
- points [B, S, H, W, 3]: camera_poses applied to local_points (world frame).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ptq3d.models.layers import (
    Block,
    DinoV2Config,
    DinoVisionTransformer,
    RotaryPositionEmbedding2D,
    grid_positions,
)
from ptq3d.models.pi3.config import Pi3Config
from ptq3d.models.pi3.heads import CameraHead, LinearPts3d, TransformerDecoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Pi3(nn.Module):
    """Pi3 model. forward(images [B, S, 3, H, W] in [0, 1]) -> dict(points, local_points, conf, camera_poses)."""

    def __init__(self, config: Pi3Config | None = None):
        super().__init__()
        cfg = config if config is not None else Pi3Config()
        self.config = cfg
        enc = cfg.encoder
        self.patch_size = cfg.patch_size

        # Pi3 deletes DINOv2's (training-only) mask token: it is not in the checkpoint.
        self.encoder = DinoVisionTransformer(
            DinoV2Config(
                img_size=cfg.img_size,
                patch_size=cfg.patch_size,
                embed_dim=enc.embed_dim,
                depth=enc.depth,
                num_heads=enc.num_heads,
                mlp_ratio=enc.mlp_ratio,
                num_register_tokens=enc.num_register_tokens,
                init_values=enc.init_values,
                norm_eps=enc.norm_eps,
                interpolate_offset=enc.interpolate_offset,
                interpolate_antialias=enc.interpolate_antialias,
                mask_token=False,
            )
        )

        self.rope = RotaryPositionEmbedding2D(frequency=cfg.rope_freq)
        self.decoder = nn.ModuleList(
            [
                Block(
                    dim=cfg.dec_embed_dim,
                    num_heads=cfg.dec_num_heads,
                    mlp_ratio=cfg.dec_mlp_ratio,
                    qkv_bias=True,
                    proj_bias=True,
                    ffn_bias=True,
                    init_values=cfg.dec_init_values,
                    qk_norm=cfg.dec_qk_norm,
                    rope=self.rope,
                    norm_eps=cfg.norm_eps,
                )
                for _ in range(cfg.dec_depth)
            ]
        )
        self.patch_start_idx = cfg.num_register_tokens
        self.register_token = nn.Parameter(torch.empty(1, 1, cfg.num_register_tokens, cfg.dec_embed_dim))
        nn.init.normal_(self.register_token, std=1e-6)

        hidden_dim = 2 * cfg.dec_embed_dim
        pd, cd = cfg.point_decoder, cfg.camera_decoder
        self.point_decoder = TransformerDecoder(
            hidden_dim,
            pd.out_dim,
            pd.dec_embed_dim,
            pd.depth,
            pd.num_heads,
            pd.mlp_ratio,
            self.rope,
            cfg.norm_eps,
        )
        self.point_head = LinearPts3d(cfg.patch_size, pd.out_dim, output_dim=3)
        # The official constructor deep-copies the point decoder (same shapes, own weights after training).
        self.conf_decoder = copy.deepcopy(self.point_decoder)
        self.conf_head = LinearPts3d(cfg.patch_size, pd.out_dim, output_dim=1)
        self.camera_decoder = TransformerDecoder(
            hidden_dim,
            cd.out_dim,
            cd.dec_embed_dim,
            cd.depth,
            cd.num_heads,
            cd.mlp_ratio,
            self.rope,
            cfg.norm_eps,
        )
        self.camera_head = CameraHead(dim=cd.out_dim)

        # Persistent on purpose: the official checkpoint carries them.
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    # --- stages ----------------------------------------------------------------------------------

    @staticmethod
    def constant_state_defaults() -> dict[str, torch.Tensor]:
        """Persistent buffers whose values are fixed constants: a checkpoint that lacks them (some Pi3 exports
        do not carry image_mean / image_std) is completed with these values instead of being rejected."""
        return {
            "image_mean": torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
            "image_std": torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
        }

    def check_images(self, images: torch.Tensor) -> tuple[int, int, int, int]:
        """Validate images [B, S, 3, H, W]; return (B, S, H, W)."""
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"Pi3 expects images [B, S, 3, H, W], got shape {tuple(images.shape)}")
        B, S, _, H, W = images.shape
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"Pi3 needs H and W to be multiples of {self.patch_size}, got {H}x{W}")
        return B, S, H, W

    def encoder_input(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, S, 3, H, W] in [0, 1] -> DINOv2 tokens before its first block [B*S, 1+R+h*w, C_enc]
        (cls, R encoder registers, patches; pos_embed added)."""
        B, S, _, H, W = images.shape
        x = (images - self.image_mean) / self.image_std
        return self.encoder.prepare_tokens(x.reshape(B * S, 3, H, W))

    def encoder_output(self, tokens: torch.Tensor) -> torch.Tensor:
        """Last encoder block output [B*S, 1+R+h*w, C_enc] -> final-norm patch tokens [B*S, h*w, C_enc]."""
        return self.encoder.finalize(tokens)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, S, 3, H, W] -> x_norm_patchtokens [B*S, h*w, C_enc]."""
        x = self.encoder_input(images)
        for blk in self.encoder.blocks:
            x = blk(x)
        return self.encoder_output(x)

    def decoder_input(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens [B*S, h*w, C] -> [B*S, P, C] with the shared register tokens first."""
        n = patch_tokens.shape[0]
        reg = self.register_token.reshape(1, *self.register_token.shape[-2:]).expand(n, -1, -1)
        return torch.cat([reg.to(patch_tokens.dtype), patch_tokens], dim=1)

    def decoder_pos(self, n: int, image_hw: tuple[int, int], device: torch.device) -> torch.Tensor:
        """RoPE positions [n, P, 2] (long): (row+1, col+1) for patches, (0, 0) for the register tokens."""
        H, W = image_hw
        return grid_positions(n, H // self.patch_size, W // self.patch_size, self.patch_start_idx, device)

    def decoder_block(self, i: int, hidden: torch.Tensor, pos: torch.Tensor, batch: int) -> torch.Tensor:
        """Run decoder.i on hidden [B*S, P, C] with pos [B*S, P, 2]: frame attention for even i
        (as [B*S, P, C]), global attention over all frames of a scene for odd i (as [B, S*P, C])."""
        n, p, c = hidden.shape
        blk = self.decoder[i]
        if i % 2 == 0:
            return blk(hidden, pos=pos)
        out = blk(hidden.reshape(batch, -1, c), pos=pos.reshape(batch, -1, 2))
        return out.reshape(n, p, c)

    def decode(self, hidden: torch.Tensor, pos: torch.Tensor, batch: int) -> torch.Tensor:
        """Decoder stack: [B*S, P, C] -> concat of the last two blocks' outputs [B*S, P, 2C]."""
        outs = []
        depth = len(self.decoder)
        for i in range(depth):
            hidden = self.decoder_block(i, hidden, pos, batch)
            if i >= depth - 2:
                outs.append(hidden)
        return torch.cat(outs, dim=-1)

    def predict_heads(
        self, hidden: torch.Tensor, pos: torch.Tensor, batch: int, image_hw: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        """Decoder output [B*S, P, 2C] -> the output dict (see module docstring)."""
        H, W = image_hw
        S = hidden.shape[0] // batch
        ps, start = self.patch_size, self.patch_start_idx
        point_hidden = self.point_decoder(hidden, pos)
        conf_hidden = self.conf_decoder(hidden, pos)
        camera_hidden = self.camera_decoder(hidden, pos)
        # Heads in fp32 outside any autocast region, as the reference.
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            ret = self.point_head(point_hidden[:, start:].float(), (H, W)).reshape(batch, S, H, W, -1)
            xy, z = ret.split([2, 1], dim=-1)
            z = torch.exp(z)
            local_points = torch.cat([xy * z, z], dim=-1)
            conf = self.conf_head(conf_hidden[:, start:].float(), (H, W)).reshape(batch, S, H, W, -1)
            camera_poses = self.camera_head(camera_hidden[:, start:].float(), H // ps, W // ps)
            camera_poses = camera_poses.reshape(batch, S, 4, 4)
            points = torch.einsum("bsij,bshwj->bshwi", camera_poses[..., :3, :3], local_points)
            points = points + camera_poses[:, :, None, None, :3, 3]
        return {"points": points, "local_points": local_points, "conf": conf, "camera_poses": camera_poses}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        B, S, H, W = self.check_images(images)
        patch_tokens = self.encode(images)
        hidden = self.decoder_input(patch_tokens)
        pos = self.decoder_pos(B * S, (H, W), hidden.device)
        hidden = self.decode(hidden, pos, B)
        return self.predict_heads(hidden, pos, B, (H, W))
