"""Issue 17.3: each method against a transcription of its reference's behaviour on small tensors (LWC clamp,
FlatQuant's normalised loss and schedule, GPTQ's range rule, SmoothQuant's folded-only default and alpha search,
QuaRot's residual rotation and weight clipping), the presets (17.2) and the effective format (17.4)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import small_models
import torch
from safetensors.torch import load_file
from torch import nn

from ptq3d.calibration.sets import CalibrationSet
from ptq3d.datasets.synthetic import generate_scene
from ptq3d.errors import UserError
from ptq3d.methods import get_method, load_quantized, quantize_model, save_quantized
from ptq3d.methods.flatquant import (
    AffineTransform,
    BlockTransforms,
    FlatQuantConfig,
    FlatQuantLinear,
    fake_quant_ste,
    train_block,
)
from ptq3d.methods.gptq import GPTQConfig, HessianAccumulator, gptq_linear
from ptq3d.methods.quantvggt import lwc_clip
from ptq3d.methods.quarot import (
    ResidualRotation,
    apply_residual_rotation,
    ones_fixing_rotation,
    rotate_block_residual,
)
from ptq3d.models import load_model
from ptq3d.quant.spec import QuantSpec, Scheme, dequantize, get_scheme, mse_clip_qparams, quantize

W = torch.tensor([[-1.0, -0.6, 0.2, 0.5, 0.9]])
W4 = QuantSpec(4, "channel")


def _logit(p: float) -> torch.Tensor:
    return torch.tensor([[math.log(p / (1 - p))]])


def _clamp_then_quantize(w, lo, hi, bits):
    """Transcription of QuantVGGT's / FlatQuant's LWC weight quantizer (symmetric): the range is
    [s_min * min, s_max * max]; scale = max(|lo|, hi) / (2^(b-1) - 1); w is clamped to the range, rounded,
    clamped to the grid and dequantized."""
    scale = max(-lo, hi) / (2 ** (bits - 1) - 1)
    q = torch.clamp(torch.round(torch.clamp(w, lo, hi) / scale), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return q * scale


# --- learnable weight clipping ---------------------------------------------------------------------------


def test_lwc_clamps_before_quantizing_as_the_reference():
    w_c, scale, zero = lwc_clip(W, W4, _logit(0.9), _logit(0.5), "absmax")
    ours = dequantize(quantize(w_c, scale, zero, W4), scale, zero)
    ref = _clamp_then_quantize(W, -0.5, 0.81, 4)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    # the numbers, to two decimals
    assert [round(v, 2) for v in ours[0].tolist()] == [-0.46, -0.46, 0.23, 0.46, 0.81]
    # without the clamp (the old behaviour) -1 and -0.6 would keep their magnitude: not what the code does
    assert ours[0, 0] > -0.5


def test_lwc_gradient_reaches_both_factors():
    g_max, g_min = _logit(0.9).requires_grad_(), _logit(0.5).requires_grad_()
    w_c, scale, zero = lwc_clip(W, W4, g_max, g_min, "absmax")
    w_c.sum().backward()
    assert g_min.grad is not None and float(g_min.grad.abs()) > 0  # the lower factor matters now
    assert g_max.grad is not None and float(g_max.grad.abs()) > 0


def test_flatquant_lwc_clamps_in_training_forward():
    clip = torch.tensor([[0.5]])
    out = fake_quant_ste(W, W4, clip, clamp=True)
    ref = _clamp_then_quantize(W, -0.5, 0.45, 4)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    assert not torch.allclose(fake_quant_ste(W, W4, clip, clamp=False), ref)


# --- FlatQuant: normalised loss, weight decay, fixed order -----------------------------------------------


class _Block:
    def __init__(self, layer):
        self.layer = layer
        self.order: list[int] = []

    def forward(self, x, c):
        self.order.append(c)
        return self.layer(x)


class _BD:
    """The part of BlockData that train_block reads."""

    def __init__(self, layer, n=3):
        g = torch.Generator().manual_seed(0)
        self.inputs = [torch.randn(1, 5, 8, generator=g) for _ in range(n)]
        self.contexts = list(range(n))
        self.fp_outputs = [torch.randn(1, 5, 4, generator=g) for _ in range(n)]
        self.block = _Block(layer)

    def run(self):
        return [self.block.layer(x) for x in self.inputs]


def test_flatquant_defaults_follow_the_references():
    cfg = FlatQuantConfig()
    assert cfg.normalize_loss and cfg.weight_decay == 0.01 and not cfg.shuffle


def test_flatquant_step_uses_loss_over_detached_loss(monkeypatch):
    """Transcription of FlatQuant's / FGQ's step: loss = mse(out, target); (loss / loss.detach()).backward();
    AdamW(weight_decay=0.01); samples in their stored order."""
    torch.manual_seed(0)
    cfg = FlatQuantConfig(epochs=1, batch_size=1, lwc=True, lac=False, diag=False)
    lin = nn.Linear(8, 4)
    scheme = get_scheme("w4a16")
    layer = FlatQuantLinear(
        lin, AffineTransform((2, 4), False, torch.Generator().manual_seed(0)), scheme, cfg, None
    )
    bt = BlockTransforms({"fc": layer}, {"fc": None}, {"fc": lin})
    bd = _BD(layer)
    # the reference gradient of the first step, on a copy
    ref_layer = copy.deepcopy(layer)
    loss = ((ref_layer(bd.inputs[0]) - bd.fp_outputs[0]) ** 2).mean()
    (loss / loss.detach()).backward()
    ref_grad = ref_layer.lwc.grad.clone()
    seen = {}
    real_step = torch.optim.AdamW.step

    def spy(opt, *a, **k):
        if "grad" not in seen:
            seen["grad"] = layer.lwc.grad.clone()
            seen["wd"] = [g["weight_decay"] for g in opt.param_groups]
        return real_step(opt, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    train_block(bd, bt, cfg)
    torch.testing.assert_close(seen["grad"], ref_grad)
    assert seen["wd"] == [0.01, 0.01]
    assert bd.block.order == [0, 1, 2]  # fixed order
    bd2 = _BD(copy.deepcopy(ref_layer), n=6)
    train_block(
        bd2,
        BlockTransforms({"fc": bd2.block.layer}, {"fc": None}, {"fc": lin}),
        FlatQuantConfig(epochs=1, batch_size=1, lwc=True, lac=False, diag=False, shuffle=True),
    )
    assert sorted(bd2.block.order) == list(range(6)) and bd2.block.order != list(range(6))


# --- GPTQ: the reference's range rule by default ------------------------------------------------------


def test_gptq_default_rule_reproduces_the_golden(reference_dir):
    meta = json.loads((reference_dir / "gptq.json").read_text())
    t = load_file(str(reference_dir / "gptq.safetensors"))
    Wt, X = t["W"].float(), t["X"].float()
    acc = HessianAccumulator(X.shape[1])
    for chunk in X.chunk(16):
        acc.add_batch(chunk.unsqueeze(0))
    lin = nn.Linear(Wt.shape[1], Wt.shape[0], bias=False)
    lin.weight.data.copy_(Wt)
    cfg = GPTQConfig()
    assert cfg.sym_rule == "range" and meta["fasterquant_args"]["percdamp"] == cfg.percdamp
    ql, _ = gptq_linear(lin, acc.H, Scheme("w4a16", QuantSpec(4, "channel"), None), cfg)
    assert torch.equal(ql.qweight.long() + 8, t["act0_g-1.codes"].long())
    # the other rule is still available and different
    ql_abs, _ = gptq_linear(
        lin, acc.H, Scheme("w4a16", QuantSpec(4, "channel"), None), GPTQConfig(sym_rule="absmax")
    )
    assert not torch.equal(ql_abs.weight_scale, ql.weight_scale)


# --- SmoothQuant ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vggt():
    return small_models.small_vggt(0, init_values=0.5)


@pytest.fixture(scope="module")
def calib():
    return CalibrationSet([generate_scene(s, num_frames=3, height=56, width=56) for s in range(2)])


def test_smoothquant_default_smooths_only_the_norm_fed_linears(vggt, calib):
    qm = quantize_model(vggt, "smoothquant", "w8a8", calib, {"alpha": 0.5})
    for site, q in qm.quant_layers().items():
        assert q.input_transform is None, site  # no online smoothing anywhere
        how = qm.stats.layers[site]["smoothing"]
        assert how.startswith("folded:") if site.endswith(("attn.qkv", "mlp.fc1")) else how == "none"


def test_smoothquant_alpha_search_picks_from_the_candidates(vggt, calib):
    qm = quantize_model(vggt, "smoothquant", "w8a8", calib, {"alpha": [0.2, 0.8]})
    chosen = {r["alpha"] for r in qm.stats.layers.values() if "alpha" in r}
    assert chosen and chosen <= {0.2, 0.8}
    assert get_method("smoothquant").make_config().alphas() == [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]  # paper
    assert get_method("smoothquant").make_config(preset="code").alphas() == [0.5]
    with pytest.raises(UserError, match="alpha"):
        quantize_model(vggt, "smoothquant", "w8a8", calib, {"alpha": "best"})
    with pytest.raises(UserError, match="alpha"):
        quantize_model(vggt, "smoothquant", "w8a8", calib, {"alpha": [0.5, 1.5]})


def test_smoothquant_search_equals_fixed_alpha_when_one_candidate_wins(vggt, calib):
    # with one candidate the search is the fixed-alpha run, bit for bit
    a = quantize_model(vggt, "smoothquant", "w8a8", calib, {"alpha": [0.6]})
    b = quantize_model(vggt, "smoothquant", "w8a8", calib, {"alpha": 0.6})
    for (n, qa), qb in zip(a.quant_layers().items(), b.quant_layers().values(), strict=True):
        assert torch.equal(qa.qweight, qb.qweight), n


# --- QuaRot -------------------------------------------------------------------------------------------


def test_ones_fixing_rotation_is_orthogonal_and_keeps_the_mean():
    for n in (64, 384):
        Q = ones_fixing_rotation(n, seed=3)
        torch.testing.assert_close(Q @ Q.T, torch.eye(n, dtype=Q.dtype), rtol=0, atol=1e-12)
        torch.testing.assert_close(Q @ torch.ones(n, dtype=Q.dtype), torch.ones(n, dtype=Q.dtype))
        x = torch.randn(5, n, dtype=torch.float64) + 2.0
        ln = nn.functional.layer_norm
        torch.testing.assert_close(ln(x @ Q, (n,)), ln(x, (n,)) @ Q)  # LayerNorm commutes with Q


def _blocks(name):
    m = load_model(name)
    return [(b.name, b.module) for b in m.blocks("all")]


@pytest.mark.parametrize("model_name", ["vggt-tiny", "pi3-tiny"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_residual_rotation_is_function_preserving_on_blocks(model_name, dtype, tol):
    torch.manual_seed(0)
    blocks = _blocks(model_name)
    for name, block in blocks[:2] + blocks[-1:]:
        blk = copy.deepcopy(block).to(dtype)
        C = blk.attn.qkv.in_features
        with torch.no_grad():  # non-trivial LayerNorm affine and LayerScale, so the fusion is exercised
            for n in ("norm1", "norm2"):
                getattr(blk, n).weight.mul_(torch.rand(C, dtype=dtype) + 0.5)
                getattr(blk, n).bias.add_(0.1 * torch.randn(C, dtype=dtype))
        x = 3 * torch.randn(2, 6, C, dtype=dtype) + 1.0
        pos = torch.randint(0, 4, (2, 6, 2)) if getattr(blk.attn, "rope", None) is not None else None
        with torch.no_grad():
            ref = blk(x, pos=pos)
            Q = ones_fixing_rotation(C, seed=1).to(dtype)
            rotate_block_residual(blk, Q)
            assert float((blk.norm1.weight - 1).abs().max()) == 0 and float(blk.norm1.bias.abs().max()) == 0
            ResidualRotation(Q).attach(blk)
            out = blk(x, pos=pos)
        err = float((out - ref).abs().max() / ref.abs().max())
        assert err < tol, (model_name, name, err)


def test_residual_rotation_whole_model_and_save_load(tmp_path, calib):
    model = small_models.small_vggt(0, init_values=0.5)
    images = calib.samples[0].images[None]
    rotated = copy.deepcopy(model)
    names = apply_residual_rotation(rotated, "all", seed=0)
    assert len(names) == len(model.blocks("all"))
    with torch.no_grad():
        torch.testing.assert_close(
            rotated.predict(images).depth, model.predict(images).depth, rtol=1e-4, atol=1e-5
        )
    qm = quantize_model(model, "quarot", "w8a8", calib, {"weight_method": "rtn"})
    assert any(e.startswith("residual-stream rotation") for e in qm.manifest["effective_format"]["extras"])
    for site, q in qm.quant_layers().items():  # online Hadamards only where the stream is not the input
        assert (q.input_transform is not None) == site.endswith(("attn.proj", "mlp.fc2")), site
    save_quantized(qm, tmp_path / "q")
    back = load_quantized(tmp_path / "q", model=model)
    with torch.no_grad():
        assert torch.equal(back.predict(images).depth, qm.predict(images).depth)


def test_quarot_weight_clipping_is_the_mse_search_on_rotated_weights(vggt):
    assert get_method("quarot").make_config().mse_clip  # paper recipe (--w_clip)
    assert not get_method("quarot").make_config(preset="code").mse_clip
    qm = quantize_model(vggt, "quarot", "w4a16", None, {"weight_method": "rtn", "rotation": "per_linear"})
    site, q = next(iter(qm.quant_layers().items()))
    lin = vggt.module.get_submodule(site)
    wr = q.input_transform.transform_weight(lin.weight.detach().float())
    scale, _ = mse_clip_qparams(wr, QuantSpec(4, "channel"))
    torch.testing.assert_close(q.weight_scale, scale)
    assert bool((scale < wr.abs().amax(dim=1, keepdim=True) / 7 - 1e-7).any())  # some rows were clipped


# --- presets and the effective format ---------------------------------------------------------------------


def test_presets_apply_before_explicit_keys():
    spec = get_method("quantvggt")
    code = spec.make_config(preset="code")
    assert (code.lr_smooth, code.smooth_weight, code.act_stat, code.ema_global) == (
        1e-3,
        "unrotated",
        "ema",
        "all_tokens",
    )
    assert spec.make_config({"lr_smooth": 0.5}, preset="code").lr_smooth == 0.5
    assert spec.make_config().lr_smooth == 5e-3
    assert spec.calibration_defaults("paper")["num_scenes"] == 40
    assert spec.calibration_defaults("code")["builder_options"]["filter"] == "iqr"
    assert get_method("taptq").calibration_defaults()["scope"] == "all"
    assert get_method("taptq").make_config(preset="code").w_solver == "exhaustive"
    with pytest.raises(UserError, match="known: code, paper"):
        spec.make_config(preset="author")
    with pytest.raises(UserError, match="known: paper"):
        get_method("rtn").make_config(preset="code")


def test_effective_format_records_what_the_layers_do(vggt, calib):
    rtn = quantize_model(vggt, "rtn", "w4a8", None)
    ef = rtn.manifest["effective_format"]
    assert (ef["weight"], ef["act"], ef["short"]) == (
        "per-channel",
        "dynamic per-token",
        "W4 per-channel / A8 dynamic per-token",
    )
    static = quantize_model(vggt, "rtn", "w4a8", calib, {"act_static": True}).manifest["effective_format"]
    assert static["act"] == "static per-tensor"
    assert rtn.manifest["preset"] == "paper"


# --- QuantVGGT's EMA statistic and TAPTQ's code preset ----------------------------------------------------


def test_quantvggt_ema_global_statistic_changes_only_global_blocks(vggt, calib):
    base = {"variant": "scale", "learn": False, "act_stat": "ema"}
    paper = quantize_model(
        vggt, "quantvggt", "w8a8", calib, {**base, "ema_global": "frame_mean"}
    ).stats.layers
    code = quantize_model(vggt, "quantvggt", "w8a8", calib, {**base, "ema_global": "all_tokens"}).stats.layers
    for site in paper:
        same = paper[site]["smooth_max"] == code[site]["smooth_max"]
        # max over all S*P tokens >= mean of per-frame maxima, so the code's statistic differs in global blocks
        assert same == (".frame_blocks." in site), site


def test_taptq_code_objective_is_the_scale_aligned_point_map_loss(calib):
    from ptq3d.methods.fgq import normalised_gt
    from ptq3d.methods.taptq import gt_points_loss

    s = calib.samples[0]
    gt = normalised_gt(s, tuple(s.images.shape[-2:]))
    pts = (3.0 * gt["points"])[None].requires_grad_()  # right up to scale: zero loss
    assert float(gt_points_loss(pts.detach(), s)) < 1e-5
    noisy = pts + 0.05 * torch.randn_like(pts)
    loss = gt_points_loss(noisy, s)
    loss.backward()
    assert float(loss.detach()) > 1e-3 and float(pts.grad.abs().sum()) > 0


def test_taptq_code_preset_runs_with_its_objective(vggt, calib):
    qm = quantize_model(vggt, "taptq", "w4a8", calib, {"eq_n": 12}, scope="all", preset="code")
    cfg = qm.config
    assert (cfg.metric, cfg.hessian_loss, cfg.w_solver, cfg.ternary_variant) == (
        "hessian",
        "points",
        "exhaustive",
        "code",
    )
    assert qm.manifest["preset"] == "code"
    ef = qm.manifest["effective_format"]
    assert (ef["weight"], ef["act"]) == ("per-tensor", "static per-tensor")
    assert any(e.startswith("twin post-GELU") for e in ef["extras"])
