"""Packing formats: int4 round trip, dequantization, byte budget, error messages."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ptq3d.errors import ConfigError
from ptq3d.kernels.packing import pack_int4, pack_weight, quantize_weight_rtn, unpack_int4


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 5), half=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_int4_pack_roundtrip(rows, half, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-8, 8, (rows, 2 * half), generator=g, dtype=torch.int8)
    packed = pack_int4(codes)
    assert packed.shape == (rows, half) and packed.dtype == torch.int8
    assert torch.equal(unpack_int4(packed), codes)


def test_int4_nibble_layout():
    # code k=0 in the low nibble, k=1 in the high nibble, two's complement.
    packed = pack_int4(torch.tensor([[-1, 2, 7, -8]], dtype=torch.int8))
    assert packed.view(torch.uint8).tolist() == [[0x2F, 0x87]]


@pytest.mark.parametrize("bits,group,sym", [(8, None, True), (4, None, True), (4, 32, False), (6, 16, True)])
def test_packed_dequantize_matches_codes(bits, group, sym):
    w = torch.randn(24, 64)
    q, s, z = quantize_weight_rtn(w, bits, group, sym)
    pw = pack_weight(q, s, z, bits)
    g = s.shape[1]
    expect = q.float().view(24, g, -1)
    if z is not None:
        expect = expect - z[:, :, None]
    expect = (expect * s[:, :, None]).reshape(24, 64)
    assert torch.equal(pw.dequantize(), expect)
    assert torch.equal(pw.codes(), q)
    assert pw.packed_int4 == (bits <= 4)
    # RTN error bound: half a step per weight.
    step = s.repeat_interleave(64 // g, dim=1)
    assert bool(((pw.dequantize() - w).abs() <= step * 0.5 + 1e-6).all())


@pytest.mark.parametrize("group,sym", [(None, True), (128, True), (128, False)])
def test_int4_bytes_at_most_027_of_fp16(group, sym):
    """Acceptance: packed int4 weights (scales and zero-points included) <= 0.27x FP16 at K=1024."""
    n, k = 1024, 1024
    q, s, z = quantize_weight_rtn(torch.randn(n, k), 4, group, sym)
    pw = pack_weight(q, s, z, 4)
    ratio = pw.nbytes() / (2 * n * k)
    assert ratio <= 0.27, ratio
    assert ratio >= 0.25  # the codes alone are 0.25x


def test_pack_errors_name_the_problem():
    q = torch.zeros(4, 8, dtype=torch.int8)
    with pytest.raises(ConfigError, match="2..8-bit"):
        pack_weight(q, torch.ones(4, 1), None, 16, "blk.qkv")
    with pytest.raises(ConfigError, match="blk.qkv: weight_scale shape"):
        pack_weight(q, torch.ones(4, 3), None, 8, "blk.qkv")
    with pytest.raises(ConfigError, match="integer zero-points"):
        pack_weight(q, torch.ones(4, 1), torch.full((4, 1), 0.5), 8, "blk.qkv")
    with pytest.raises(ConfigError, match="exceed the signed 4-bit range"):
        pack_weight(q + 9, torch.ones(4, 1), None, 4, "blk.qkv")
    with pytest.raises(ConfigError, match="even in_features"):
        pack_weight(torch.zeros(4, 7, dtype=torch.int8), torch.ones(4, 1), None, 4, "blk.qkv")


def test_per_tensor_scale_and_zero_expand():
    q = torch.randint(-8, 8, (6, 16), dtype=torch.int8)
    pw = pack_weight(q, torch.full((1, 1), 0.5), torch.full((1, 1), 2.0), 4)
    assert pw.scale.shape == (6, 1) and pw.zero.shape == (6, 1)
    assert torch.equal(pw.dequantize(), (q.float() - 2) * 0.5)
