"""The emulated backend: exact integer math and the same activation codes as the fake backend."""

from __future__ import annotations

import pytest
import torch

from ptq3d.kernels import emulated
from ptq3d.kernels.packing import pack_weight, quantize_weight_rtn
from ptq3d.quant.hadamard import hadamard_transform as methods_hadamard
from ptq3d.quant.spec import QuantSpec, compute_qparams, quantize


@pytest.mark.parametrize("m,k,n", [(1, 8, 3), (5, 7, 3), (33, 96, 40)])
def test_int_mm_paths_are_exact(m, k, n):
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    b = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    expect = (a.long() @ b.long().t()).int()
    assert torch.equal(emulated.int_matmul(a, b), expect)  # torch._int_mm on CPU
    assert torch.equal((a.double() @ b.double().t()).int(), expect)  # the non-_int_mm fallback


@pytest.mark.parametrize("bits,group,sym", [(8, None, True), (8, 32, False), (4, None, False), (4, 16, True)])
def test_gemm_int_is_the_integer_formula(bits, group, sym):
    torch.manual_seed(0)
    m, k, n = 19, 64, 24
    x = torch.randn(m, k)
    w = torch.randn(n, k)
    xq, xs = emulated.quantize_per_token(x)
    q, s, z = quantize_weight_rtn(w, bits, group, sym)
    pw = pack_weight(q, s, z, bits)
    bias = torch.randn(n)
    # Exact integer partial sums, computed independently in int64.
    gs = k // s.shape[1]
    parts = emulated.gemm_int_accumulators(xq, pw)
    for g, p in enumerate(parts):
        xg = xq[:, g * gs : (g + 1) * gs].long()
        qg = q[:, g * gs : (g + 1) * gs].long()
        if z is not None:
            qg = qg - z[:, g : g + 1].long()
        assert torch.equal(p.long(), xg @ qg.t())
    # The dequantized output equals the float64 value of the same math up to float32 rounding.
    y = emulated.gemm_int(xq, xs, pw, bias)
    ref = (xq.double() * xs.double()[:, None]) @ pw.dequantize().double().t() + bias.double()
    torch.testing.assert_close(y.double(), ref, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("bits,clip", [(8, 1.0), (8, 0.9), (4, 1.0), (6, 0.85)])
def test_activation_codes_equal_fake_backend(bits, clip):
    """emulated.quantize_per_token == ptq3d.quant.spec (the fake path's quantizer), bit for bit."""
    torch.manual_seed(1)
    x = torch.randn(64, 48) * torch.logspace(-3, 2, 64)[:, None]
    x[3] = 0.0  # an all-zero token
    spec = QuantSpec(bits, "token", True, dynamic=True)
    scale, zero = compute_qparams(x, spec, clip_ratio=clip)
    codes = quantize(x, scale, zero, spec)
    q, s = emulated.quantize_per_token(x, bits, clip)
    assert torch.equal(s, scale[:, 0])
    assert torch.equal(q.float(), codes)


def test_static_codes_equal_fake_backend():
    x = torch.randn(10, 16) * 3
    spec = QuantSpec(8, "tensor", True, dynamic=False)
    scale = torch.tensor([[0.021]])
    assert torch.equal(emulated.quantize_static(x, scale).float(), quantize(x, scale, None, spec))


def test_round_half_even_ties():
    x = torch.tensor([[0.5, 1.5, 2.5, -0.5, -1.5, 127.0]])
    q = emulated.quantize_static(x, 1.0)
    assert q.tolist() == [[0, 2, 2, 0, -2, 127]]


def test_hadamard_reference_matches_methods_rotation():
    torch.manual_seed(2)
    x = torch.randn(7, 256)
    signs = torch.randint(0, 2, (256,)).float() * 2 - 1
    y = emulated.hadamard_transform(x, signs)
    torch.testing.assert_close(y, methods_hadamard(x, signs), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y.norm(dim=1), x.norm(dim=1), rtol=1e-5, atol=0)  # orthonormal


def test_w4a16_reference():
    torch.manual_seed(3)
    x = torch.randn(5, 32)
    q, s, z = quantize_weight_rtn(torch.randn(12, 32), 4, 16, False)
    pw = pack_weight(q, s, z, 4)
    y = emulated.w4a16_gemm(x, pw)
    torch.testing.assert_close(y, x @ pw.dequantize().t())
