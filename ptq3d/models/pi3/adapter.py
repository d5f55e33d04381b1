"""`Pi3Adapter`: the GeometryModel view of a `Pi3` module (predictions, blocks, quant sites, task outputs).

Conventions in the Predictions it returns:
- depth [B, S, H, W] = z of the local (camera-frame) point map, in the model's own scale.
- depth_conf = points_conf [B, S, H, W] = sigmoid(conf logits), in (0, 1): Pi3 has one confidence map,
  and its README applies a sigmoid (e.g. masks with sigmoid(conf) > 0.1).
- world_points [B, S, H, W, 3] = Pi3 `points` (model-chosen world frame, not the first camera).
- extrinsics [B, S, 3, 4] = OpenCV camera-from-world = inverse of Pi3's camera-to-world camera_poses.
- intrinsics = None (Pi3 predicts none).
"""

from __future__ import annotations

import functools

import torch

from ptq3d.models.base import (
    BlockContext,
    BlockInfo,
    GeometryModel,
    Precision,
    Predictions,
    QuantScope,
    eval_precision,
)
from ptq3d.models.pi3.model import Pi3

SCOPES = ("aggregator", "all")


def invert_rigid(c2w: torch.Tensor) -> torch.Tensor:
    """Camera-to-world [..., 4, 4] (or [..., 3, 4]) rigid poses -> camera-from-world [..., 3, 4]:
    [R^T | -R^T t], exact for orthonormal R (Pi3's rotations come from an SVD)."""
    rot = c2w[..., :3, :3]
    t = c2w[..., :3, 3:]
    rot_t = rot.transpose(-1, -2)
    return torch.cat([rot_t, -rot_t @ t], dim=-1)


class Pi3Adapter(GeometryModel):
    """GeometryModel for `Pi3`.

    Blocks in execution order: scope "aggregator" = decoder.0..D-1 (kind "decoder"; even = frame
    attention, odd = global attention); scope "all" puts the DINOv2 encoder blocks (encoder.blocks.i, kind
    "encoder", frame attention) first. Block tokens are x [B, S, P, C]: P = 5 + h*w for decoder blocks and
    1 + 4 + h*w (cls, encoder registers, patches) for encoder blocks. In scope "all" the first decoder
    block's forward also does the glue: encoder final norm, keep the patch tokens, prepend Pi3's 5 register
    tokens. ctx.pos holds the decoder RoPE positions [B*S, P, 2].
    """

    name = "pi3"

    def __init__(self, module: Pi3, name: str | None = None):
        if not isinstance(module, Pi3):
            raise TypeError(f"Pi3Adapter wraps a ptq3d Pi3 module, got {type(module).__name__}")
        super().__init__(module, name)
        self.module: Pi3 = module

    # --- inference -------------------------------------------------------------------------------
    def predict(self, images: torch.Tensor, precision: Precision = "fp32") -> Predictions:
        """images [B, S, 3, H, W] in [0, 1] -> Predictions (see module docstring), under no_grad. precision
        "bf16-autocast": encoder and decoders in bf16 autocast, the heads in float32 (see eval_precision)."""
        with torch.no_grad(), eval_precision(precision, images.device.type):
            out = self.module(images)
        conf = torch.sigmoid(out["conf"][..., 0])
        return Predictions(
            depth=out["local_points"][..., 2],
            depth_conf=conf,
            world_points=out["points"],
            points_conf=conf.clone(),  # its own storage: the FP cache (safetensors) refuses shared tensors
            extrinsics=invert_rigid(out["camera_poses"]),
            intrinsics=None,
            raw=out,
        )

    def task_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Differentiable: camera [B, S, 12] (camera-to-world [R | t] row-major), depth [B, S, H, W] (local z),
        points [B, S, H, W, 3] (world)."""
        out = self.module(images)
        B, S = out["camera_poses"].shape[:2]
        return {
            "camera": out["camera_poses"][..., :3, :4].reshape(B, S, 12),
            "depth": out["local_points"][..., 2],
            "points": out["points"],
        }

    # --- blocks ----------------------------------------------------------------------------------
    def _check_scope(self, scope: str) -> None:
        if scope not in SCOPES:
            raise ValueError(f"unknown block scope '{scope}' (known: {', '.join(SCOPES)})")

    def blocks(self, scope: QuantScope = "aggregator") -> list[BlockInfo]:
        self._check_scope(scope)
        m = self.module
        infos: list[BlockInfo] = []
        if scope == "all":
            for i, blk in enumerate(m.encoder.blocks):
                infos.append(
                    BlockInfo(
                        f"encoder.blocks.{i}",
                        "encoder",
                        "frame",
                        blk,
                        functools.partial(self._encoder_fwd, i),
                    )
                )
        for i, blk in enumerate(m.decoder):
            glue = scope == "all" and i == 0
            infos.append(
                BlockInfo(
                    f"decoder.{i}",
                    "decoder",
                    "frame" if i % 2 == 0 else "global",
                    blk,
                    functools.partial(self._decoder_fwd, i, glue),
                )
            )
        return infos

    def _encoder_fwd(self, i: int, x: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        B, S, P, C = x.shape
        return self.module.encoder.blocks[i](x.reshape(B * S, P, C)).reshape(B, S, P, C)

    def _decoder_fwd(self, i: int, glue: bool, x: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        m = self.module
        B, S = x.shape[:2]
        hidden = x.reshape(B * S, *x.shape[2:])
        if glue:
            hidden = m.decoder_input(m.encoder_output(hidden))
        out = m.decoder_block(i, hidden, ctx.pos, B)
        return out.reshape(B, S, *out.shape[1:])

    def capture_block_input(
        self, images: torch.Tensor, scope: QuantScope = "aggregator"
    ) -> tuple[torch.Tensor, BlockContext]:
        """Input of the first block of `scope` as [B, S, P, C], and its context (decoder RoPE positions in
        ctx.pos, (H, W) in ctx.extras["image_hw"])."""
        self._check_scope(scope)
        m = self.module
        B, S, H, W = m.check_images(images)
        hw = (H // m.patch_size) * (W // m.patch_size)
        if scope == "all":
            x = m.encoder_input(images)
        else:
            x = m.decoder_input(m.encode(images))
        pos = m.decoder_pos(B * S, (H, W), x.device)
        ctx = BlockContext(
            batch=B,
            frames=S,
            tokens_per_frame=m.patch_start_idx + hw,
            pos=pos,
            patch_start_idx=m.patch_start_idx,
            extras={"image_hw": (H, W), "encoder_patch_start_idx": 1 + m.encoder.num_register_tokens},
        )
        return x.reshape(B, S, *x.shape[1:]), ctx

    def decoder_hidden(self, block_outputs: list[torch.Tensor]) -> torch.Tensor:
        """What Pi3 feeds its heads, from the outputs [B, S, P, C] of the decoder blocks in order:
        concat of the last two -> [B*S, P, 2C]."""
        if len(block_outputs) < 2:
            raise ValueError("decoder_hidden needs the outputs of at least the last two decoder blocks")
        a, b = block_outputs[-2], block_outputs[-1]
        return torch.cat([a, b], dim=-1).flatten(0, 1)
