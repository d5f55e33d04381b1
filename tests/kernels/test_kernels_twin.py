"""TAPTQ's formats on the integer backends: twin-uniform post-GELU activations, static per-tensor activations,
per-tensor weights and qkv's three per-tensor intervals (emulated in torch; Triton in the interpreter).

Codes are compared bit for bit with the fake path (ptq3d.methods.taptq_search.twin_fake_quantize); layer
outputs to float32 summation order, since the fake path is a float GEMM of the dequantized values.
"""

from __future__ import annotations

import pytest
import torch
from kernels_testutil import sum_abs_products
from torch import nn

from ptq3d.errors import ConfigError
from ptq3d.kernels import emulated, packed_weight
from ptq3d.kernels._triton_env import INTERPRET
from ptq3d.kernels.dispatch import activation_values
from ptq3d.kernels.packing import pack_weight, quantize_weight_rtn
from ptq3d.methods.taptq_search import TwinQuantLinear, twin_fake_quantize
from ptq3d.quant.qlinear import QuantLinear
from ptq3d.quant.spec import QuantSpec

STATIC8 = QuantSpec(8, "tensor", dynamic=False)
NEG_RANGE = 0.16997  # GELU's minimum, TAPTQ's fixed negative range


def _post_gelu(m: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = nn.functional.gelu(torch.randn(m, k, generator=g) * 3)
    x[0, :4] = torch.tensor([0.0, -0.0, 1e-9, -1e-9])  # zeros and values that round to code 0
    return x


def _twin_scales(x: torch.Tensor, bits: int, alpha: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    pos = torch.tensor([[alpha * float(x.max()) / (2 ** (bits - 1) - 1)]])
    return pos, torch.tensor([[NEG_RANGE / 2 ** (bits - 1)]])


@pytest.mark.parametrize("bits", [8, 6, 4])
def test_twin_codes_bit_exact_with_fake(bits):
    x = _post_gelu(53, 96)
    pos, neg = _twin_scales(x, bits)
    q = emulated.quantize_twin(x, pos, neg, bits)
    assert q.dtype == torch.int8
    assert int(q.min()) >= -(2 ** (bits - 1)) and int(q.max()) <= 2 ** (bits - 1) - 1
    assert int(q.max()) == 2 ** (bits - 1) - 1  # alpha < 1: the positive range clips
    assert bool((q < 0).any())  # GELU's negative lobe uses the negative range
    assert torch.equal(emulated.twin_dequantize(q, pos, neg), twin_fake_quantize(x, pos, neg, bits))
    # the sign of the code says which scale applies
    assert bool(((q > 0) <= (x > 0)).all()) and bool(((q < 0) <= (x < 0)).all())


def _twin_layer(wspec: QuantSpec, k: int = 96, n: int = 40, seed: int = 0) -> TwinQuantLinear:
    torch.manual_seed(seed)
    lin = nn.Linear(k, n)
    layer = TwinQuantLinear.from_linear(lin, wspec, STATIC8)
    x = _post_gelu(8, k, seed)
    pos, neg = _twin_scales(x, 8)
    layer.act_scale.copy_(pos)
    layer.act_neg_scale.copy_(neg)
    return layer


@pytest.mark.parametrize(
    "wspec",
    [
        QuantSpec(4, "tensor"),
        QuantSpec(8, "tensor"),
        QuantSpec(4, "channel"),
        QuantSpec(4, "group", group_size=32),
        QuantSpec(4, "group", False, 32),
    ],  # fmt: skip
    ids=lambda s: s.describe().replace(" ", "-"),
)
def test_twin_quantlinear_fake_vs_emulated(wspec):
    layer = _twin_layer(wspec)
    x = _post_gelu(3 * 17, 96, seed=1).reshape(3, 17, 96)
    y_fake = layer(x)
    layer.set_backend("emulated")
    y_emu = layer(x)
    assert y_emu.shape == (3, 17, 40)
    xh = twin_fake_quantize(x, layer.act_scale, layer.act_neg_scale, 8)
    assert torch.equal(activation_values(layer, x, "emulated"), xh)  # same codes
    bound = 1e-5 * sum_abs_products(xh, layer.dequantized_weight()).reshape(3, 17, 40) + 1e-6
    assert bool(((y_fake - y_emu).abs() <= bound).all())
    # the twin quantizer is really used: a uniform static quantizer with the positive scale differs
    plain = QuantLinear.from_linear(nn.Linear(96, 40), wspec, STATIC8)
    plain.load_state_dict({k: v for k, v in layer.state_dict().items() if k != "act_neg_scale"})
    plain.set_backend("emulated")
    assert not torch.allclose(plain(x), y_emu)


def test_twin_gemm_integer_sums_exact():
    """Unit scales: the output is P+ + P- = q @ codes^T exactly, with zero-points."""
    g = torch.Generator().manual_seed(3)
    xq = torch.randint(-128, 128, (19, 64), dtype=torch.int8, generator=g)
    q = torch.randint(-8, 8, (24, 64), dtype=torch.int8, generator=g)
    z = torch.randint(-8, 8, (24, 2), generator=g).float()
    pw = pack_weight(q, torch.ones(24, 2), z, 4)
    y = emulated.gemm_int_twin(xq, torch.tensor(1.0), torch.tensor(1.0), pw)
    codes = q.long() - z.long().repeat_interleave(32, dim=1)
    assert torch.equal(y.long(), xq.long() @ codes.t())
    # distinct scales weight the positive and the negative codes separately
    y2 = emulated.gemm_int_twin(xq, torch.tensor(2.0), torch.tensor(0.5), pw)
    expect = 2.0 * (xq.clamp_min(0).long() @ codes.t()) + 0.5 * (xq.clamp_max(0).long() @ codes.t())
    assert torch.equal(y2.double(), expect.double())


def test_static_per_tensor_and_three_qkv_intervals_fake_vs_emulated():
    """TAPTQ's other formats: per-tensor weights ([1, 1] scale), qkv with one interval each for q, k, v
    (per-channel storage with three distinct values), static per-tensor activations."""
    torch.manual_seed(4)
    x = torch.randn(2, 11, 64)
    for wspec, scale in [(QuantSpec(4, "tensor"), torch.tensor([[0.02]])),
                         (QuantSpec(4, "channel"), torch.tensor([0.01, 0.02, 0.03]).repeat_interleave(32)[:, None])]:  # fmt: skip
        lin = nn.Linear(64, scale.shape[0] if scale.numel() > 1 else 48)
        layer = QuantLinear(64, lin.out_features, wspec, STATIC8)
        w = lin.weight.detach()
        from ptq3d.quant.spec import quantize

        layer.set_weight(quantize(w, scale, None, wspec), scale, None)
        layer.bias.copy_(lin.bias.detach())
        layer.act_scale.fill_(0.021)
        y_fake = layer(x)
        layer.set_backend("emulated")
        y_emu = layer(x)
        assert torch.equal(activation_values(layer, x, "emulated"), layer.quantize_activation(x))
        bound = 1e-5 * sum_abs_products(layer.quantize_activation(x), layer.dequantized_weight()) + 1e-6
        assert bool(((y_fake - y_emu).abs().reshape(bound.shape) <= bound).all())
        pw = packed_weight(layer)
        assert pw.scale.unique().numel() == (1 if wspec.granularity == "tensor" else 3)


def test_twin_errors_are_one_line_and_name_the_layer():
    layer = _twin_layer(QuantSpec(4, "tensor"))
    layer._ptq3d_name = "blocks.0.mlp.fc2"
    layer.set_backend("emulated")
    layer.act_neg_scale.fill_(0.0)
    with pytest.raises(
        ConfigError, match=r"blocks\.0\.mlp\.fc2: twin-uniform act_neg_scale must be positive"
    ):
        layer(torch.randn(2, 96))


def test_saved_paths_are_bit_exact():
    """The two savings of issue 16.3: amin + amax instead of aminmax, int32 -> float32 in place."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(300, 257, generator=g) * torch.logspace(-3, 3, 300)[:, None]
    x[7] = 0
    mn, mx = torch.aminmax(x, dim=-1)
    scale = emulated.dynamic_scale(torch.maximum(-mn, mx), 8)
    q, s = emulated.quantize_per_token(x)
    assert torch.equal(s, scale)
    assert torch.equal(q, (x / scale[:, None]).clamp(-128, 127).round().to(torch.int8))
    p = torch.randint(-(2**31), 2**31 - 1, (1000, 333), dtype=torch.int32, generator=g)
    ref = p.to(torch.float32)
    assert torch.equal(emulated._int32_to_float32_(p), ref)  # large values: float32 rounding as .to()
    # the emulated GEMM against the pre-change formulation (separate float buffer per group)
    qw, sw, zw = quantize_weight_rtn(torch.randn(48, 256, generator=g), 4, 64, False)
    pw = pack_weight(qw, sw, zw, 4)
    xq, xs = emulated.quantize_per_token(torch.randn(37, 256, generator=g))
    bias = torch.randn(48, generator=g)
    acc = None
    for i, part in enumerate(emulated.gemm_int_accumulators(xq, pw)):
        term = part.to(torch.float32) * pw.scale[:, i][None, :]
        acc = term if acc is None else acc + term
    old = acc * xs[:, None] + bias
    assert torch.equal(emulated.gemm_int(xq, xs, pw, bias), old)


@pytest.mark.skipif(not INTERPRET and not torch.cuda.is_available(), reason="needs CUDA or the interpreter")
@pytest.mark.parametrize("bits,group,sym", [(4, None, True), (8, None, True), (4, 32, False)])
def test_triton_twin_matches_emulated(bits, group, sym):
    from ptq3d.kernels import triton_act_quant, triton_gemm

    device = "cpu" if INTERPRET else "cuda"
    x = _post_gelu(37, 128, seed=6).to(device)
    pos, neg = (t.to(device) for t in _twin_scales(x, 8))
    q = triton_act_quant.quantize_twin(x, pos, neg, 8)
    assert torch.equal(q, emulated.quantize_twin(x, pos, neg, 8))
    qw, sw, zw = quantize_weight_rtn(torch.randn(80, 128), bits, group, sym)
    pw = pack_weight(qw.to(device), sw.to(device), None if zw is None else zw.to(device), bits)
    bias = torch.randn(80, device=device)
    y = triton_gemm.gemm_int_twin(q, pos, neg, pw, bias)
    ref = emulated.gemm_int_twin(q, pos, neg, pw, bias)
    if INTERPRET:
        assert torch.equal(y, ref), (y - ref).abs().max()
    else:  # FMA contraction in the compiled epilogue
        torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not INTERPRET and not torch.cuda.is_available(), reason="needs CUDA or the interpreter")
def test_twin_quantlinear_on_triton_backend():
    layer = _twin_layer(QuantSpec(4, "tensor"), k=64, n=32)
    device = "cpu" if INTERPRET else "cuda"
    layer.to(device)
    x = _post_gelu(2 * 9, 64, seed=7).reshape(2, 9, 64).to(device)
    layer.set_backend("emulated")
    y_emu = layer(x)
    layer.set_backend("triton")
    y_tri = layer(x)
    torch.testing.assert_close(y_tri, y_emu, rtol=0 if INTERPRET else 1e-6, atol=0 if INTERPRET else 1e-6)
