"""QVGGT: registry listing, quantize / save / reload on vggt-tiny-synthetic(-sinks) and pi3-tiny, the CIC token
(identity when nothing is quantized, exact for a constant in-span shift, never worse on calibration frames), the
task-aware choice on a constructed cross-head case, the token filter, and the mixed-precision plan it makes."""

from __future__ import annotations

import copy

import pytest
import torch
from small_models import assert_bundled_round_trip

from ptq3d.calibration.sets import CalibrationSet, synthetic_pool
from ptq3d.methods import load_quantized, quantize_model, save_quantized
from ptq3d.methods.qvggt import (
    CIC_CHILD,
    attach_cic,
    camera_tokens,
    cross_head_loss,
    fit_cic_token,
    head_losses,
    patch_rows,
    select_candidate,
)
from ptq3d.models import load_model
from ptq3d.models.vggt.pose import unproject_depth_to_world
from ptq3d.quant.plan import PrecisionPlan
from ptq3d.quant.qlinear import QuantLinear

HW = 42  # 3x3 patches: 5 + 9 tokens per frame
FAST = {"task_candidates": 2, "task_scenes": 1, "n_grid": 5, "clip_grid": 10}


def _calib(n: int = 1, frames: int = 2, seed: int = 10) -> CalibrationSet:
    return CalibrationSet(synthetic_pool(n, num_frames=frames, height=HW, width=HW, first_seed=seed), seed=0)


def _images(seed: int = 500) -> torch.Tensor:
    return torch.stack(
        [s.images for s in synthetic_pool(1, num_frames=2, height=HW, width=HW, first_seed=seed)]
    )


@pytest.fixture(scope="module")
def sinks():
    return load_model("vggt-tiny-synthetic-sinks")


def test_ls_methods_lists_qvggt(capsys):
    from ptq3d.harness.cli import main

    assert main(["ls", "methods"]) == 0
    assert "qvggt" in capsys.readouterr().out.split()


def test_vggt_tiny_synthetic_round_trip_with_cic(tmp_path):
    def check(model, qm):
        rec = qm.stats.extra["qvggt"]
        assert rec["cic"]["applied"] and rec["cic"]["mse_after"] <= rec["cic"]["mse_before"]
        assert hasattr(qm.module.camera_head, CIC_CHILD) and rec["task_evals"] > 0
        assert set(rec["special_tokens"].values()) == {5}  # camera + 4 registers filtered in every block
        assert len(qm.quant_layers()) == len(model.quant_sites("aggregator"))

    cfg = {**FAST, "mixed_precision": False}  # the plan has its own tests below (and a save / load there)
    assert_bundled_round_trip(tmp_path, "vggt-tiny-synthetic", "qvggt", ("w4a16",), cfg, check=check)


def test_pi3_tiny_round_trip_registers_filtered_no_cic(tmp_path):
    def check(model, qm):
        rec = qm.stats.extra["qvggt"]
        assert not rec["cic"]["applied"] and "no camera token" in rec["cic"]["reason"]
        assert set(rec["special_tokens"].values()) == {5}  # Pi3's 5 register tokens
        assert not any(CIC_CHILD in n for n, _ in qm.module.named_modules())
        # 4 equal blocks: one at W8 already averages 5 bits, over the default 4.5-bit budget
        assert rec["plan"]["source"] == "none" and "raises no unit" in rec["plan"]["reason"]

    assert_bundled_round_trip(tmp_path, "pi3-tiny", "qvggt", ("w4a8",), FAST, check=check)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vggt-tiny-synthetic-sinks", "pi3-tiny"])
def test_bundled_models_round_trip_more_schemes(tmp_path, name):
    assert_bundled_round_trip(tmp_path, name, "qvggt", ("w4g32a16", "w8a8", "w4a8-static", "w4a4"), None)


# --- camera information compensation ---------------------------------------------------------------------


def test_cic_is_exactly_identity_when_nothing_is_quantized(sinks):
    images = [_images(501)]
    T = camera_tokens(sinks, "camera_head", images)
    token, info = fit_cic_token(T, T, topk=16)
    assert torch.equal(token, torch.zeros_like(token)) and info["mse_after"] == 0.0
    comp = copy.deepcopy(sinks)
    attach_cic(comp.module.camera_head, token)
    a, b = sinks.predict(images[0]).tensors(), comp.predict(images[0]).tensors()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cic_restores_a_constant_camera_token_shift_in_the_pca_span(sinks):
    """A 'quantized' model whose camera token (as the camera head reads it) is off by a constant -v, v in the span
    of the FP camera tokens' principal directions: the CIC token equals v and the poses come back."""
    images = [s.images[None] for s in synthetic_pool(2, num_frames=3, height=HW, width=HW, first_seed=600)]
    T_fp = camera_tokens(sinks, "camera_head", images)
    _, _, Vh = torch.linalg.svd(T_fp - T_fp.mean(0), full_matrices=False)
    v = (Vh[:2].T @ torch.tensor([3.0, -2.0], dtype=torch.float64)).float()
    broken = copy.deepcopy(sinks)

    def shift(_m, _args, out):
        tokens, psi = out
        last = tokens[-1].clone()
        last[:, :, 0] -= v
        return tokens[:-1] + [last], psi

    broken.module.aggregator.register_forward_hook(shift)
    token, info = fit_cic_token(T_fp, camera_tokens(broken, "camera_head", images), topk=4)
    torch.testing.assert_close(token, v, atol=1e-4, rtol=1e-4)
    assert info["mse_after"] < 1e-8 * info["mse_before"]
    ref = sinks.predict(images[0]).raw["pose_enc"]
    before = broken.predict(images[0])
    assert (before.raw["pose_enc"] - ref).abs().max() > 1e-2
    attach_cic(broken.module.camera_head, token)
    after = broken.predict(images[0])
    torch.testing.assert_close(after.raw["pose_enc"], ref, atol=1e-4, rtol=1e-4)
    assert torch.equal(after.depth, before.depth)  # the DPT heads read the aggregator tokens unchanged


def test_cic_never_worse_on_calibration_frames():
    g = torch.Generator().manual_seed(0)
    T_fp = torch.randn(40, 16, generator=g, dtype=torch.float64)
    T_q = T_fp + 0.3 * torch.randn(40, 16, generator=g, dtype=torch.float64) + 0.5
    for k in (1, 4, 16):
        _, info = fit_cic_token(T_fp, T_q, topk=k)
        assert info["mse_after"] <= info["mse_before"] and info["topk"] == k
    _, info1 = fit_cic_token(T_fp, T_q, topk=1)
    _, info16 = fit_cic_token(T_fp, T_q, topk=16)
    assert info16["mse_after"] < info1["mse_after"]  # more directions restore more of the mean shift


# --- task-aware scale search -----------------------------------------------------------------------------


def _vggt_like_outputs(seed: int = 0):
    """FP task outputs of a VGGT-like model whose heads agree up to a small residual: pose encoding, depth and
    points = unproject(depth, pose) + noise."""
    from ptq3d.models.vggt.pose import pose_encoding_to_extri_intri

    g = torch.Generator().manual_seed(seed)
    H = W = 8
    quat = torch.nn.functional.normalize(torch.randn(1, 2, 4, generator=g), dim=-1)
    cam = torch.cat([0.3 * torch.randn(1, 2, 3, generator=g), quat, torch.full((1, 2, 2), 1.0)], -1)
    depth = 1 + 2 * torch.rand(1, 2, H, W, generator=g)
    E, K = pose_encoding_to_extri_intri(cam, (H, W))
    points = unproject_depth_to_world(depth, E, K) + 0.01 * torch.randn(1, 2, H, W, 3, generator=g)
    return {"camera": cam, "depth": depth, "points": points}, (E, K)


def test_task_aware_choice_follows_the_cross_head_term():
    """Two candidates with the same depth error and the same size of point error: A moves the points against the
    depth (the heads disagree), B moves them with it (agreement kept). A reconstructs its layer slightly better,
    so reconstruction alone (or without the cross-head term) picks A; the full objective picks B."""
    fp, (E, K) = _vggt_like_outputs()
    eps = 0.02
    depth = fp["depth"] * (1 + eps)
    moved = unproject_depth_to_world(depth, E, K) - unproject_depth_to_world(fp["depth"], E, K)
    cand_a = {**fp, "depth": depth, "points": fp["points"] - moved}
    cand_b = {**fp, "depth": depth, "points": fp["points"] + moved}
    head = [sum(head_losses(fp, c).values()) / 3 for c in (cand_a, cand_b)]
    geo = [cross_head_loss(fp, c) for c in (cand_a, cand_b)]
    assert head[0] == pytest.approx(head[1], rel=1e-6)
    assert geo[1] < 1e-12 < geo[0]
    rec = [1.0e-3, 1.05e-3]
    assert select_candidate(rec, head, geo)[0] == 1
    assert select_candidate(rec, head, geo, weights=(1.0, 1.0, 0.0))[0] == 0
    assert select_candidate(rec, None, None)[0] == 0
    # Pi3's cameras (camera-to-world [B, S, 12]): its heads agree by construction, no cross-head term
    pi3 = {"camera": torch.zeros(1, 2, 12), "depth": fp["depth"], "points": fp["points"]}
    assert cross_head_loss(pi3, pi3) is None


def test_patch_rows_drop_special_tokens_in_frame_and_global_layouts():
    B, S, P, C, special = 1, 3, 7, 4, 5
    x = torch.arange(B * S * P, dtype=torch.float32).reshape(B, S, P, 1).expand(B, S, P, C)
    frame = patch_rows(x.reshape(B * S, P, C), P, special)
    glob = patch_rows(x.reshape(B, S * P, C), P, special)
    assert torch.equal(frame, glob) and frame.shape == (S * (P - special), C)
    assert set(frame[:, 0].long().tolist()) == {s * P + t for s in range(S) for t in range(special, P)}


def test_static_ranges_exclude_the_massive_special_tokens(sinks):
    """vggt-tiny-synthetic-sinks' camera / register tokens carry +-30 massive channels. With the filter the static
    input range of the first qkv is the patch tokens' max |x|, without it the special tokens' (alpha grid {0}:
    s = 1, so the layer input is the norm output itself)."""
    cfg = {"mixed_precision": False, "task_aware": False, "cic": False, "clip": False, "n_grid": 1}
    calib = _calib()
    on = quantize_model(sinks, "qvggt", "w8a8-static", calib, cfg)
    off = quantize_model(sinks, "qvggt", "w8a8-static", calib, {**cfg, "token_filter": False})
    block, site = "aggregator.frame_blocks.0", "aggregator.frame_blocks.0.attn.qkv"
    seen = []
    h = sinks.module.get_submodule(site).register_forward_pre_hook(lambda _m, a: seen.append(a[0].detach()))
    try:
        sinks.predict(calib.samples[0].images[None])
    finally:
        h.remove()
    x = seen[0]  # [S, P, C]
    patch_max, all_max = float(x[:, 5:].abs().max()), float(x.abs().max())
    assert all_max > 1.5 * patch_max  # 8.0 (the spikes after LayerNorm) against 5.1 on these frames
    assert float(on.quant_layers()[site].act_scale) == pytest.approx(patch_max / 127, rel=1e-5)
    assert float(off.quant_layers()[site].act_scale) == pytest.approx(all_max / 127, rel=1e-5)
    assert on.stats.extra["qvggt"]["special_tokens"][block] == 5
    assert off.stats.extra["qvggt"]["special_tokens"][block] == 0


# --- selective mixed precision ---------------------------------------------------------------------------


def test_plan_keeps_the_most_sensitive_block_at_high_bits(sinks):
    """Make global_blocks.1 fragile (its residual branches x6: its quantization error dominates depth and points):
    the plan QVGGT makes must hold that block at W8 and every other at W4, within the 4.5-bit budget."""
    model = copy.deepcopy(sinks)
    fragile = "aggregator.global_blocks.1"
    blk = model.module.get_submodule(fragile)
    with torch.no_grad():
        blk.ls1.gamma.mul_(6)
        blk.ls2.gamma.mul_(6)
    qm = quantize_model(model, "qvggt", "w4a16", _calib(), {**FAST, "task_aware": False, "cic": False})
    rec = qm.stats.extra["qvggt"]["plan"]
    assert rec["plan"]["blocks"] == {fragile: "w8"}
    rows = {r["unit"]: r for r in rec["sensitivity"]}
    tasks = ("camera", "depth", "points")
    assert all(rows[fragile][t] > rows[u][t] for u in rows if u != fragile for t in ("depth", "points"))
    worst = {u: max(r[t] / max(q[t] for q in rows.values()) for t in tasks) for u, r in rows.items()}
    assert max(worst, key=worst.get) == fragile  # the worst normalised task ranks it first
    for site, q in qm.quant_layers().items():
        assert q.weight_spec.bits == (8 if site.startswith(fragile + ".") else 4), site
    assert qm.manifest["summary"]["effective_weight_bits"] == pytest.approx(4.5)


def test_a_given_plan_is_used_as_is(sinks, tmp_path):
    plan = PrecisionPlan("given", blocks={"aggregator.frame_blocks.0": "w6"})
    qm = quantize_model(sinks, "qvggt", "w4a16", _calib(), {**FAST, "task_aware": False}, plan=plan)
    rec = qm.stats.extra["qvggt"]["plan"]
    assert rec["source"] == "run" and rec["plan"]["name"] == "given" and "sensitivity" not in rec
    bits = {s: q.weight_spec.bits for s, q in qm.quant_layers().items()}
    assert {b for s, b in bits.items() if s.startswith("aggregator.frame_blocks.0.")} == {6}
    assert {b for s, b in bits.items() if not s.startswith("aggregator.frame_blocks.0.")} == {4}
    back = load_quantized(save_quantized(qm, tmp_path / "q"), model=sinks)
    assert isinstance(back.module.aggregator.frame_blocks[0].attn.qkv, QuantLinear)
    assert torch.equal(back.predict(_images()).depth, qm.predict(_images()).depth)
