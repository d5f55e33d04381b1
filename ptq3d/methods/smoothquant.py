"""SmoothQuant (Xiao et al. 2023): migrate activation outliers into the weights, then RTN.

Per linear input channel j: s_j = max|X_j|^alpha / max_i |W_ij|^(1 - alpha) (clamped >= 1e-5; the weight
max taken over all linears sharing the input, clamped >= 1e-5), and X W^T = (X / s)(W diag(s))^T.
- Where a norm feeds only the linears (VGGT/Pi3 blocks: norm1 -> attn.qkv, norm2 -> mlp.fc1; `fold`), the
  1/s is folded into the norm's weight and bias, as the reference `smooth_ln_fcs` does (no runtime cost).
- Elsewhere (attn.proj after attention, mlp.fc2 after GELU, where nothing linear precedes) the reference
  does not smooth, nor do we by default; `online=True` applies x / s there as an online ChannelScale input
  transform (an extension, not the reference).
- alpha: preset "paper" (default) searches it on the calibration set (`alpha="search"`, grid ALPHA_GRID, or a
  list), as the paper tunes it per model (README: 0.8 to 0.9 for Llama-2 / Mistral); preset "code" fixes it at
  0.5, the reference code's default (the dataclass default, when built without a preset). See SmoothQuantConfig.
Statistics: per-channel max |input| over all calibration tokens of the FP model (the reference's
get_act_scales runs the FP model), so the block loop propagates FP outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ptq3d.calibration.blockwise import replace_module
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


ALPHA_GRID: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class SmoothQuantConfig(MethodConfig):
    """alpha: migration strength, a number in [0, 1], "search" (grid ALPHA_GRID) or a list of candidates: the
        candidate with the least block-output MSE against the FP block on the calibration set is kept per
        block (the paper tunes one alpha per model on calibration data; a per-block choice is the same
        search at the granularity our block loop sees, and is recorded per layer as `alpha`).
    fold: linear -> the norm that feeds only it (relative names in a block).
    online: also smooth the linears no norm feeds (attn.proj, mlp.fc2) with an online x / s (default False:
        the reference smooths only what folds into the LayerNorms). mse_clip: RTN clipping search."""

    RAW_KEYS: ClassVar[tuple[str, ...]] = ("alpha",)
    # paper: alpha tuned per model on calibration data; code (mit-han-lab/smoothquant): alpha 0.5 by default
    PRESETS: ClassVar[dict[str, dict]] = {"paper": {"alpha": "search"}, "code": {"alpha": 0.5}}
    CALIBRATION_DEFAULTS: ClassVar[dict[str, dict]] = {
        "paper": {"builder": "random"},
        "code": {"builder": "random"},
    }

    alpha: float | str | list[float] = 0.5
    fold: dict[str, str] = field(default_factory=lambda: {"attn.qkv": "norm1", "mlp.fc1": "norm2"})
    online: bool = False
    mse_clip: bool = False

    def alphas(self) -> list[float]:
        """The candidate alphas (one for a fixed alpha)."""
        from ptq3d.errors import ConfigError

        a = self.alpha
        if isinstance(a, str):  # CLI / TOML strings: "search", "0.5" or "0.5,0.7"
            if a.strip() == "search":
                return list(ALPHA_GRID)
            try:
                cands = [float(p) for p in a.split(",") if p.strip()]
            except ValueError:
                raise ConfigError(
                    f"smoothquant alpha={a!r}: a number in [0, 1], 'search' or a list of numbers"
                ) from None
        elif isinstance(a, list | tuple):
            cands = list(a)
            if not cands:
                raise ConfigError("smoothquant alpha=[]: give at least one candidate")
        else:
            cands = [a]
        for c in cands:
            if isinstance(c, bool) or not isinstance(c, int | float) or not 0.0 <= float(c) <= 1.0:
                raise ConfigError(f"smoothquant alpha={c!r}: must be a number in [0, 1]")
        return [float(c) for c in cands]


def _smoothed_layers(bd, lins, amax, config: SmoothQuantConfig, alpha: float):
    """The block's smoothed QuantLinears at `alpha`, without touching the block: {rel: (QuantLinear, how,
    s_max)} and {norm name: (norm weight, norm bias)} to install. Folded linears are quantized from the
    smoothed weight W diag(s); their norm gets weight / s and bias / s."""
    by_norm: dict[str, list[str]] = {}
    for rel in lins:
        norm_name = config.fold.get(rel)
        if norm_name is not None:
            by_norm.setdefault(norm_name, []).append(rel)
    layers: dict[str, tuple[nn.Module, str, float | None]] = {}
    norms: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for norm_name, members in by_norm.items():
        norm = bd.foldable_norm(norm_name, lins[members[0]].in_features)
        if norm is None:
            continue
        act = torch.stack([amax[m] for m in members]).amax(dim=0)
        scales = smoothing_scales(act, [lins[m].weight.detach() for m in members], alpha)
        bias = getattr(norm, "bias", None)
        norms[norm_name] = (norm.weight.detach() / scales, None if bias is None else bias.detach() / scales)
        for m in members:
            smoothed = nn.Linear(lins[m].in_features, lins[m].out_features, bias=lins[m].bias is not None)
            with torch.no_grad():
                smoothed.weight.copy_(lins[m].weight.detach() * scales.view(1, -1))
                if lins[m].bias is not None:
                    smoothed.bias.copy_(lins[m].bias.detach())
            layers[m] = (smoothed, "folded:" + norm_name, float(scales.max()))
    for rel, lin in lins.items():
        if rel in layers:
            continue
        t = None
        if config.online:
            t = ChannelScale(smoothing_scales(amax[rel], [lin.weight.detach()], alpha))
        layers[rel] = (lin, "online" if t is not None else "none", t)
    return layers, norms


@torch.no_grad()
def _apply(bd, lins, layers, norms, config, ctx, alpha, commit: bool):
    """Install norms and QuantLinears. commit=False: a trial (plain swaps, undone by the caller);
    commit=True: through bd.replace (FP references, stats)."""
    for norm_name, (w, b) in norms.items():
        norm = bd.module(norm_name)
        norm.weight.copy_(w)
        if b is not None:
            norm.bias.copy_(b)
    for rel, (lin, how, extra) in layers.items():
        transform = extra if isinstance(extra, ChannelScale) else None
        if commit:
            with ctx.timed(bd.site(rel)):
                q = rtn_linear(lin, bd.scheme_for(rel), config, transform)
            # FP reference of a folded linear = the smoothed linear on the smoothed norm output
            bd.replace(rel, q, fp_weight=lin.weight.detach().float() if how.startswith("folded") else None)
            info = {"smoothing": how, "alpha": alpha}
            if how.startswith("folded"):
                info["smooth_max"] = extra
            ctx.stats.layer(bd.site(rel), **info)
        else:
            replace_module(bd.block.module, rel, rtn_linear(lin, bd.scheme_for(rel), config, transform))


@torch.no_grad()
def _trial_error(bd, lins, amax, config, ctx, alpha: float) -> float:
    """Block-output MSE against the FP block with the block smoothed and quantized at `alpha` (then undone)."""
    layers, norms = _smoothed_layers(bd, lins, amax, config, alpha)
    saved = {
        n: (
            bd.module(n).weight.detach().clone(),
            None if bd.module(n).bias is None else bd.module(n).bias.clone(),
        )
        for n in norms
    }
    try:
        _apply(bd, lins, layers, norms, config, ctx, alpha, commit=False)
        if bd.scheme.act is not None and not bd.scheme.act.dynamic:
            bd.calibrate_static_acts()
        outs = bd.run()
        return float(sum(((o - f) ** 2).mean().item() for o, f in zip(outs, bd.fp_outputs, strict=True)))
    finally:
        for n, (w, b) in saved.items():
            bd.module(n).weight.copy_(w)
            if b is not None:
                bd.module(n).bias.copy_(b)
        for rel, lin in lins.items():
            replace_module(bd.block.module, rel, lin)


@register_method(
    "smoothquant", config=SmoothQuantConfig, requires_calibration="always", propagate="fp", version="2"
)
def quantize_smoothquant(model, calibration, scheme, config: SmoothQuantConfig, ctx) -> None:
    """SmoothQuant alpha-migration folded into the norms (online for the other linears if asked) + RTN."""
    alphas = config.alphas()

    def calibrate_block(bd) -> None:
        lins = bd.linears()
        amax = bd.input_absmax(list(lins))
        alpha = alphas[0]
        if len(alphas) > 1:
            errs = [_trial_error(bd, lins, amax, config, ctx, a) for a in alphas]
            alpha = alphas[min(range(len(alphas)), key=errs.__getitem__)]
        layers, norms = _smoothed_layers(bd, lins, amax, config, alpha)
        _apply(bd, lins, layers, norms, config, ctx, alpha, commit=True)
        bd.calibrate_static_acts()

    ctx.blockwise(calibration, calibrate_block)
