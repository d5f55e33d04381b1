"""A small VGGT-like GeometryModel for testing the quantization methods without the real model.

Images [B, S, 3, H, W] -> patch conv -> (optional encoder blocks, per frame, patch tokens only) -> camera +
register tokens prepended -> alternating frame / global pre-norm blocks over tokens [B, S, P, C]
(VGGT's names: norm1, attn.qkv, attn.q_norm/k_norm, attn.proj, ls1, norm2, mlp.fc1, mlp.fc2, ls2) ->
heads (depth + confidence per patch pixel, a 9-d camera code).

Heavy tails are injected on purpose: a few norm gains are x10..x30 (outlier input channels of qkv/fc1),
the special tokens are large (outlier tokens), and a few fc1 rows are large (outlier fc2 input channels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ptq3d.datasets.base import SceneSample
from ptq3d.models.base import BlockContext, BlockInfo, GeometryModel, Predictions


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.LayerNorm(dim // heads)
        self.k_norm = nn.LayerNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = self.q_norm(qkv[0]), self.k_norm(qkv[1]), qkv[2]
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(n, t, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x):
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4, ls: float = 0.5):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ls1 = LayerScale(dim, ls)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * mlp_ratio)
        self.ls2 = LayerScale(dim, ls)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class ToyNet(nn.Module):
    def __init__(self, dim=64, heads=4, depth=2, enc_depth=1, patch=8, num_register=4, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.patch = patch
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.encoder = nn.ModuleList([Block(dim, heads) for _ in range(enc_depth)])
        self.camera_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_token = nn.Parameter(torch.zeros(1, num_register, dim))
        self.frame_blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.global_blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.head_norm = nn.LayerNorm(dim)
        self.depth_head = nn.Linear(dim, 2 * patch * patch)
        self.camera_head = nn.Linear(dim, 9)
        self.num_special = 1 + num_register
        with torch.no_grad():
            for p in self.parameters():
                if p.dim() >= 2:
                    p.copy_(
                        torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5
                        if p.dim() == 2
                        else torch.randn(p.shape, generator=g) * 0.05
                    )
            self.camera_token.copy_(torch.randn(1, 1, dim, generator=g) * 20)
            self.register_token.copy_(torch.randn(1, num_register, dim, generator=g) * 10)
            for blk in [*self.encoder, *self.frame_blocks, *self.global_blocks]:
                for norm in (blk.norm1, blk.norm2):
                    idx = torch.randperm(dim, generator=g)[:3]
                    norm.weight[idx] = torch.tensor([10.0, -20.0, 30.0])
                    norm.bias.copy_(torch.randn(dim, generator=g) * 0.1)
                rows = torch.randperm(blk.mlp.fc1.out_features, generator=g)[:4]
                blk.mlp.fc1.weight[rows] *= 8
            self.depth_head.weight.mul_(0.1)

    # pieces the adapter's BlockInfo.forward closures reuse
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        b, s = images.shape[:2]
        x = self.patch_embed(images.flatten(0, 1) * 2 - 1)  # [B*S, C, h, w]
        return x.flatten(2).transpose(1, 2).reshape(b, s, -1, x.shape[1])

    def add_special(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _, c = x.shape
        sp = torch.cat([self.camera_token, self.register_token], dim=1).expand(b * s, -1, -1)
        return torch.cat([sp.reshape(b, s, -1, c), x], dim=2)

    def heads(self, x: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, s, _, c = x.shape
        x = self.head_norm(x)
        cam = self.camera_head(x[:, :, 0])
        h, w = hw
        p = self.patch
        pt = self.depth_head(x[:, :, self.num_special :])  # [B, S, hp*wp, 2*p*p]
        pt = pt.reshape(b, s, h // p, w // p, 2, p, p).permute(0, 1, 4, 2, 5, 3, 6).reshape(b, s, 2, h, w)
        return cam, pt[:, :, 0].exp(), 1 + pt[:, :, 1].exp()


def _frame_fwd(block: Block):
    def fwd(x: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        b, s, p, c = x.shape
        return block(x.reshape(b * s, p, c)).reshape(b, s, p, c)

    return fwd


def _global_fwd(block: Block):
    def fwd(x: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        b, s, p, c = x.shape
        return block(x.reshape(b, s * p, c)).reshape(b, s, p, c)

    return fwd


class ToyGeometryModel(GeometryModel):
    """GeometryModel adapter for ToyNet (see module docstring)."""

    name = "toy"

    def __init__(self, module: ToyNet | None = None, **kw):
        super().__init__(module if module is not None else ToyNet(**kw))
        self.module.eval()

    def _with_glue(self, first: Block, fwd):
        net = self.module

        def glued(x, ctx):  # encoder output [B,S,Np,C] -> prepend special tokens, then the first block
            return fwd(net.add_special(x), ctx)

        return glued

    def blocks(self, scope="aggregator") -> list[BlockInfo]:
        net = self.module
        out: list[BlockInfo] = []
        if scope == "all":
            for i, blk in enumerate(net.encoder):
                out.append(BlockInfo(f"encoder.{i}", "encoder", "frame", blk, _frame_fwd(blk)))
        for i, (fb, gb) in enumerate(zip(net.frame_blocks, net.global_blocks, strict=True)):
            ffwd = _frame_fwd(fb)
            if i == 0 and scope == "all":
                ffwd = self._with_glue(fb, ffwd)
            out.append(BlockInfo(f"frame_blocks.{i}", "frame", "frame", fb, ffwd))
            out.append(BlockInfo(f"global_blocks.{i}", "global", "global", gb, _global_fwd(gb)))
        return out

    def capture_block_input(self, images, scope="aggregator"):
        net = self.module
        b, s, _, h, w = images.shape
        x = net.embed(images)
        if scope != "all":
            for blk in net.encoder:
                x = _frame_fwd(blk)(x, None)
            x = net.add_special(x)
        ctx = BlockContext(batch=b, frames=s, tokens_per_frame=x.shape[2], patch_start_idx=net.num_special)
        return x, ctx

    def _run(self, images):
        x, ctx = self.capture_block_input(images, "all")
        for blk in self.blocks("all"):
            x = blk.forward(x, ctx)
        return self.module.heads(x, images.shape[-2:])

    def task_outputs(self, images):
        cam, depth, _ = self._run(images)
        return {"camera": cam, "depth": depth, "points": self._points(depth)}

    @staticmethod
    def _points(depth):
        b, s, h, w = depth.shape
        ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        rays = torch.stack([(xs - w / 2) / w, (ys - h / 2) / h, torch.ones_like(xs)], dim=-1)
        return depth[..., None] * rays

    @torch.no_grad()
    def predict(self, images):
        cam, depth, conf = self._run(images)
        b, s = depth.shape[:2]
        h, w = depth.shape[-2:]
        ext = torch.cat([torch.eye(3).expand(b, s, 3, 3), cam[..., :3, None]], dim=-1)
        K = torch.tensor([[w, 0, w / 2], [0, h, h / 2], [0, 0, 1.0]]).expand(b, s, 3, 3)
        return Predictions(depth, conf, self._points(depth), conf, ext, K, raw={"camera": cam})


def toy_scenes(n: int, frames: int = 3, size: int = 32, seed: int = 0) -> list[SceneSample]:
    """Random smooth-ish images as SceneSamples (geometry fields are placeholders)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        low = torch.rand(frames, 3, size // 8, size // 8, generator=g)
        img = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
        img = (img + 0.05 * torch.rand(frames, 3, size, size, generator=g)).clamp(0, 1)
        out.append(
            SceneSample(
                images=img,
                depth=torch.ones(frames, size, size),
                valid_mask=torch.ones(frames, size, size, dtype=torch.bool),
                intrinsics=torch.eye(3).expand(frames, 3, 3).clone(),
                extrinsics=torch.eye(3, 4).expand(frames, 3, 4).clone(),
                meta={"dataset": "toy", "scene": f"toy{seed}_{i}", "frame_ids": list(range(frames))},
            )
        )
    return out
