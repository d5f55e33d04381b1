"""VGGTAdapter: the GeometryModel view of our VGGT module (what methods and the harness use)."""

from __future__ import annotations

import torch
from torch import nn

from ptq3d.models.base import (
    BlockContext,
    BlockInfo,
    GeometryModel,
    Precision,
    Predictions,
    QuantScope,
    eval_precision,
)
from ptq3d.models.vggt.aggregator import Aggregator
from ptq3d.models.vggt.model import VGGT
from ptq3d.models.vggt.pose import pose_encoding_to_extri_intri

SCOPES = ("aggregator", "all")


class VGGTAdapter(GeometryModel):
    """Wraps a `VGGT` module.

    Block order: scope "aggregator" = frame_blocks.0, global_blocks.0, frame_blocks.1, ... (2*depth blocks;
    VGGT-1B: 48 blocks, 192 Linears); scope "all" puts the DINOv2 blocks `aggregator.patch_embed.blocks.i` first.
    Tokens between blocks are [B, S, P, C] (P = 5 + h*w); encoder blocks carry [B, S, T, C] (T = 1 + 4 + h*w).
    Every BlockInfo.forward looks its block up by name at call time, and predict() runs the same module tree,
    so replacing a submodule (module.set_submodule) changes both.
    """

    name = "vggt"

    def __init__(self, module: VGGT, name: str | None = None):
        super().__init__(module, name)
        self.module: VGGT = module

    @property
    def aggregator(self) -> Aggregator:
        return self.module.aggregator

    # --- inference -------------------------------------------------------------------------------
    def _check_images(self, images: torch.Tensor) -> None:
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"images must be [B, S, 3, H, W], got {tuple(images.shape)}")
        p = self.module.config.patch_size
        if images.shape[-1] % p or images.shape[-2] % p:
            raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of the patch size {p}")

    def predictions_from_raw(self, raw: dict, image_hw: tuple[int, int]) -> Predictions:
        """VGGT output dict -> Predictions (cameras decoded from the last pose encoding)."""
        missing = [k for k in ("pose_enc", "depth", "world_points") if k not in raw]
        if missing:
            raise ValueError(f"{self.name}: heads disabled in this config, no {', '.join(missing)}")
        extrinsics, intrinsics = pose_encoding_to_extri_intri(raw["pose_enc"], image_hw)
        return Predictions(
            depth=raw["depth"][..., 0],
            depth_conf=raw["depth_conf"],
            world_points=raw["world_points"],
            points_conf=raw["world_points_conf"],
            extrinsics=extrinsics,
            intrinsics=intrinsics,
            raw=raw,
        )

    @torch.no_grad()
    def predict(self, images: torch.Tensor, precision: Precision = "fp32") -> Predictions:
        """images [B, S, 3, H, W] in [0, 1] -> Predictions (world frame = first camera, up to scale).
        precision "bf16-autocast": the aggregator in bf16 autocast, the heads in float32 (see eval_precision)."""
        self._check_images(images)
        with eval_precision(precision, images.device.type):
            raw = self.module(images)
        return self.predictions_from_raw(raw, tuple(images.shape[-2:]))

    def predict_from_tokens(self, tokens_list: list[torch.Tensor], images: torch.Tensor) -> Predictions:
        """Run only the heads on given aggregator outputs (list of depth [B, S, P, 2C])."""
        raw = self.module.heads(tokens_list, images, self.aggregator.patch_start_idx)
        return self.predictions_from_raw(raw, tuple(images.shape[-2:]))

    def task_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """camera: pose_enc [B, S, 9]; depth [B, S, H, W]; points [B, S, H, W, 3]. Differentiable (grad mode is
        the caller's); the camera head detaches its previous estimate between iterations, as upstream."""
        self._check_images(images)
        raw = self.module(images)
        return {"camera": raw["pose_enc"], "depth": raw["depth"][..., 0], "points": raw["world_points"]}

    # --- block structure ------------------------------------------------------------------------
    def _block_forward(self, name: str, attention: str, glue: bool = False):
        agg_run = Aggregator.run_frame_block if attention == "frame" else Aggregator.run_global_block

        def forward(x: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
            block = self.module.get_submodule(name)
            if glue:  # DINOv2 output [B, S, T, C] -> final norm, patch tokens, camera/register tokens
                B, S, T, C = x.shape
                x = self.aggregator.tokens_from_encoder(x.reshape(B * S, T, C), B, S).reshape(B, S, -1, C)
            return agg_run(block, x, ctx.pos)

        return forward

    def _encoder_forward(self, name: str):
        def forward(x: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
            B, S, T, C = x.shape
            return self.module.get_submodule(name)(x.reshape(B * S, T, C)).reshape(B, S, T, C)

        return forward

    def blocks(self, scope: QuantScope = "aggregator") -> list[BlockInfo]:
        if scope not in SCOPES:
            raise ValueError(f"unknown block scope '{scope}' (known: {', '.join(SCOPES)})")
        out: list[BlockInfo] = []
        if scope == "all":
            for i, blk in enumerate(self.aggregator.patch_embed.blocks):
                name = f"aggregator.patch_embed.blocks.{i}"
                out.append(BlockInfo(name, "encoder", "frame", blk, self._encoder_forward(name)))
        for i in range(len(self.aggregator.frame_blocks)):
            for kind in ("frame", "global"):
                name = f"aggregator.{kind}_blocks.{i}"
                glue = scope == "all" and i == 0 and kind == "frame"
                out.append(
                    BlockInfo(
                        name,
                        kind,
                        kind,
                        self.module.get_submodule(name),
                        self._block_forward(name, kind, glue),
                    )
                )
        return out

    def capture_block_input(
        self, images: torch.Tensor, scope: QuantScope = "aggregator"
    ) -> tuple[torch.Tensor, BlockContext]:
        """Input of the first block of `scope` [B, S, P, C] (scope "all": DINOv2 tokens [B, S, T, C]) and the
        context: pos [B*S, P, 2] aggregator RoPE positions, patch_start_idx 5, extras image_hw and scope."""
        if scope not in SCOPES:
            raise ValueError(f"unknown block scope '{scope}' (known: {', '.join(SCOPES)})")
        self._check_images(images)
        B, S, _, H, W = images.shape
        agg = self.aggregator
        if scope == "all":
            x = agg.encoder_input(images)
        else:
            x, _ = agg.embed(images)
        p = self.module.config.patch_size
        P = agg.patch_start_idx + (H // p) * (W // p)
        ctx = BlockContext(
            batch=B,
            frames=S,
            tokens_per_frame=P,
            pos=agg.positions(B, S, H, W, images.device),
            patch_start_idx=agg.patch_start_idx,
            extras={"image_hw": (H, W), "scope": scope},
        )
        return x.reshape(B, S, x.shape[1], x.shape[2]), ctx

    def aggregated_tokens(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The aggregator output list (depth x [B, S, P, 2C])."""
        return self.module.aggregator(images)[0]

    def head_modules(self) -> dict[str, nn.Module]:
        """The enabled heads by name (not quantized by default)."""
        return {
            n: m
            for n in ("camera_head", "depth_head", "point_head")
            if (m := getattr(self.module, n)) is not None
        }
