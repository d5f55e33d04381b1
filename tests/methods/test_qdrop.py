"""QDrop: the empirical drop rate of activation quantization (in the layers and at the block input), the
joint reconstruction reusing BRECQ's pieces, no dropping at inference, and quantize / save / reload."""

from __future__ import annotations

import pytest
import torch
from small_models import assert_bundled_round_trip
from torch import nn

from ptq3d.errors import ConfigError
from ptq3d.methods import get_method, load_quantized, quantize_model, save_quantized
from ptq3d.methods.brecq import RoundingLinear, _sample_input
from ptq3d.methods.qdrop import QDropConfig
from ptq3d.quant.spec import get_scheme


def test_layer_drop_rate_is_half():
    torch.manual_seed(0)
    lin = nn.Linear(32, 8)
    rl = RoundingLinear(lin, get_scheme("w8a4"), QDropConfig())
    rl.quant_act, rl.drop_prob = True, 0.5
    x = torch.randn(4096, 32)
    with torch.no_grad():
        rl.drop_prob = 0.0
        xq = rl.quantize_act(x)
        rl.drop_prob = 0.5
        mixed = rl.quantize_act(x)
    changed = xq != x  # elements where quantization makes a difference
    assert changed.float().mean() > 0.9
    kept_fp = (mixed[changed] == x[changed]).float().mean().item()
    assert kept_fp == pytest.approx(0.5, abs=0.01)
    assert bool(((mixed == x) | (mixed == xq)).all())  # every element is either FP or quantized
    rl.drop_prob = 0.0
    assert torch.equal(rl.quantize_act(x), xq)  # no dropping once the pass is over


def test_block_input_mix_rate():
    class _BD:
        inputs = [torch.zeros(1, 2, 50, 64)]

    fp = [torch.ones(1, 2, 50, 64)]
    gen = torch.Generator().manual_seed(0)
    mixed = _sample_input(_BD(), 0, fp, 0.5, gen)
    assert mixed.mean().item() == pytest.approx(0.5, abs=0.02)
    assert torch.equal(_sample_input(_BD(), 0, fp, 0.0, gen), _BD.inputs[0])


def test_config():
    cfg = get_method("qdrop").make_config(None)
    assert isinstance(cfg, QDropConfig) and cfg.drop_prob == 0.5 and cfg.iters_w == 20000 and not cfg.fisher
    with pytest.raises(ConfigError, match="drop_prob=1.5"):
        QDropConfig(drop_prob=1.5).check()


def test_toy_qdrop_round_trips(tmp_path, toy, toy_calib, toy_images):
    from toy_model import ToyGeometryModel

    qm = quantize_model(toy, "qdrop", "w4a4", toy_calib, {"iters_w": 4, "lr_a": 0.05})
    rec = qm.stats.layers["frame_blocks.0.mlp.fc1"]
    assert rec["weights_iters"] == 4 and "acts_iters" not in rec  # one joint pass
    assert rec["act_ratio"] != 1.0  # activation range learned jointly with the rounding
    assert qm.stats.wall_time_s > 0
    save_quantized(qm, tmp_path / "q")
    back = load_quantized(tmp_path / "q", model=ToyGeometryModel(seed=3))
    sa, sb = qm.module.state_dict(), back.module.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    # inference is deterministic: no random dropping left in the quantized model
    a, b = qm.predict(toy_images).tensors()["depth"], qm.predict(toy_images).tensors()["depth"]
    assert torch.equal(a, b) and torch.equal(a, back.predict(toy_images).tensors()["depth"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vggt-tiny-synthetic", "pi3-tiny"])
def test_bundled_models_round_trip(tmp_path, name):
    assert_bundled_round_trip(tmp_path, name, "qdrop", ("w4a8", "w4a4-static"), {"iters_w": 4})
