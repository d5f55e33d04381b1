"""The `emulated` backend: integer-exact torch references of every kernel.

These functions define the arithmetic the Triton kernels must reproduce:

- activation codes: q = clamp(round_half_even(x / s), -2^(b-1), 2^(b-1) - 1) with
  s = amax(|x|) * clip_ratio / (2^(b-1) - 1) per token (dynamic; s = 1 where amax = 0, as in
  ptq3d.quant.spec.qparams_from_range, and at least FLT_MIN) or a given static scale. This is the
  fake backend's formula (`QuantLinear.quantize_activation`), so both produce the same codes;
- integer GEMM: for each weight group g (one group for per-channel / per-tensor weights)
      P_g[m, n] = sum_{k in g} qx[m, k] * qw[n, k]  -  z[n, g] * sum_{k in g} qx[m, k]      (int32, exact)
      acc[m, n] = sum_g float32(P_g[m, n]) * s_w[n, g]                                      (in group order)
      y[m, n]   = acc[m, n] * s_x[m] + bias[n]                                              (float32)
  then cast to the activation dtype. The int32 sums are exact whatever the summation order, so the
  Triton kernels match them bit for bit; the float epilogue matches exactly in the interpreter and to
  float32 rounding (FMA contraction) on a GPU.
- twin-uniform activations (PTQ4ViT / TAPTQ post-GELU: a searched positive and a fixed negative scale):
  one signed code per element whose sign selects the scale (`quantize_twin`); `gemm_int_twin` multiplies
  the positive and the negative codes as two exact int32 GEMMs and combines them in the epilogue;
- weight-only (W4A16) GEMM: y = x @ ((q - z) * s)^T + bias in float32 accumulation (not integer math;
  compared with a float tolerance).

On CPU, `torch._int_mm` (int8 x int8 -> int32, AMX/VNNI) does the integer products; it is exact for every
shape. On CUDA it needs M > 16 and K, N multiples of 8; other shapes use a float64 matmul, which is exact
because |sum| <= K * 2^14 < 2^53.
"""

from __future__ import annotations

import functools
import math

import torch

from ptq3d.kernels.packing import PackedWeight

FLT_MIN = torch.finfo(torch.float32).tiny  # smallest scale: an underflowing amax / qmax never divides by 0


def dynamic_scale(amax: torch.Tensor, bits: int, clip_ratio: float = 1.0) -> torch.Tensor:
    """Symmetric scale from an abs-max (any shape): amax * clip / qmax, 1 where amax == 0."""
    s = amax.to(torch.float32) * clip_ratio / qrange(bits)[1]
    return torch.clamp_min(torch.where(amax == 0, torch.ones_like(s), s), FLT_MIN)


def qrange(bits: int) -> tuple[int, int]:
    """Signed code range [-2^(b-1), 2^(b-1) - 1]."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def quantize_per_token(
    x: torch.Tensor, bits: int = 8, clip_ratio: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic symmetric per-token quantization.

    x: float [M, K]. Returns codes int8 [M, K] and scales float32 [M].
    """
    lo, hi = qrange(bits)
    xf = x.to(torch.float32)
    # max(-min, max) == amax(|x|) exactly, without an |x| copy; separate amin + amax, because
    # torch.aminmax(dim=-1) was 5x slower than both together on this project's CPU (M=2748, K=1024)
    scale = dynamic_scale(torch.maximum(xf.amin(dim=-1).neg_(), xf.amax(dim=-1)), bits, clip_ratio)
    v = xf / scale[:, None]
    return v.clamp_(lo, hi).round_().to(torch.int8), scale


def quantize_static(x: torch.Tensor, scale: float | torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Symmetric quantization with one static scale. x: float [M, K] -> int8 codes [M, K]."""
    lo, hi = qrange(bits)
    s = torch.as_tensor(scale, dtype=torch.float32, device=x.device).reshape(())
    return torch.round(torch.clamp(x.to(torch.float32) / s, lo, hi)).to(torch.int8)


def quantize_twin(
    x: torch.Tensor, pos_scale: torch.Tensor, neg_scale: torch.Tensor, bits: int = 8
) -> torch.Tensor:
    """PTQ4ViT twin-uniform codes (TAPTQ's post-GELU quantizer, `twin_fake_quantize`), one signed code per
    element: x >= 0 -> clamp(round(x / pos_scale), 0, 2^(b-1) - 1), x < 0 -> clamp(round(x / neg_scale),
    -2^(b-1), 0); the code's sign selects the scale. x: float [M, K]; scales: one-element float.
    Returns int8 [M, K]."""
    lo, hi = qrange(bits)
    xf = x.to(torch.float32)
    pos = torch.as_tensor(pos_scale, dtype=torch.float32, device=x.device).reshape(())
    neg = torch.as_tensor(neg_scale, dtype=torch.float32, device=x.device).reshape(())
    # both ranges for every element, as the fake quantizer does: the other range's code is 0
    q = torch.round(xf / pos).clamp_(0, hi)
    q.add_(torch.round(xf / neg).clamp_(lo, 0))
    return q.to(torch.int8)


def twin_dequantize(q: torch.Tensor, pos_scale: torch.Tensor, neg_scale: torch.Tensor) -> torch.Tensor:
    """float32 values of twin codes: q * pos_scale where q >= 0, q * neg_scale where q < 0."""
    qf = q.to(torch.float32)
    pos = torch.as_tensor(pos_scale, dtype=torch.float32, device=q.device).reshape(())
    neg = torch.as_tensor(neg_scale, dtype=torch.float32, device=q.device).reshape(())
    return qf.clamp_min(0) * pos + qf.clamp_max(0) * neg


def gemm_int_twin(
    xq: torch.Tensor,
    pos_scale: torch.Tensor,
    neg_scale: torch.Tensor,
    w: PackedWeight,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Integer GEMM for twin-uniform activation codes (see `quantize_twin`).

    The two ranges are two int8 operands of disjoint support, q+ = max(q, 0) and q- = min(q, 0), each
    multiplied exactly in int32 (P+_g, P-_g per weight group, zero-point corrected); the epilogue is
        acc[m, n] = sum_g (float32(P+_g) * pos_scale + float32(P-_g) * neg_scale) * s_w[n, g]   (group order)
        y[m, n]   = acc[m, n] + bias[n]
    xq: int8 [M, K]; scales: one-element float; w: packed [N, K]. Returns [M, N] in out_dtype.
    """
    pos = torch.as_tensor(pos_scale, dtype=torch.float32, device=xq.device).reshape(())
    neg = torch.as_tensor(neg_scale, dtype=torch.float32, device=xq.device).reshape(())
    parts_pos = gemm_int_accumulators(xq.clamp_min(0), w)
    parts_neg = gemm_int_accumulators(xq.clamp_max(0), w)
    acc = None
    for i, (pp, pn) in enumerate(zip(parts_pos, parts_neg, strict=True)):
        t = _int32_to_float32_(pp).mul_(pos).add_(_int32_to_float32_(pn).mul_(neg))
        t.mul_(w.scale[:, i][None, :])
        acc = t if acc is None else acc.add_(t)
    if bias is not None:
        acc.add_(bias.to(torch.float32))
    return acc.to(out_dtype)


def _int_mm_ok(a: torch.Tensor, n: int) -> bool:
    m, k = a.shape
    if a.device.type == "cpu":
        return True
    return m > 16 and k % 8 == 0 and n % 8 == 0 and k >= 16


def int_matmul(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """Exact int8 GEMM. a: int8 [M, K]; b_t: int8 [N, K] (weight layout). Returns int32 [M, N]."""
    if _int_mm_ok(a, b_t.shape[0]):
        return torch._int_mm(a.contiguous(), b_t.t())
    return (a.to(torch.float64) @ b_t.to(torch.float64).t()).to(torch.int32)


def gemm_int_accumulators(xq: torch.Tensor, w: PackedWeight) -> list[torch.Tensor]:
    """Exact per-group int32 partial sums P_g [M, N] (zero-point corrected), in group order."""
    codes = w.codes()
    g, gs = w.num_groups, w.group_size
    if g == 1:
        parts_x, parts_w = [xq], [codes]
    else:
        parts_x = xq.view(xq.shape[0], g, gs).transpose(0, 1).contiguous()
        parts_w = codes.view(codes.shape[0], g, gs).transpose(0, 1).contiguous()
    out = []
    for i in range(g):
        p = int_matmul(parts_x[i], parts_w[i])
        if w.zero is not None:
            rowsum = parts_x[i].sum(dim=-1, dtype=torch.int32)  # int32: torch's default sum would be int64
            p = p.sub_(rowsum[:, None] * w.zero[:, i].to(torch.int32)[None, :])
        out.append(p)
    return out


def gemm_int(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    w: PackedWeight,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Integer GEMM with dequantizing epilogue (W8A8 and W4A8; see module docstring).

    xq: int8 [M, K] codes; x_scale: float32 [M] (or [1] for a per-tensor scale); w: packed [N, K].
    Returns [M, N] in out_dtype.
    """
    acc = None
    for i, p in enumerate(gemm_int_accumulators(xq, w)):
        term = _int32_to_float32_(p).mul_(w.scale[:, i][None, :])
        acc = term if acc is None else acc.add_(term)
    acc.mul_(x_scale.to(torch.float32).reshape(-1, 1))
    if bias is not None:
        acc.add_(bias.to(torch.float32))
    return acc.to(out_dtype)


def _int32_to_float32_(p: torch.Tensor) -> torch.Tensor:
    """Convert a contiguous int32 tensor to float32 in its own storage (same rounding as .to(float32)).

    Saves the second [M, N] buffer (and its page faults) of `p.to(torch.float32)`: each element is read and
    written at the same address, which torch allows for a full overlap."""
    if p.dtype != torch.int32 or not p.is_contiguous():
        return p.to(torch.float32)
    f = p.view(torch.float32)
    return f.copy_(p)


def w8a8_gemm(xq, x_scale, w: PackedWeight, bias=None, out_dtype=torch.float32) -> torch.Tensor:
    """int8 weights x int8 activations -> int32, dequantized with bias. Shapes as `gemm_int`."""
    if w.packed_int4:
        raise ValueError("w8a8_gemm needs int8-stored weights (bits 5..8); use w4a8_gemm")
    return gemm_int(xq, x_scale, w, bias, out_dtype)


def w4a8_gemm(xq, x_scale, w: PackedWeight, bias=None, out_dtype=torch.float32) -> torch.Tensor:
    """int4 (packed) weights x int8 activations. Shapes as `gemm_int`."""
    if not w.packed_int4:
        raise ValueError("w4a8_gemm needs int4-packed weights (bits <= 4); use w8a8_gemm")
    return gemm_int(xq, x_scale, w, bias, out_dtype)


def w4a16_gemm(x: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Weight-only GEMM: float activations [M, K] x dequantized weights -> [M, N] in x.dtype.

    Accumulates in float32 (the reference for the Triton kernel's tolerance check).
    """
    y = x.to(torch.float32) @ w.dequantize().to(x.device).t()
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype)


@functools.lru_cache(maxsize=8)
def _hadamard_cpu(n: int) -> torch.Tensor:
    from scipy.linalg import hadamard

    return torch.from_numpy(hadamard(n).astype("float32"))


def hadamard_matrix(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Sylvester Hadamard matrix H_n (entries +-1, symmetric), float32 [n, n]; n a power of two."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard transform needs a power-of-two size, got {n}")
    return _hadamard_cpu(n).to(device)


def hadamard_transform(x: torch.Tensor, signs: torch.Tensor | None = None) -> torch.Tensor:
    """Orthonormal (randomized) Hadamard rotation of the last dim: (x * signs) @ H_K / sqrt(K).

    x: float [M, K]; signs: optional float [K] of +-1 (the random diagonal of QuaRot-style rotations).
    Returns float32 [M, K].
    """
    k = x.shape[-1]
    xf = x.to(torch.float32)
    if signs is not None:
        xf = xf * signs.to(torch.float32)
    if k >= 256 and not k & (k - 1):
        # H_K = H_A (x) H_B: a row viewed as X [A, B] becomes H_A^T X H_B (O(K (A + B)), not O(K^2)).
        a = 2 ** (int(math.log2(k)) // 2)
        b = k // a
        y = xf.reshape(-1, a, b) @ hadamard_matrix(b, x.device)
        y = (y.transpose(1, 2) @ hadamard_matrix(a, x.device)).transpose(1, 2).reshape(x.shape)
        return y * (1.0 / math.sqrt(k))
    return (xf @ hadamard_matrix(k, x.device)) * (1.0 / math.sqrt(k))


def hadamard_quant(
    x: torch.Tensor, signs: torch.Tensor | None = None, bits: int = 8, clip_ratio: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hadamard rotation followed by per-token quantization: int8 [M, K] codes and float32 [M] scales."""
    return quantize_per_token(hadamard_transform(x, signs), bits, clip_ratio)
