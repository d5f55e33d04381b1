"""`vggt-tiny-synthetic-sinks`: massive activations on the camera and register tokens make the quant-site inputs
heavy-tailed, with trained-like weight columns. Re-measures the statistics of its model card
(vggt_tiny_synthetic_sinks.json) on a couple of held-out scenes."""

from __future__ import annotations

import json

import pytest
import torch

from ptq3d.harness import train_tiny as tt
from ptq3d.models import list_models, load_model
from ptq3d.models.bundled import BUNDLED_DIR, VGGT_TINY_SYNTHETIC_SINKS_WEIGHTS, vggt_tiny_synthetic_config
from ptq3d.models.bundled.sinks import MassiveConfig, plant_massive_activations
from ptq3d.models.vggt import VGGT

CARD = json.loads((BUNDLED_DIR / "vggt_tiny_synthetic_sinks.json").read_text())
REL_TOL = 0.02  # float32 CPU re-runs agree far closer; this allows another BLAS


@pytest.fixture(scope="module")
def sinks():
    return load_model(tt.SINKS_MODEL)


@pytest.fixture(scope="module")
def token_stats(sinks):
    scenes = tt.heldout_scenes(tt.SINKS_CHECK_SCENES)
    return tt.token_type_statistics(sinks, [s.images[None] for s in scenes])


def test_loads_by_name_with_the_massive_entries(sinks):
    assert VGGT_TINY_SYNTHETIC_SINKS_WEIGHTS.stat().st_size < 10 * 2**20
    assert sinks.load_report.path == str(VGGT_TINY_SYNTHETIC_SINKS_WEIGHTS)
    assert sinks.module.config == vggt_tiny_synthetic_config()
    assert tt.SINKS_MODEL in {r["name"] for r in list_models()}
    massive = MassiveConfig()
    agg = sinks.module.aggregator
    for token in (agg.camera_token, agg.register_token):
        planted = token[..., massive.pick(128)].detach()
        assert torch.equal(planted, massive.values().expand_as(planted))
    # the rest of every special token is of the size of a patch token's entries, far below M
    rest = agg.register_token.detach().clone()
    rest[..., massive.pick(128)] = 0
    assert float(rest.abs().max()) < massive.value / 3


def test_weight_columns_look_trained(sinks):
    ratios = tt.weight_column_norm_ratios(sinks)
    assert len(ratios) == 32
    low = {s: r for s, r in ratios.items() if r < 0.2}
    assert not low, f"sites whose smallest weight column is under 20 % of the median: {low}"
    for site, want in CARD["weights"]["sinks"].items():
        assert ratios[site] == pytest.approx(want, rel=1e-3), site


def test_token_statistics_match_the_model_card(token_stats):
    want = {r["site"]: r for r in CARD["tokens"]["sinks_check"]}
    assert [r["site"] for r in token_stats] == list(want)
    for row in token_stats:
        bad = {k: (v, want[row["site"]][k]) for k, v in row.items()
               if isinstance(v, float) and v != pytest.approx(want[row["site"]][k], rel=REL_TOL)}  # fmt: skip
        assert not bad, f"{row['site']}: (measured, model card) differ: {bad}"


def test_special_tokens_are_heavier_tailed_than_patches(token_stats):
    for row in token_stats:
        if row["layer"] not in ("qkv", "fc1"):  # the LayerNorm outputs: where the massive channels land
            continue
        for typ in ("camera", "register"):
            assert row[f"{typ}_kurtosis"] > 4 * row["patch_kurtosis"], (row["site"], typ)
            assert row[f"{typ}_max_median"] > 4 * row["patch_max_median"], (row["site"], typ)


def test_plant_massive_activations_on_a_fresh_model():
    torch.manual_seed(0)
    model = VGGT(vggt_tiny_synthetic_config())
    cfg = MassiveConfig(channels=3, value=12.0, seed=5)
    rec = plant_massive_activations(model, cfg)
    chs = cfg.pick(128)
    assert rec == {"channels": chs, "values": [12.0, -12.0, 12.0]} and len(set(chs)) == 3
    assert torch.equal(
        model.aggregator.camera_token[0, :, 0][:, chs], torch.tensor([[12.0, -12.0, 12.0]] * 2)
    )
    norm = model.camera_head.token_norm
    both = chs + [128 + c for c in chs]
    assert not norm.weight[both].any() and not norm.bias[both].any()
    assert (norm.weight.detach() != 0).sum() == 256 - 6
