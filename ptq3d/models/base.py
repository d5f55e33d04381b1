"""The model-facing records every other part of ptq3d relies on.

Conventions (all tensors torch, float32 unless stated):
- images: [B, S, 3, H, W] in [0, 1]; models normalise internally.
- extrinsics: OpenCV camera-from-world [.., 3, 4] (x right, y down, z forward).
- intrinsics: [.., 3, 3] in pixels of the network input; principal point convention: pixel centres at +0.5.
- depth: metres (or the model's own scale), 0 = invalid.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from ptq3d.errors import ConfigError

BlockKind = Literal["encoder", "frame", "global", "decoder"]
Attention = Literal["frame", "global"]
QuantScope = Literal["aggregator", "all"]
TASKS: tuple[str, ...] = ("camera", "depth", "points")
Precision = Literal["fp32", "bf16-autocast"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16-autocast")


def check_precision(precision: str) -> None:
    """One-line error for a precision outside PRECISIONS."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision = {precision!r}: allowed values are {', '.join(PRECISIONS)}")


@contextlib.contextmanager
def eval_precision(precision: str, device_type: str) -> Iterator[None]:
    """The numeric precision a forward pass runs in, as the papers evaluate.

    "fp32": plain float32 (the CPU default). "bf16-autocast": torch.autocast(device_type, bfloat16) around the
    whole forward, as VGGT's demo and evaluation scripts run it on Ampere+ GPUs; the models' heads disable
    autocast themselves and run in float32 (VGGT.heads, Pi3.predict_heads), so only the encoder, aggregator /
    decoder and Pi3's head decoders run in bf16. Fake-quantized layers quantize in float32 inside it and return
    bf16 (ptq3d.quant.qlinear.QuantLinear.forward)."""
    check_precision(precision)
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
        yield


@dataclass
class Predictions:
    """What every model adapter returns.

    depth:          [B, S, H, W]      (Pi3: z of the local point map)
    depth_conf:     [B, S, H, W]      confidence, higher is more confident
    world_points:   [B, S, H, W, 3]   in the model's world frame (VGGT: first camera; Pi3: model-chosen)
    points_conf:    [B, S, H, W]
    extrinsics:     [B, S, 3, 4]      OpenCV camera-from-world
    intrinsics:     [B, S, 3, 3] or None (Pi3 predicts none)
    raw:            the model's own output dict, untouched
    """

    depth: torch.Tensor
    depth_conf: torch.Tensor
    world_points: torch.Tensor
    points_conf: torch.Tensor
    extrinsics: torch.Tensor
    intrinsics: torch.Tensor | None
    raw: dict[str, Any] = field(default_factory=dict)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The named, non-None prediction tensors (not `raw`)."""
        out = {
            "depth": self.depth,
            "depth_conf": self.depth_conf,
            "world_points": self.world_points,
            "points_conf": self.points_conf,
            "extrinsics": self.extrinsics,
        }
        if self.intrinsics is not None:
            out["intrinsics"] = self.intrinsics
        return out

    def to(self, device: torch.device | str) -> Predictions:
        moved = {k: v.to(device) for k, v in self.tensors().items()}
        return Predictions(**{**moved, "intrinsics": moved.get("intrinsics")}, raw=self.raw)


@dataclass
class BlockContext:
    """Everything a block needs besides its tokens, for one batch of scenes.

    batch, frames: B and S of the images the tokens came from.
    tokens_per_frame: P (special tokens + patches) for aggregator/decoder blocks.
    pos: RoPE positions [B*S, P, 2] (long) or None.
    patch_start_idx: index of the first patch token within a frame.
    extras: model-specific values (kept small).
    """

    batch: int
    frames: int
    tokens_per_frame: int
    pos: torch.Tensor | None = None
    patch_start_idx: int = 0
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class BlockInfo:
    """One transformer block in execution order.

    name: the module path in the model (e.g. "aggregator.frame_blocks.3").
    kind: encoder / frame / global / decoder.
    attention: "frame" (attention within each frame, tokens run as [B*S, P, C]) or
        "global" (attention over all frames of a scene, tokens run as [B, S*P, C]).
    module: the block nn.Module (its linears are the quant sites under it).
    forward: fn(x [B, S, P, C], ctx) -> [B, S, P, C]. It reshapes to the attention layout itself and
        includes any glue between the previous block and this one (e.g. the encoder's final norm and the
        special tokens before the first aggregator block), so calling the blocks() in order on the
        captured input reproduces the model's token stream exactly.
    """

    name: str
    kind: BlockKind
    attention: Attention
    module: nn.Module
    forward: Callable[[torch.Tensor, BlockContext], torch.Tensor]


class GeometryModel:
    """Adapter around a VGGT- or Pi3-like nn.Module; the only model API the methods and harness use.

    Subclasses implement predict, blocks, capture_block_input and task_outputs.
    quant_sites is generic: the nn.Linear layers under the blocks in scope.
    """

    name: str = "model"

    def __init__(self, module: nn.Module, name: str | None = None):
        self.module = module
        if name is not None:
            self.name = name

    # --- inference -------------------------------------------------------------------------------
    def predict(self, images: torch.Tensor, precision: Precision = "fp32") -> Predictions:  # pragma: no cover
        """images [B, S, 3, H, W] in [0, 1] -> Predictions; `precision` see eval_precision (outputs float32)."""
        raise NotImplementedError

    # --- block structure ------------------------------------------------------------------------
    def blocks(self, scope: QuantScope = "aggregator") -> list[BlockInfo]:  # pragma: no cover
        """Blocks in execution order. scope "aggregator" (VGGT frame+global, Pi3 decoder) or
        "all" (adds the DINOv2 encoder blocks first)."""
        raise NotImplementedError

    def capture_block_input(
        self, images: torch.Tensor, scope: QuantScope = "aggregator"
    ) -> tuple[torch.Tensor, BlockContext]:  # pragma: no cover
        """Run everything before the first block of `scope`; return its input [B, S, P, C] and ctx."""
        raise NotImplementedError

    def task_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover
        """Differentiable task outputs for task-aware methods:
        camera [B, S, D_cam] (VGGT: pose encoding [B,S,9]; Pi3: flattened c2w [B,S,12]),
        depth [B, S, H, W], points [B, S, H, W, 3]. Runs with grad enabled if the caller enables it."""
        raise NotImplementedError

    # --- quantization sites ---------------------------------------------------------------------
    def quant_sites(self, scope: QuantScope = "aggregator") -> dict[str, nn.Linear]:
        """Fully-qualified name -> nn.Linear for every linear under the blocks in scope, execution order."""
        sites: dict[str, nn.Linear] = {}
        for blk in self.blocks(scope):
            for sub_name, mod in blk.module.named_modules():
                if isinstance(mod, nn.Linear):
                    sites[f"{blk.name}.{sub_name}"] = mod
        return sites

    def iter_block_sites(
        self, scope: QuantScope = "aggregator"
    ) -> Iterator[tuple[BlockInfo, dict[str, nn.Linear]]]:
        """(block, {relative name -> nn.Linear}) per block, execution order."""
        for blk in self.blocks(scope):
            yield blk, {n: m for n, m in blk.module.named_modules() if isinstance(m, nn.Linear)}

    @property
    def device(self) -> torch.device:
        """Where the module's parameters are (CPU for a module without parameters)."""
        param = next(self.module.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def eval(self) -> GeometryModel:
        self.module.eval()
        return self
