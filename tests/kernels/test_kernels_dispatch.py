"""quant_linear_forward with the real QuantLinear and a stand-in; model_bytes; parity_check on vggt-tiny."""

from __future__ import annotations

import pytest
import torch
from kernels_testutil import Spec, StandIn, sum_abs_products
from torch import nn

from ptq3d.errors import ConfigError, UserError
from ptq3d.kernels import model_bytes, packed_weight, parity_check, quant_linear_forward, set_backend
from ptq3d.quant.qlinear import QuantLinear
from ptq3d.quant.spec import QuantSpec, get_scheme
from ptq3d.quant.transforms import HadamardRotation


def _fake_vs_emulated(layer, x):
    layer.set_backend("fake")
    y_fake = layer(x)
    layer.set_backend("emulated")
    y_emu = layer(x)
    return y_fake, y_emu


# Tolerance (see ptq3d.kernels.dispatch): same codes, so only float32 summation order differs:
# |fake - emulated| <= 1e-5 * sum_k |x_hat_k w_hat_k| (K <= 4096 terms, each rounding <= 2^-24 relative).
FAKE_EMU_TOL = 1e-5


@pytest.mark.parametrize(
    "scheme", ["w8a8", "w4a8", "w4g32a8", "w4a4", "w6a6", "w4g32a8-asym", "w8a8-static", "w4g32a16"]
)
def test_real_quantlinear_fake_vs_emulated(scheme):
    torch.manual_seed(0)
    sch = get_scheme(scheme)
    if not sch.weight.symmetric and sch.act is not None:  # asym activations: no integer kernel
        sch = type(sch)(sch.name, sch.weight, QuantSpec(8, "token", True, dynamic=True))
    lin = nn.Linear(128, 96)
    layer = QuantLinear.from_linear(lin, sch.weight, sch.act)
    if sch.act is not None and not sch.act.dynamic:
        layer.set_static_range(-3.0, 3.0)
    x = torch.randn(3, 21, 128)
    y_fake, y_emu = _fake_vs_emulated(layer, x)
    assert y_emu.shape == y_fake.shape == (3, 21, 96)
    xh = layer.quantize_activation(x)
    bound = FAKE_EMU_TOL * sum_abs_products(xh, layer.dequantized_weight()).reshape(3, 21, 96) + 1e-6
    assert bool(((y_fake - y_emu).abs() <= bound).all())
    assert not torch.equal(y_emu, lin(x))  # it really quantized


def test_real_quantlinear_with_hadamard_transform():
    torch.manual_seed(1)
    lin = nn.Linear(256, 64)
    layer = QuantLinear.from_linear(lin, QuantSpec(4, "channel"), QuantSpec(8, "token", dynamic=True),
                                    HadamardRotation(256, seed=3))  # fmt: skip
    x = torch.randn(17, 256)
    y_fake, y_emu = _fake_vs_emulated(layer, x)
    torch.testing.assert_close(y_emu, y_fake, rtol=1e-4, atol=1e-4)


def test_standin_quant_linear_forward_matches_float_math():
    torch.manual_seed(2)
    layer = StandIn(torch.randn(24, 64), 4, 16, wsym=False, act=Spec(8, "token"))
    x = torch.randn(5, 64)
    y = quant_linear_forward(layer, x)
    from ptq3d.kernels import emulated

    xq, xs = emulated.quantize_per_token(x)
    ref = (xq.float() * xs[:, None]) @ layer.dequantized_weight().t() + layer.bias
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


def test_packed_cache_is_invalidated_when_codes_change():
    torch.manual_seed(3)
    layer = QuantLinear.from_linear(
        nn.Linear(32, 16), QuantSpec(8, "channel"), QuantSpec(8, "token", dynamic=True)
    )
    layer.set_backend("emulated")
    first = packed_weight(layer)
    assert packed_weight(layer) is first  # cached
    assert "_ptq3d_packed" not in layer.state_dict()
    x = torch.randn(4, 32)
    y0 = layer(x)
    layer.qweight.mul_(-1)  # in place: same storage, new version
    assert packed_weight(layer) is not first
    torch.testing.assert_close(layer(x), -(y0 - layer.bias) + layer.bias, rtol=1e-5, atol=1e-5)


def test_unsupported_combinations_raise_clear_errors():
    lin = nn.Linear(32, 16)
    asym = QuantLinear.from_linear(lin, QuantSpec(8, "channel"), QuantSpec(8, "token", False, dynamic=True))
    asym.set_backend("emulated")
    with pytest.raises(ConfigError, match="asymmetric activations"):
        asym(torch.randn(2, 32))
    grp = QuantLinear.from_linear(lin, QuantSpec(8, "channel"), QuantSpec(8, "group", True, 16, dynamic=True))
    grp.set_backend("emulated")
    with pytest.raises(ConfigError, match="granularity 'group'"):
        grp(torch.randn(2, 32))
    a16 = StandIn(torch.randn(16, 32), 8, act=Spec(12, "token"))
    with pytest.raises(ConfigError, match="2..8-bit activations"):
        a16(torch.randn(2, 32))
    ok = StandIn(torch.randn(16, 32), 8, act=Spec(8, "token"))
    with pytest.raises(ConfigError, match="input has 31 features"):
        ok(torch.randn(2, 31))
    assert issubclass(ConfigError, UserError)


def _toy_stack(scheme: str) -> nn.Sequential:
    torch.manual_seed(4)
    sch = get_scheme(scheme)
    return nn.Sequential(
        QuantLinear.from_linear(nn.Linear(64, 128), sch.weight, sch.act),
        nn.GELU(),
        QuantLinear.from_linear(nn.Linear(128, 64), sch.weight, sch.act),
    )


def test_set_backend_and_model_bytes_on_toy_stack():
    model = _toy_stack("w4g32a8")
    assert set_backend(model, "emulated") == 2
    assert all(m.backend == "emulated" for m in model if isinstance(m, QuantLinear))
    with pytest.raises(UserError, match="unknown backend"):
        set_backend(model, "cutlass")
    mb = model_bytes(model)
    assert mb.quant_sites == 2
    fp16 = 2 * (64 * 128 * 2)
    assert mb.quant_fp16_bytes == fp16
    # int4 codes (K/2 bytes per row) + one float32 scale per 32 weights.
    assert mb.quant_packed_bytes == (64 * 128 // 2) * 2 + (128 * 2 + 64 * 4) * 4
    assert mb.other_fp16_bytes == (128 + 64) * 2  # the biases
    assert mb.quant_ratio == pytest.approx(0.25 + 4 / 32 / 2)  # group 32: scales cost 4 B per 32 weights


def test_parity_check_toy_stack_reports_differences():
    model = _toy_stack("w8a8")
    samples = [torch.randn(10, 64) for _ in range(3)]
    ref = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64))  # not used by parity itself

    def metrics(out, x):
        return {"mean": float(out.mean()), "norm": float(out.norm())}

    rep = parity_check(model, samples, metrics)
    assert rep["layers"] == 2 and rep["samples"] == 3
    assert set(rep["metrics"]) == {"fake", "emulated"}
    assert abs(rep["diff"]["emulated"]["norm"]) <= 1e-4 * rep["metrics"]["fake"]["norm"]
    assert rep["max_output_abs_diff"]["emulated"]["output"] < 1e-4
    assert all(m.backend == "fake" for m in model if isinstance(m, QuantLinear))  # restored
    del ref


@pytest.fixture(scope="module")
def vggt_tiny_quantized():
    from ptq3d.methods.api import quantize_model
    from ptq3d.models import load_model

    torch.manual_seed(0)
    fp = load_model("vggt-tiny")  # seeded random init (no bundled weights needed)
    return fp, quantize_model(fp, "rtn", "w4g64a8")


def test_parity_check_vggt_tiny_fake_vs_emulated(vggt_tiny_quantized):
    """The same quantized VGGT (RTN w4g64a8) on fake vs real-integer (emulated) execution.

    Tolerance: every layer agrees to float32 summation order (tested above), but in the network such a
    difference can move a later activation across a rounding boundary, and the random-init camera head
    amplifies that (its extrinsics move by ~1e-2 under 1e-6 input noise). So metrics are compared to the
    fake model's own noise floor (same model, inputs * (1 + 1e-6 N(0,1))): fake vs emulated must be within
    4x of it (plus 1e-4 absolute), and the dense outputs (depth, points) within 1e-5.
    """
    from ptq3d.metrics.depth import depth_metrics
    from ptq3d.metrics.pose import relative_pose_errors

    fp, qm = vggt_tiny_quantized
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(1, 3, 3, 112, 112, generator=g) for _ in range(2)]
    with torch.no_grad():
        fp_preds = [fp.predict(im) for im in images]

    class Sample:
        def __init__(self, i):
            self.images, self.index = images[i], i

    def metrics(pred, s):
        ref = fp_preds[s.index]
        d = depth_metrics(pred.depth[0], ref.depth[0], alignment="median").metrics
        pe = relative_pose_errors(pred.extrinsics[0], ref.extrinsics[0])
        return {"abs_rel": d["abs_rel"], "rot_err_deg": float(pe.rot_err_deg.mean()),
                "trans_err_deg": float(pe.trans_err_deg.mean())}  # fmt: skip

    rep = parity_check(qm, [Sample(0), Sample(1)], metrics, noise_rel=1e-6)
    assert rep["layers"] == 16
    assert rep["metrics"]["fake"]["rot_err_deg"] > 1.0  # quantization is visible against FP
    for k, d in rep["diff"]["emulated"].items():
        assert abs(d) <= 4 * rep["noise_floor"][k] + 1e-4, (k, rep)
    for k in ("depth", "world_points"):
        assert rep["max_output_abs_diff"]["emulated"][k] <= 1e-5, rep


def test_static_token_spec_uses_the_calibrated_scale_like_fake():
    torch.manual_seed(6)
    layer = QuantLinear.from_linear(
        nn.Linear(64, 32), QuantSpec(8, "channel"), QuantSpec(8, "token", dynamic=False)
    )
    layer.set_static_range(-2.5, 2.5)
    x = torch.randn(7, 64)
    y_fake, y_emu = _fake_vs_emulated(layer, x)
    torch.testing.assert_close(y_emu, y_fake, rtol=1e-5, atol=1e-5)


def test_bf16_activations_fake_vs_emulated():
    """bf16: the fake path rounds operands and the product to bf16; the integer path rounds once."""
    torch.manual_seed(7)
    layer = QuantLinear.from_linear(
        nn.Linear(128, 64), QuantSpec(8, "channel"), QuantSpec(8, "token", dynamic=True)
    )
    x = torch.randn(9, 128).bfloat16()
    y_fake, y_emu = _fake_vs_emulated(layer, x)
    assert y_emu.dtype == torch.bfloat16
    scale = sum_abs_products(layer.quantize_activation(x).float(), layer.dequantized_weight())
    assert bool(((y_fake.float() - y_emu.float()).abs() <= 2e-2 * scale + 1e-3).all())
