"""FlatQuant: Kronecker algebra, exact invertibility of the learnable transforms (FP output unchanged before
quantizing, also after folding into LayerNorm), the straight-through quantizers against the core ones, and the
method end to end on a small seeded-random VGGT."""

from __future__ import annotations

import pytest
import small_models
import torch
from torch import nn

from ptq3d.calibration.blockwise import replace_module
from ptq3d.calibration.sets import CalibrationSet, synthetic_pool
from ptq3d.errors import ConfigError
from ptq3d.methods.api import quantize_model
from ptq3d.methods.flatquant import (
    FlatQuantConfig,
    KroneckerTransform,
    build_block_transforms,
    fake_quant_ste,
    kron_apply,
    kron_factors,
    materialize_linear,
)
from ptq3d.quant.qlinear import QuantLinear
from ptq3d.quant.spec import QuantSpec, fake_quantize, get_scheme, sqnr_db


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return small_models.visible_branch_vggt()


@pytest.fixture(scope="module")
def calib():
    return CalibrationSet(synthetic_pool(3, num_frames=2, height=56, width=56), builder="random", seed=0)


def _block_io(model, calib, index=0):
    blk = model.blocks()[index]
    x, c = model.capture_block_input(calib.samples[0].images.unsqueeze(0))
    for b in model.blocks()[:index]:
        with torch.no_grad():
            x = b.forward(x, c)
    return blk, x, c


def _randomise(bt, g):
    """Non-trivial transforms: random singular values and diag scales."""
    with torch.no_grad():
        for t in bt.transforms():
            t.left.sigma.copy_(torch.rand(t.left.n, generator=g) * 1.5 + 0.5)
            t.right.sigma.copy_(torch.rand(t.right.n, generator=g) * 1.5 + 0.5)
            if t.diag_scale is not None:
                t.diag_scale.mul_(torch.rand(t.n, generator=g) * 1.5 + 0.5)


def test_kron_factors():
    assert kron_factors(1024) == (32, 32)
    assert kron_factors(4096) == (64, 64)
    assert kron_factors(128) == (8, 16)
    assert kron_factors(384) == (16, 24)
    assert kron_factors(13) == (1, 13)


def test_kron_apply_is_right_multiplication_by_kron():
    g = torch.Generator().manual_seed(0)
    L, R = torch.randn(4, 4, generator=g), torch.randn(6, 6, generator=g)
    x = torch.randn(5, 3, 24, generator=g)
    torch.testing.assert_close(kron_apply(x, L, R), x @ torch.kron(L, R), rtol=1e-5, atol=1e-5)


def test_kronecker_transform_inverse_and_config():
    g = torch.Generator().manual_seed(1)
    L, R = (
        torch.randn(4, 4, generator=g) + 3 * torch.eye(4),
        torch.randn(8, 8, generator=g) + 3 * torch.eye(8),
    )
    d = torch.rand(32, generator=g) + 0.5
    t = KroneckerTransform(L, R, d)
    W, x = torch.randn(10, 32, generator=g), torch.randn(7, 32, generator=g)
    torch.testing.assert_close(t(x) @ t.transform_weight(W).T, x @ W.T, rtol=1e-4, atol=1e-4)
    e = KroneckerTransform.empty(t.config())
    e.load_state_dict(t.state_dict())
    torch.testing.assert_close(e(x), t(x))
    assert t.config() == {"kind": "kronecker", "n": 32, "left": 4, "right": 8, "diag": True}


@pytest.mark.parametrize("index", [0, 1])  # a frame and a global block
def test_transforms_exactly_invertible_in_fp(model, calib, index):
    """Acceptance: with quantization off, the transformed block reproduces the FP block to 1e-5, both with the
    trainable wrappers (v-fold active) and after materialising (diag folded into norm1/norm2, fc2 online)."""
    m = model
    blk, x, c = _block_io(m, calib, index)
    module = blk.module
    saved = {k: v.clone() for k, v in module.state_dict().items()}
    with torch.no_grad():
        ref = blk.forward(x, c)
    lins = {n: mod for n, mod in module.named_modules() if isinstance(mod, nn.Linear)}
    g = torch.Generator().manual_seed(5)
    amax = {k: torch.rand(v.in_features, generator=g) * 4 + 0.1 for k, v in lins.items()}
    bt = build_block_transforms(module, lins, get_scheme("w4a4"), FlatQuantConfig(), amax, g)
    try:
        assert bt.wrappers["attn.qkv"].v_fold is not None
        assert bt.fold_norm["attn.qkv"] is module.norm1 and bt.fold_norm["mlp.fc2"] is None
        _randomise(bt, g)
        bt.set_quantize(False)
        with torch.no_grad():
            out = blk.forward(x, c)
        torch.testing.assert_close(out - x, ref - x, rtol=0, atol=1e-5)
        bt.set_quantize(True)
        with torch.no_grad():
            outq = blk.forward(x, c)
        assert (outq - ref).abs().max() > 1e-3  # quantization does change it: the check above is not vacuous
        # materialised FP view: norms folded, online Kronecker transforms, transformed weights
        for rel, w in bt.wrappers.items():
            layer, _, _ = materialize_linear(w, bt.fold_norm[rel], quantize_weights=False)
            replace_module(module, rel, layer)
        assert not torch.equal(module.norm1.weight, saved["norm1.weight"])
        with torch.no_grad():
            out2 = blk.forward(x, c)
        torch.testing.assert_close(out2 - x, ref - x, rtol=0, atol=1e-5)
    finally:
        for rel, lin in lins.items():
            replace_module(module, rel, lin)
        module.load_state_dict(saved)


@pytest.mark.parametrize(
    "spec",
    [
        QuantSpec(4, "token", True, dynamic=True),
        QuantSpec(4, "channel", True),
        QuantSpec(4, "channel", False),
        QuantSpec(4, "group", True, group_size=8),
        QuantSpec(8, "tensor", True),
    ],
)
def test_fake_quant_ste_matches_core_quantizer(spec):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 32, generator=g) * 3
    clip = 0.8
    ours = fake_quant_ste(x, spec, clip)
    ref = fake_quantize(x, spec, clip_ratio=clip)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    xr = x.clone().requires_grad_(True)
    cr = torch.full((6, 1), 0.8, requires_grad=True)
    fake_quant_ste(xr, spec, cr).pow(2).sum().backward()
    assert torch.isfinite(xr.grad).all() and xr.grad.abs().sum() > 0
    assert cr.grad is not None and torch.isfinite(cr.grad).all()


def test_materialised_layers_match_training_forward(model, calib):
    """What is trained is what is deployed: the wrapper's quantized forward and the materialised QuantLinear
    (LWC clip, LAC ratio, folded norm) agree, up to rare rounding ties between float32 and float64 weights."""
    blk, x, c = _block_io(model, calib, 1)
    module = blk.module
    saved = {k: v.clone() for k, v in module.state_dict().items()}
    lins = {n: mod for n, mod in module.named_modules() if isinstance(mod, nn.Linear)}
    g = torch.Generator().manual_seed(7)
    bt = build_block_transforms(module, lins, get_scheme("w4a4"), FlatQuantConfig(), None, g)
    try:
        _randomise(bt, g)
        with torch.no_grad():
            for w in bt.wrappers.values():
                w.lwc.normal_(1.0, 0.5, generator=g)
                w.lac.fill_(1.5)
            train_out = blk.forward(x, c)
        for rel, w in bt.wrappers.items():
            layer, _, _ = materialize_linear(w, bt.fold_norm[rel])
            assert isinstance(layer, QuantLinear) and isinstance(layer.input_transform, KroneckerTransform)
            assert abs(layer.act_clip_ratio - torch.sigmoid(torch.tensor(1.5)).item()) < 1e-6
            replace_module(module, rel, layer)
        with torch.no_grad():
            deployed = blk.forward(x, c)
        assert sqnr_db(train_out - x, deployed - x) > 35
    finally:
        for rel, lin in lins.items():
            replace_module(module, rel, lin)
        module.load_state_dict(saved)


def test_flatquant_method_end_to_end(model, calib):
    qm = quantize_model(model, "flatquant", "w4a4", calib, {"epochs": 3})
    layers = qm.quant_layers()
    assert len(layers) == len(model.quant_sites())
    assert all(isinstance(q.input_transform, KroneckerTransform) for q in layers.values())
    qkv = layers["aggregator.frame_blocks.0.attn.qkv"]
    assert qkv.input_transform.diag is None  # folded into norm1
    assert layers["aggregator.frame_blocks.0.mlp.fc2"].input_transform.diag is not None  # online (after GELU)
    proj = layers["aggregator.frame_blocks.0.attn.proj"].input_transform
    torch.testing.assert_close(proj.right, torch.eye(16))  # head-dim factor folded into v
    n1 = qm.module.aggregator.frame_blocks[0].norm1.weight
    assert not torch.allclose(n1, model.module.aggregator.frame_blocks[0].norm1.weight)
    recs = qm.stats.blocks
    assert len(recs) == 4 and all(r["flatquant_steps"] == 3 * 2 for r in recs)
    # training lowers the block reconstruction loss on the calibration data in most blocks
    better = sum(r["flatquant_loss_final"] < r["flatquant_loss_init"] for r in recs)
    assert better >= 3, recs
    # and the model still predicts
    pred = qm.predict(calib.samples[0].images.unsqueeze(0))
    assert torch.isfinite(pred.depth).all()


def test_flatquant_bad_config(model, calib):
    with pytest.raises(ConfigError, match="epochs"):
        quantize_model(model, "flatquant", "w4a4", calib, {"epochs": -1})
    with pytest.raises(ConfigError, match="calibration"):
        quantize_model(model, "flatquant", "w4a4", None)


def test_flatquant_emulated_backend_matches_fake(model, calib):
    qm = quantize_model(model, "flatquant", "w4a8", calib, {"epochs": 0})
    images = calib.samples[1].images.unsqueeze(0)
    fake = qm.predict(images).depth
    try:
        qm.set_backend("emulated")
        emu = qm.predict(images).depth
    finally:
        qm.set_backend("fake")
    assert sqnr_db(fake, emu) > 30


def test_flatquant_save_load_roundtrip(model, calib, tmp_path):
    from ptq3d.methods.api import load_quantized, save_quantized

    qm = quantize_model(model, "flatquant", "w4a4", calib, {"epochs": 1})
    d = save_quantized(qm, tmp_path / "fq")
    back = load_quantized(d, model=model)  # the online KroneckerTransforms are rebuilt by kind
    assert isinstance(
        back.quant_layers()["aggregator.global_blocks.1.mlp.fc2"].input_transform, KroneckerTransform
    )
    images = calib.samples[0].images.unsqueeze(0)
    assert torch.equal(back.predict(images).depth, qm.predict(images).depth)
