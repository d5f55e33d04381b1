"""RepQ-ViT (Li et al., ICCV 2023): scale reparameterization for post-training quantization of ViTs
(reference zkkli/RepQ-ViT).

Post-LayerNorm activations vary strongly between channels, so a per-tensor quantizer wastes its grid; a
per-channel one would need per-channel scales inside the matmul. RepQ-ViT calibrates the per-channel
quantizer (s_c, z_c) and then reparameterizes it into a per-tensor one (s~, z~) with
    s~ = mean_c s_c,  z~ = round(mean_c z_c),  r_c = s_c / s~,  b_c = s~ (z_c - z~),
folding r and b into the LayerNorm's affine and the next linear:
    gamma' = gamma / r,  beta' = beta / r + b,  W' = W diag(r),  bias' = bias - W' b.
In FP this is exactly function-preserving (W' x' + bias' = W x + bias for x' = x / r + b), and the per-tensor
quantizer on x' gives the per-channel quantizer's codes on x: round(x'/s~) + z~ = round(x/s_c) + z_c.
(The reference keeps z~ = mean_c z_c unrounded, a non-integer zero point no integer kernel takes; rounding it
is what makes the two quantizers agree exactly.) Applied where a LayerNorm feeds a linear alone: norm1 ->
attn.qkv, norm2 -> mlp.fc1 in the VGGT / Pi3 blocks.

Quantizers (the reference's): activations static per-tensor (the paper's layer-wise quantizers; act_static
defaults to True), weights per output channel (the scheme's weight spec), every range chosen by the
reference's percentile search: clip to the [1 - p, p] quantiles for p in {0.999, 0.9999, 0.99999} and keep
the least squared error, per row / group for weights, per channel for the post-LN activations before the
reparameterization, per tensor for the other activations. The weights are quantized after the
reparameterization (the reference re-initialises them). Layers are calibrated in execution order on the
quantized model's activations (quantized outputs propagated). The reference's quantizers are asymmetric:
use a `-asym` scheme (e.g. w4a4-static-asym or w4a4-asym) for its format; symmetric schemes reparameterize
only the scales (z = 0).

Post-softmax log-sqrt(2) quantization: `log_sqrt2_quantize` transcribes the reference's quantizer, but ptq3d
keeps the attention matmuls (and softmax) in floating point, so that part of RepQ-ViT is NOT exercised by
this method. Weight-only schemes (a16) are refused: there is no activation quantizer to reparameterize.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ptq3d.errors import ConfigError
from ptq3d.methods.registry import MethodConfig, register_method
from ptq3d.quant.qlinear import QuantLinear
from ptq3d.quant.spec import QuantSpec, dequantize, qparams_from_range, quantize

PERCENTILES: tuple[float, ...] = (0.999, 0.9999, 0.99999)
MAX_QUANTILE_ELEMENTS = 1 << 24  # torch.quantile's input limit


def _quantile(x: torch.Tensor, q: float, dim: int | None = None) -> torch.Tensor:
    """torch.quantile (linear interpolation) over all of x (dim None) or along `dim`; beyond torch.quantile's
    input limit the reduced dimension is strided down (an even subsample of the tokens)."""
    if dim is None:
        x = x.reshape(-1)
        dim = 0
    if x.numel() > MAX_QUANTILE_ELEMENTS:
        step = math.ceil(x.numel() / MAX_QUANTILE_ELEMENTS)
        x = x[::step] if dim == 0 else x[:, ::step]
    return torch.quantile(x, q, dim=dim)


def percentile_qparams(
    x: torch.Tensor, spec: QuantSpec, per_row: bool, percentiles=PERCENTILES
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The reference's percentile search: x [rows, cols]; per_row: one (scale, zero) per row ([rows, 1]),
    else one for the whole tensor ([1, 1]). Candidates clip x to its [1 - p, p] quantiles; the one with the
    least sum of squared errors (per row) wins."""
    x = x.float()
    if not per_row:
        x = x.reshape(1, -1)
    best_err = torch.full((x.shape[0], 1), float("inf"))
    best_scale = best_zero = None
    for p in percentiles:
        hi = _quantile(x, p, dim=1).unsqueeze(1)
        lo = _quantile(x, 1 - p, dim=1).unsqueeze(1)
        scale, zero = qparams_from_range(lo, hi, spec)
        err = (dequantize(quantize(x, scale, zero, spec), scale, zero) - x).pow(2).sum(dim=1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = scale if best_scale is None else torch.where(better, scale, best_scale)
        if zero is not None:
            best_zero = zero if best_zero is None else torch.where(better, zero, best_zero)
    return best_scale, best_zero


def weight_qparams(W: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Percentile-searched weight qparams in the shape QuantLinear stores (channel [out, 1], group
    [out, in / g], tensor [1, 1])."""
    out_f, in_f = W.shape
    if spec.granularity == "tensor":
        return percentile_qparams(W, spec, per_row=False)
    if spec.granularity == "group":
        g = in_f // spec.group_size
        s, z = percentile_qparams(W.reshape(out_f * g, spec.group_size), spec, per_row=True)
        return s.reshape(out_f, g), None if z is None else z.reshape(out_f, g)
    return percentile_qparams(W, spec, per_row=True)


@dataclass
class Reparameterization:
    """Per-channel ratios r [C] and shifts b [C] (x' = x / r + b), and the per-tensor qparams (s~, z~)."""

    r: torch.Tensor
    b: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None


def reparameterize(channel_scale: torch.Tensor, channel_zero: torch.Tensor | None) -> Reparameterization:
    """Per-channel (s_c, z_c) [C] -> r, b and the per-tensor (s~ [1, 1], z~ [1, 1] or None)."""
    s = channel_scale.reshape(-1).float()
    s_t = s.mean()
    r = s / s_t
    if channel_zero is None:
        return Reparameterization(r, torch.zeros_like(s), s_t.reshape(1, 1), None)
    z = channel_zero.reshape(-1).float()
    z_t = torch.round(z.mean())
    return Reparameterization(r, s_t * (z - z_t), s_t.reshape(1, 1), z_t.reshape(1, 1))


@torch.no_grad()
def fold_reparameterization(norm: nn.Module, linear: nn.Linear, rep: Reparameterization) -> nn.Linear:
    """gamma / r, beta / r + b into `norm` (in place); returns a new nn.Linear with W diag(r) and
    bias - W diag(r) b (with a bias even if `linear` had none)."""
    norm.weight.div_(rep.r)
    if getattr(norm, "bias", None) is not None:
        norm.bias.div_(rep.r).add_(rep.b)
    elif bool(rep.b.any()):
        raise ConfigError(
            "RepQ-ViT: the LayerNorm has no bias to take the zero-point shift (use a symmetric scheme)"
        )
    W = linear.weight.detach().float() * rep.r.view(1, -1)
    bias = (
        torch.zeros(linear.out_features) if linear.bias is None else linear.bias.detach().float()
    ) - W @ rep.b
    new = nn.Linear(linear.in_features, linear.out_features, bias=True)
    new.weight.copy_(W)
    new.bias.copy_(bias)
    return new


def log_sqrt2_quantize(x: torch.Tensor, bits: int, delta: float | torch.Tensor) -> torch.Tensor:
    """The reference's post-softmax quantizer (x in [0, 1]): code = clamp(round(-2 log2(x / delta)), 0, 2^b - 1),
    x_hat = delta 2^(-ceil(code / 2)) (sqrt(2) if code is odd), and 0 where the code overflows.
    NOT used by ptq3d's pipeline (attention stays FP); kept as the transcription of that half of the paper."""
    levels = 2**bits
    code = torch.round(-2 * torch.log2(x / delta))
    overflow = code >= levels
    code = torch.clamp(code, 0, levels - 1)
    odd = (code % 2) * (math.sqrt(2) - 1) + 1
    out = torch.pow(2.0, -torch.ceil(code / 2)) * odd * delta
    return torch.where(overflow, torch.zeros_like(out), out)


@dataclass
class RepQViTConfig(MethodConfig):
    """act_static: static per-tensor activations (the paper's layer-wise quantizers; True by default).
    reparam: linear -> the LayerNorm feeding only it (relative names); {} turns the reparameterization off
    (plain per-tensor percentile quantizers, the paper's ablation baseline)."""

    PRESETS: ClassVar[dict[str, dict]] = {
        "paper": {}
    }  # paper and zkkli/RepQ-ViT agree (z~ rounding: docstring)
    CALIBRATION_DEFAULTS: ClassVar[dict[str, dict]] = {"paper": {"builder": "random"}}

    act_static: bool = True
    reparam: dict[str, str] = field(default_factory=lambda: {"attn.qkv": "norm1", "mlp.fc1": "norm2"})


def _layer_inputs(bd, rel: str) -> torch.Tensor:
    xs: list[torch.Tensor] = []
    bd.collect(lambda _r, x: xs.append(x.detach().reshape(-1, x.shape[-1]).float()), [rel])
    return torch.cat(xs)


@torch.no_grad()
def repq_calibrate_block(bd, config: RepQViTConfig, ctx) -> None:
    """Each linear in execution order: calibrate its activation quantizer on its current input (per channel
    + reparameterization after a foldable LayerNorm, per tensor elsewhere), then its weight quantizer; each at
    its own scheme (bd.scheme_for: the run's scheme with its mixed-precision plan applied)."""
    for rel, lin in bd.linears().items():
        scheme = bd.scheme_for(rel)
        act = scheme.act
        if act is None:
            raise ConfigError(
                f"repq-vit: the plan keeps the activations of {bd.site(rel)} FP; RepQ-ViT needs them quantized"
            )
        site = bd.site(rel)
        with ctx.timed(site):
            x = _layer_inputs(bd, rel)
            norm = bd.foldable_norm(config.reparam.get(rel), lin.in_features)
            fp_weight = fp_bias = None
            if norm is not None:
                cs, cz = percentile_qparams(x.t(), act, per_row=True)  # one row per channel
                rep = reparameterize(cs, cz)
                lin = fold_reparameterization(norm, lin, rep)
                fp_weight, fp_bias = lin.weight.detach().float(), lin.bias.detach().float()
                a_scale, a_zero = rep.scale, rep.zero
                ctx.stats.layer(
                    site,
                    repq_reparam=True,
                    repq_ratio_max=float(rep.r.max()),
                    repq_ratio_min=float(rep.r.min()),
                )
            else:
                a_scale, a_zero = percentile_qparams(x, act, per_row=False)
            W = lin.weight.detach().float()
            w_scale, w_zero = weight_qparams(W, scheme.weight)
            q = QuantLinear(
                lin.in_features,
                lin.out_features,
                scheme.weight,
                act,
                bias=lin.bias is not None,
                act_clip_ratio=config.act_clip_ratio,
            )
            q.set_weight(quantize(W, w_scale, w_zero, scheme.weight), w_scale, w_zero)
            if lin.bias is not None:
                q.bias.copy_(lin.bias.detach().float())
            q.act_scale.copy_(a_scale)
            if q.act_zero is not None:
                q.act_zero.copy_(a_zero)
        bd.replace(rel, q, fp_weight=fp_weight, fp_bias=fp_bias)


@register_method("repq-vit", config=RepQViTConfig, requires_calibration="always", propagate="quantized")
def quantize_repq_vit(model, calibration, scheme, config: RepQViTConfig, ctx) -> None:
    """RepQ-ViT: post-LayerNorm per-channel activation quantizers reparameterized into per-tensor ones."""
    if scheme.act is None:
        raise ConfigError(
            f"repq-vit needs quantized activations (scheme {scheme.name} keeps them FP): its reparameterization "
            "acts on the activation quantizers; use rtn, gptq or awq for weight-only schemes"
        )
    if scheme.act.dynamic:
        raise ConfigError(
            f"repq-vit uses static per-tensor activation quantizers; scheme {scheme.name} has dynamic ones with "
            "act_static=false (set act_static=true or use a -static scheme)"
        )
    ctx.blockwise(calibration, lambda bd: repq_calibrate_block(bd, config, ctx))
