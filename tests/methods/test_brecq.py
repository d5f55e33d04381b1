"""BRECQ: AdaRound's rectified sigmoid, regulariser and beta schedule against the reference's formulas, the
rounding converging to a hard 0/1 mask, the learned activation steps, and quantize / save / reload."""

from __future__ import annotations

import pytest
import torch
from small_models import assert_bundled_round_trip
from torch import nn

from ptq3d.methods import get_method, load_quantized, quantize_model, save_quantized
from ptq3d.methods.brecq import (
    GAMMA,
    ZETA,
    Adam,
    BRECQConfig,
    RoundingLinear,
    TemperatureDecay,
    init_rounding_logits,
    rectified_sigmoid,
    rounding_regularizer,
)
from ptq3d.quant.spec import get_scheme

FAST = {"iters_w": 4, "iters_a": 2, "fisher": False}


def test_init_reproduces_fractional_part():
    w_over_s = torch.linspace(-3.9, 3.9, 101)
    h = rectified_sigmoid(init_rounding_logits(w_over_s))
    torch.testing.assert_close(h, w_over_s - torch.floor(w_over_s), atol=1e-5, rtol=0)


def test_reference_formulas():
    V = torch.tensor([-10.0, 0.0, 10.0])
    # yhhhli/BRECQ AdaRoundQuantizer.get_soft_targets: clamp(sigmoid(alpha) * (zeta - gamma) + gamma, 0, 1)
    torch.testing.assert_close(
        rectified_sigmoid(V), torch.clamp(torch.sigmoid(V) * (ZETA - GAMMA) + GAMMA, 0, 1)
    )
    assert (ZETA, GAMMA) == (1.1, -0.1)
    h = torch.tensor([0.0, 0.5, 1.0])
    assert float(rounding_regularizer(h, 2.0)) == pytest.approx(1.0)  # only h = 0.5 is penalised: 1 - 0^2
    decay = TemperatureDecay(t_max=100, rel_start_decay=0.2, start_b=20, end_b=2)
    assert decay(0) == 20 and decay(19) == 20 and decay(20) == 20
    assert decay(60) == pytest.approx(2 + 18 * 0.5) and decay(100) == pytest.approx(2)


def _rounding_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(24, 12)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(12, 24, generator=g) * 0.2)
    x = torch.randn(64, 24, generator=g)
    return lin, x, lin(x).detach()


def test_adaround_converges_to_hard_mask():
    """Reconstruction of one layer with the annealed regulariser: h(V) ends (almost) all at 0 or 1, and the
    hard rounding reconstructs the output better than round-to-nearest."""
    lin, x, target = _rounding_problem()
    # the reference's lambda and schedule; 300 steps at lr 6e-2 travel as far in V as its 20000 at 1e-3
    cfg = BRECQConfig(iters_w=300, weight=0.01, fisher=False)
    rl = RoundingLinear(lin, get_scheme("w3a16"), cfg)
    h0 = rl.h().detach()
    assert float(((h0 > 0) & (h0 < 1)).float().mean()) > 0.9
    opt = Adam([{"params": [rl.alpha], "lr": 6e-2}])
    decay = TemperatureDecay(cfg.iters_w, cfg.warmup, cfg.b_start, cfg.b_end)
    for it in range(cfg.iters_w):
        rec = (rl(x) - target).pow(2).sum(-1).mean()
        reg = 0.0 if it < cfg.warmup * cfg.iters_w else cfg.weight * rounding_regularizer(rl.h(), decay(it))
        opt.zero_grad()
        (rec + reg).backward()
        opt.step()
    h = rl.h().detach()
    assert float(((h > 0) & (h < 1)).float().mean()) < 0.05
    rl.soft = False
    with torch.no_grad():
        learned = (rl(x) - target).pow(2).mean()
        q = rl.to_quant_linear(1.0)
        rtn_codes = torch.clamp(rl.rtn_codes, q.weight_spec.qmin, q.weight_spec.qmax)
        rtn = (x @ (rtn_codes * rl.w_scale).t() + lin.bias - target).pow(2).mean()
        torch.testing.assert_close(q(x), rl(x))  # the QuantLinear is exactly the hard-rounded layer
    assert learned < rtn


def test_paper_and_code_presets():
    spec = get_method("brecq")
    assert spec.make_config(None).fisher is True
    assert spec.make_config(None, preset="code").fisher is False
    assert spec.make_config(None).iters_w == 20000 and spec.make_config(None).iters_a == 5000
    assert BRECQConfig(epochs=2).iterations(3) == (6, 1)


def test_toy_brecq_learns_act_steps_and_round_trips(tmp_path, toy, toy_calib, toy_images):
    from toy_model import ToyGeometryModel

    qm = quantize_model(toy, "brecq", "w4a4-static", toy_calib, {**FAST, "iters_a": 6, "lr_a": 1e-2})
    rec = qm.stats.layers["frame_blocks.0.attn.qkv"]
    assert rec["weights_iters"] == 4 and rec["acts_iters"] == 6 and 0 <= rec["flipped_vs_rtn"] < 1
    assert rec["act_step"] != rec["act_step_init"]  # the static step was learned from its 'mse' init
    assert float(qm.module.frame_blocks[0].attn.qkv.act_scale) == pytest.approx(rec["act_step"])
    assert qm.stats.wall_time_s > 0 and qm.stats.peak_rss_bytes > 0
    save_quantized(qm, tmp_path / "q")
    back = load_quantized(tmp_path / "q", model=ToyGeometryModel(seed=5))
    sa, sb = qm.module.state_dict(), back.module.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(back.predict(toy_images).tensors()["depth"], qm.predict(toy_images).tensors()["depth"])


def test_toy_brecq_dynamic_ratio_and_fisher(toy, toy_calib):
    qm = quantize_model(toy, "brecq", "w4a8", toy_calib, {"iters_w": 4, "iters_a": 6, "lr_a": 0.05})
    ratios = {m.act_clip_ratio for m in qm.quant_layers().values()}
    assert ratios != {1.0}  # the per-layer multiplier of the dynamic range was learned


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vggt-tiny-synthetic", "pi3-tiny"])
def test_bundled_models_round_trip(tmp_path, name):
    assert_bundled_round_trip(
        tmp_path, name, "brecq", ("w4a16", "w4a8", "w8a8-static"), {"iters_w": 4, "iters_a": 2}
    )
