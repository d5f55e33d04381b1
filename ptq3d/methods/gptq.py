"""GPTQ (Frantar et al. 2022): weight quantization with second-order error feedback.

Per linear with W [rows = out, cols = in] and calibration inputs x [n, cols]:
1. H = 2/N sum x x^T, accumulated per batch exactly like IST-DASLab/gptq `add_batch` (N counts batches'
   leading dim).
2. qparams of the whole W are computed first (per row / per tensor); then dead columns (H_ii = 0) get
   H_ii = 1 and W[:, i] = 0.
3. act-order: columns permuted by descending diag(H) (undone at the end).
4. H += percdamp * mean(diag H) I; U = chol(chol_inverse(chol(H)))^T upper, the Cholesky factor of H^-1.
5. Lazy batches of `blocksize` columns; per column i: q = Q(w_i), err = (w_i - q) / U_ii,
   W[:, i:block_end] -= err U[i, i:block_end]; after the batch W[:, end:] -= Err U[batch, end:].
   With groups, qparams are recomputed from the current (error-updated) W every group_size columns
   (reading the outer W, as the reference does), or precomputed on the original W (static_groups).
6. Loss per column (w - q)^2 / U_ii^2 / 2.
With act-order and (non-static) groups, a group covers permuted columns; the QuantLinear then keeps the
weight in permuted order with a ColumnPermutation input transform, so groups stay contiguous.

The block driver is sequential over blocks (quantized outputs propagated, like the reference's opt.py);
within a block, true_sequential quantizes one linear at a time in execution order, re-collecting the
Hessian of the next linear through the already-quantized ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ptq3d.errors import ConfigError
from ptq3d.methods.registry import MethodConfig, register_method
from ptq3d.quant.qlinear import QuantLinear
from ptq3d.quant.spec import QuantSpec, Scheme, compute_qparams, mse_clip_qparams
from ptq3d.quant.transforms import ColumnPermutation, InputTransform, chain


class HessianAccumulator:
    """H = 2/N sum_batches x^T x for one linear (IST-DASLab/gptq add_batch). H [cols, cols] float32."""

    def __init__(self, columns: int, device: torch.device | str | None = None):
        self.columns = columns
        self.H = torch.zeros(columns, columns, device=device)
        self.nsamples = 0

    @torch.no_grad()
    def add_batch(self, inp: torch.Tensor) -> None:
        """inp: [batch, tokens, cols] or [tokens, cols] (counts as one batch)."""
        if inp.dim() == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        inp = inp.reshape(-1, inp.shape[-1]).t()
        self.H *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = math.sqrt(2 / self.nsamples) * inp.float()
        self.H += inp.matmul(inp.t())


@dataclass
class GPTQResult:
    """codes / Q in ORIGINAL column order: codes [rows, cols] signed ints (float tensor), Q = dequantized
    weight [rows, cols] float32. scale / zero [rows, n_groups] (or [rows, 1] / [1, 1]); zero None if
    symmetric. g_idx [cols]: group of each original column. perm [cols] or None (act-order).
    permuted_groups: groups are contiguous only in permuted order (act-order with non-static groups).
    loss: sum of the per-column losses (the reference's printed error)."""

    codes: torch.Tensor
    Q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    g_idx: torch.Tensor
    perm: torch.Tensor | None
    permuted_groups: bool
    loss: float

    def storage(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(codes in the column order a QuantLinear stores them, permutation input transform or None)."""
        if self.permuted_groups:
            return self.codes[:, self.perm], self.perm
        return self.codes, None


def _row_spec(spec: QuantSpec) -> QuantSpec:
    return QuantSpec(spec.bits, "channel", spec.symmetric) if spec.granularity == "group" else spec


@torch.no_grad()
def gptq_quantize(
    W: torch.Tensor,
    H: torch.Tensor,
    spec: QuantSpec,
    *,
    blocksize: int = 128,
    percdamp: float = 0.01,
    actorder: bool = False,
    static_groups: bool = False,
    sym_rule: str = "absmax",
    mse_clip: bool = False,
) -> GPTQResult:
    """GPTQ of W [rows, cols] with Hessian H [cols, cols] (see module docstring). W and H are not modified."""
    if spec.granularity == "token":
        raise ConfigError("GPTQ weight spec cannot be per-token")
    W = W.detach().clone().float()
    H = H.detach().clone().float()
    rows, cols = W.shape
    spec.check_width(cols, "the GPTQ weight")
    gs = spec.group_size if spec.granularity == "group" else None
    rspec = _row_spec(spec)
    qmin, qmax = rspec.qmin, rspec.qmax

    def qparams(w):
        if mse_clip:
            return mse_clip_qparams(w, rspec, sym_rule=sym_rule)
        return compute_qparams(w, rspec, sym_rule=sym_rule)

    scale, zero = qparams(W)  # before the dead columns are zeroed, like the reference
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    groups = []
    if gs is not None and static_groups:
        groups = [qparams(W[:, i : i + gs]) for i in range(0, cols, gs)]
    perm = invperm = None
    if actorder:
        perm = torch.argsort(torch.diag(H), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]
        invperm = torch.argsort(perm)

    Losses = torch.zeros_like(W)
    Q = torch.zeros_like(W)
    C = torch.zeros_like(W)  # codes, processing order
    n_groups = 1 if gs is None else cols // gs
    g_scale = [None] * n_groups
    g_zero = [None] * n_groups
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(cols, device=W.device)
    H[diag, diag] += damp
    try:
        H = torch.linalg.cholesky(H)
        H = torch.cholesky_inverse(H)
        H = torch.linalg.cholesky(H, upper=True)
    except torch.linalg.LinAlgError as exc:
        raise ConfigError(
            f"GPTQ: Hessian not positive definite even with percdamp={percdamp}; raise percdamp"
        ) from exc
    Hinv = H

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        C1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Losses1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if gs is not None:
                if not static_groups:
                    if (i1 + i) % gs == 0:
                        # reads the outer W (no intra-batch updates), as the reference does
                        scale, zero = qparams(W[:, (i1 + i) : (i1 + i + gs)])
                        g_scale[(i1 + i) // gs], g_zero[(i1 + i) // gs] = scale, zero
                else:
                    idx = i1 + i
                    if actorder:
                        idx = int(perm[idx])
                    scale, zero = groups[idx // gs]
            # quantize / dequantize of one column, inlined (same float ops as quant.quantize/dequantize)
            s_col = scale.reshape(-1)
            c = torch.round(w / s_col)
            if zero is not None:
                z_col = zero.reshape(-1)
                c = torch.clamp(c + z_col, qmin, qmax)
                q = s_col * (c - z_col)
            else:
                c = torch.clamp(c, qmin, qmax)
                q = s_col * c
            C1[:, i] = c
            Q1[:, i] = q
            Losses1[:, i] = (w - q) ** 2 / d**2
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        C[:, i1:i2] = C1
        Losses[:, i1:i2] = Losses1 / 2
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])

    if actorder:
        Q = Q[:, invperm]
        C = C[:, invperm]
    if gs is None:
        out_scale, out_zero = scale, zero
        g_idx = torch.zeros(cols, dtype=torch.long)
        permuted_groups = False
    else:
        if static_groups:
            g_scale = [g[0] for g in groups]
            g_zero = [g[1] for g in groups]
        out_scale = torch.cat(g_scale, dim=1)
        out_zero = None if g_zero[0] is None else torch.cat(g_zero, dim=1)
        pos = invperm if (actorder and not static_groups) else torch.arange(cols)
        g_idx = pos // gs
        permuted_groups = bool(actorder and not static_groups)
    return GPTQResult(C, Q, out_scale, out_zero, g_idx, perm, permuted_groups, float(Losses.sum().item()))


@dataclass
class GPTQConfig(MethodConfig):
    """blocksize: lazy-batch width. percdamp: dampening as a fraction of mean(diag H). actorder: descending
    diag(H) column order. static_groups: group qparams from the original W. true_sequential: one linear
    at a time within a block. mse_clip: MSE clipping search for the qparams.
    sym_rule: "range" (default, the reference's `Quantizer(sym=True)`: scale = 2 max|w| / (2^b - 1), zero
    2^(b-1)) or "absmax" (max|w| / (2^(b-1) - 1), the grid of QuaRot / SmoothQuant / QuantVGGT)."""

    PRESETS: ClassVar[dict[str, dict]] = {"paper": {}}  # paper and IST-DASLab/gptq agree
    CALIBRATION_DEFAULTS: ClassVar[dict[str, dict]] = {"paper": {"builder": "random"}}

    sym_rule: str = "range"
    blocksize: int = 128
    percdamp: float = 0.01
    actorder: bool = False
    static_groups: bool = False
    true_sequential: bool = True
    mse_clip: bool = False


def gptq_linear(
    linear: nn.Linear,
    H: torch.Tensor,
    scheme: Scheme,
    config: GPTQConfig,
    transform: InputTransform | None = None,
) -> tuple[QuantLinear, GPTQResult]:
    """QuantLinear for `linear` by GPTQ in the basis of `transform` (H must be of transformed inputs)."""
    W = linear.weight.detach().float()
    if transform is not None:
        W = transform.transform_weight(W)
    res = gptq_quantize(
        W,
        H,
        scheme.weight,
        blocksize=config.blocksize,
        percdamp=config.percdamp,
        actorder=config.actorder,
        static_groups=config.static_groups,
        sym_rule=config.sym_rule,
        mse_clip=config.mse_clip,
    )
    codes, perm = res.storage()
    t = chain(transform, ColumnPermutation(perm) if perm is not None else None)
    ql = QuantLinear(
        linear.in_features,
        linear.out_features,
        scheme.weight,
        scheme.act,
        bias=linear.bias is not None,
        input_transform=t,
        act_clip_ratio=config.act_clip_ratio,
    )
    ql.set_weight(codes, res.scale, res.zero)
    if linear.bias is not None:
        ql.bias.copy_(linear.bias.detach().float())
    return ql, res


def hessian_rel_error(W: torch.Tensor, Q: torch.Tensor, H: torch.Tensor) -> float:
    """||X (Q - W)^T||^2 / ||X W^T||^2 computed from H (proportional to X^T X)."""
    E = (Q - W).float()
    num = ((E @ H) * E).double().sum().item()
    den = ((W @ H) * W).double().sum().item()
    return num / den if den > 0 else float("nan")


def gptq_calibrate_block(
    bd,
    config: GPTQConfig,
    transform_for: Callable[[str, nn.Linear], InputTransform | None] | None = None,
) -> None:
    """GPTQ every linear of a block (BlockData), one at a time (true_sequential) or all from one pass; each at
    its own scheme (bd.scheme_for: the run's scheme with its mixed-precision plan applied)."""
    ctx = bd.ctx
    lins = bd.linears()
    order = [[n] for n in lins] if config.true_sequential else [list(lins)]
    for group in order:
        transforms = {n: transform_for(bd.site(n), lins[n]) if transform_for else None for n in group}
        accs = {n: HessianAccumulator(lins[n].in_features) for n in group}

        def observe(rel, x, transforms=transforms, accs=accs):
            t = transforms[rel]
            accs[rel].add_batch((t(x) if t is not None else x).float())

        import time

        t0 = time.perf_counter()
        bd.collect(observe, group)
        t_collect = (time.perf_counter() - t0) / len(group)
        for n in group:
            site = bd.site(n)
            t0 = time.perf_counter()
            ql, res = gptq_linear(lins[n], accs[n].H, bd.scheme_for(n), config, transforms[n])
            t_quant = time.perf_counter() - t0
            W = lins[n].weight.detach().float()
            if transforms[n] is not None:
                W = transforms[n].transform_weight(W)
            ctx.stats.layer(
                site,
                time_s=t_collect + t_quant,
                gptq_time_s=t_quant,
                gptq_loss=res.loss,
                hessian_rel_err=hessian_rel_error(W, res.Q, accs[n].H),
                num_tokens_batches=accs[n].nsamples,
            )
            bd.replace(n, ql)
            del accs[n]
            bd.calibrate_static_acts([n])


@register_method("gptq", config=GPTQConfig, requires_calibration="always", propagate="quantized", version="2")
def quantize_gptq(model, calibration, scheme, config: GPTQConfig, ctx) -> None:
    """GPTQ weights (Hessian from calibration inputs), scheme activations; sequential over blocks."""
    ctx.blockwise(calibration, lambda bd: gptq_calibrate_block(bd, config))
