"""Triton fused Hadamard rotation + per-token activation quantization (for rotated methods, QuaRot-style).

For K = A * B (powers of two, A, B >= 16) the Sylvester matrix factors as H_K = H_A (x) H_B, so a row
x viewed as X [A, B] rotates as H_A^T X H_B: two small tensor-core dots per tile instead of a K x K
matmul (O(K (A + B)) work). The rotated row stays in registers and is quantized in the same program,
so the rotated float activations never touch memory.

Reference: `ptq3d.kernels.emulated.hadamard_quant`. The float rotation sums in a different order than
the reference's K x K matmul, so values differ by float32 rounding (relative ~1e-6); a code can then
differ by one step where a value sits at a rounding boundary. Tests assert scales within rtol 1e-5 and
codes within +-1 with at most 0.1 % of codes off.
"""

from __future__ import annotations

import math

import torch

from ptq3d.kernels import emulated
from ptq3d.kernels._triton_env import FLT_MIN, INTERPRET, round_half_even, tl, triton


@triton.jit
def _hadamard_quant_kernel(
    x_ptr, sign_ptr, ha_ptr, hb_ptr, q_ptr, s_ptr, M, stride_xm, stride_qm, norm, clip,
    A: tl.constexpr, B: tl.constexpr, HAS_SIGNS: tl.constexpr,
    QMIN: tl.constexpr, QMAX: tl.constexpr, FMIN: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    K: tl.constexpr = A * B
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, K)
    rmask = rows < M
    x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=rmask[:, None], other=0.0)
    x = x.to(tl.float32)
    if HAS_SIGNS:
        x = x * tl.load(sign_ptr + cols)[None, :]
    hb = tl.load(hb_ptr + tl.arange(0, B)[:, None] * B + tl.arange(0, B)[None, :])
    ha = tl.load(ha_ptr + tl.arange(0, A)[:, None] * A + tl.arange(0, A)[None, :])
    # X [A, B] per row: Y = X @ H_B, then Z^T = Y^T @ H_A.
    y = tl.dot(tl.reshape(x, (BLOCK_M * A, B)), hb, input_precision="ieee")
    y = tl.permute(tl.reshape(y, (BLOCK_M, A, B)), (0, 2, 1))
    z = tl.dot(tl.reshape(y, (BLOCK_M * B, A)), ha, input_precision="ieee")
    z = tl.reshape(tl.permute(tl.reshape(z, (BLOCK_M, B, A)), (0, 2, 1)), (BLOCK_M, K)) * norm
    amax = tl.max(tl.abs(z), axis=1)
    scale = tl.maximum(
        tl.where(amax == 0.0, 1.0, tl.div_rn(amax * clip, tl.full([BLOCK_M], QMAX, tl.float32))), FMIN
    )
    tl.store(s_ptr + rows, scale, mask=rmask)
    v = tl.minimum(tl.maximum(tl.div_rn(z, scale[:, None]), QMIN), QMAX)
    q = round_half_even(v)
    tl.store(q_ptr + rows[:, None] * stride_qm + cols[None, :], q.to(tl.int8), mask=rmask[:, None])


def _factor(k: int) -> tuple[int, int]:
    if k < 256 or k & (k - 1):
        raise ValueError(f"fused Hadamard quantization needs a power-of-two K >= 256, got {k}")
    a = 2 ** (int(math.log2(k)) // 2)
    return a, k // a


def hadamard_quant(
    x: torch.Tensor,
    signs: torch.Tensor | None = None,
    bits: int = 8,
    clip_ratio: float = 1.0,
    block_m: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x: float [M, K] (K a power of two >= 256); signs: optional +-1 float [K].

    Returns codes int8 [M, K] of (x * signs) @ H_K / sqrt(K) and per-token scales float32 [M].
    """
    x = x.contiguous()
    m, k = x.shape
    a, b = _factor(k)
    ha = emulated.hadamard_matrix(a, x.device).contiguous()
    hb = emulated.hadamard_matrix(b, x.device).contiguous()
    q = torch.empty((m, k), dtype=torch.int8, device=x.device)
    s = torch.empty((m,), dtype=torch.float32, device=x.device)
    sg = signs.to(device=x.device, dtype=torch.float32).contiguous() if signs is not None else s
    if block_m is None:
        block_m = 64 if INTERPRET else max(1, 4096 // k * 4)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    _hadamard_quant_kernel[(triton.cdiv(m, block_m),)](
        x, sg, ha, hb, q, s, m, x.stride(0), q.stride(0), 1.0 / math.sqrt(k), float(clip_ratio),
        A=a, B=b, HAS_SIGNS=signs is not None, QMIN=float(lo), QMAX=float(hi), FMIN=FLT_MIN,
        BLOCK_M=block_m, num_warps=4 if INTERPRET else 8,
    )  # fmt: skip
    return q, s
