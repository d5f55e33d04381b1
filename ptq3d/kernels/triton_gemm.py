"""Triton GEMMs for quantized linear layers.

- `gemm_int` (W8A8 and W4A8): int8 activations x int8 or int4-packed weights, int32 accumulation per
  weight group, dequantizing epilogue (weight scale per group, activation scale per token, bias).
  int4 codes are unpacked in registers (two's complement nibbles via arithmetic shifts), never in memory.
  Matches `ptq3d.kernels.emulated.gemm_int`: the int32 partial sums exactly; the float epilogue exactly
  in the interpreter and up to FMA contraction (~1 ulp per group) on a GPU.
- `gemm_int_twin`: the same GEMM for twin-uniform activation codes (TAPTQ's post-GELU quantizer): the
  positive and the negative codes are two int32 dots, combined with their two scales in the epilogue.
- `w4a16_gemm`: weight-only GEMM for memory-bound small M: int4/int8 codes dequantized per tile to the
  activation dtype, float32 accumulation. Matches `emulated.w4a16_gemm` within float tolerance.

Weights are [N, K] row-major (nn.Linear layout); a tile [BLOCK_N, BLOCK_K] is loaded and transposed.
On CUDA the launch configuration is autotuned over a few tiles; in the interpreter one large tile is
used (autotuning needs a GPU timer, and large tiles keep the interpreter fast).
"""

from __future__ import annotations

import torch

from ptq3d.kernels._triton_env import INTERPRET, tl, triton
from ptq3d.kernels.packing import PackedWeight


@triton.jit
def _load_weight_tile(b_ptr, rn, rk0, N, K, stride_bn, INT4: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr):  # fmt: skip
    """int8 codes [BLOCK_N, BLOCK_K] of rows rn and columns rk0 .. rk0 + BLOCK_K."""
    if INT4:
        rkh = rk0 // 2 + tl.arange(0, BLOCK_K // 2)
        m = (rn[:, None] < N) & (rkh[None, :] < K // 2)
        packed = tl.load(b_ptr + rn[:, None] * stride_bn + rkh[None, :], mask=m, other=0)
        lo = (packed << 4) >> 4  # arithmetic shift sign-extends the low nibble
        hi = packed >> 4
        return tl.reshape(tl.join(lo, hi), (BLOCK_N, BLOCK_K))  # code k = 2j + t
    else:
        rk = rk0 + tl.arange(0, BLOCK_K)
        m = (rn[:, None] < N) & (rk[None, :] < K)
        return tl.load(b_ptr + rn[:, None] * stride_bn + rk[None, :], mask=m, other=0)


@triton.jit
def _tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Grouped program order: GROUP_M row-tiles share weight tiles in L2."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m
    return pid_m, pid_n


@triton.jit
def _gemm_int_kernel(
    a_ptr, b_ptr, sw_ptr, zw_ptr, sx_ptr, bias_ptr, c_ptr,
    M, N, K, GS, stride_am, stride_bn, stride_cm,
    INT4: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, X_PER_TENSOR: tl.constexpr,
    TWIN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """TWIN: a holds twin-uniform codes and sx_ptr (positive scale, negative scale); the positive and the
    negative codes are two int32 dots and the epilogue is (P+ * s+ + P- * s-) * s_w (emulated.gemm_int_twin)."""
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    G = K // GS
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for g in range(0, G):
        part = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
        part_neg = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
        rsum = tl.zeros([BLOCK_M], dtype=tl.int32)
        rsum_neg = tl.zeros([BLOCK_M], dtype=tl.int32)
        for kk in range(0, GS, BLOCK_K):
            rk0 = g * GS + kk
            rk = rk0 + tl.arange(0, BLOCK_K)
            a = tl.load(a_ptr + rm[:, None] * stride_am + rk[None, :],
                        mask=(rm[:, None] < M) & (rk[None, :] < K), other=0)  # fmt: skip
            b = _load_weight_tile(b_ptr, rn, rk0, N, K, stride_bn, INT4, BLOCK_N, BLOCK_K)
            if TWIN:
                a_neg = tl.where(a < 0, a, tl.zeros_like(a))
                a = tl.where(a > 0, a, tl.zeros_like(a))
                part_neg = tl.dot(a_neg, tl.trans(b), part_neg, out_dtype=tl.int32)
                if HAS_ZERO:
                    rsum_neg += tl.sum(a_neg.to(tl.int32), axis=1)
            part = tl.dot(a, tl.trans(b), part, out_dtype=tl.int32)
            if HAS_ZERO:
                rsum += tl.sum(a.to(tl.int32), axis=1)
        if HAS_ZERO:
            z = tl.load(zw_ptr + rn * G + g, mask=rn < N, other=0).to(tl.int32)
            part = part - rsum[:, None] * z[None, :]
            if TWIN:
                part_neg = part_neg - rsum_neg[:, None] * z[None, :]
        s = tl.load(sw_ptr + rn * G + g, mask=rn < N, other=0.0)
        if TWIN:
            t = part.to(tl.float32) * tl.load(sx_ptr) + part_neg.to(tl.float32) * tl.load(sx_ptr + 1)
            acc += t * s[None, :]
        else:
            acc += part.to(tl.float32) * s[None, :]
    if TWIN:
        y = acc
    elif X_PER_TENSOR:
        y = acc * tl.load(sx_ptr)
    else:
        y = acc * tl.load(sx_ptr + rm, mask=rm < M, other=0.0)[:, None]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + rn, mask=rn < N, other=0.0)[None, :]
    cmask = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :], y.to(c_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _w4a16_kernel(
    a_ptr, b_ptr, sw_ptr, zw_ptr, bias_ptr, c_ptr,
    M, N, K, GS, stride_am, stride_bn, stride_cm,
    INT4: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    G = K // GS
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(a_ptr + rm[:, None] * stride_am + rk[None, :],
                    mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)  # fmt: skip
        q = _load_weight_tile(b_ptr, rn, k0, N, K, stride_bn, INT4, BLOCK_N, BLOCK_K).to(tl.float32)
        g = k0 // GS  # BLOCK_K divides GS, so one group per tile
        if HAS_ZERO:
            q = q - tl.load(zw_ptr + rn * G + g, mask=rn < N, other=0).to(tl.float32)[:, None]
        w = q * tl.load(sw_ptr + rn * G + g, mask=rn < N, other=0.0)[:, None]
        if DOT_F32:
            acc = tl.dot(a.to(tl.float32), tl.trans(w), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, tl.trans(w.to(a.dtype)), acc)
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    cmask = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :], acc.to(c_ptr.dtype.element_ty), mask=cmask)


def _cuda_configs(int_path: bool) -> list:
    bk = 128 if int_path else 64
    cfgs = []
    for bm, bn, warps, stages in [(128, 128, 8, 3), (128, 256, 8, 3), (64, 128, 4, 4), (128, 64, 4, 4),
                                  (64, 64, 4, 5), (16, 128, 4, 4), (32, 64, 4, 4)]:  # fmt: skip
        cfgs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8},
                                  num_warps=warps, num_stages=stages))  # fmt: skip
    return cfgs


def _prune_block_k(configs, named_args, **kwargs):
    """BLOCK_K must divide the group size (one weight group per K tile)."""
    gs = named_args["GS"]
    out = []
    for c in configs:
        bk = c.kwargs["BLOCK_K"]
        while bk > 32 and gs % bk:
            bk //= 2
        if gs % bk == 0 or gs == named_args["K"]:
            out.append(triton.Config({**c.kwargs, "BLOCK_K": bk}, num_warps=c.num_warps,
                                     num_stages=c.num_stages))  # fmt: skip
    return out or configs


if INTERPRET:
    _gemm_int_launch = _gemm_int_kernel
    _w4a16_launch = _w4a16_kernel
else:  # pragma: no cover - needs a GPU
    _gemm_int_launch = triton.autotune(
        _cuda_configs(True),
        key=["M", "N", "K", "GS"],
        prune_configs_by={"early_config_prune": _prune_block_k},
    )(_gemm_int_kernel)
    _w4a16_launch = triton.autotune(
        _cuda_configs(False),
        key=["M", "N", "K", "GS"],
        prune_configs_by={"early_config_prune": _prune_block_k},
    )(_w4a16_kernel)


def _interp_blocks(m: int, n: int, k: int, gs: int) -> dict:
    """One big tile for the interpreter (few programs = fast); BLOCK_K divides the group size."""
    bk = min(triton.next_power_of_2(gs), 256)
    while gs % bk and bk > 16 and gs != k:
        bk //= 2
    return {
        "BLOCK_M": max(16, min(triton.next_power_of_2(m), 128)),
        "BLOCK_N": max(16, min(triton.next_power_of_2(n), 128)),
        "BLOCK_K": max(16, bk),
        "GROUP_M": 8,
    }


def _check_shapes(k: int, w: PackedWeight) -> None:
    if k != w.in_features:
        raise ValueError(f"activations have K={k}, weights expect {w.in_features}")
    if w.num_groups > 1 and w.group_size % 16:
        raise ValueError(f"the Triton kernels need a group size that is a multiple of 16, got {w.group_size}")


def _grid(m: int, n: int):
    return lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)


def gemm_int(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    w: PackedWeight,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    config: dict | None = None,
) -> torch.Tensor:
    """W8A8 / W4A8 GEMM. xq: int8 [M, K]; x_scale: float32 [M] or [1]; w: packed [N, K] -> [M, N]."""
    return _gemm_int(xq, x_scale.to(torch.float32), w, bias, out_dtype, config, twin=False)


def gemm_int_twin(
    xq: torch.Tensor,
    pos_scale: torch.Tensor,
    neg_scale: torch.Tensor,
    w: PackedWeight,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    config: dict | None = None,
) -> torch.Tensor:
    """GEMM of twin-uniform activation codes (emulated.quantize_twin) with int8 / int4 weights -> [M, N]."""
    scales = torch.stack(
        [
            torch.as_tensor(v, dtype=torch.float32, device=xq.device).reshape(())
            for v in (pos_scale, neg_scale)
        ]
    )
    return _gemm_int(xq, scales, w, bias, out_dtype, config, twin=True)


def _gemm_int(xq, sx, w: PackedWeight, bias, out_dtype, config, twin: bool) -> torch.Tensor:
    xq = xq.contiguous()
    m, k = xq.shape
    _check_shapes(k, w)
    n = w.out_features
    c = torch.empty((m, n), dtype=out_dtype, device=xq.device)
    sx = sx.contiguous()
    b = bias.to(torch.float32).contiguous() if bias is not None else sx
    z = w.zero if w.zero is not None else w.scale
    args = (xq, w.data, w.scale, z, sx, b, c, m, n, k, w.group_size)
    args += (xq.stride(0), w.data.stride(0), c.stride(0))
    flags = {"INT4": w.packed_int4, "HAS_ZERO": w.zero is not None, "HAS_BIAS": bias is not None,
             "X_PER_TENSOR": sx.numel() == 1 and m != 1, "TWIN": twin}  # fmt: skip
    if INTERPRET or config is not None:
        cfg = config or _interp_blocks(m, n, k, w.group_size)
        _gemm_int_kernel[_grid(m, n)](*args, **flags, **cfg)
    else:  # pragma: no cover - needs a GPU
        _gemm_int_launch[_grid(m, n)](*args, **flags)
    return c


def w8a8_gemm(xq, x_scale, w: PackedWeight, bias=None, out_dtype=torch.float32, config=None):
    """int8 weights x int8 activations (bits 5..8 weights stored one per byte)."""
    if w.packed_int4:
        raise ValueError("w8a8_gemm needs int8-stored weights (bits 5..8); use w4a8_gemm")
    return gemm_int(xq, x_scale, w, bias, out_dtype, config)


def w4a8_gemm(xq, x_scale, w: PackedWeight, bias=None, out_dtype=torch.float32, config=None):
    """int4-packed weights (unpacked in-kernel) x int8 activations."""
    if not w.packed_int4:
        raise ValueError("w4a8_gemm needs int4-packed weights (bits <= 4); use w8a8_gemm")
    return gemm_int(xq, x_scale, w, bias, out_dtype, config)


def w4a16_gemm(
    x: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None = None, config: dict | None = None
) -> torch.Tensor:
    """Weight-only GEMM. x: float [M, K] (fp32/fp16/bf16); w: packed [N, K] -> [M, N] in x.dtype."""
    x = x.contiguous()
    m, k = x.shape
    _check_shapes(k, w)
    n = w.out_features
    c = torch.empty((m, n), dtype=x.dtype, device=x.device)
    b = bias.contiguous() if bias is not None else w.scale
    z = w.zero if w.zero is not None else w.scale
    # The interpreter's bf16 dot multiplies raw bits: compute such dots in float32 there.
    dot_f32 = x.dtype == torch.float32 or (INTERPRET and x.dtype == torch.bfloat16)
    args = (x, w.data, w.scale, z, b, c, m, n, k, w.group_size)
    args += (x.stride(0), w.data.stride(0), c.stride(0))
    flags = {"INT4": w.packed_int4, "HAS_ZERO": w.zero is not None, "HAS_BIAS": bias is not None,
             "DOT_F32": dot_f32}  # fmt: skip
    if INTERPRET or config is not None:
        cfg = config or _interp_blocks(m, n, k, w.group_size)
        _w4a16_kernel[_grid(m, n)](*args, **flags, **cfg)
    else:  # pragma: no cover - needs a GPU
        _w4a16_launch[_grid(m, n)](*args, **flags)
    return c
