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


def test_layer_parity_vggt_tiny_fake_vs_emulated(vggt_tiny_quantized, monkeypatch):
    """Every layer of the quantized VGGT (RTN w4g64a8) on the input the fake run gave it: the emulated
    backend computes the same activation codes and the same outputs up to float32 summation order."""
    from ptq3d.kernels.parity import layer_parity

    _, qm = vggt_tiny_quantized
    g = torch.Generator().manual_seed(1)
    rep = layer_parity(qm, [torch.rand(1, 3, 3, 112, 112, generator=g)])
    assert len(rep["layers"]) == 16
    assert rep["act_mismatches"] == 0, rep
    assert rep["max_diff_over_bound"] <= 1.0, rep
    # and a real mismatch is caught: activation codes rounded down instead of to nearest even
    from ptq3d.kernels import emulated

    def floor_codes(x, bits=8, clip_ratio=1.0):
        q, scale = real_quantize(x, bits, clip_ratio)
        lo, hi = emulated.qrange(bits)
        return (x.float() / scale[:, None]).floor().clamp(lo, hi).to(torch.int8), scale

    real_quantize = emulated.quantize_per_token
    monkeypatch.setattr(emulated, "quantize_per_token", floor_codes)
    bad = layer_parity(qm, [torch.rand(1, 3, 3, 112, 112, generator=torch.Generator().manual_seed(1))])
    assert bad["act_mismatches"] > 0 and bad["max_diff_over_bound"] > 1.0


def test_parity_check_fake_vs_emulated_within_noise_floor():
    """The same quantized model (bundled trained vggt-tiny-synthetic, RTN w4g64a8) on fake vs emulated: task
    metrics within 3x the largest change that 1e-6 input noise causes over 6 draws.

    Why the noise floor and several draws (ptq3d.kernels.parity docstring): fake and emulated differ per layer
    by float32 summation order only (test above), but a code that flips at a rounding boundary cascades
    through the later layers. Measured on this project's 2-core Xeon (2 held-out scenes, 8 draws):
    |diff| / floor was 0.28-0.65 (w4g64a8, w4a8, w8a8, w4a4, every metric). On the random-init vggt-tiny the
    camera path is chaotic (special tokens start at 1e-6): 8 draws moved trans_err_deg by 0.036-0.94, so one
    draw (the test before) could not tell noise from a defect; its fake-vs-emulated 0.225 was noise.
    """
    from ptq3d.datasets.protocols import get_protocol, load_protocol_scenes
    from ptq3d.methods.api import quantize_model
    from ptq3d.metrics.depth import depth_metrics
    from ptq3d.metrics.pose import relative_pose_errors
    from ptq3d.models import load_model

    fp = load_model("vggt-tiny-synthetic")
    qm = quantize_model(fp, "rtn", "w4g64a8")
    images = load_protocol_scenes(get_protocol("synthetic-heldout-112").with_limit(1))[0].images[None, :4]
    with torch.no_grad():
        ref = fp.predict(images)

    def metrics(pred, _):
        d = depth_metrics(pred.depth[0], ref.depth[0], alignment="median").metrics
        pe = relative_pose_errors(pred.extrinsics[0], ref.extrinsics[0])
        return {"abs_rel": d["abs_rel"], "rot_err_deg": float(pe.rot_err_deg.mean()),
                "trans_err_deg": float(pe.trans_err_deg.mean())}  # fmt: skip

    rep = parity_check(qm, [images], metrics, noise_rel=1e-6, noise_draws=6)
    assert rep["layers"] == 32 and len(rep["noise_floor_draws"]["abs_rel"]) == 6
    assert rep["metrics"]["fake"]["rot_err_deg"] > 0.1  # quantization is visible against FP
    for k, d in rep["diff"]["emulated"].items():
        assert abs(d) <= 3 * rep["noise_floor"][k], (k, rep)
    for k in ("depth", "world_points", "extrinsics"):
        assert rep["max_output_abs_diff"]["emulated"][k] <= 3 * rep["output_noise_floor"][k], rep


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
