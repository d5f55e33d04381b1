"""Triton activation quantization: fused per-token dynamic, static per-tensor and twin-uniform quantization.

Each reproduces `ptq3d.kernels.emulated.quantize_per_token` / `quantize_static` / `quantize_twin` bit for
bit: IEEE division (`tl.div_rn`), clamp, round half to even.
"""

from __future__ import annotations

import torch

from ptq3d.kernels._triton_env import FLT_MIN, INTERPRET, round_half_even, tl, triton


@triton.jit
def _per_token_quant_kernel(
    x_ptr, q_ptr, s_ptr, M, K, stride_xm, stride_qm, clip,
    QMIN: tl.constexpr, QMAX: tl.constexpr, FMIN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """One program quantizes BLOCK_M rows: pass 1 row abs-max, pass 2 codes (one launch, no float copy)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < M
    amax = tl.zeros([BLOCK_M], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        m = rmask[:, None] & (cols[None, :] < K)
        x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=m, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.max(tl.abs(x), axis=1))
    scale = tl.maximum(
        tl.where(amax == 0.0, 1.0, tl.div_rn(amax * clip, tl.full([BLOCK_M], QMAX, tl.float32))), FMIN
    )
    tl.store(s_ptr + rows, scale, mask=rmask)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        m = rmask[:, None] & (cols[None, :] < K)
        x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=m, other=0.0).to(tl.float32)
        v = tl.div_rn(x, scale[:, None])
        v = tl.minimum(tl.maximum(v, QMIN), QMAX)
        q = round_half_even(v)
        tl.store(q_ptr + rows[:, None] * stride_qm + cols[None, :], q.to(tl.int8), mask=m)


@triton.jit
def _static_quant_kernel(
    x_ptr, q_ptr, s_ptr, N, QMIN: tl.constexpr, QMAX: tl.constexpr, BLOCK: tl.constexpr
):  # fmt: skip
    """Elementwise codes with one scale read from s_ptr (x, q contiguous, N elements)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    s = tl.load(s_ptr)
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    v = tl.minimum(tl.maximum(tl.div_rn(x, tl.full([BLOCK], 0.0, tl.float32) + s), QMIN), QMAX)
    tl.store(q_ptr + offs, round_half_even(v).to(tl.int8), mask=m)


@triton.jit
def _twin_quant_kernel(
    x_ptr, q_ptr, s_ptr, N, QMIN: tl.constexpr, QMAX: tl.constexpr, BLOCK: tl.constexpr
):  # fmt: skip
    """Twin-uniform codes: s_ptr holds (positive scale, negative scale); x >= 0 uses the first, x < 0 the
    second, both ranges evaluated as emulated.quantize_twin does (the other range's code is 0)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    zero = tl.full([BLOCK], 0.0, tl.float32)
    sp = zero + tl.load(s_ptr)
    sn = zero + tl.load(s_ptr + 1)
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    qp = tl.minimum(tl.maximum(round_half_even(tl.div_rn(x, sp)), 0.0), QMAX)
    qn = tl.minimum(tl.maximum(round_half_even(tl.div_rn(x, sn)), QMIN), 0.0)
    tl.store(q_ptr + offs, (qp + qn).to(tl.int8), mask=m)


def _qrange(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def quantize_per_token(
    x: torch.Tensor, bits: int = 8, clip_ratio: float = 1.0, block_m: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x: float [M, K] -> (codes int8 [M, K], scales float32 [M])."""
    x = x.contiguous()
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.int8, device=x.device)
    s = torch.empty((m,), dtype=torch.float32, device=x.device)
    lo, hi = _qrange(bits)
    if block_m is None:
        block_m = 64 if INTERPRET else 4
    block_k = min(triton.next_power_of_2(k), 4096 if INTERPRET else 1024)
    grid = (triton.cdiv(m, block_m),)
    _per_token_quant_kernel[grid](
        x, q, s, m, k, x.stride(0), q.stride(0), float(clip_ratio),
        QMIN=float(lo), QMAX=float(hi), FMIN=FLT_MIN, BLOCK_M=block_m, BLOCK_K=block_k,
    )  # fmt: skip
    return q, s


def quantize_static(x: torch.Tensor, scale: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """x: float [M, K], scale: one-element float -> int8 codes [M, K]."""
    x = x.contiguous()
    q = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    s = torch.as_tensor(scale, dtype=torch.float32, device=x.device).reshape(1).contiguous()
    lo, hi = _qrange(bits)
    n = x.numel()
    block = 65536 if INTERPRET else 1024
    _static_quant_kernel[(triton.cdiv(n, block),)](x, q, s, n, QMIN=float(lo), QMAX=float(hi), BLOCK=block)
    return q


def quantize_twin(
    x: torch.Tensor, pos_scale: torch.Tensor, neg_scale: torch.Tensor, bits: int = 8
) -> torch.Tensor:
    """x: float [M, K]; one-element positive / negative scales -> int8 twin codes [M, K]."""
    x = x.contiguous()
    q = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    s = torch.stack(
        [torch.as_tensor(v, dtype=torch.float32, device=x.device).reshape(()) for v in (pos_scale, neg_scale)]
    )
    lo, hi = _qrange(bits)
    n = x.numel()
    block = 65536 if INTERPRET else 1024
    _twin_quant_kernel[(triton.cdiv(n, block),)](x, q, s, n, QMIN=float(lo), QMAX=float(hi), BLOCK=block)
    return q
