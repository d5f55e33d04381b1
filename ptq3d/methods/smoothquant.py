"""SmoothQuant (Xiao et al. 2023): migrate activation outliers into the weights, then RTN.

Per linear input channel j: s_j = max|X_j|^alpha / max_i |W_ij|^(1 - alpha) (clamped >= 1e-5; the weight
max taken over all linears sharing the input, clamped >= 1e-5), and X W^T = (X / s)(W diag(s))^T.
- Where a norm feeds only the linears (VGGT/Pi3 blocks: norm1 -> attn.qkv, norm2 -> mlp.fc1; `fold`), the
  1/s is folded into the norm's weight and bias, as the reference `smooth_ln_fcs` does (no runtime cost).
- Elsewhere (attn.proj after attention, mlp.fc2 after GELU, where nothing linear precedes) the reference
  does not smooth; with `online=True` we apply x / s as an online ChannelScale input transform.
Statistics: per-channel max |input| over all calibration tokens of the FP model (the reference's
get_act_scales runs the FP model), so the block loop propagates FP outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ptq3d.methods.registry import MethodConfig, register_method
from ptq3d.methods.rtn import rtn_linear
from ptq3d.quant.transforms import ChannelScale


def smoothing_scales(act_scales: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """s [in] = clamp(act_scales^alpha / w^(1-alpha), 1e-5), w_j = clamp(max over weights and rows |W_ij|, 1e-5).
    act_scales [in]: per-channel max |x|; weights: [out_k, in] sharing that input."""
    weight_scales = torch.cat([w.abs().max(dim=0, keepdim=True)[0] for w in weights], dim=0)
    weight_scales = weight_scales.max(dim=0)[0].clamp(min=1e-5)
    return (act_scales.pow(alpha) / weight_scales.pow(1 - alpha)).clamp(min=1e-5)


@torch.no_grad()
def smooth_norm_linears(norm: nn.Module, linears: list[nn.Linear], act_scales: torch.Tensor, alpha: float):
    """Fold the smoothing into `norm` (weight and bias divided by s) and the linears (columns times s),
    in place. Returns s [in]."""
    scales = smoothing_scales(act_scales, [fc.weight for fc in linears], alpha)
    norm.weight.div_(scales)
    if getattr(norm, "bias", None) is not None:
        norm.bias.div_(scales)
    for fc in linears:
        fc.weight.mul_(scales.view(1, -1))
    return scales


def _foldable(norm: nn.Module | None, width: int) -> bool:
    w = getattr(norm, "weight", None)
    return isinstance(w, torch.Tensor) and w.dim() == 1 and w.numel() == width


@dataclass
class SmoothQuantConfig(MethodConfig):
    """alpha: migration strength. fold: linear -> the norm that feeds only it (relative names in a block).
    online: smooth the other linears with an online x / s. mse_clip: RTN clipping search."""

    alpha: float = 0.5
    fold: dict[str, str] = field(default_factory=lambda: {"attn.qkv": "norm1", "mlp.fc1": "norm2"})
    online: bool = True
    mse_clip: bool = False


@register_method("smoothquant", config=SmoothQuantConfig, requires_calibration="always", propagate="fp")
def quantize_smoothquant(model, calibration, scheme, config: SmoothQuantConfig, ctx) -> None:
    """SmoothQuant alpha-migration (folded into norms where possible, online otherwise) + RTN."""
    if not 0.0 <= config.alpha <= 1.0:
        from ptq3d.errors import ConfigError

        raise ConfigError(f"smoothquant alpha={config.alpha}: must be in [0, 1]")

    def calibrate_block(bd) -> None:
        lins = bd.linears()
        amax: dict[str, torch.Tensor] = {}

        def observe(rel, x):
            m = x.detach().abs().reshape(-1, x.shape[-1]).amax(dim=0).float()
            amax[rel] = m if rel not in amax else torch.maximum(amax[rel], m)

        bd.collect(observe, list(lins))
        by_norm: dict[str, list[str]] = {}
        for rel in lins:
            norm_name = config.fold.get(rel)
            if norm_name is not None:
                by_norm.setdefault(norm_name, []).append(rel)
        folded: set[str] = set()
        for norm_name, members in by_norm.items():
            try:
                norm = bd.module(norm_name)
            except AttributeError:
                continue
            if not _foldable(norm, lins[members[0]].in_features):
                continue
            act = torch.stack([amax[m] for m in members]).amax(dim=0)
            scales = smooth_norm_linears(norm, [lins[m] for m in members], act, config.alpha)
            for m in members:
                with ctx.timed(bd.site(m)):
                    q = rtn_linear(lins[m], scheme, config)
                bd.replace(m, q)  # FP reference = the smoothed linear on the smoothed norm output
                ctx.stats.layer(bd.site(m), smoothing="folded:" + norm_name, smooth_max=float(scales.max()))
                folded.add(m)
        for rel, lin in lins.items():
            if rel in folded:
                continue
            t = None
            if config.online:
                t = ChannelScale(smoothing_scales(amax[rel], [lin.weight.detach()], config.alpha))
            with ctx.timed(bd.site(rel)):
                q = rtn_linear(lin, scheme, config, t)
            bd.replace(rel, q)
            ctx.stats.layer(bd.site(rel), smoothing="online" if t is not None else "none")
        bd.calibrate_static_acts()

    ctx.blockwise(calibration, calibrate_block)
