"""Triton kernels vs their emulated references.

Without CUDA these run in the Triton interpreter (ptq3d.kernels._triton_env turns it on): small shapes,
large tiles. On a CUDA machine the same tests run compiled on the GPU; there the float epilogue may be
FMA-contracted, so float outputs are compared to ~1 ulp instead of bit for bit (integer sums stay exact,
checked with unit scales).
"""

from __future__ import annotations

import pytest
import torch
from kernels_testutil import Spec, StandIn, sum_abs_products

from ptq3d.kernels import emulated
from ptq3d.kernels._triton_env import INTERPRET
from ptq3d.kernels.packing import pack_weight, quantize_weight_rtn

triton_gemm = pytest.importorskip("ptq3d.kernels.triton_gemm")
from ptq3d.kernels import triton_act_quant, triton_hadamard  # noqa: E402

DEVICE = "cpu" if INTERPRET else "cuda"


def assert_same_float(y, ref):
    """Bit-exact in the interpreter; within float32 epilogue rounding on a GPU."""
    if INTERPRET:
        assert torch.equal(y, ref), (y - ref).abs().max()
    else:
        torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "bits,clip,dtype", [(8, 1.0, torch.float32), (4, 0.9, torch.float32), (8, 1.0, torch.float16)]
)
def test_per_token_quant_exact(bits, clip, dtype):
    torch.manual_seed(0)
    x = (torch.randn(70, 200) * torch.logspace(-2, 2, 70)[:, None]).to(dtype)
    x[5] = 0
    x = x.to(DEVICE)
    q, s = triton_act_quant.quantize_per_token(x, bits, clip)
    rq, rs = emulated.quantize_per_token(x, bits, clip)
    assert torch.equal(s, rs)
    assert torch.equal(q, rq)


def test_static_quant_exact():
    x = (torch.randn(33, 40) * 4).to(DEVICE)
    scale = torch.tensor(0.03, device=DEVICE)
    assert torch.equal(triton_act_quant.quantize_static(x, scale, 8), emulated.quantize_static(x, scale, 8))


GEMM_CASES = [
    # bits, group, symmetric weights
    (8, None, True),  # W8A8 per-channel
    (8, 64, False),  # W8A8 per-group asymmetric
    (4, None, True),  # W4A8 per-channel
    (4, 64, False),  # W4A8 group asymmetric
    (4, 32, True),  # W4A8 group (several groups per tile boundary)
]


@pytest.mark.parametrize("bits,group,sym", GEMM_CASES)
def test_gemm_int_matches_emulated(bits, group, sym):
    torch.manual_seed(1)
    m, k, n = 37, 256, 80  # M, N not multiples of the tile
    x = torch.randn(m, k, device=DEVICE)
    q, s, z = quantize_weight_rtn(torch.randn(n, k), bits, group, sym)
    pw = pack_weight(q.to(DEVICE), s.to(DEVICE), None if z is None else z.to(DEVICE), bits)
    bias = torch.randn(n, device=DEVICE)
    xq, xs = emulated.quantize_per_token(x)
    assert_same_float(triton_gemm.gemm_int(xq, xs, pw, bias), emulated.gemm_int(xq, xs, pw, bias))
    # Per-tensor activation scale, no bias.
    xs1 = torch.tensor([0.0123], device=DEVICE)
    assert_same_float(triton_gemm.gemm_int(xq, xs1, pw), emulated.gemm_int(xq, xs1, pw))


@pytest.mark.parametrize("bits,group,sym", [(8, None, True), (4, 64, False)])
def test_gemm_int_integer_sums_exact(bits, group, sym):
    """With unit scales the output IS the int32 accumulator (exact in float32 below 2^24), on any device."""
    torch.manual_seed(2)
    m, k, n = 20, 128, 48
    xq = torch.randint(-128, 128, (m, k), dtype=torch.int8, device=DEVICE)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    q = torch.randint(lo, hi + 1, (n, k), dtype=torch.int8, device=DEVICE)
    g = k // (group or k)
    z = torch.randint(lo, hi + 1, (n, g), device=DEVICE).float() if not sym else None
    pw = pack_weight(q, torch.ones(n, g, device=DEVICE), z, bits)
    y = triton_gemm.gemm_int(xq, torch.ones(m, device=DEVICE), pw)
    expect = sum(p.double() for p in emulated.gemm_int_accumulators(xq, pw))
    assert torch.equal(y.double(), expect)
    codes = q.long() - (z.long().repeat_interleave(k // g, dim=1) if z is not None else 0)
    assert torch.equal(expect.long(), xq.long() @ codes.t())


def test_w8a8_w4a8_wrappers_check_format():
    pw8 = pack_weight(torch.zeros(16, 32, dtype=torch.int8), torch.ones(16, 1), None, 8)
    pw4 = pack_weight(torch.zeros(16, 32, dtype=torch.int8), torch.ones(16, 1), None, 4)
    xq = torch.zeros(4, 32, dtype=torch.int8, device=DEVICE)
    xs = torch.ones(4, device=DEVICE)
    with pytest.raises(ValueError, match="use w4a8_gemm"):
        triton_gemm.w8a8_gemm(xq, xs, pw4)
    with pytest.raises(ValueError, match="use w8a8_gemm"):
        triton_gemm.w4a8_gemm(xq, xs, pw8)


# dtype -> (tolerance relative to sum |x||w|, relative to |y|): fp32 accumulation-order rounding;
# fp16 / bf16 round the dequantized weight and the output to the activation dtype (2^-11, 2^-8).
W4A16_TOL = {torch.float32: (1e-5, 1e-6), torch.float16: (1e-3, 1e-3), torch.bfloat16: (8e-3, 8e-3)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits,group,sym", [(4, 64, True), (4, None, False), (8, 32, True)])
def test_w4a16_within_tolerance(dtype, bits, group, sym):
    torch.manual_seed(3)
    m, k, n = 9, 192, 72  # small M: the memory-bound regime W4A16 is for
    x = torch.randn(m, k, device=DEVICE).to(dtype)
    q, s, z = quantize_weight_rtn(torch.randn(n, k), bits, group, sym)
    pw = pack_weight(q.to(DEVICE), s.to(DEVICE), None if z is None else z.to(DEVICE), bits)
    bias = torch.randn(n, device=DEVICE)
    y = triton_gemm.w4a16_gemm(x, pw, bias).float()
    ref = emulated.w4a16_gemm(x.float(), pw, bias)
    a_tol, r_tol = W4A16_TOL[dtype]
    bound = a_tol * sum_abs_products(x, pw.dequantize()) + r_tol * ref.abs() + 1e-6
    assert bool(((y - ref).abs() <= bound).all()), float(((y - ref).abs() / bound).max())


def test_hadamard_quant_within_tolerance():
    torch.manual_seed(4)
    m, k = 50, 1024
    x = torch.randn(m, k, device=DEVICE)
    x[:, 7] += 20  # an outlier channel, the case rotations are for
    x[11] = 0
    signs = (torch.randint(0, 2, (k,)) * 2 - 1).float().to(DEVICE)
    q, s = triton_hadamard.hadamard_quant(x, signs)
    rq, rs = emulated.hadamard_quant(x, signs)
    torch.testing.assert_close(s, rs, rtol=1e-5, atol=0)
    diff = (q.int() - rq.int()).abs()
    assert int(diff.max()) <= 1
    assert float((diff > 0).float().mean()) <= 1e-3
    assert bool((q[11] == 0).all())


def test_hadamard_quant_rejects_bad_width():
    with pytest.raises(ValueError, match="power-of-two K"):
        triton_hadamard.hadamard_quant(torch.randn(2, 384, device=DEVICE))


@pytest.mark.parametrize(
    "wbits,group,act",
    [
        (8, None, Spec(8, "token")),
        (4, 32, Spec(8, "token")),
        (4, None, Spec(4, "token")),  # W4A4 runs on the W4A8 kernel with 4-bit activation codes
        (8, None, Spec(8, "tensor", dynamic=False)),
        (4, 32, None),  # W4A16
    ],
)
def test_quant_linear_forward_triton_equals_emulated(wbits, group, act):
    torch.manual_seed(5)
    layer = StandIn(torch.randn(40, 64), wbits, group, act=act).to(DEVICE)
    if act is not None and not act.dynamic:
        layer.act_scale = torch.tensor([[0.02]], device=DEVICE)
    x = torch.randn(2, 9, 64, device=DEVICE)
    layer.backend = "emulated"
    ref = layer(x)
    layer.backend = "triton"
    y = layer(x)
    assert y.shape == (2, 9, 40)
    if act is None:
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-4)
    else:
        assert_same_float(y, ref)
