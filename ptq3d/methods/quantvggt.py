"""QuantVGGT (Feng et al., arXiv 2509.21302, ICLR 2026): Dual-Smoothed Fine-Grained Quantization (DSFQ) with
block-wise learnable calibration. The calibration-set builder (NFDS) is ptq3d.calibration.nfds.

DSFQ, per quantized linear y = x W^T + b (x [..., n], W [out, n]):
1. random Hadamard rotation R = diag(v) H_n / sqrt(n) (v random +-1, seeded per site): x -> x R, W -> W R;
2. channel smoothing computed in the rotated space (paper §3.2):
   c_j = max|(X R)_j|^alpha / max_i |(W R)_ij|^(1 - alpha), alpha = 0.5, clamped >= 1e-5 (SmoothQuant rule);
   so x W^T = ((x R) / c) ((W R) diag(c))^T;
3. symmetric per-output-channel weights, symmetric per-token dynamic activations (the scheme's specs).

Learnable calibration (paper App. B; code `train_utils.cali_qs_quant`), block by block in execution order
(frame_0, global_0, frame_1, ...), every linear of the block at once:
- parameters: the smoothing vector c (per channel), LWC weight clipping factors sigma(g_max), sigma(g_min)
  per output row (W clamped to [min * sigma(g_min), max * sigma(g_max)], then quantized on that range, as the
  code's weight quantizer), LAC activation clipping sigma(g_a), one
  scalar per layer (multiplies the per-token range); clip logits start at `clip_init` = 4 (sigma = 0.982);
- straight-through rounding; loss MSE(FP block output, quantized block output); AdamW (weight decay 0.01,
  torch's default, as the code) with cosine annealing over epochs x samples steps down to `lr_min`;
  one calibration scene per step; FP32.
- Block inputs come from the shared loop (ptq3d.calibration.blockwise.run_blockwise), which reshapes per
  block kind: frame blocks see [S, P, C], global blocks [1, S*P, C] of each scene. (The authors' code feeds
  frame-shaped tokens to global blocks, notes §2.5/§2.10 item 6; we do not reproduce that bug.)
- The next block gets the FP block outputs (propagate "fp", as the code's fp_inps = fp_outs).
After training, each linear becomes a QuantLinear with input transform chain(rotation, ChannelScale(c))
(built from the core transforms, so load_quantized rebuilds it), RTN codes of the clipped transformed
weight, and act_clip_ratio = sigma(g_a).

Where the scale precedes the rotation (variants "scale", "scale_rot") and a LayerNorm feeds only the
linear (norm1 -> attn.qkv, norm2 -> mlp.fc1; `fold`), 1/c is folded into the norm's weight and bias after
training (`fuse_norm`). Rotate-then-scale (DSFQ proper) cannot be fused into a LayerNorm: the scale acts
in the rotated basis, diag(gamma) R diag(1/c) is not diagonal. Like the authors' code (notes §2.10 item 8)
it stays online; it is one elementwise multiply after the online Hadamard.

Ablations (paper Table 4), `variant`:
  "base"       no rotation, no smoothing (learned clipping only);
  "rotation"   Hadamard rotation only;
  "scale"      smoothing only (c from X and W in the original basis);
  "scale_rot"  smooth, then rotate: T(x) = (x / c) R;
  "dsfq"       rotate, then smooth: T(x) = (x R) / c (the method; alias "rot_scale").

Presets: "paper" (default; the values below marked paper, NFDS with 40 scenes, K = 8, p = 0.2, z-score) and
"code" (wlfeng0509/QuantVGGT e6e0ca8: lr 1e-3 / 1e-2, unrotated weight statistic, the EMA activation statistic
over the first n // 5 = 4 scenes with global blocks' max over all S*P tokens; NFDS with 20 scenes, K = 5, IQR
fences, token cosine, first-frame statistics). Calibration settings per preset: CALIBRATION_DEFAULTS.

Paper vs authors' code (notes §2.10), and what we do:
- learning rates: paper 5e-3 (c) / 5e-2 (clipping) = defaults; code 1e-3 / 1e-2 (`lr_smooth`, `lr_clip`).
- smoothing weight statistic: paper max|W R| (`smooth_weight="rotated"`, default); code max|W| of the
  unrotated weight (`smooth_weight="unrotated"`).
- smoothing activation statistic: paper max|X R| over the calibration tokens (`act_stat="max"`, all
  samples, default); code: per-frame max over tokens averaged over frames, EMA (momentum 0.95) over the
  first n/5 samples (`act_stat="ema"`, `init_samples=n // 5`).
- epochs: the paper gives none that we know of; 15 (the code's) is the default.
- LAC: the code learns two per-layer scalars (min and max); the stored QuantLinear has one symmetric
  act_clip_ratio, and for symmetric per-token quantization max(|min| a, max b) with two factors is not
  expressible by it, so we learn one scalar per layer.
- sample count and NFDS settings belong to the calibration set (ptq3d.calibration.nfds: paper 40, K = 8, p = 0.2).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

import ptq3d.calibration.nfds  # noqa: F401  (registers the "nfds" calibration builder with the method)
from ptq3d.calibration.blockwise import replace_module
from ptq3d.errors import ConfigError, unknown_name_error
from ptq3d.methods.quarot import site_seed
from ptq3d.methods.registry import MethodConfig, register_method
from ptq3d.methods.smoothquant import smoothing_scales
from ptq3d.quant.qlinear import QuantLinear
from ptq3d.quant.spec import QuantSpec, Scheme, _expand, _reduce_minmax, qparams_from_range, quantize
from ptq3d.quant.stats import current_rss_bytes
from ptq3d.quant.transforms import ChannelScale, HadamardRotation, InputTransform, chain

# variant -> (rotate, smooth, order); order "rot_scale": (x R) / c, "scale_rot": (x / c) R
VARIANTS: dict[str, tuple[bool, bool, str]] = {
    "base": (False, False, "none"),
    "rotation": (True, False, "none"),
    "scale": (False, True, "scale_rot"),
    "scale_rot": (True, True, "scale_rot"),
    "dsfq": (True, True, "rot_scale"),
    "rot_scale": (True, True, "rot_scale"),
}


@dataclass
class QuantVGGTConfig(MethodConfig):
    """QuantVGGT options (module docstring for paper-vs-code).

    variant: base | rotation | scale | scale_rot | dsfq (= rot_scale), paper Table 4.
    alpha: smoothing migration strength. smooth_weight: "rotated" (paper) | "unrotated" (code).
    act_stat: "max" (paper) | "ema" (code, momentum `ema_momentum`). init_samples: calibration scenes used
        for the smoothing init (None = all; code: n // 5).
    ema_global: the per-scene statistic of "ema" in global blocks: "frame_mean" (the paper's reading: mean over
        frames of per-frame maxima, as in frame blocks) | "all_tokens" (the code: max over all S*P tokens).
    learn: run the block-wise learnable calibration (False: init only). epochs: passes over the calibration
        set per block (steps = epochs x samples). lr_smooth / lr_clip: paper 5e-3 / 5e-2 (code 1e-3 / 1e-2).
    weight_decay: AdamW (torch default 0.01, as the code). lr_min: cosine annealing floor.
    learn_smooth / learn_weight_clip / learn_act_clip: which parameters train. clip_init: initial clip
        logit (sigma(4) = 0.982).
    fuse_norm: fold the smoothing into the LayerNorm feeding a linear where the scale precedes the rotation;
        fold: linear -> that norm (relative names within a block).
    seed: base seed of the per-site random Hadamard signs.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {},
        "code": {
            "lr_smooth": 1e-3,
            "lr_clip": 1e-2,
            "smooth_weight": "unrotated",
            "act_stat": "ema",
            "ema_global": "all_tokens",
            "init_samples": 4,  # n // 5 of the code's 20 scenes
        },
    }
    CALIBRATION_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {
            "builder": "nfds",
            "num_scenes": 40,
            "frames": 10,
            "epochs": 15,
            "scope": "aggregator",
            "builder_options": {"filter": "zscore", "drop_fraction": 0.2, "num_clusters": 8},
        },
        "code": {
            "builder": "nfds",
            "num_scenes": 20,
            "frames": 10,
            "epochs": 15,
            "scope": "aggregator",
            "builder_options": {
                "filter": "iqr",
                "num_clusters": 5,
                "feature": "token_cosine",
                "stat_frames": "first",
            },
        },
    }

    variant: str = "dsfq"
    alpha: float = 0.5
    smooth_weight: str = "rotated"
    act_stat: str = "max"
    ema_momentum: float = 0.95
    ema_global: str = "frame_mean"
    init_samples: int | None = None
    learn: bool = True
    epochs: int = 15
    lr_smooth: float = 5e-3
    lr_clip: float = 5e-2
    weight_decay: float = 0.01
    lr_min: float = 1e-6
    learn_smooth: bool = True
    learn_weight_clip: bool = True
    learn_act_clip: bool = True
    clip_init: float = 4.0
    fuse_norm: bool = True
    fold: dict[str, str] = field(default_factory=lambda: {"attn.qkv": "norm1", "mlp.fc1": "norm2"})
    seed: int = 0

    def check(self) -> None:
        if self.variant not in VARIANTS:
            raise unknown_name_error("QuantVGGT variant", str(self.variant), VARIANTS)
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"quantvggt alpha={self.alpha}: must be in [0, 1]")
        if self.smooth_weight not in ("rotated", "unrotated"):
            raise ConfigError(f"quantvggt smooth_weight={self.smooth_weight!r}: use 'rotated' or 'unrotated'")
        if self.act_stat not in ("max", "ema"):
            raise ConfigError(f"quantvggt act_stat={self.act_stat!r}: use 'max' or 'ema'")
        if self.ema_global not in ("frame_mean", "all_tokens"):
            raise ConfigError(f"quantvggt ema_global={self.ema_global!r}: use 'frame_mean' or 'all_tokens'")
        if self.epochs < 0:
            raise ConfigError(f"quantvggt epochs={self.epochs}: must be >= 0")
        if self.init_samples is not None and self.init_samples < 1:
            raise ConfigError(f"quantvggt init_samples={self.init_samples}: must be >= 1 or None")


# --- differentiable fake quantization (same arithmetic as ptq3d.quant.spec.quantize/dequantize) -------


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity gradient (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def fake_quant_ste(
    x2: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, spec: QuantSpec
) -> torch.Tensor:
    """scale * (clamp(round_ste(x / scale) + zero, qmin, qmax) - zero) for x2 [rows, cols]; scale/zero
    [rows | 1, 1 | n_groups]. Forward values equal dequantize(quantize(x2, scale, zero, spec), ...)."""
    cols = x2.shape[1]
    s = _expand(scale, cols)
    q = round_ste(x2 / s)
    if zero is not None:
        z = _expand(zero, cols)
        return (torch.clamp(q + z, spec.qmin, spec.qmax) - z) * s
    return torch.clamp(q, spec.qmin, spec.qmax) * s


def lwc_clip(
    w: torch.Tensor, spec: QuantSpec, g_max: torch.Tensor, g_min: torch.Tensor, sym_rule: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Learnable weight clipping as QuantVGGT's and FlatQuant's weight quantizers do it: clamp w [out, in] to
    [min * sigma(g_min), max * sigma(g_max)] per row (or group / tensor), then take the qparams of that range.
    g_* [out, 1] (broadcast over groups) or [1, 1]. Returns (clamped w, scale, zero); differentiable in g_*
    (through the range and the clamp bounds). Example (W4, absmax): w = [-1, -0.6, 0.2, 0.5, 0.9],
    sigma(g_max) = 0.9, sigma(g_min) = 0.5 -> range [-0.5, 0.81], dequantized [-0.46, -0.46, 0.23, 0.46, 0.81]."""
    wmin, wmax = _reduce_minmax(w, spec)
    lo, hi = wmin.clamp(max=0) * torch.sigmoid(g_min), wmax.clamp(min=0) * torch.sigmoid(g_max)
    scale, zero = qparams_from_range(lo, hi, spec, sym_rule)
    cols = w.shape[1]
    return torch.minimum(torch.maximum(w, _expand(lo, cols)), _expand(hi, cols)), scale, zero


def act_qparams(x2: torch.Tensor, spec: QuantSpec, ratio: torch.Tensor | float):
    """Activation qparams with the range scaled by `ratio` (QuantLinear.quantize_activation's rule: dynamic
    per-token; a static spec is approximated by the range of the current batch while training)."""
    xmin, xmax = _reduce_minmax(x2, spec)
    return qparams_from_range(xmin * ratio, xmax * ratio, spec)


# --- the training-time layer ------------------------------------------------------------------------------


class SmoothRotLinear(nn.Module):
    """Training-time stand-in for one linear: T(x) = rotation / smoothing per `order`, learnable c, LWC, LAC.

    x [..., n] -> fake-quant_a(T(x)) @ fake-quant_w(T^-T(W))^T + b. The rotation R is fixed; W is frozen.
    smooth0: initial c [n] (None = no smoothing). order: "rot_scale" ((x R) / c) or "scale_rot" ((x / c) R).
    """

    def __init__(
        self,
        linear: nn.Linear,
        weight_spec: QuantSpec,
        act_spec: QuantSpec | None,
        rotation: HadamardRotation | None,
        smooth0: torch.Tensor | None,
        order: str,
        config: QuantVGGTConfig,
    ):
        super().__init__()
        self.weight_spec, self.act_spec, self.order = weight_spec, act_spec, order
        self.sym_rule = config.sym_rule
        self.rotation = rotation
        w = linear.weight.detach().float()
        # rotate-then-scale: the rotated weight is fixed, precompute it
        self.register_buffer(
            "weight", rotation.transform_weight(w) if rotation and order != "scale_rot" else w
        )
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        self.smooth = None
        if smooth0 is not None:
            self.smooth = nn.Parameter(smooth0.detach().float().clone(), requires_grad=config.learn_smooth)
        shape = _lwc_shape(weight_spec, linear.out_features)
        init = float(config.clip_init)
        self.w_clip_max = nn.Parameter(torch.full(shape, init), requires_grad=config.learn_weight_clip)
        self.w_clip_min = nn.Parameter(torch.full(shape, init), requires_grad=config.learn_weight_clip)
        self.a_clip = nn.Parameter(
            torch.tensor(init), requires_grad=config.learn_act_clip and act_spec is not None
        )

    def scale(self) -> torch.Tensor | None:
        return None if self.smooth is None else self.smooth.clamp(min=1e-5)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        c = self.scale()
        if self.order == "scale_rot":
            if c is not None:
                x = x / c
            return self.rotation(x) if self.rotation is not None else x
        x = self.rotation(x) if self.rotation is not None else x
        return x / c if c is not None else x

    def transformed_weight(self) -> torch.Tensor:
        """W' [out, n] with T(x) @ W'^T == x @ W^T."""
        c = self.scale()
        w = self.weight
        if c is not None:
            w = w * c.view(1, -1)
        if self.order == "scale_rot" and self.rotation is not None:
            w = self.rotation.transform_weight(w)
        return w

    def clipped_weight(self, w: torch.Tensor):
        """(w clamped to the LWC range, scale, zero)."""
        return lwc_clip(w, self.weight_spec, self.w_clip_max, self.w_clip_min, self.sym_rule)

    def act_ratio(self) -> torch.Tensor:
        return torch.sigmoid(self.a_clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.transform(x.float())
        if self.act_spec is not None:
            t2 = t.reshape(-1, t.shape[-1])
            scale, zero = act_qparams(t2, self.act_spec, self.act_ratio())
            t = fake_quant_ste(t2, scale, zero, self.act_spec).reshape(t.shape)
        w, scale, zero = self.clipped_weight(self.transformed_weight())
        return F.linear(t, fake_quant_ste(w, scale, zero, self.weight_spec), self.bias)

    @torch.no_grad()
    def export(self, fold_scale: bool) -> tuple[QuantLinear, torch.Tensor | None]:
        """The QuantLinear for inference and, if fold_scale, the c [n] the caller must fold into the preceding
        norm (then the layer's transform has no ChannelScale, and its codes are those of W diag(c) [R])."""
        c = self.scale()
        scale_t = None if c is None or fold_scale else ChannelScale(c)
        rot = self.rotation
        if rot is not None:  # a fresh module with the same signs, not shared with the training layer
            rot = HadamardRotation(rot.n, seed=None, factor=rot.factor)
            rot.signs.copy_(self.rotation.signs)
        if self.order == "scale_rot":
            transform: InputTransform | None = chain(scale_t, rot)
        else:
            transform = chain(rot, scale_t)
        w, scale, zero = self.clipped_weight(self.transformed_weight())
        ratio = float(self.act_ratio()) if self.act_spec is not None else 1.0
        q = QuantLinear(
            self.weight.shape[1],
            self.weight.shape[0],
            self.weight_spec,
            self.act_spec,
            bias=self.bias is not None,
            input_transform=transform,
            act_clip_ratio=ratio,
        )
        q.set_weight(quantize(w, scale, zero, self.weight_spec), scale, zero)
        if self.bias is not None:
            q.bias.copy_(self.bias)
        return q, (c.detach().clone() if fold_scale and c is not None else None)


def _lwc_shape(spec: QuantSpec, out_features: int) -> tuple[int, int]:
    return (1, 1) if spec.granularity == "tensor" else (out_features, 1)


# --- smoothing initialisation -----------------------------------------------------------------------------


@torch.no_grad()
def activation_stats(
    bd, names: list[str], rotations: dict[str, HadamardRotation | None], config: QuantVGGTConfig
) -> dict[str, torch.Tensor]:
    """Per linear: a [n] = per-channel max |x| (x R if a rotation is given) on the FP block, over the first
    `init_samples` scenes. act_stat "max": max over all tokens; "ema": per frame max over tokens, mean over
    frames, EMA across scenes (the authors' code)."""
    from ptq3d.calibration.blockwise import BlockData

    n = len(bd.inputs) if config.init_samples is None else min(config.init_samples, len(bd.inputs))
    stats: dict[str, torch.Tensor] = {}
    for i in range(n):
        ctx_i = bd.contexts[i]
        one = BlockData(bd.block, bd.index, [bd.inputs[i]], [ctx_i], [bd.fp_outputs[i]], bd.ctx)

        def observe(rel, x, ctx_i=ctx_i):
            r = rotations.get(rel)
            x = x.detach().float()
            x = r(x) if r is not None else x
            if config.act_stat == "max":
                m = x.abs().reshape(-1, x.shape[-1]).amax(dim=0)
                stats[rel] = m if rel not in stats else torch.maximum(stats[rel], m)
                return
            if bd.block.attention == "global" and config.ema_global == "all_tokens":
                # the code's global blocks: one max over all S*P tokens of the scene
                m = x.abs().reshape(-1, x.shape[-1]).amax(dim=0)
            else:
                # tokens per frame [frames, P, n] -> max over tokens, mean over frames
                m = x.abs().reshape(-1, ctx_i.tokens_per_frame, x.shape[-1]).amax(dim=1).mean(dim=0)
            mom = config.ema_momentum
            stats[rel] = m if rel not in stats else mom * stats[rel] + (1 - mom) * m

        one.collect(observe, names)
    return stats


def init_smoothing(
    lin: nn.Linear, act: torch.Tensor, rotation: HadamardRotation | None, order: str, config: QuantVGGTConfig
) -> torch.Tensor:
    """c [n] = clamp(act^alpha / max_i |W'_ij|^(1 - alpha), 1e-5) with W' = W R (rotate-then-scale and
    smooth_weight "rotated") or W (otherwise); act is already in the matching basis."""
    w = lin.weight.detach().float()
    if rotation is not None and order == "rot_scale" and config.smooth_weight == "rotated":
        w = rotation.transform_weight(w)
    return smoothing_scales(act, [w], config.alpha)


# --- block-wise calibration -------------------------------------------------------------------------------


def _cosine_lr(step: int, total: int, base: float, floor: float) -> float:
    return floor + (base - floor) * (1 + math.cos(math.pi * step / total)) / 2


def _specs(scheme: Scheme) -> tuple[QuantSpec, QuantSpec | None]:
    return scheme.weight, scheme.act


def calibrate_block(bd, config: QuantVGGTConfig, ctx) -> dict[str, Any]:
    """Initialise, train and export every linear of one block (module docstring). Returns the block's
    calibration record: time, peak memory, losses, steps."""
    t0 = time.perf_counter()
    rss0 = current_rss_bytes()
    peak = [rss0]

    def sample_mem():
        peak[0] = max(peak[0], current_rss_bytes())

    cuda = torch.cuda.is_available()
    cuda0 = torch.cuda.max_memory_allocated() if cuda else None
    rotate, smooth, order = VARIANTS[config.variant]
    lins = bd.linears()
    names = list(lins)
    rotations = {
        rel: HadamardRotation(lin.in_features, seed=site_seed(config.seed, bd.site(rel))) if rotate else None
        for rel, lin in lins.items()
    }
    smooth0: dict[str, torch.Tensor | None] = dict.fromkeys(names)
    if smooth:
        stat_rot = {rel: (r if order == "rot_scale" else None) for rel, r in rotations.items()}
        acts = activation_stats(bd, names, stat_rot, config)
        for rel, lin in lins.items():
            smooth0[rel] = init_smoothing(lin, acts[rel], rotations[rel], order, config)
    sample_mem()
    block = bd.block.module
    flags = {p: p.requires_grad for p in block.parameters()}
    for p in flags:
        p.requires_grad_(False)
    layers = {
        rel: SmoothRotLinear(lin, *_specs(bd.scheme_for(rel)), rotations[rel], smooth0[rel], order, config)
        for rel, lin in lins.items()
    }
    for rel, layer in layers.items():
        replace_module(block, rel, layer)
    rec: dict[str, Any] = {"variant": config.variant, "steps": 0}
    try:
        params = [p for layer in layers.values() for p in layer.parameters() if p.requires_grad]
        rec["loss_init"] = _block_loss(bd)
        if config.learn and config.epochs > 0 and params:
            rec.update(_train(bd, layers, config, sample_mem))
            rec["loss_final"] = _block_loss(bd)
        sample_mem()
    finally:
        for rel, lin in lins.items():
            replace_module(block, rel, lin)
        for p, f in flags.items():
            p.requires_grad_(f)
    for rel, layer in layers.items():
        fold = config.fuse_norm and order == "scale_rot" and layer.smooth is not None and rel in config.fold
        norm = bd.foldable_norm(config.fold.get(rel), lins[rel].in_features) if fold else None
        q, c = layer.export(fold_scale=norm is not None)
        lin = lins[rel]
        if c is not None:
            with torch.no_grad():  # 1/c into the norm; the FP reference is the smoothed linear on its output
                norm.weight.div_(c)
                if norm.bias is not None:
                    norm.bias.div_(c)
            bd.replace(rel, q, fp_weight=lin.weight.detach().float() * c.view(1, -1), fp_bias=lin.bias)
            smoothing = "folded:" + config.fold[rel]
        else:
            bd.replace(rel, q)
            smoothing = "none" if layer.smooth is None else "online"
        ctx.stats.layer(
            bd.site(rel),
            variant=config.variant,
            smoothing=smoothing,
            rotation=rotations[rel] is not None,
            act_clip_ratio=q.act_clip_ratio,
            smooth_max=None if layer.smooth is None else float(layer.scale().detach().max()),
            smooth_min=None if layer.smooth is None else float(layer.scale().detach().min()),
        )
    if bd.scheme.act is not None and not bd.scheme.act.dynamic:
        bd.calibrate_static_acts()
    sample_mem()
    rec["calib_time_s"] = time.perf_counter() - t0
    rec["calib_peak_rss_bytes"] = peak[0]
    rec["calib_delta_rss_bytes"] = peak[0] - rss0
    if cuda:  # cumulative since quantize_model started (the core's PeakMemory owns the CUDA peak counter)
        rec["calib_cuda_peak_bytes"] = int(torch.cuda.max_memory_allocated())
        rec["calib_cuda_start_peak_bytes"] = int(cuda0)
    return rec


@torch.no_grad()
def _block_loss(bd) -> float:
    """Mean over scenes of MSE(FP block output, current block output)."""
    outs = bd.run()
    return float(
        sum(F.mse_loss(o.float(), f.float()).item() for o, f in zip(outs, bd.fp_outputs, strict=True))
        / len(outs)
    )


def _train(bd, layers: dict[str, SmoothRotLinear], config: QuantVGGTConfig, sample_mem) -> dict[str, Any]:
    """AdamW + per-step cosine annealing, one scene per step, loss MSE to the FP block output."""
    smooth = [lay.smooth for lay in layers.values() if lay.smooth is not None and lay.smooth.requires_grad]
    clip = [
        p for lay in layers.values() for p in (lay.w_clip_max, lay.w_clip_min, lay.a_clip) if p.requires_grad
    ]
    groups = []
    if smooth:
        groups.append({"params": smooth, "lr": config.lr_smooth, "base_lr": config.lr_smooth})
    if clip:
        groups.append({"params": clip, "lr": config.lr_clip, "base_lr": config.lr_clip})
    opt = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    total = config.epochs * len(bd.inputs)
    step = 0
    t0 = time.perf_counter()
    last = float("nan")
    with torch.enable_grad():
        for _ in range(config.epochs):
            for x, c, y in zip(bd.inputs, bd.contexts, bd.fp_outputs, strict=True):
                out = bd.block.forward(x, c)
                loss = F.mse_loss(out.float(), y.float())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                for g in opt.param_groups:  # CosineAnnealingLR(T_max=total, eta_min=lr_min), per step
                    g["lr"] = _cosine_lr(step, total, g["base_lr"], config.lr_min)
                last = float(loss.detach())
                if step == 1:
                    sample_mem()
    sample_mem()
    return {"steps": step, "train_time_s": time.perf_counter() - t0, "loss_last_step": last}


@register_method(
    "quantvggt", config=QuantVGGTConfig, requires_calibration="always", propagate="fp", version="2"
)
def quantize_quantvggt(model, calibration, scheme, config: QuantVGGTConfig, ctx) -> None:
    """QuantVGGT: Hadamard rotation + rotated-space smoothing + block-wise learned clipping (DSFQ)."""
    config.check()
    if scheme.act is not None and scheme.act.granularity == "group":
        raise ConfigError(
            "quantvggt: group-wise activation quantization is not supported (use token or tensor)"
        )
    records: dict[str, dict[str, Any]] = {}

    def calibrate(bd) -> None:
        records[bd.block.name] = calibrate_block(bd, config, ctx)

    for blk in ctx.blockwise(calibration, calibrate):
        blk.update(records.get(blk["name"], {}))
