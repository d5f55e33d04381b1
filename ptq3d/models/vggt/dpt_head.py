"""VGGT's dense prediction head (`vggt/heads/dpt_head.py`; DPT, Ranftl et al. 2021).

Four aggregator layers (patch tokens only) -> LayerNorm -> 1x1 conv projections -> resampled to x4, x2,
x1 and x0.5 the patch grid -> RefineNet-style fusion -> bilinear upsample to the image size -> conv head
-> activation. A sinusoidal UV embedding (scale 0.1) is added
after each projection and after the final upsampling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def uv_grid(
    width: int, height: int, aspect_ratio: float, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Normalised pixel-centre coordinates [height, width, 2] (u, v): the image diagonal spans about [-1, 1]
    (u range +-aspect/diag, v range +-1/diag, diag = sqrt(aspect^2 + 1))."""
    diag = (aspect_ratio**2 + 1.0) ** 0.5
    span_x, span_y = aspect_ratio / diag, 1.0 / diag
    xs = torch.linspace(
        -span_x * (width - 1) / width, span_x * (width - 1) / width, steps=width, dtype=dtype, device=device
    )
    ys = torch.linspace(
        -span_y * (height - 1) / height,
        span_y * (height - 1) / height,
        steps=height,
        dtype=dtype,
        device=device,
    )
    uu, vv = torch.meshgrid(xs, ys, indexing="xy")
    return torch.stack((uu, vv), dim=-1)


def sincos_embed(pos: torch.Tensor, dim: int, omega_0: float = 100.0) -> torch.Tensor:
    """pos [N] -> [N, dim] = [sin(pos * w_i), cos(pos * w_i)], w_i = omega_0^(-i/(dim/2)), in float64."""
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0)
    omega = 1.0 / omega_0**omega
    angles = pos.reshape(-1).double()[:, None] * omega[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).float()


def uv_pos_embed(x: torch.Tensor, W: int, H: int, ratio: float = 0.1) -> torch.Tensor:
    """x [N, C, h, w] + ratio * sincos(uv) embedding of an (h, w) grid with the image aspect W/H."""
    h, w = x.shape[-2:]
    grid = uv_grid(w, h, W / H, x.dtype, x.device).reshape(-1, 2)
    C = x.shape[1]
    emb = torch.cat([sincos_embed(grid[:, 0], C // 2), sincos_embed(grid[:, 1], C // 2)], dim=-1)
    emb = (emb.reshape(h, w, C) * ratio).to(x.dtype)
    return x + emb.permute(2, 0, 1)[None]


class ResidualConvUnit(nn.Module):
    """x -> conv2(relu(conv1(relu(x)))) + relu(x).

    The skip carries relu(x), not x: upstream applies an in-place ReLU to the input before the convs, which
    also rewrites the tensor added back. Conformance with the goldens depends on this.
    """

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        return self.conv2(F.relu(self.conv1(x))) + x


class FeatureFusionBlock(nn.Module):
    """(x [N,F,h,w], skip [N,F,h,w] or none) -> resConfUnit2(x + resConfUnit1(skip)) -> bilinear resize
    (align_corners) to `size` (default 2x) -> out_conv 1x1 -> [N, F, h', w']."""

    def __init__(self, features: int, has_residual: bool = True):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.has_residual = has_residual
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size=None) -> torch.Tensor:
        if self.has_residual and skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            size = (x.shape[-2] * 2, x.shape[-1] * 2)
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        return self.out_conv(x)


def activate_head(
    out: torch.Tensor, activation: str, conf_activation: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """out [N, D+1, H, W] -> (values [N, H, W, D], conf [N, H, W]); the last channel is the confidence.

    activation: exp (depth), inv_log (points: sign(x) * expm1(|x|)), linear, relu, sigmoid;
    conf_activation: expp1 (1 + exp), expp0 (exp), sigmoid.
    """
    fmap = out.permute(0, 2, 3, 1)
    val, conf = fmap[..., :-1], fmap[..., -1]
    acts = {
        "exp": torch.exp,
        "inv_log": lambda y: torch.sign(y) * torch.expm1(torch.abs(y)),
        "linear": lambda y: y,
        "relu": F.relu,
        "sigmoid": torch.sigmoid,
    }
    conf_acts = {"expp1": lambda c: 1 + c.exp(), "expp0": torch.exp, "sigmoid": torch.sigmoid}
    if activation not in acts or conf_activation not in conf_acts:
        raise ValueError(f"unknown DPT activation '{activation}' / confidence activation '{conf_activation}'")
    return acts[activation](val), conf_acts[conf_activation](conf)


class DPTHead(nn.Module):
    """forward(tokens_list of [B, S, P, dim_in], images [B, S, 3, H, W], patch_start_idx, frames_chunk_size)
    -> (values [B, S, H, W, output_dim-1], conf [B, S, H, W]).

    Keys: norm, projects.i (1x1 conv to out_channels[i]), resize_layers.{0,1,3} (ConvTranspose x4, x2;
    conv stride 2), scratch.layer{1..4}_rn (3x3, no bias), scratch.refinenet{1..4} (refinenet4 has no
    resConfUnit1), scratch.output_conv1 (features -> features/2), scratch.output_conv2 (3x3 -> 32, ReLU,
    1x1 -> output_dim).
    """

    def __init__(
        self,
        dim_in: int,
        patch_size: int = 14,
        output_dim: int = 4,
        activation: str = "inv_log",
        conf_activation: str = "expp1",
        features: int = 256,
        out_channels: tuple[int, ...] = (256, 512, 1024, 1024),
        intermediate_layer_idx: tuple[int, ...] = (4, 11, 17, 23),
    ):
        super().__init__()
        self.patch_size = patch_size
        self.activation = activation
        self.conf_activation = conf_activation
        self.intermediate_layer_idx = tuple(intermediate_layer_idx)
        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList([nn.Conv2d(dim_in, oc, 1) for oc in out_channels])
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(out_channels[0], out_channels[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(out_channels[1], out_channels[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(out_channels[3], out_channels[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        self.scratch = nn.Module()
        for i, oc in enumerate(out_channels, start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(oc, features, 3, padding=1, bias=False))
        self.scratch.refinenet1 = FeatureFusionBlock(features)
        self.scratch.refinenet2 = FeatureFusionBlock(features)
        self.scratch.refinenet3 = FeatureFusionBlock(features)
        self.scratch.refinenet4 = FeatureFusionBlock(features, has_residual=False)
        self.scratch.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.scratch.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, output_dim, 1)
        )

    def forward(
        self,
        tokens_list: list[torch.Tensor],
        images: torch.Tensor,
        patch_start_idx: int,
        frames_chunk_size: int | None = 8,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        S = images.shape[1]
        if not frames_chunk_size or frames_chunk_size >= S:
            return self._forward_frames(tokens_list, images, patch_start_idx, 0, S)
        parts = [
            self._forward_frames(tokens_list, images, patch_start_idx, s, min(s + frames_chunk_size, S))
            for s in range(0, S, frames_chunk_size)
        ]
        return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)

    def _forward_frames(
        self, tokens_list: list[torch.Tensor], images: torch.Tensor, patch_start_idx: int, s0: int, s1: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B, _, _, H, W = images.shape
        S = s1 - s0
        h, w = H // self.patch_size, W // self.patch_size
        feats = []
        for i, layer_idx in enumerate(self.intermediate_layer_idx):
            x = tokens_list[layer_idx][:, s0:s1, patch_start_idx:]
            x = self.norm(x.reshape(B * S, -1, x.shape[-1]))
            x = x.permute(0, 2, 1).reshape(B * S, -1, h, w)
            x = uv_pos_embed(self.projects[i](x), W, H)
            feats.append(self.resize_layers[i](x))
        out = self._fuse(feats)
        out = F.interpolate(
            out, size=(h * self.patch_size, w * self.patch_size), mode="bilinear", align_corners=True
        )
        out = self.scratch.output_conv2(uv_pos_embed(out, W, H))
        val, conf = activate_head(out, self.activation, self.conf_activation)
        return val.reshape(B, S, *val.shape[1:]), conf.reshape(B, S, *conf.shape[1:])

    def _fuse(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """RefineNet fusion from the coarsest level (4) to the finest (1), then output_conv1."""
        sc = self.scratch
        l1, l2, l3, l4 = (getattr(sc, f"layer{i}_rn")(f) for i, f in enumerate(feats, start=1))
        out = sc.refinenet4(l4, size=l3.shape[2:])
        out = sc.refinenet3(out, l3, size=l2.shape[2:])
        out = sc.refinenet2(out, l2, size=l1.shape[2:])
        out = sc.refinenet1(out, l1)
        return sc.output_conv1(out)
