"""RepQ-ViT: the scale reparameterization is exactly function-preserving in FP, turns the per-channel
quantizer into a per-tensor one with the same codes, matches the reference's fold; the log-sqrt(2) quantizer;
clear refusals; quantize / save / reload."""

from __future__ import annotations

import math

import pytest
import torch
from small_models import assert_bundled_round_trip
from torch import nn

from ptq3d.errors import ConfigError
from ptq3d.methods import load_quantized, quantize_model, save_quantized
from ptq3d.methods.repq_vit import (
    fold_reparameterization,
    log_sqrt2_quantize,
    percentile_qparams,
    reparameterize,
)
from ptq3d.quant.spec import QuantSpec, fake_quantize


def _ln_linear(seed=0, C=16, out=12):
    g = torch.Generator().manual_seed(seed)
    norm, lin = nn.LayerNorm(C).double(), nn.Linear(C, out).double()
    with torch.no_grad():
        norm.weight.copy_(torch.rand(C, generator=g) * 3 + 0.1)
        norm.bias.copy_(torch.randn(C, generator=g))
        norm.weight[2] = 12.0  # a channel with a much wider range
        lin.weight.copy_(torch.randn(out, C, generator=g))
    x = torch.randn(200, C, generator=g).double() * 2 + 1
    return norm, lin, x


@pytest.mark.parametrize("symmetric", [False, True])
def test_reparameterization_is_function_preserving(symmetric):
    norm, lin, x = _ln_linear()
    spec = QuantSpec(4, "tensor", symmetric=symmetric)
    with torch.no_grad():
        before = lin(norm(x))
        cs, cz = percentile_qparams(norm(x).t(), spec, per_row=True)
        rep = reparameterize(cs, cz)
        new = fold_reparameterization(
            norm,
            lin,
            rep.__class__(*(t if t is None else t.double() for t in (rep.r, rep.b, rep.scale, rep.zero))),
        )
        after = new.double()(norm(x))
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    assert float(rep.r.max() / rep.r.min()) > 2  # the wide channel really got a different ratio


def test_per_tensor_codes_equal_per_channel_codes():
    """After the fold the per-tensor quantizer (s~, z~) on x' dequantizes, mapped back, to exactly the
    per-channel quantizer (s_c, z_c) on x, so the quantized linear outputs agree."""
    norm, lin, x = _ln_linear(1)
    norm, lin, x = norm.float(), lin.float(), x.float()
    spec = QuantSpec(4, "tensor", symmetric=False)
    with torch.no_grad():
        y = norm(x)
        cs, cz = percentile_qparams(y.t(), spec, per_row=True)
        per_channel = (fake_quantize(y.t(), QuantSpec(4, "channel", False), cs, cz)).t()
        ref = lin(per_channel)
        rep = reparameterize(cs, cz)
        new = fold_reparameterization(norm, lin, rep)
        per_tensor = fake_quantize(norm(x), spec, rep.scale, rep.zero)
        out = new(per_tensor)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_fold_matches_reference_transcription():
    """zkkli/RepQ-ViT test_quant.py: r = delta / mean(delta), b = act_min / r - target_min,
    gamma / r, beta / r - b, W * r, bias + W' b, with act_min = -z delta (unsigned zero points);
    with z~ an integer (ours) both give the same modules."""
    norm, lin, _ = _ln_linear(2)
    delta = torch.rand(16, dtype=torch.float64) + 0.1
    zp = torch.randint(0, 16, (16,)).double()
    zp = zp - zp.mean() + torch.round(zp.mean())  # same mean, integer-valued mean
    t_delta, t_zp = delta.mean(), zp.mean()
    r = delta / t_delta
    b = (-zp * delta) / r - (-t_zp * t_delta)
    ref_gamma, ref_beta = norm.weight.detach() / r, norm.bias.detach() / r - b
    ref_W = lin.weight.detach() * r
    ref_bias = lin.bias.detach() + ref_W @ b
    # ours, with signed zero points (shifted by qmin = -8): the shift cancels in z - z~
    rep = reparameterize(delta, zp - 8)
    rep = rep.__class__(rep.r.double(), rep.b.double(), rep.scale.double(), rep.zero.double())
    new = fold_reparameterization(norm, lin, rep)
    torch.testing.assert_close(norm.weight.detach(), ref_gamma)
    torch.testing.assert_close(norm.bias.detach(), ref_beta)
    torch.testing.assert_close(new.weight.detach().double(), ref_W.double(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(new.bias.detach().double(), ref_bias, atol=1e-5, rtol=1e-5)


def test_log_sqrt2_quantizer():
    delta = 1.0
    x = torch.tensor([1.0, 2**-0.5, 0.5, 2**-1.5, 0.25, 1e-9])
    out = log_sqrt2_quantize(x, bits=4, delta=delta)
    torch.testing.assert_close(out[:5], x[:5])  # powers of sqrt(2) are on the grid
    assert out[5] == 0  # below the grid: code overflow -> 0
    assert log_sqrt2_quantize(torch.tensor([0.6]), 4, delta).item() == pytest.approx(
        2**-0.5
    )  # nearest in log
    assert math.isclose(log_sqrt2_quantize(torch.tensor([0.3]), 4, delta).item(), 2**-1.5, rel_tol=1e-6)


def test_refusals(toy, toy_calib):
    with pytest.raises(ConfigError, match="needs quantized activations"):
        quantize_model(toy, "repq-vit", "w4a16", toy_calib)
    with pytest.raises(ConfigError, match="static per-tensor"):
        quantize_model(toy, "repq-vit", "w4a8", toy_calib, {"act_static": False})


def test_toy_repq_round_trips(tmp_path, toy, toy_calib, toy_images):
    from toy_model import ToyGeometryModel

    qm = quantize_model(toy, "repq-vit", "w8a8-asym", toy_calib)
    assert qm.scheme.act.granularity == "tensor" and not qm.scheme.act.dynamic
    rec = qm.stats.layers["frame_blocks.0.attn.qkv"]
    assert rec["repq_reparam"] and rec["repq_ratio_max"] > 1 > rec["repq_ratio_min"]
    assert "repq_reparam" not in qm.stats.layers["frame_blocks.0.attn.proj"]
    assert qm.stats.wall_time_s > 0
    ref = toy.predict(toy_images).tensors()["depth"]
    rel = (qm.predict(toy_images).tensors()["depth"] - ref).norm() / ref.norm()
    assert rel < 0.05
    save_quantized(qm, tmp_path / "q")
    back = load_quantized(tmp_path / "q", model=ToyGeometryModel(seed=4))
    sa, sb = qm.module.state_dict(), back.module.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(back.predict(toy_images).tensors()["depth"], qm.predict(toy_images).tensors()["depth"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vggt-tiny-synthetic", "pi3-tiny"])
def test_bundled_models_round_trip(tmp_path, name):
    assert_bundled_round_trip(tmp_path, name, "repq-vit", ("w8a8", "w4a4-asym", "w4g32a8"), None)
