"""FlatQuant (Sun et al. 2024, `ruikangliu/FlatQuant`): learnable affine transforms per linear input, learnable
weight and activation clipping, trained per block by output reconstruction; the base that FGQ builds on.

Per quantized linear y = x W^T + b the method learns an invertible affine transform
    T(x) = (x * d) P,     P = P1 (x) P2 (Kronecker),  P_i = U_i diag(sigma_i) V_i^T,
with d [in] a per-channel scale ("diag_scale", initialised SmoothQuant-style with alpha 0.5 as 1/s), U_i, V_i
orthogonal (torch's Cayley parametrisation, random orthogonal initialisation by QR) and sigma_i > 0 free
(initialised 1). The weight absorbs the inverse, W' = W diag(1/d) P^{-T}, so T(x) W'^T = x W^T exactly in real
arithmetic; the activation quantizer sees T(x) and the weight quantizer W'.
Clipping: LWC, a learnable sigmoid(a_row) per output row shrinking the weight range; LAC, one learnable
sigmoid(a) per linear shrinking the dynamic per-token activation range (it becomes QuantLinear.act_clip_ratio,
so one scalar, where FlatQuant has separate min / max factors: equal for symmetric schemes).

Where the transforms go on a VGGT / Pi3 block (norm1 -> attn.qkv -> q/k-norm, RoPE, SDPA -> attn.proj;
norm2 -> mlp.fc1 -> GELU -> mlp.fc2), as in FGQ's `apply_flatquant.py`:
- attn.qkv: one transform shared by q, k, v (the fused linear), P = P1 (x) P2 with the two factors as close to
  sqrt(C) as divide C (FlatQuant's `get_decompose_dim`: 1024 = 32 x 32, 128 = 8 x 16); d folded into norm1's
  weight and bias (`fold`); P online.
- attn.proj: P = P_heads (x) P_headdim (FlatQuant's o_trans (x) vcache_trans), no diag. With `fold_v` the head-dim
  factor is folded into the v rows of qkv (v is neither normed nor rotated, so (A V) P_h = A (V P_h)) and only
  P_heads (x) I stays online; else the whole Kronecker is online.
- mlp.fc1: like qkv, d folded into norm2.
- mlp.fc2: P on the 4C hidden width (4096 = 64 x 64); d cannot cross the GELU, so it stays online (as FGQ's code
  comment says).
Blocks of another layout (no such names) get a full online transform per linear.

Training per block (FGQ's `calibrate_flatquant_vggt` schedule): AdamW with torch's default weight decay 0.01 (as
both FlatQuant's and FGQ's code construct it), lr 5e-3 for the transforms and diag scales and 10x for the clip
factors, linear warm-up then cosine decay to lr * 1e-3, `epochs` passes over the calibration scenes in a fixed
order (both references iterate the cached samples in order; `shuffle=True` draws a seeded permutation per epoch)
in batches of `batch_size` scenes; loss = mean squared error of the block output against the FP block output on
the same (FP) input, optionally channel-weighted (FGQ), divided by its own detached value before backward (both
FlatQuant's reference and FGQ do this; `normalize_loss=False` drops it).
LWC clamps the transformed weight to [sigma(a) * min, sigma(a) * max] per row before quantizing with the scale of
that range (as FlatQuant's and QuantVGGT's weight quantizers do), so weights outside the clipped range saturate. The quantizers use straight-through rounding; the
trainable forward quantizes exactly as QuantLinear does afterwards (same scale rule, same clip factors).
Differences from the reference, deliberately: float32 throughout (the reference trains under bf16 autocast);
the final weights are quantized with the learned LWC clip (the FGQ loader re-applies plain RTN); block chaining
feeds the FP output of the previous block (FGQ's choice), i.e. propagate="fp".

After training the transforms are materialised: diag scales multiplied into the LayerNorm weight and bias
where `fold` allows, the rest an online `KroneckerTransform` of the QuantLinear (kind "kronecker"), weights
transformed, clipped and rounded to integer codes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ptq3d.calibration.blockwise import foldable_norm, replace_module
from ptq3d.errors import ConfigError
from ptq3d.methods.registry import MethodConfig, register_method
from ptq3d.quant.qlinear import QuantLinear
from ptq3d.quant.spec import QuantSpec, Scheme, _expand, qparams_from_range, quantize
from ptq3d.quant.transforms import InputTransform

# --- Kronecker algebra ----------------------------------------------------------------------------


def kron_factors(n: int) -> tuple[int, int]:
    """(n1, n2) with n1 * n2 = n, n1 <= n2 and n1 the largest divisor <= sqrt(n) (1024 -> 32, 32;
    128 -> 8, 16; 384 -> 16, 24; a prime n -> 1, n)."""
    n1 = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return n1, n // n1


def kron_apply(x: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """x [..., n1*n2] -> x (left (x) right) [..., n1*n2], i.e. left^T X right on X = x viewed as [..., n1, n2]
    (row-major). left [n1, n1], right [n2, n2]."""
    n1, n2 = left.shape[0], right.shape[0]
    X = x.reshape(*x.shape[:-1], n1, n2)
    return (left.transpose(0, 1).to(x.dtype) @ X @ right.to(x.dtype)).reshape(x.shape)


class KroneckerTransform(InputTransform):
    """Online T(x) = (x * diag) (left (x) right) of a QuantLinear (diag [n] optional, left [n1, n1], right [n2, n2],
    n = n1 * n2); transform_weight(W) = W diag(1/diag) (left^{-T} (x) right^{-T}) (inverses in float64)."""

    kind = "kronecker"

    def __init__(self, left: torch.Tensor, right: torch.Tensor, diag: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("left", left.detach().float().clone())
        self.register_buffer("right", right.detach().float().clone())
        self.register_buffer("diag", None if diag is None else diag.detach().float().clone())

    @property
    def n(self) -> int:
        return self.left.shape[0] * self.right.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.diag is not None:
            x = x * self.diag.to(x.dtype)
        return kron_apply(x, self.left, self.right)

    def transform_weight(self, weight: torch.Tensor) -> torch.Tensor:
        w = weight.double()
        if self.diag is not None:
            w = w / self.diag.double().view(1, -1)
        li = torch.linalg.inv(self.left.double()).transpose(0, 1)
        ri = torch.linalg.inv(self.right.double()).transpose(0, 1)
        return kron_apply(w, li, ri).to(weight.dtype)

    def config(self) -> dict:
        return {
            "kind": self.kind,
            "n": self.n,
            "left": int(self.left.shape[0]),
            "right": int(self.right.shape[0]),
            "diag": self.diag is not None,
        }

    @classmethod
    def empty(cls, cfg: dict) -> KroneckerTransform:
        """An identity transform of the shape `config()` describes (buffers to be filled by load_state_dict)."""
        diag = torch.ones(cfg["n"]) if cfg.get("diag") else None
        return cls(torch.eye(cfg["left"]), torch.eye(cfg["right"]), diag)


# --- the learnable transform ----------------------------------------------------------------------


def _random_orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r)).view(1, -1)).float()  # sign fix: Haar-distributed


class SVDFactor(nn.Module):
    """One Kronecker factor P = U diag(sigma) V^T (FlatQuant's SVD-style factor): U, V orthogonal through torch's
    Cayley parametrisation (random orthogonal at init), sigma [n] free (init 1). inverse() = V diag(1/sigma) U^T."""

    def __init__(self, n: int, generator: torch.Generator):
        super().__init__()
        from torch.nn.utils.parametrizations import orthogonal

        self.n = n
        u, v = nn.Linear(n, n, bias=False), nn.Linear(n, n, bias=False)
        with torch.no_grad():
            u.weight.copy_(_random_orthogonal(n, generator))
            v.weight.copy_(_random_orthogonal(n, generator))
        self.u = orthogonal(u, orthogonal_map="cayley")
        self.v = orthogonal(v, orthogonal_map="cayley")
        self.sigma = nn.Parameter(torch.ones(n))

    def matrix(self) -> torch.Tensor:
        return (self.u.weight * self.sigma.view(1, -1)) @ self.v.weight.transpose(0, 1)

    def inverse(self) -> torch.Tensor:
        return (self.v.weight / self.sigma.view(1, -1)) @ self.u.weight.transpose(0, 1)


class AffineTransform(nn.Module):
    """Learnable T(x) = (x * diag_scale) (P1 (x) P2) on width n = n1 * n2 (module docstring).

    sizes: (n1, n2). diag: learn diag_scale [n] (init ones; set by `init_diag`).
    online_right: apply P2 online (False when P2 is folded upstream, e.g. into the v rows of qkv).
    """

    def __init__(self, sizes: tuple[int, int], diag: bool, generator: torch.Generator):
        super().__init__()
        self.sizes = (int(sizes[0]), int(sizes[1]))
        self.left = SVDFactor(self.sizes[0], generator)
        self.right = SVDFactor(self.sizes[1], generator)
        self.diag_scale = nn.Parameter(torch.ones(self.sizes[0] * self.sizes[1])) if diag else None
        self.online_right = True

    @property
    def n(self) -> int:
        return self.sizes[0] * self.sizes[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The online part, x [..., n] -> [..., n]."""
        if self.diag_scale is not None:
            x = x * self.diag_scale
        right = self.right.matrix() if self.online_right else torch.eye(self.sizes[1], device=x.device)
        return kron_apply(x, self.left.matrix(), right)

    def transform_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """W [out, n] -> W diag(1/d) P^{-T} (the full transform, including a factor folded upstream)."""
        if self.diag_scale is not None:
            weight = weight / self.diag_scale.view(1, -1)
        return kron_apply(weight, self.left.inverse().transpose(0, 1), self.right.inverse().transpose(0, 1))

    @torch.no_grad()
    def init_diag(self, act_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> None:
        """SmoothQuant initialisation d = 1 / s, s = max|x|^alpha / max|W|^(1-alpha) (clamped >= 1e-5)."""
        if self.diag_scale is None:
            return
        w = torch.stack([x.abs().amax(dim=0) for x in weights]).amax(dim=0).clamp(min=1e-5)
        s = (act_absmax.float().pow(alpha) / w.float().pow(1 - alpha)).clamp(min=1e-5)
        self.diag_scale.copy_(1.0 / s)


# --- straight-through quantizers -----------------------------------------------------------------


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity gradient."""
    return x + (torch.round(x) - x).detach()


def fake_quant_ste(
    x: torch.Tensor,
    spec: QuantSpec,
    clip: torch.Tensor | float = 1.0,
    sym_rule: str = "absmax",
    clamp: bool = False,
):
    """Differentiable fake quantization of x viewed as [rows, cols] (weights [out, in]: rows = output channels;
    activations [..., C]: rows = tokens), with the same qparams as ptq3d.quant.spec (range widened to include 0,
    multiplied by `clip`: a scalar or [rows, 1]). clamp: first clamp x to the clipped range [clip * min,
    clip * max] (LWC as FlatQuant's and QuantVGGT's weight quantizers do it). Straight-through rounding;
    gradients reach x and clip."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    rows, cols = x2.shape
    if spec.granularity == "group":
        g = x2.reshape(rows, cols // spec.group_size, spec.group_size)
    else:
        g = x2.unsqueeze(1)  # [rows, 1, cols]
    if spec.granularity == "tensor":
        xmax, xmin = g.amax().reshape(1, 1, 1), g.amin().reshape(1, 1, 1)
    else:
        xmax, xmin = g.amax(dim=-1, keepdim=True), g.amin(dim=-1, keepdim=True)
    if isinstance(clip, torch.Tensor) and clip.dim() == 2:
        clip = clip.unsqueeze(-1)  # [rows, 1, 1]
    xmax = xmax.clamp(min=0) * clip
    xmin = xmin.clamp(max=0) * clip
    if clamp:
        g = torch.minimum(torch.maximum(g, xmin), xmax)
    if spec.symmetric:
        amax = torch.maximum(-xmin, xmax)
        scale = amax / spec.qmax if sym_rule == "absmax" else 2 * amax / (2**spec.bits - 1)
        scale = torch.where(amax == 0, torch.ones_like(scale), scale)
        q = torch.clamp(round_ste(g / scale), spec.qmin, spec.qmax) * scale
    else:
        scale = (xmax - xmin) / (2**spec.bits - 1)
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        zero = round_ste(-xmin / scale) + spec.qmin
        q = (torch.clamp(round_ste(g / scale) + zero, spec.qmin, spec.qmax) - zero) * scale
    return q.reshape(shape)


# --- the trainable linear ------------------------------------------------------------------------


class FlatQuantLinear(nn.Module):
    """Training-time stand-in for one nn.Linear: y = Q_a(T(x)) Q_w(W'(T))^T + b.

    The FP weight [out, in] and bias are frozen buffers; `trans` (AffineTransform, possibly shared) and the clip
    logits are trained. v_fold: (num_heads, head_dim, AffineTransform) whose right factor transforms the v rows of
    this (qkv) output, V -> V P_h per head. quantize=False gives the transformed FP layer (the exactness check).
    """

    def __init__(
        self,
        linear: nn.Linear,
        trans: AffineTransform,
        scheme: Scheme,
        config: FlatQuantConfig,
        act_spec: QuantSpec | None,
    ):
        super().__init__()
        self.register_buffer("weight", linear.weight.detach().float().clone())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        self.trans = trans
        self.weight_spec = scheme.weight
        self.act_spec = act_spec
        self.sym_rule = config.sym_rule
        self.final_act_spec = scheme.act  # what the QuantLinear gets (static ranges are set after training)
        init = float(config.clip_init)
        rows = 1 if scheme.weight.granularity == "tensor" else linear.out_features  # one clip per scale row
        self.lwc = nn.Parameter(torch.full((rows, 1), init)) if config.lwc else None
        self.lac = nn.Parameter(torch.tensor(init)) if config.lac and act_spec is not None else None
        self.fixed_act_clip = float(config.act_clip_ratio)
        self.v_fold: tuple[int, int, AffineTransform] | None = None
        self.quantize = True

    # the FP weight and bias this layer computes with before its input transform (v rows folded)
    def folded_weight_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        w, b = self.weight, self.bias
        if self.v_fold is None:
            return w, b
        heads, hd, tr = self.v_fold
        ph = tr.right.matrix()  # [hd, hd]
        c = heads * hd
        wv = torch.einsum("ji,hjk->hik", ph, w[2 * c :].reshape(heads, hd, -1)).reshape(c, -1)
        w = torch.cat([w[: 2 * c], wv], dim=0)
        if b is not None:
            bv = (b[2 * c :].reshape(heads, hd) @ ph).reshape(c)
            b = torch.cat([b[: 2 * c], bv])
        return w, b

    def act_clip(self) -> torch.Tensor | float:
        return torch.sigmoid(self.lac) if self.lac is not None else self.fixed_act_clip

    def weight_clip(self) -> torch.Tensor | float:
        return torch.sigmoid(self.lwc) if self.lwc is not None else 1.0

    def transformed_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W' [out, in], bias): the weight in the transformed input basis, before quantization."""
        w, b = self.folded_weight_bias()
        return self.trans.transform_weight(w), b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trans(x)
        w, b = self.transformed_weight()
        if self.quantize:
            if self.act_spec is not None:
                x = fake_quant_ste(x, self.act_spec, self.act_clip())
            w = fake_quant_ste(
                w, self.weight_spec, self.weight_clip(), self.sym_rule, clamp=self.lwc is not None
            )
        return F.linear(x, w, b)


class FPTransformedLinear(nn.Module):
    """A materialised transform with FP weights: y = T(x) W'^T + b (the "transformed" stage, for checks)."""

    def __init__(self, transform: InputTransform, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.transform = transform
        self.register_buffer("weight", weight.detach().float().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(x), self.weight.to(x.dtype), None if self.bias is None else self.bias)


# --- config ------------------------------------------------------------------------------------------


@dataclass
class FlatQuantConfig(MethodConfig):
    """FlatQuant calibration (defaults: FGQ's VGGT settings, notes/methods.md 3.2).

    epochs: passes over the calibration scenes per block (15). batch_size: scenes per optimiser step (2).
    lr: AdamW lr of the transforms and diag scales (5e-3); clip_lr_mult: lr multiplier of the clip factors (10).
    min_lr_ratio: cosine decay floor (1e-3); warmup_steps: linear warm-up steps (16, capped at a quarter of the
    steps). smooth_alpha: SmoothQuant alpha of the diag-scale initialisation (0.5). diag: learn diag scales.
    lwc / lac: learnable weight / activation clipping, initial factor sigmoid(clip_init) (4.0 -> 0.982).
    fold: linear -> the norm feeding only it, where d is folded. fold_v: fold the head-dim factor of attn.proj's
    transform into the v rows of attn.qkv. qkv_name / proj_name: the attention linears (relative names).
    normalize_loss: divide the block loss by its detached value before backward (True: FlatQuant's and FGQ's
        code). weight_decay: AdamW weight decay (0.01: torch's default, which both references use).
    shuffle: a seeded random sample order per epoch (False: the references' fixed order).
    seed: seed of the random orthogonal initialisation.
    Inherited: act_clip_ratio is the fixed activation clip when lac is off (LAC replaces it otherwise);
    act_static: training uses dynamic per-tensor ranges, the static ranges are observed after materialising.
    """

    PRESETS: ClassVar[dict[str, dict]] = {"paper": {}}
    # FlatQuant as FGQ's baseline on VGGT: 64 random CO3D clips x 4 frames, 15 epochs, aggregator blocks
    CALIBRATION_DEFAULTS: ClassVar[dict[str, dict]] = {
        "paper": {"builder": "random", "num_scenes": 64, "frames": 4, "epochs": 15, "scope": "aggregator"}
    }

    epochs: int = 15
    batch_size: int = 2
    lr: float = 5e-3
    clip_lr_mult: float = 10.0
    min_lr_ratio: float = 1e-3
    warmup_steps: int = 16
    smooth_alpha: float = 0.5
    diag: bool = True
    lwc: bool = True
    lac: bool = True
    clip_init: float = 4.0
    fold: dict[str, str] = field(default_factory=lambda: {"attn.qkv": "norm1", "mlp.fc1": "norm2"})
    fold_v: bool = True
    qkv_name: str = "attn.qkv"
    proj_name: str = "attn.proj"
    normalize_loss: bool = True
    weight_decay: float = 0.01
    shuffle: bool = False
    seed: int = 0

    def check(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"flatquant epochs={self.epochs}: must be >= 0")
        if self.batch_size < 1:
            raise ConfigError(f"flatquant batch_size={self.batch_size}: must be >= 1")
        if not self.lr > 0:
            raise ConfigError(f"flatquant lr={self.lr}: must be > 0")
        if not 0.0 <= self.smooth_alpha <= 1.0:
            raise ConfigError(f"flatquant smooth_alpha={self.smooth_alpha}: must be in [0, 1]")
        if self.sym_rule not in ("absmax", "range"):
            raise ConfigError(f"flatquant sym_rule={self.sym_rule!r}: use 'absmax' or 'range'")


# --- per-block construction, training, materialisation -------------------------------------------


def _num_heads(attn: nn.Module) -> int | None:
    for name in ("num_heads", "heads"):
        h = getattr(attn, name, None)
        if isinstance(h, int) and h > 0:
            return h
    return None


@dataclass
class BlockTransforms:
    """The learnable state of one block: wrappers by relative linear name, the norm each diag scale folds
    into (or None: online), and the parent modules of the attention linears."""

    wrappers: dict[str, FlatQuantLinear]
    fold_norm: dict[str, nn.Module | None]
    originals: dict[str, nn.Linear]

    def transforms(self) -> list[AffineTransform]:
        seen, out = set(), []
        for w in self.wrappers.values():
            if id(w.trans) not in seen:
                seen.add(id(w.trans))
                out.append(w.trans)
        return out

    def set_quantize(self, on: bool) -> None:
        for w in self.wrappers.values():
            w.quantize = on


def build_block_transforms(
    block: nn.Module,
    linears: dict[str, nn.Linear],
    scheme: Scheme | Callable[[str], Scheme],
    config: FlatQuantConfig,
    act_absmax: dict[str, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> BlockTransforms:
    """Create the transforms and wrappers for one block and swap the wrappers in (module docstring).
    scheme: one Scheme for every linear, or rel name -> Scheme (BlockData.scheme_for, for mixed-precision plans).
    act_absmax: per-linear max |input| per channel [in] for the diag initialisation (None: diag stays 1)."""
    g = generator if generator is not None else torch.Generator().manual_seed(config.seed)
    wrappers: dict[str, FlatQuantLinear] = {}
    fold_norm: dict[str, nn.Module | None] = {}
    heads = None
    if config.proj_name in linears:
        attn = block.get_submodule(config.proj_name.rpartition(".")[0]) if "." in config.proj_name else block
        heads = _num_heads(attn)
        if heads is not None and linears[config.proj_name].in_features % heads:
            heads = None
    for rel, lin in linears.items():
        sch = scheme(rel) if callable(scheme) else scheme
        act_spec = sch.act
        if act_spec is not None and not act_spec.dynamic:
            # train against dynamic per-tensor ranges; static ranges are observed after materialising
            act_spec = QuantSpec(act_spec.bits, "tensor", act_spec.symmetric, None, dynamic=True)
        n = lin.in_features
        if rel == config.proj_name and heads is not None:
            trans = AffineTransform((heads, n // heads), diag=False, generator=g)
        else:
            trans = AffineTransform(kron_factors(n), diag=config.diag, generator=g)
        norm = foldable_norm(block, config.fold.get(rel), n) if config.diag else None
        fold_norm[rel] = norm
        trans.to(lin.weight.device)
        if act_absmax is not None and rel in act_absmax:
            trans.init_diag(act_absmax[rel], [lin.weight.detach()], config.smooth_alpha)
        wrappers[rel] = FlatQuantLinear(lin, trans, sch, config, act_spec).to(lin.weight.device)
    qkv = linears.get(config.qkv_name)
    proj = linears.get(config.proj_name)
    if (
        config.fold_v
        and heads is not None
        and qkv is not None
        and proj is not None
        and qkv.out_features == 3 * proj.in_features
    ):
        ptrans = wrappers[config.proj_name].trans
        ptrans.online_right = False
        wrappers[config.qkv_name].v_fold = (heads, proj.in_features // heads, ptrans)
    for rel, w in wrappers.items():
        replace_module(block, rel, w)
    return BlockTransforms(wrappers, fold_norm, dict(linears))


def restore_linears(block: nn.Module, bt: BlockTransforms) -> None:
    """Put the original nn.Linear modules back (undo build_block_transforms' swap)."""
    for rel, lin in bt.originals.items():
        replace_module(block, rel, lin)


def _lr_lambda(total: int, warmup: int, min_ratio: float):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        p = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))

    return f


def block_loss(out: torch.Tensor, target: torch.Tensor, channel_weight: torch.Tensor | None) -> torch.Tensor:
    """mean over tokens and channels of w[c] (out - target)^2 (w = 1 without channel weights).
    out, target [..., C]; channel_weight [C] or None."""
    d2 = (out - target).pow(2)
    if channel_weight is not None:
        d2 = d2 * channel_weight.to(d2.dtype)
    return d2.mean()


def train_block(
    bd,
    bt: BlockTransforms,
    config: FlatQuantConfig,
    channel_weight: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Optimise the block's transforms and clip factors (module docstring). bd: calibration BlockData.
    Returns {"loss_init", "loss_final", "steps"} (losses: mean block_loss over the scenes, no grad)."""
    g = generator if generator is not None else torch.Generator().manual_seed(config.seed)
    trans_params, clip_params = [], []
    for t in bt.transforms():
        trans_params += [p for p in t.parameters() if p.requires_grad]
    for w in bt.wrappers.values():
        clip_params += [p for p in (w.lwc, w.lac) if p is not None]

    def evaluate() -> float:
        with torch.no_grad():
            outs = bd.run()
            return float(
                sum(block_loss(o, t, channel_weight) for o, t in zip(outs, bd.fp_outputs, strict=True))
                / len(outs)
            )

    loss_init = evaluate()
    n = len(bd.inputs)
    steps_per_epoch = math.ceil(n / config.batch_size)
    total = config.epochs * steps_per_epoch
    if total == 0 or not (trans_params or clip_params):
        return {"loss_init": loss_init, "loss_final": loss_init, "steps": 0}
    groups = []
    if trans_params:
        groups.append({"params": trans_params, "lr": config.lr})
    if clip_params:
        groups.append({"params": clip_params, "lr": config.lr * config.clip_lr_mult})
    opt = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    warmup = max(1, min(config.warmup_steps, total // 4))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, warmup, config.min_lr_ratio))
    with torch.enable_grad():
        for _ in range(config.epochs):
            perm = torch.randperm(n, generator=g).tolist() if config.shuffle else list(range(n))
            for i in range(0, n, config.batch_size):
                idx = perm[i : i + config.batch_size]
                loss = 0.0
                for j in idx:
                    out = bd.block.forward(bd.inputs[j], bd.contexts[j])
                    loss = loss + block_loss(out, bd.fp_outputs[j], channel_weight)
                loss = loss / len(idx)
                if config.normalize_loss:
                    loss = loss / loss.detach().clamp_min(1e-30)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    return {"loss_init": loss_init, "loss_final": evaluate(), "steps": total}


@torch.no_grad()
def materialize_linear(
    w: FlatQuantLinear, fold_norm: nn.Module | None, quantize_weights: bool = True
) -> tuple[nn.Module, torch.Tensor, torch.Tensor | None]:
    """The deployable layer of one trained wrapper. Folds the diag scale into `fold_norm` (weight and bias, in
    place) when given. Returns (layer, fp_weight, fp_bias): layer a QuantLinear with a KroneckerTransform (or an
    FPTransformedLinear if not quantize_weights); fp_weight/bias: the FP linear the layer approximates on its own
    (possibly norm-folded) input, for the per-layer error."""
    tr = w.trans
    d = None if tr.diag_scale is None else tr.diag_scale.detach().float().clone()
    w_fold, b = w.folded_weight_bias()
    w_fold = w_fold.detach().float()
    b = None if b is None else b.detach().float()
    wprime = _transformed_weight64(tr, w_fold)
    left = tr.left.matrix().detach()
    right = tr.right.matrix().detach() if tr.online_right else torch.eye(tr.sizes[1], device=left.device)
    online_diag = d
    fp_weight = w_fold
    if d is not None and fold_norm is not None:
        fold_norm.weight.mul_(d.to(fold_norm.weight.dtype))
        if getattr(fold_norm, "bias", None) is not None:
            fold_norm.bias.mul_(d.to(fold_norm.bias.dtype))
        online_diag = None
        fp_weight = w_fold / d.view(1, -1)  # the linear now sees x * d
    if not tr.online_right:
        # the input already carries the folded factor (I (x) P_h): the FP-equivalent weight undoes it
        eye = torch.eye(tr.sizes[0], dtype=torch.float64, device=fp_weight.device)
        rinv_t = tr.right.inverse().detach().double().transpose(0, 1)
        fp_weight = kron_apply(fp_weight.double(), eye, rinv_t).float()
    transform = KroneckerTransform(left, right, online_diag)
    device = w.weight.device
    if not quantize_weights:
        return FPTransformedLinear(transform, wprime, b).to(device), fp_weight, b
    spec = w.weight_spec
    q = QuantLinear(
        w.weight.shape[1],
        w.weight.shape[0],
        spec,
        w.final_act_spec,
        bias=b is not None,
        input_transform=transform,
        act_clip_ratio=float(w.act_clip()),
    )
    clip = w.weight_clip()
    clip = (
        clip.detach().float()
        if isinstance(clip, torch.Tensor)
        else torch.full((1, 1), float(clip), device=device)
    )
    rows, cols = wprime.shape
    if spec.granularity == "group":
        grp = wprime.reshape(rows, cols // spec.group_size, spec.group_size)
        xmin, xmax = grp.amin(dim=2), grp.amax(dim=2)
    elif spec.granularity == "tensor":
        xmin, xmax = wprime.min().reshape(1, 1), wprime.max().reshape(1, 1)
    else:
        xmin, xmax = wprime.amin(dim=1, keepdim=True), wprime.amax(dim=1, keepdim=True)
    lo, hi = xmin.clamp(max=0) * clip, xmax.clamp(min=0) * clip
    scale, zero = qparams_from_range(lo, hi, spec, w.sym_rule)
    if w.lwc is not None:  # LWC clamps to the clipped range before rounding (as in training)
        wprime = torch.minimum(torch.maximum(wprime, _expand(lo, cols)), _expand(hi, cols))
    q.set_weight(quantize(wprime, scale, zero, spec), scale, zero)
    if b is not None:
        q.bias.copy_(b)
    return q.to(device), fp_weight, b


def _transformed_weight64(tr: AffineTransform, weight: torch.Tensor) -> torch.Tensor:
    """W diag(1/d) P^{-T} computed in float64 (P^{-1} from the SVD form, exact up to rounding)."""
    w = weight.double()
    if tr.diag_scale is not None:
        w = w / tr.diag_scale.detach().double().view(1, -1)
    li = tr.left.inverse().detach().double().transpose(0, 1)
    ri = tr.right.inverse().detach().double().transpose(0, 1)
    return kron_apply(w, li, ri).float()


def materialize_block(bd, bt: BlockTransforms, quantize_weights: bool = True) -> dict[str, nn.Module]:
    """Replace the block's wrappers by deployable layers (QuantLinear via bd.replace, with the FP reference for
    the per-layer error), folding diag scales into norms. Returns the new layers by relative name."""
    layers = {}
    for rel, w in bt.wrappers.items():
        layer, fp_w, fp_b = materialize_linear(w, bt.fold_norm.get(rel), quantize_weights)
        replace_module(bd.block.module, rel, bt.originals[rel])
        bd.replace(rel, layer, fp_weight=fp_w, fp_bias=fp_b)
        layers[rel] = layer
    return layers


def flatquant_calibrate_block(
    bd, config: FlatQuantConfig, channel_weight: torch.Tensor | None = None
) -> dict[str, float]:
    """The whole FlatQuant step for one block: init transforms, train, materialise, static ranges; each linear at
    its own scheme (bd.scheme_for: the run's scheme with its mixed-precision plan applied).
    channel_weight [C]: FGQ's per-channel loss weights for this block (None = plain MSE)."""
    lins = bd.linears()
    if not lins:
        return {"loss_init": float("nan"), "loss_final": float("nan"), "steps": 0}
    g = torch.Generator().manual_seed(config.seed * 100003 + bd.index)
    amax = bd.input_absmax(list(lins))
    bt = build_block_transforms(bd.block.module, lins, bd.scheme_for, config, amax, g)
    try:
        rec = train_block(bd, bt, config, channel_weight, g)
    except BaseException:
        restore_linears(bd.block.module, bt)
        raise
    materialize_block(bd, bt)
    bd.calibrate_static_acts()
    return rec


@register_method(
    "flatquant", config=FlatQuantConfig, requires_calibration="always", propagate="fp", version="2"
)
def quantize_flatquant(model, calibration, scheme, config: FlatQuantConfig, ctx) -> None:
    """FlatQuant: learnable Kronecker affine transforms + LWC/LAC, block-wise MSE reconstruction."""
    config.check()
    run_flatquant(ctx, calibration, config, None)


def run_flatquant(ctx, calibration, config: FlatQuantConfig, weights: torch.Tensor | None) -> None:
    """The block loop shared by flatquant and fgq. weights: [blocks, C] channel weights or None. Adds
    flatquant_loss_init / flatquant_loss_final / flatquant_steps to each block record."""
    per_block: dict[str, dict[str, float]] = {}

    def calibrate(bd) -> None:
        cw = None if weights is None else weights[bd.index]
        per_block[bd.block.name] = flatquant_calibrate_block(bd, config, cw)

    records = ctx.blockwise(calibration, calibrate)
    for rec in records:
        r = per_block.get(rec["name"], {})
        rec["flatquant_loss_init"] = _json_float(r.get("loss_init"))
        rec["flatquant_loss_final"] = _json_float(r.get("loss_final"))
        rec["flatquant_steps"] = int(r.get("steps", 0))


def _json_float(v) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None
