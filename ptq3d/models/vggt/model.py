"""The VGGT network (Wang et al. 2025, "VGGT: Visual Geometry Grounded Transformer"), our implementation of
`vggt/models/vggt.py::VGGT` with the official state_dict key names. The track head is not implemented;
a checkpoint's `track_head.*` keys are reported as ignored by the loader (see IGNORED_KEY_PREFIXES)."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from ptq3d.models.vggt.aggregator import Aggregator
from ptq3d.models.vggt.camera_head import CameraHead
from ptq3d.models.vggt.config import VGGTConfig
from ptq3d.models.vggt.dpt_head import DPTHead


class VGGT(nn.Module):
    """images [B, S, 3, H, W] (or [S, 3, H, W]) in [0, 1], H and W multiples of 14 -> dict:

    pose_enc [B, S, 9], pose_enc_list (iterations x [B, S, 9]) - camera head;
    depth [B, S, H, W, 1], depth_conf [B, S, H, W] - depth head (exp / 1+exp);
    world_points [B, S, H, W, 3], world_points_conf [B, S, H, W] - point head, first-camera frame;
    images (eval mode only).
    The heads run in float32 with autocast disabled; the aggregator follows the caller's autocast.
    """

    IGNORED_KEY_PREFIXES: tuple[str, ...] = ("track_head.",)

    def __init__(self, config: VGGTConfig | None = None):
        super().__init__()
        cfg = config or VGGTConfig()
        self.config = cfg
        self.aggregator = Aggregator(cfg)
        dim2 = 2 * cfg.embed_dim
        self.camera_head = (
            CameraHead(
                dim2,
                cfg.camera_trunk_depth,
                cfg.camera_num_heads,
                cfg.camera_mlp_ratio,
                cfg.camera_init_values,
            )
            if cfg.enable_camera
            else None
        )
        dpt = {
            "patch_size": cfg.patch_size,
            "features": cfg.dpt_features,
            "out_channels": cfg.dpt_out_channels,
            "intermediate_layer_idx": cfg.dpt_intermediate_layer_idx,
        }
        self.point_head = (
            DPTHead(dim2, output_dim=4, activation="inv_log", conf_activation="expp1", **dpt)
            if cfg.enable_point
            else None
        )
        self.depth_head = (
            DPTHead(dim2, output_dim=2, activation="exp", conf_activation="expp1", **dpt)
            if cfg.enable_depth
            else None
        )

    def heads(
        self, tokens_list: list[torch.Tensor], images: torch.Tensor, patch_start_idx: int
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Run the enabled heads in float32 on aggregator outputs (list of [B, S, P, 2C])."""
        cfg = self.config
        out: dict = {}
        dev = images.device.type
        ctx = torch.autocast(dev, enabled=False) if dev in ("cuda", "cpu") else nullcontext()
        with ctx:
            tokens = [t.float() for t in tokens_list]
            images = images.float()
            if self.camera_head is not None:
                pose_list = self.camera_head(tokens, num_iterations=cfg.camera_iterations)
                out["pose_enc"] = pose_list[-1]
                out["pose_enc_list"] = pose_list
            if self.depth_head is not None:
                out["depth"], out["depth_conf"] = self.depth_head(
                    tokens, images, patch_start_idx, cfg.dpt_frames_chunk_size
                )
            if self.point_head is not None:
                out["world_points"], out["world_points_conf"] = self.point_head(
                    tokens, images, patch_start_idx, cfg.dpt_frames_chunk_size
                )
        return out

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        if images.dim() == 4:
            images = images.unsqueeze(0)
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"VGGT expects images [B, S, 3, H, W], got {tuple(images.shape)}")
        tokens_list, patch_start_idx = self.aggregator(images)
        out = self.heads(tokens_list, images, patch_start_idx)
        if not self.training:
            out["images"] = images
        return out
