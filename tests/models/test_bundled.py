"""The bundled default model `vggt-tiny-synthetic`: it loads by name, it reproduces the held-out numbers of its
model card, and its outlier-injected variant computes the same function with heavy-tailed quant-site inputs."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from ptq3d.harness import train_tiny as tt
from ptq3d.harness.analysis import activation_statistics, summarize_sites
from ptq3d.methods import quantize_model
from ptq3d.models import list_models, load_model
from ptq3d.models.bundled import BUNDLED_DIR, VGGT_TINY_SYNTHETIC_WEIGHTS, vggt_tiny_synthetic_config
from ptq3d.models.bundled.outliers import OutlierConfig, inject_channel_outliers
from ptq3d.models.vggt import VGGT, VGGTAdapter

CARD = json.loads((BUNDLED_DIR / "vggt_tiny_synthetic.json").read_text())
# tolerances of the re-measured check: the subsampled point metrics and the 4-scene pose AUC are the noisiest
ABS_TOL = {"pose.auc@30": 0.01, "pose.rra@30": 0.01, "pose.rot_err_mean": 0.2}
REL_TOL = 0.02


@pytest.fixture(scope="module")
def bundled():
    return load_model("vggt-tiny-synthetic")


@pytest.fixture(scope="module")
def check_scenes():
    return tt.heldout_scenes(tt.CHECK_SCENES)


def test_loads_by_name_with_its_bundled_weights(bundled):
    assert VGGT_TINY_SYNTHETIC_WEIGHTS.is_file()
    assert VGGT_TINY_SYNTHETIC_WEIGHTS.stat().st_size < 10 * 2**20  # "a few MB"
    rep = bundled.load_report
    assert rep.path == str(VGGT_TINY_SYNTHETIC_WEIGHTS) and rep.loaded == len(bundled.module.state_dict())
    assert all(p.dtype == torch.float32 for p in bundled.module.parameters())  # fp16 on disk, fp32 in memory
    assert bundled.module.config == vggt_tiny_synthetic_config()
    assert "vggt-tiny-synthetic" in {r["name"] for r in list_models()}


def _close(name: str, got: float, want: float) -> bool:
    return abs(got - want) <= ABS_TOL.get(name, REL_TOL * abs(want) + 1e-4)


def test_heldout_check_matches_the_model_card(bundled, check_scenes):
    models = {"fp": bundled, "rtn_w4a4": quantize_model(bundled, "rtn", "w4a4").model}
    got = tt.headline(tt.evaluate(models, check_scenes, trivial=False, alignment=tt.check_policy()))
    for predictor in models:
        want = CARD["check"][predictor]
        bad = {m: (got[predictor][m], v) for m, v in want.items() if not _close(m, got[predictor][m], v)}
        assert not bad, f"{predictor}: (measured, model card) differ: {bad}"


def _angle_to_first_view(extrinsics: torch.Tensor) -> torch.Tensor:
    """extrinsics [S, 3, 4] camera-from-world -> rotation angle (degrees) of every view relative to view 0, [S]."""
    R = extrinsics[:, :, :3].double()
    rel = R @ R[0].T
    cos = ((rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    return torch.rad2deg(torch.arccos(cos))


def test_predicted_poses_follow_the_views(bundled, check_scenes):
    """The camera head reads the images: along the held-out orbit the predicted rotation to the first view grows
    with the true one (a head collapsed to the mean relative pose predicts one angle for every view)."""
    from scipy.stats import spearmanr

    rhos, spreads = [], []
    for scene in check_scenes:
        pred = _angle_to_first_view(bundled.predict(scene.images[None]).extrinsics[0])[1:]
        true = _angle_to_first_view(scene.extrinsics)[1:]
        rhos.append(spearmanr(pred.numpy(), true.numpy()).statistic)
        spreads.append(float(pred.max() - pred.min()))
    assert sum(rhos) / len(rhos) > 0.6 and sum(r > 0.8 for r in rhos) >= 3, (
        rhos
    )  # measured: 0.96 0.25 0.93 0.96
    assert min(spreads) > 20.0, spreads  # degrees between the least and the most rotated view


def test_model_card_numbers_beat_the_trivial_predictors():
    h = CARD["heldout"]
    fp = h["fp"]
    assert CARD["num_scenes"] == 32 and CARD["protocol"] == tt.TINY_HELDOUT_PROTOCOL.name
    assert CARD["protocol_hash"] == tt.TINY_HELDOUT_PROTOCOL.hash
    assert fp["depth.abs_rel"] <= 0.5 * h["mean_depth"]["depth.abs_rel"]
    for metric in ("points.acc", "points.comp", "points.chamfer"):
        assert fp[metric] <= 0.8 * h["plane_points"][metric], metric
    # identical cameras score AUC 0 by construction; the mean-motion oracle is the bar a blind camera head meets
    assert fp["pose.auc@30"] >= 2 * h["identical_cameras"]["pose.auc@30"]
    assert fp["pose.auc@30"] >= 2 * h["mean_motion"]["pose.auc@30"]
    assert fp["pose.rra@30"] >= h["mean_motion"]["pose.rra@30"] + 0.2
    assert fp["pose.rot_err_mean"] <= h["mean_motion"]["pose.rot_err_mean"] - 5


def test_outlier_variant_separates_rtn_from_smoothing_and_rotation():
    o = CARD["outliers"]
    fp = o["fp"]
    assert o["fp_outliers"]["points.chamfer"] == pytest.approx(fp["points.chamfer"], rel=1e-3)
    rtn = o["rtn_w4a4_outliers"]
    assert rtn["points.chamfer"] > 1.15 * fp["points.chamfer"]
    assert rtn["pose.rot_err_mean"] > fp["pose.rot_err_mean"] + 10
    assert rtn["pose.auc@30"] < 0.5 * fp["pose.auc@30"]
    for method in ("smoothquant", "quarot"):
        rec = o[f"{method}_w4a4_outliers"]
        assert rec["points.chamfer"] < 1.02 * fp["points.chamfer"], method
        for metric in ("pose.rot_err_mean", "points.chamfer"):  # recovers at least 90 % of what RTN loses
            recovered = (rtn[metric] - rec[metric]) / (rtn[metric] - fp[metric])
            assert recovered > 0.9, (method, metric, recovered)


def test_readme_quotes_the_model_card():
    text = (BUNDLED_DIR / "README.md").read_text()
    fp = CARD["heldout"]["fp"]
    for m in ("pose.auc@30", "depth.abs_rel", "points.acc"):
        assert f"{fp[m]:.3f}" in text, f"README.md does not quote the model card's {m} = {fp[m]:.3f}"


def test_outlier_injection_keeps_the_function_and_makes_heavy_tails(bundled, check_scenes):
    images = check_scenes[0].images[None, :4]
    variant = copy.deepcopy(bundled)
    record = inject_channel_outliers(variant, OutlierConfig(channels=2, scale=(20.0, 60.0), seed=0))
    assert len(record) == 8 and all(len(c) == 2 for c in record.values())
    a, b = bundled.predict(images), variant.predict(images)
    for name in ("depth", "world_points", "extrinsics"):
        x, y = getattr(a, name), getattr(b, name)
        assert torch.allclose(x, y, rtol=1e-3, atol=1e-4), name
    before = summarize_sites(activation_statistics(bundled, [images])[0])
    after = summarize_sites(activation_statistics(variant, [images])[0])
    for layer in ("qkv", "fc1", "proj"):
        assert after[layer]["channel_max_median_median"] > 5 * before[layer]["channel_max_median_median"]
        assert after[layer]["kurtosis_median"] > 5 * before[layer]["kurtosis_median"]
    assert after["fc2"]["kurtosis_median"] == pytest.approx(before["fc2"]["kurtosis_median"], rel=0.05)


def test_outlier_injection_on_a_random_model_is_exact_up_to_rounding():
    torch.manual_seed(0)
    model = VGGTAdapter(VGGT(vggt_tiny_synthetic_config())).eval()
    variant = copy.deepcopy(model)
    inject_channel_outliers(variant, OutlierConfig(channels=3, scale=(50.0, 100.0), seed=1))
    x = torch.rand(1, 2, 3, 112, 112)
    ta, tb = model.aggregated_tokens(x), variant.aggregated_tokens(x)
    assert all(torch.allclose(p, q, rtol=1e-4, atol=1e-4) for p, q in zip(ta, tb, strict=True))
    assert not torch.equal(model.module.aggregator.frame_blocks[0].norm1.weight,
                           variant.module.aggregator.frame_blocks[0].norm1.weight)  # fmt: skip


def test_registered_outlier_variant_is_the_injected_bundled_model(bundled, check_scenes):
    """`vggt-tiny-synthetic-outliers` (the default benchmark's model) = bundled weights + the default injection."""
    variant = load_model("vggt-tiny-synthetic-outliers")
    expected = copy.deepcopy(bundled)
    inject_channel_outliers(expected, OutlierConfig())
    got, want = variant.module.state_dict(), expected.module.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    images = check_scenes[0].images[None, :4]
    assert torch.allclose(variant.predict(images).depth, bundled.predict(images).depth, rtol=1e-3, atol=1e-4)
