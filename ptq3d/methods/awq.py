"""AWQ: activation-aware weight quantization (Lin et al., MLSys 2024; reference mit-han-lab/llm-awq).

Salient weight channels are those that see large activations; scaling them up before quantization and the
activations down by the same factor protects them: Q(W diag(s)) (diag(s)^-1 X).
Per block (FP outputs propagated, as the reference runs the FP layer to get the next input), per group of
linears sharing one input:
1. scale search: s = mean_tokens |x|^alpha (clamped >= 1e-4, then divided by sqrt(max(s) min(s))) for
   alpha in {0, 1/20, ..., 19/20}; keep the alpha whose weight-quantized output (W <- Q(W diag(s)) / s, the
   scheme's weight quantizer, activations FP) has the least MSE against the FP output;
2. the scale is folded into what precedes the group (no runtime cost), as the reference's apply_scale:
   - attn.qkv <- norm1 (LayerNorm weight and bias / s), mlp.fc1 <- norm2;
   - attn.proj <- the v rows of attn.qkv (attention output is linear in v per channel; the reference's
     v_proj -> o_proj), output inspected at attn.proj itself;
   - mlp.fc2 follows GELU, which is not homogeneous: an online x / s (ChannelScale input transform), as the
     reference's ScaledActivation for GELU models; inspected at mlp.fc2 itself;
   The reference inspects the attention / MLP sub-module output for qkv / fc1; our blocks expose only the
   whole block, so those two groups are inspected at the block output (a superset of the same error).
3. clipping search (`clip`, the reference's auto_clip): per output row and weight group, the max |w| shrunk
   by (1 - i/20), i < 10, minimising the MSE of that group's partial output on 512 sampled tokens; q/k rows
   of attn.qkv are not clipped (the reference skips q_proj / k_proj).
4. RTN with the scheme's weight spec on the scaled, clipped weights.
Weight-only schemes (w4a16, w4g128a16, ...) are AWQ's own setting. Under activation schemes the search is the
same (weight-only, as the reference) and the QuantLinear then quantizes the scaled activations x / s with the
scheme's activation quantizer. Paper and reference agree (one preset).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ptq3d.errors import ConfigError
from ptq3d.methods.registry import MethodConfig, register_method
from ptq3d.quant.qlinear import QuantLinear
from ptq3d.quant.spec import QuantSpec, fake_quantize
from ptq3d.quant.transforms import ChannelScale


@dataclass
class AWQConfig(MethodConfig):
    """n_grid: alpha candidates i / n_grid, i < n_grid (reference 20). clip: weight clipping search (reference
    on). clip_grid / clip_max_shrink / clip_tokens: its grid (20), largest shrink (0.5), sampled tokens (512).
    search_tokens: at most this many (evenly strided) tokens feed the scale search of attn.proj / mlp.fc2 and
    the clipping search (the reference's 128 samples x 512 tokens); mean |x| uses every token.
    groups: linear -> what its scale folds into: a norm name, "v_rows" (the v part of attn.qkv) or "online"."""

    PRESETS: ClassVar[dict[str, dict]] = {"paper": {}}  # paper and mit-han-lab/llm-awq agree
    CALIBRATION_DEFAULTS: ClassVar[dict[str, dict]] = {"paper": {"builder": "random"}}

    n_grid: int = 20
    clip: bool = True
    clip_grid: int = 20
    clip_max_shrink: float = 0.5
    clip_tokens: int = 512
    search_tokens: int = 65536
    groups: dict[str, str] | None = None

    def fold_targets(self) -> dict[str, str]:
        return self.groups or {
            "attn.qkv": "norm1",
            "attn.proj": "v_rows",
            "mlp.fc1": "norm2",
            "mlp.fc2": "online",
        }


def activation_scales(x_abs_mean: torch.Tensor, alpha: float) -> torch.Tensor:
    """s [in] = (mean|x|)^alpha clamped >= 1e-4, normalised by sqrt(max(s) min(s)) (llm-awq)."""
    s = x_abs_mean.pow(alpha).clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


def scaled_fake_weight(W: torch.Tensor, s: torch.Tensor, spec: QuantSpec, sym_rule: str) -> torch.Tensor:
    """Q(W diag(s)) diag(s)^-1: the weight AWQ's search evaluates (activations left unscaled)."""
    return fake_quantize(W * s.view(1, -1), spec, sym_rule=sym_rule) / s.view(1, -1)


@torch.no_grad()
def search_scale(
    x_abs_mean: torch.Tensor, n_grid: int, trial_loss
) -> tuple[torch.Tensor, float, list[float]]:
    """Grid search of alpha: trial_loss(s) -> MSE. Returns (best s, best alpha, losses per alpha)."""
    losses = []
    best = (float("inf"), None, 0.0)
    for i in range(n_grid):
        alpha = i / n_grid
        s = activation_scales(x_abs_mean, alpha)
        loss = float(trial_loss(s))
        losses.append(loss)
        if loss < best[0]:
            best = (loss, s, alpha)
    if best[1] is None:
        raise ConfigError("AWQ scale search: every candidate gave a non-finite loss")
    return best[1], best[2], losses


@torch.no_grad()
def search_clip(
    W: torch.Tensor,
    x: torch.Tensor,
    spec: QuantSpec,
    sym_rule: str,
    n_grid: int = 20,
    max_shrink: float = 0.5,
    frozen_rows: int = 0,
) -> torch.Tensor:
    """Per (row, group) clipping threshold [out, n_groups] minimising the group's partial-output MSE on x
    [tokens, in] (llm-awq auto_clip). Rows < frozen_rows keep their max |w|. Groups: the spec's group size,
    else the whole row."""
    out_f, in_f = W.shape
    gs = spec.group_size if spec.granularity == "group" else in_f
    Wg = W.reshape(out_f, in_f // gs, gs)
    xg = x.reshape(-1, in_f // gs, gs)
    org_out = torch.einsum("tgk,ogk->tog", xg, Wg)
    org_max = Wg.abs().amax(dim=-1)  # [out, G]
    best_max = org_max.clone()
    best_err = torch.full_like(org_max, float("inf"))
    for i in range(int(max_shrink * n_grid)):
        max_val = org_max * (1 - i / n_grid)
        cur = torch.maximum(torch.minimum(Wg, max_val.unsqueeze(-1)), -max_val.unsqueeze(-1))
        q = fake_quantize(cur.reshape(out_f, in_f), spec, sym_rule=sym_rule).reshape(out_f, -1, gs)
        err = (torch.einsum("tgk,ogk->tog", xg, q) - org_out).pow(2).mean(dim=0)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_max = torch.where(better, max_val, best_max)
    if frozen_rows:
        best_max[:frozen_rows] = org_max[:frozen_rows]
    return best_max


def apply_clip(W: torch.Tensor, max_val: torch.Tensor) -> torch.Tensor:
    """W clamped to [-max, max] per (row, group)."""
    out_f, in_f = W.shape
    m = max_val.repeat_interleave(in_f // max_val.shape[1], dim=1)
    return torch.maximum(torch.minimum(W, m), -m)


def _block_mse(bd) -> float:
    outs = bd.run()
    return sum(((o - f) ** 2).mean().item() for o, f in zip(outs, bd.fp_outputs, strict=True))


@torch.no_grad()
def fold_scale(
    lins: dict[str, nn.Linear],
    rel: str,
    how: str,
    norm: nn.Module | None,
    s: torch.Tensor,
    X: dict[str, torch.Tensor],
    online: dict[str, torch.Tensor],
) -> str:
    """Apply the searched scale s [in] of linear `rel`: W <- W diag(s) with its input divided by s, folded into
    `norm` (a foldable norm before it), into the v rows of attn.qkv (how "v_rows", proj) or kept online (a
    ChannelScale input transform, recorded in `online`). X[rel] (the search rows) is rescaled in place. Returns
    where the scale went ("folded:<norm>", "folded:attn.qkv.v", "online")."""
    lin = lins[rel]
    if norm is not None:
        norm.weight.div_(s)
        if getattr(norm, "bias", None) is not None:
            norm.bias.div_(s)
        lin.weight.mul_(s.view(1, -1))
        X[rel] = X[rel] / s
        return "folded:" + how
    if how == "v_rows" and "attn.qkv" in lins and lins["attn.qkv"].out_features == 3 * lin.in_features:
        qkv, c = lins["attn.qkv"], lin.in_features
        qkv.weight[2 * c :].div_(s.view(-1, 1))
        if qkv.bias is not None:
            qkv.bias[2 * c :].div_(s)
        lin.weight.mul_(s.view(1, -1))
        X[rel] = X[rel] / s
        return "folded:attn.qkv.v"
    online[rel] = s
    return "online"


@torch.no_grad()
def clip_and_round(
    bd, lins: dict[str, nn.Linear], X: dict[str, torch.Tensor], online: dict[str, torch.Tensor], config, ctx
) -> None:
    """AWQ's last step for every linear of the block: the clipping search on its (scaled) search rows X[rel]
    (config.clip), then RTN at its own scheme (bd.scheme_for), installed with bd.replace. Static activation
    ranges are the caller's (bd.calibrate_static_acts)."""
    rule = config.sym_rule
    for rel, lin in lins.items():
        scheme = bd.scheme_for(rel)
        with ctx.timed(bd.site(rel)):
            transform = ChannelScale(online[rel]) if rel in online else None
            W, x = lin.weight.detach().float(), X[rel]
            if transform is not None:
                W, x = transform.transform_weight(W), x / online[rel]
            if config.clip:
                step = max(1, x.shape[0] // config.clip_tokens)
                frozen = (
                    2 * lin.in_features
                    if rel == "attn.qkv" and lin.out_features == 3 * lin.in_features
                    else 0
                )
                max_val = search_clip(
                    W,
                    x[::step][: config.clip_tokens],
                    scheme.weight,
                    rule,
                    config.clip_grid,
                    config.clip_max_shrink,
                    frozen,
                )
                W = apply_clip(W, max_val)
            q = QuantLinear.from_linear(
                lin,
                scheme.weight,
                scheme.act,
                transform,
                weight=W,
                act_clip_ratio=config.act_clip_ratio,
                sym_rule=rule,
            )
        bd.replace(rel, q)


@torch.no_grad()
def awq_calibrate_block(bd, config: AWQConfig, ctx) -> None:
    """Scale search and fold (per group), clipping search, RTN: module docstring. Each linear at its own
    scheme (bd.scheme_for: the run's scheme with its mixed-precision plan applied)."""
    rule = config.sym_rule
    lins = bd.linears()
    folds = {rel: how for rel, how in config.fold_targets().items() if rel in lins}
    feats: dict[str, list[torch.Tensor]] = {rel: [] for rel in lins}
    bd.collect(lambda rel, x: feats[rel].append(x.detach().reshape(-1, x.shape[-1]).float()), list(lins))
    X = {rel: torch.cat(v) for rel, v in feats.items()}
    x_means = {rel: x.abs().mean(dim=0) for rel, x in X.items()}  # over every calibration token
    X = {rel: x[:: max(1, math.ceil(x.shape[0] / config.search_tokens))] for rel, x in X.items()}
    online: dict[str, torch.Tensor] = {}
    for rel, how in folds.items():
        lin = lins[rel]
        spec = bd.scheme_for(rel).weight
        W = lin.weight.detach().float().clone()
        x_mean = x_means[rel]
        norm = bd.foldable_norm(how, lin.in_features) if how not in ("v_rows", "online") else None
        inspect_block = norm is not None

        if inspect_block:

            def trial(s, lin=lin, W=W, spec=spec):
                lin.weight.copy_(scaled_fake_weight(W, s, spec, rule))
                try:
                    return _block_mse(bd)
                finally:
                    lin.weight.copy_(W)
        else:
            ref = X[rel] @ W.t()

            def trial(s, W=W, ref=ref, x=X[rel], spec=spec):
                return (x @ scaled_fake_weight(W, s, spec, rule).t() - ref).pow(2).mean().item()

        s, alpha, losses = search_scale(x_mean, config.n_grid, trial)
        where = fold_scale(lins, rel, how, norm, s, X, online)
        ctx.stats.layer(bd.site(rel), awq_alpha=alpha, awq_scaling=where, awq_loss=min(losses))
    clip_and_round(bd, lins, X, online, config, ctx)
    bd.calibrate_static_acts()


@register_method("awq", config=AWQConfig, requires_calibration="always", propagate="fp")
def quantize_awq(model, calibration, scheme, config: AWQConfig, ctx) -> None:
    """AWQ: activation-aware per-channel scale search (folded into the norms / v rows), clipping search, RTN."""
    if config.n_grid < 1:
        raise ConfigError(f"awq n_grid={config.n_grid}: must be >= 1")
    ctx.blockwise(calibration, lambda bd: awq_calibrate_block(bd, config, ctx))
