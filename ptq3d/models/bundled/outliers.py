"""Function-preserving outlier-channel injection: the bundled tiny model with VGGT-1B-like heavy-tailed quant-site
inputs and the same predictions.

A 40-minute CPU training run does not grow the large outlier channels of VGGT-1B (see the model card), and
without them every activation quantizer looks alike. `inject_channel_outliers` rescales a few channels per block
so that the inputs of qkv, fc1 and proj carry outliers, while the network computes the same function:

- norm1 -> qkv and norm2 -> fc1: LayerNorm weight and bias of channel c times alpha_c, and column c of the
  following linear divided by alpha_c (LN output channel c is affine in its weight and bias);
- v -> proj: the v rows of qkv (rows 2C + c) and their bias times alpha_c, column c of proj divided by alpha_c
  (attention is linear in v, channel by channel).
fc2 inputs (after GELU) cannot be rescaled exactly and are left as they are. This is SmoothQuant's migration run
backwards, so methods that smooth or rotate (SmoothQuant, QuaRot) can undo it and plain RTN cannot, which is the
gap the PTQ papers measure.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptq3d.models.base import GeometryModel


@dataclass(frozen=True)
class OutlierConfig:
    """channels: outlier channels per site and block; scale: (low, high) range of their alpha, drawn
    log-uniformly; seed: the draw; sites: which of 'qkv', 'fc1', 'proj' get outliers."""

    channels: int = 2
    scale: tuple[float, float] = (20.0, 60.0)
    seed: int = 0
    sites: tuple[str, ...] = ("qkv", "fc1", "proj")


def _alpha(dim: int, cfg: OutlierConfig, gen: torch.Generator) -> torch.Tensor:
    alpha = torch.ones(dim, dtype=torch.float64)
    idx = torch.randperm(dim, generator=gen)[: cfg.channels]
    lo, hi = torch.tensor(cfg.scale, dtype=torch.float64).log()
    alpha[idx] = torch.exp(lo + (hi - lo) * torch.rand(len(idx), generator=gen, dtype=torch.float64))
    return alpha


@torch.no_grad()
def inject_channel_outliers(
    model: GeometryModel, cfg: OutlierConfig = OutlierConfig()
) -> dict[str, list[int]]:
    """Rescale channels of every aggregator block of `model` in place (see module docstring).

    Returns {block name: outlier channel indices of its qkv input} for the record. The predictions change only
    by float rounding.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    record: dict[str, list[int]] = {}
    for blk in model.blocks("aggregator"):
        b = blk.module
        C = b.norm1.weight.shape[0]
        if "qkv" in cfg.sites:
            a = _alpha(C, cfg, gen)
            _scale_ln_into_linear(b.norm1, b.attn.qkv, a)
            record[blk.name] = [int(i) for i in torch.nonzero(a != 1).flatten()]
        if "fc1" in cfg.sites:
            _scale_ln_into_linear(b.norm2, b.mlp.fc1, _alpha(C, cfg, gen))
        if "proj" in cfg.sites:
            a = _alpha(C, cfg, gen)
            qkv, proj = b.attn.qkv, b.attn.proj
            w = qkv.weight.double()
            w[2 * C :] *= a[:, None]
            qkv.weight.copy_(w)
            if qkv.bias is not None:
                bias = qkv.bias.double()
                bias[2 * C :] *= a
                qkv.bias.copy_(bias)
            proj.weight.copy_(proj.weight.double() / a[None, :])
    return record


def _scale_ln_into_linear(norm: torch.nn.LayerNorm, linear: torch.nn.Linear, alpha: torch.Tensor) -> None:
    norm.weight.copy_(norm.weight.double() * alpha)
    norm.bias.copy_(norm.bias.double() * alpha)
    linear.weight.copy_(linear.weight.double() / alpha[None, :])
