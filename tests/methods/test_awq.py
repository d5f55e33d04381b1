"""AWQ: the scale search against a transcription of llm-awq's on a layer with a salient channel, the clipping
search, function preservation of the folds, and quantize / save / reload on the toy and the bundled models."""

from __future__ import annotations

import pytest
import torch
from small_models import assert_bundled_round_trip

from ptq3d.methods import load_quantized, quantize_model, save_quantized
from ptq3d.methods.awq import activation_scales, apply_clip, scaled_fake_weight, search_clip, search_scale
from ptq3d.quant.qlinear import QuantLinear
from ptq3d.quant.spec import QuantSpec


def _llm_awq_pseudo_quantize(w: torch.Tensor, n_bit: int, group: int) -> torch.Tensor:
    """Transcription of llm-awq's pseudo_quantize_tensor (zero_point=True): per group of `group` columns,
    asymmetric min/max, round, clamp to [0, 2^b - 1]."""
    shape = w.shape
    w = w.reshape(-1, group)
    max_val, min_val = w.amax(dim=1, keepdim=True), w.amin(dim=1, keepdim=True)
    scales = (max_val - min_val).clamp(min=1e-5) / (2**n_bit - 1)
    zeros = -torch.round(min_val / scales)
    w = (torch.clamp(torch.round(w / scales) + zeros, 0, 2**n_bit - 1) - zeros) * scales
    return w.reshape(shape)


def _llm_awq_best_ratio(x: torch.Tensor, W: torch.Tensor, n_bit: int, group: int, n_grid: int = 20):
    """Transcription of llm-awq's _search_module_scale for a single linear (module2inspect = the linear)."""
    x_max = x.abs().view(-1, x.shape[-1]).mean(0)
    org_out = x @ W.t()
    best_error, best_ratio, best_scales = float("inf"), -1, None
    for i in range(n_grid):
        ratio = i / n_grid
        scales = x_max.pow(ratio).clamp(min=1e-4).view(-1)
        scales = scales / (scales.max() * scales.min()).sqrt()
        w = _llm_awq_pseudo_quantize(W * scales.view(1, -1), n_bit, group) / scales.view(1, -1)
        loss = (org_out - x @ w.t()).float().pow(2).mean().item()
        if loss < best_error:
            best_error, best_ratio, best_scales = loss, ratio, scales
    return best_ratio, best_scales


def _salient_layer(seed: int = 0):
    """A linear whose input channel 3 carries activations 30x larger than the rest (AWQ's salient channel)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 64, generator=g)
    x[:, 3] *= 30.0
    W = torch.randn(32, 64, generator=g) * 0.1
    return x, W


def test_scale_search_matches_llm_awq_on_salient_channel():
    x, W = _salient_layer()
    spec = QuantSpec(3, "group", symmetric=False, group_size=16)
    ref = x @ W.t()

    def trial(s):
        return (x @ scaled_fake_weight(W, s, spec, "absmax").t() - ref).pow(2).mean().item()

    s, alpha, losses = search_scale(x.abs().mean(0), 20, trial)
    ref_ratio, ref_scales = _llm_awq_best_ratio(x, W, 3, 16)
    assert alpha == ref_ratio and alpha > 0
    torch.testing.assert_close(s, ref_scales)
    assert int(s.argmax()) == 3  # the salient channel is scaled up the most
    assert losses[0] > min(losses)  # alpha = 0 (plain RTN) is beaten


def test_activation_scales_normalised():
    s = activation_scales(torch.tensor([1.0, 4.0, 16.0]), 0.5)
    torch.testing.assert_close(s, torch.tensor([0.5, 1.0, 2.0]))  # [1, 2, 4] / sqrt(4 * 1)


def test_clip_search_never_worse_and_freezes_rows():
    x, W = _salient_layer(1)
    W[0, 0] = 2.0  # an outlier weight worth clipping
    spec = QuantSpec(3, "group", symmetric=False, group_size=16)
    max_val = search_clip(W, x, spec, "absmax", frozen_rows=4)
    org = W.abs().reshape(32, 4, 16).amax(-1)
    assert torch.equal(max_val[:4], org[:4]) and bool((max_val <= org).all())
    err = lambda w: (x @ w.t() - x @ W.t()).pow(2).mean().item()  # noqa: E731
    from ptq3d.quant.spec import fake_quantize

    clipped = fake_quantize(apply_clip(W, max_val), spec)
    assert err(clipped) <= err(fake_quantize(W, spec)) + 1e-9


@pytest.mark.parametrize("scheme", ["w4g32a16", "w4a8"])
def test_toy_awq_beats_rtn_and_round_trips(tmp_path, toy, toy_calib, toy_images, scheme):
    from toy_model import ToyGeometryModel

    ref = toy.predict(toy_images).tensors()
    awq = quantize_model(toy, "awq", scheme, toy_calib)
    rtn = quantize_model(toy, "rtn", scheme)
    err = lambda m: float((m.predict(toy_images).tensors()["depth"] - ref["depth"]).pow(2).mean())  # noqa: E731
    assert err(awq) < err(rtn)
    rec = awq.stats.layers["frame_blocks.0.mlp.fc2"]
    assert rec["awq_scaling"] == "online" and 0 <= rec["awq_alpha"] < 1
    assert awq.stats.layers["frame_blocks.0.attn.proj"]["awq_scaling"] == "folded:attn.qkv.v"
    assert awq.stats.wall_time_s > 0 and awq.stats.peak_rss_bytes > 0
    save_quantized(awq, tmp_path / "q")
    back = load_quantized(tmp_path / "q", model=ToyGeometryModel(seed=7))
    a, b = awq.module.state_dict(), back.module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()
    assert torch.equal(
        back.predict(toy_images).tensors()["depth"], awq.predict(toy_images).tensors()["depth"]
    )


def test_folds_are_function_preserving_in_fp(toy, toy_calib, toy_images):
    """With 16-bit weights the quantization is (nearly) lossless, so any error would come from the folds."""
    q = quantize_model(toy, "awq", "w8a16", toy_calib, {"clip": False})
    assert isinstance(q.module.frame_blocks[0].mlp.fc2, QuantLinear)
    ref = toy.predict(toy_images).tensors()["depth"]
    rel = (q.predict(toy_images).tensors()["depth"] - ref).norm() / ref.norm()
    assert rel < 2e-2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vggt-tiny-synthetic", "pi3-tiny"])
def test_bundled_models_round_trip(tmp_path, name):
    assert_bundled_round_trip(
        tmp_path,
        name,
        "awq",
        ("w4a16", "w4g32a16", "w4a8"),
        None,
        check=lambda model, qm: _all_sites_quantized(model, qm),
    )


def _all_sites_quantized(model, qm):
    assert len(qm.quant_layers()) == len(model.quant_sites("aggregator"))
