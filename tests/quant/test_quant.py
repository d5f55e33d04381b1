"""Quantization primitives and QuantLinear."""

from __future__ import annotations

import pytest
import torch

from ptq3d.errors import ConfigError, UserError
from ptq3d.quant.qlinear import QuantLinear, set_backend
from ptq3d.quant.spec import (
    QuantSpec,
    compute_qparams,
    dequantize,
    fake_quantize,
    get_scheme,
    list_schemes,
    mse_clip_qparams,
    quantize,
)
from ptq3d.quant.transforms import ChannelScale


def test_schemes_defaults():
    assert set(list_schemes()) >= {"w8a8", "w6a6", "w4a8", "w4a4", "w4a16"}
    s = get_scheme("w4a8")
    assert s.weight == QuantSpec(4, "channel", True)
    assert s.act == QuantSpec(8, "token", True, dynamic=True)
    assert get_scheme("w4a16").act is None
    g = get_scheme("w4g128a16")
    assert g.weight.granularity == "group" and g.weight.group_size == 128
    st = get_scheme("w8a8-static")
    assert st.act.granularity == "tensor" and not st.act.dynamic
    assert get_scheme("w8a8").with_static_act().act == st.act
    with pytest.raises(UserError, match="did you mean 'w4a8'"):
        get_scheme("w4a9x")


def test_spec_validation():
    with pytest.raises(ConfigError, match="group_size"):
        QuantSpec(4, "group")
    with pytest.raises(ConfigError, match="bits"):
        QuantSpec(1, "channel")
    with pytest.raises(ConfigError, match="does not divide"):
        QuantSpec(4, "group", group_size=100).check_width(384)


def test_symmetric_per_channel_grid():
    w = torch.tensor([[1.0, -0.6, 0.25, 0.0], [-2.0, 2.0, 1.0, 0.1]])
    spec = QuantSpec(4, "channel")
    scale, zero = compute_qparams(w, spec)
    assert zero is None
    torch.testing.assert_close(scale, torch.tensor([[1 / 7], [2 / 7]]))
    c = quantize(w, scale, zero, spec)
    assert c.min() >= -8 and c.max() <= 7
    torch.testing.assert_close(c[0], torch.tensor([7.0, -4.0, 2.0, 0.0]))
    # GPTQ's "range" rule: scale = 2 max / 15
    s2, _ = compute_qparams(w, spec, sym_rule="range")
    torch.testing.assert_close(s2, torch.tensor([[2 / 15], [4 / 15]]))


def test_asymmetric_codes_are_shifted_into_int8():
    torch.manual_seed(0)
    x = torch.rand(16, 32) * 3 + 0.5  # all positive: range widened to include 0
    spec = QuantSpec(8, "channel", symmetric=False)
    scale, zero = compute_qparams(x, spec)
    codes = quantize(x, scale, zero, spec)
    assert codes.min() >= -128 and codes.max() <= 127
    # equals the textbook unsigned quantizer
    u = torch.clamp(torch.round(x / scale) + torch.round(-torch.zeros_like(scale) / scale), 0, 255)
    torch.testing.assert_close(dequantize(codes, scale, zero), scale * u)
    assert (dequantize(codes, scale, zero) - x).abs().max() <= scale.max() / 2 + 1e-6


@pytest.mark.parametrize("gran,gs", [("tensor", None), ("channel", None), ("group", 8)])
def test_error_bounded_by_half_step(gran, gs):
    torch.manual_seed(1)
    x = torch.randn(12, 32)
    for sym in (True, False):
        spec = QuantSpec(6, gran, sym, group_size=gs)
        scale, zero = compute_qparams(x, spec)
        shape = {"tensor": (1, 1), "channel": (12, 1), "group": (12, 4)}[gran]
        assert tuple(scale.shape) == shape
        err = (fake_quantize(x, spec) - x).abs()
        step = scale if gran == "tensor" else scale.repeat_interleave(32 // scale.shape[1], dim=1)
        assert (err <= step / 2 + 1e-6).all()


def test_per_token_dynamic_and_clip_ratio():
    x = torch.randn(2, 5, 16)
    x[0, 0] *= 100
    spec = QuantSpec(8, "token", dynamic=True)
    y = fake_quantize(x, spec)
    # per token: the outlier token does not ruin the others
    assert (y[1] - x[1]).abs().max() < x[1].abs().max() / 127
    y9 = fake_quantize(x, spec, clip_ratio=0.5)
    assert (y9.abs().amax(-1) <= 0.5 * x.abs().amax(-1) * 128 / 127 + 1e-5).all()


def test_mse_clip_never_worse_than_minmax():
    torch.manual_seed(2)
    w = torch.randn(8, 256)
    w[:, 0] = 20  # a heavy outlier per row makes clipping worthwhile
    spec = QuantSpec(3, "channel")
    s0, z0 = compute_qparams(w, spec)
    s1, z1 = mse_clip_qparams(w, spec)
    e0 = (dequantize(quantize(w, s0, z0, spec), s0, z0) - w).abs().pow(2.4).sum(1)
    e1 = (dequantize(quantize(w, s1, z1, spec), s1, z1) - w).abs().pow(2.4).sum(1)
    assert (e1 <= e0 + 1e-4).all()
    assert (s1 <= s0 + 1e-9).all()


def test_quantlinear_storage_contract():
    torch.manual_seed(3)
    lin = torch.nn.Linear(32, 8)
    for spec, scale_shape in [
        (QuantSpec(4, "channel"), (8, 1)),
        (QuantSpec(4, "group", group_size=8), (8, 4)),
        (QuantSpec(8, "tensor"), (1, 1)),
        (QuantSpec(4, "channel", symmetric=False), (8, 1)),
    ]:
        q = QuantLinear.from_linear(lin, spec, QuantSpec(8, "token", dynamic=True))
        assert q.qweight.dtype == torch.int8 and q.qweight.shape == (8, 32)
        assert q.weight_scale.dtype == torch.float32 and tuple(q.weight_scale.shape) == scale_shape
        assert (q.weight_zero is None) == spec.symmetric
        assert q.qweight.min() >= spec.qmin and q.qweight.max() <= spec.qmax
        assert q.act_scale is None and q.backend == "fake"
        assert q.dequantized_weight().shape == (8, 32)
        torch.testing.assert_close(q.dequantized_weight(), fake_quantize(lin.weight.detach(), spec))
        x = torch.randn(3, 32)
        ref = torch.nn.functional.linear(fake_quantize(x, q.act_spec), q.dequantized_weight(), q.bias)
        torch.testing.assert_close(q(x), ref)


def test_quantlinear_input_transform_and_static_act():
    torch.manual_seed(4)
    lin = torch.nn.Linear(16, 4)
    s = torch.rand(16) + 0.5
    q = QuantLinear.from_linear(lin, QuantSpec(8, "channel"), QuantSpec(8, "tensor"), ChannelScale(s))
    assert q.act_scale is not None and q.act_scale.shape == (1, 1)
    x = torch.randn(10, 16)
    q.set_static_range((x / s).min(), (x / s).max())
    torch.testing.assert_close(q.act_scale, (x / s).abs().max().reshape(1, 1) / 127)
    with torch.no_grad():
        assert ((q(x) - lin(x)).norm() / lin(x).norm()).item() < 0.02


def test_backends_and_errors():
    q = QuantLinear.from_linear(torch.nn.Linear(8, 4), QuantSpec(8, "channel"))
    with pytest.raises(UserError, match="unknown backend"):
        q.set_backend("cuda")
    m = torch.nn.Sequential(
        q, torch.nn.ReLU(), QuantLinear.from_linear(torch.nn.Linear(4, 2), QuantSpec(8, "channel"))
    )
    assert set_backend(m, "emulated") == 2
    assert all(x.backend == "emulated" for x in m if isinstance(x, QuantLinear))
    set_backend(m, "fake")
    with pytest.raises(ConfigError, match="does not divide"):
        QuantLinear(30, 4, QuantSpec(4, "group", group_size=8))


def test_transforms_rebuild_from_config():
    from ptq3d.quant.transforms import (
        ColumnPermutation,
        HadamardRotation,
        InputTransform,
        build_transform,
        chain,
    )

    t = chain(
        HadamardRotation(48, seed=2),
        ChannelScale(torch.rand(48) + 0.5),
        ColumnPermutation(torch.randperm(48)),
    )
    back = build_transform(t.config())
    back.load_state_dict(t.state_dict())
    x = torch.randn(5, 48)
    assert torch.equal(back(x), t(x))
    w = torch.randn(3, 48)
    # T(x) @ T_w(W)^T == x @ W^T
    torch.testing.assert_close(t(x) @ t.transform_weight(w).t(), x @ w.t(), rtol=1e-4, atol=1e-4)

    class Negate(InputTransform):  # a new kind, e.g. from a plugin
        kind = "test_negate"

        def forward(self, x):
            return -x

        def transform_weight(self, weight):
            return -weight

        def config(self):
            return {"kind": self.kind}

        @classmethod
        def empty(cls, cfg):
            return cls()

    assert isinstance(build_transform({"kind": "test_negate"}), Negate)
    with pytest.raises(UserError, match="unknown input transform kind 'nope'"):
        build_transform({"kind": "nope"})
