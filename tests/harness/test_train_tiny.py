"""Training of the bundled tiny VGGT (ptq3d.harness.train_tiny), the `ptq3d train-tiny` command and the
activation statistics (ptq3d.harness.analysis). Small pools and a few steps keep each test to seconds."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ptq3d.datasets.synthetic import HELDOUT_SEEDS, generate_scene
from ptq3d.errors import ConfigError
from ptq3d.harness import train_tiny as tt
from ptq3d.harness.analysis import _Accumulator, activation_statistics, markdown_tables, summarize_sites
from ptq3d.harness.cli import main
from ptq3d.models import load_model
from ptq3d.models.bundled import vggt_tiny_synthetic_config
from ptq3d.models.vggt import VGGT, VGGTAdapter
from ptq3d.models.vggt.pose import pose_encoding_to_extri_intri

SMALL = dict(pool_scenes=3, pool_frames=4, frames=(2, 3), frames_per_step=4, log_every=1, warmup_steps=1)


@pytest.fixture(scope="module")
def scene():
    return generate_scene(5, num_frames=4, height=112, width=112)


def test_normalisation_is_vggt_first_camera_frame(scene):
    gt = tt.first_camera_normalisation(scene.depth[None], scene.intrinsics[None], scene.extrinsics[None])
    valid = gt["valid"][0]
    # world = first camera, lengths divided by the mean distance of the valid points to it
    assert torch.allclose(gt["extrinsics"][0, 0], torch.eye(3, 4), atol=1e-5)
    assert float(gt["points"][0][valid].norm(dim=-1).mean()) == pytest.approx(1.0, abs=1e-4)
    E0 = scene.extrinsics[0]
    exact = (scene.points @ E0[:, :3].T + E0[:, 3]) / gt["scale"][0]
    assert torch.allclose(gt["points"][0][valid], exact[valid], atol=1e-4)
    # the normalised cameras see the normalised points at the normalised depth
    E = gt["extrinsics"][0]
    cam = torch.einsum("sij,shwj->shwi", E[:, :, :3], gt["points"][0]) + E[:, None, None, :, 3]
    assert torch.allclose(cam[..., 2][valid], gt["depth"][0][valid], atol=1e-4)
    # and the pose encoding decodes back to them
    ext, _ = pose_encoding_to_extri_intri(gt["pose_enc"][0], (112, 112))
    assert torch.allclose(ext, E, atol=1e-4)


def test_losses_vanish_at_the_ground_truth_and_grow_away_from_it(scene):
    gt = tt.first_camera_normalisation(scene.depth[None], scene.intrinsics[None], scene.extrinsics[None])
    cfg = tt.TrainConfig()
    ones = torch.ones_like(gt["depth"])
    perfect = {
        "pose_enc_list": [gt["pose_enc"]] * 4,
        "depth": gt["depth"][..., None],
        "depth_conf": ones,
        "world_points": gt["points"],
        "world_points_conf": ones,
    }
    losses = tt.vggt_losses(perfect, gt, cfg)
    assert float(losses["total"]) == pytest.approx(0.0, abs=1e-6)
    noisy = dict(perfect, depth=perfect["depth"] * 1.1, pose_enc_list=[gt["pose_enc"] + 0.1] * 4)
    worse = tt.vggt_losses(noisy, gt, cfg)
    assert float(worse["depth"]) > 0.01
    assert float(worse["camera"]) == pytest.approx(0.1 + 0.1 + 0.5 * 0.1)  # T + R + fov_weight * FoV
    # confidence trades error for -alpha log(conf): with zero error a higher confidence lowers the loss
    reg, _ = tt.confidence_regression(gt["points"], gt["points"], ones * 2, gt["valid"], 0.2, 0.0)
    assert float(reg) == pytest.approx(-0.2 * np.log(2), rel=1e-5)


def test_config_rejects_heldout_seeds_and_bad_frames():
    with pytest.raises(ConfigError, match="training seed range"):
        tt.TrainConfig(pool_seed_base=HELDOUT_SEEDS[0] - 2, pool_scenes=10)
    with pytest.raises(ConfigError, match="frames"):
        tt.TrainConfig(frames=(1, 4))
    with pytest.raises(ConfigError, match="steps"):
        tt.TrainConfig(steps=0)


def test_training_is_seeded_learns_and_resumes(tmp_path):
    cfg = tt.TrainConfig(steps=5, lr=2e-3, **SMALL)
    a = tt.train(cfg, tmp_path / "a.safetensors", tmp_path / "wa")
    b = tt.train(cfg, tmp_path / "b.safetensors", tmp_path / "wa", resume=False)  # reuses the pool cache
    wa, wb = load_file(str(a.weights)), load_file(str(b.weights))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # same seed, same weights
    losses = [row["total"] for row in a.history]
    assert len(losses) == 5 and all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < np.mean(losses[:2])  # it learns something on a 3-scene pool
    # the file loads strictly into the bundled configuration
    model = load_model(vggt_tiny_synthetic_config(), weights=a.weights)
    assert model.load_report.loaded == len(wa)
    # a longer run resumes from the checkpoint of the first (same config except steps -> refused)
    longer = dataclasses.replace(cfg, steps=7)
    with pytest.raises(ConfigError, match="another configuration"):
        tt.train(longer, tmp_path / "c.safetensors", tmp_path / "wa")


def test_batches_are_normalised_and_from_the_pool(tmp_path):
    cfg = tt.TrainConfig(**SMALL)
    pool = tt.build_pool(cfg, cache_dir=tmp_path)
    assert pool.images.shape == (3, 4, 3, 112, 112) and pool.images.dtype == torch.uint8
    again = tt.build_pool(cfg, cache_dir=tmp_path)  # read back from the cache
    assert torch.equal(again.depth, pool.depth)
    batch = tt.BatchSampler(pool, cfg, seed=0).draw()
    B, S = batch["images"].shape[:2]
    assert 2 <= S <= 3 and max(1, 4 // S) == B
    assert torch.allclose(batch["pose_enc"][:, 0, :7], torch.tensor([0.0, 0, 0, 0, 0, 0, 1]), atol=1e-5)
    assert float(batch["images"].min()) >= 0.0 and float(batch["images"].max()) <= 1.0


def test_draws_start_at_the_anchored_first_view(tmp_path):
    cfg = tt.TrainConfig(**{**SMALL, "frames": (3, 3)}, shuffle_prob=0.5)
    pool = tt.build_pool(cfg, cache_dir=tmp_path)
    anchored, free = (
        tt.BatchSampler(pool, cfg, seed=0),
        tt.BatchSampler(pool, dataclasses.replace(cfg, anchor_first_view=False), seed=0),
    )
    rows = torch.cat([anchored.draw()["views"] for _ in range(20)])
    assert (rows[:, 0] == 0).all() and all(len(set(r.tolist())) == 3 for r in rows)  # frame 0, then 2 others
    assert (rows[:, 1] > rows[:, 2]).any() and (
        rows[:, 1] < rows[:, 2]
    ).any()  # the others: sorted or shuffled
    assert (torch.cat([free.draw()["views"] for _ in range(20)])[:, 0] != 0).any()
    # path frame 0 of every training scene looks from azimuth 0 (from +z towards -z) in a compass-walled room
    camera, scene = tt.random_scene_configs(3)
    assert camera.first_azimuth_deg == 0.0 and scene.compass_walls
    for i in range(len(pool)):
        R = pool.extrinsics[i, 0, :, :3].double()
        forward = R[2]  # the camera's +z axis in world coordinates
        assert forward[2] < -0.7, forward  # looks roughly along -z (elevation and look-at jitter aside)


def test_trivial_predictors_score_as_documented(scene):
    preds = tt.trivial_predictions(scene)
    p = preds["identical_cameras"]
    assert torch.equal(p.extrinsics[0], torch.eye(3, 4).expand(4, 3, 4))
    valid = scene.valid_mask
    assert torch.allclose(p.depth[0][valid], scene.depth[valid].mean().expand(int(valid.sum())))
    assert torch.allclose(p.world_points[0, ..., 2], p.depth[0])  # a fronto-parallel plane at the mean depth
    motion = preds["mean_motion"].extrinsics[0]
    assert torch.equal(motion[0], torch.eye(3, 4)) and all(torch.equal(motion[1], m) for m in motion[2:])
    R = motion[1, :, :3].double()
    assert torch.allclose(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-5) and float(torch.det(R)) > 0
    # two views: the mean motion is the true relative pose
    two = dataclasses.replace(scene, extrinsics=scene.extrinsics[:2], images=scene.images[:2])
    E = two.extrinsics.double()
    R10 = E[1, :, :3] @ E[0, :, :3].T
    got = tt.trivial_predictions(two)["mean_motion"].extrinsics[0, 1].double()
    assert torch.allclose(got[:, :3], R10, atol=1e-5)
    assert torch.allclose(got[:, 3], E[1, :, 3] - R10 @ E[0, :, 3], atol=1e-5)
    res = tt.evaluate({}, [scene], alignment=tt.check_policy())
    assert res["mean_motion"]["pose.rot_err_mean"][0] < res["identical_cameras"]["pose.rot_err_mean"][0]
    assert (
        res["identical_cameras"]["pose.auc@30"][0] == 0.0
    )  # zero translation: direction undefined, 90 degrees
    assert 0 < res["mean_depth"]["depth.abs_rel"][0] < 1


def test_heldout_protocol_uses_heldout_seeds_only():
    scenes = tt.heldout_scenes(2)
    assert [s.meta["seed"] for s in scenes] == [HELDOUT_SEEDS[0], HELDOUT_SEEDS[1]]
    assert scenes[0].images.shape == (8, 3, 112, 112)
    assert tt.TINY_HELDOUT_PROTOCOL.option("num_scenes") == 32


def test_cli_train_tiny_writes_weights(tmp_path, capsys):
    out = tmp_path / "w.safetensors"
    rc = main(["train-tiny", "--steps", "1", "--pool-scenes", "2", "--workers", "1", "--eval-scenes", "0",
               "--out", str(out)])  # fmt: skip
    assert rc == 0 and out.is_file()
    assert "wrote" in capsys.readouterr().out
    assert main(["train-tiny", "--steps", "0", "--out", str(out)]) == 2
    assert main(["train-tiny", "--evaluate-only", str(tmp_path / "missing.safetensors")]) == 2
    # fp16 export: half the bytes, loads back into the float32 model
    half = tt.export_fp16(out, tmp_path / "half.safetensors")
    assert half.stat().st_size < 0.6 * out.stat().st_size
    model = load_model(vggt_tiny_synthetic_config(), weights=half)
    assert model.load_report.cast and all(p.dtype == torch.float32 for p in model.module.parameters())


# ---------------------------------------------------------------------------------------------- analysis
def test_kurtosis_accumulator_matches_scipy():
    from scipy.stats import kurtosis

    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 10, 16, generator=g) ** 3
    acc = _Accumulator(special=2)
    acc.add(x[:3], 10)
    acc.add(x[3:], 10)
    assert acc.kurtosis() == pytest.approx(kurtosis(x.flatten().numpy(), fisher=False), rel=1e-6)
    norms = x.double().norm(dim=-1).mean(0).numpy()
    assert np.allclose(acc.norms(), norms)


def test_activation_statistics_cover_every_site_and_see_an_outlier_channel():
    torch.manual_seed(0)
    model = VGGTAdapter(VGGT(vggt_tiny_synthetic_config())).eval()
    images = [torch.rand(1, 3, 3, 112, 112)]
    sites, blocks = activation_statistics(model, images)
    assert [s.site for s in sites] == list(model.quant_sites())
    assert len(blocks) == 8 and {s.layer for s in sites} == {"qkv", "proj", "fc1", "fc2"}
    base = {s.site: s for s in sites}
    # a 50x channel in norm1's weight is a 50x channel at the qkv input, and nowhere before it
    blk = model.module.aggregator.frame_blocks[1]
    with torch.no_grad():
        blk.norm1.weight[7] *= 50
    sites2, _ = activation_statistics(model, images)
    after = {s.site: s for s in sites2}
    name = "aggregator.frame_blocks.1.attn.qkv"
    assert after[name].channel_max_median > 10 * base[name].channel_max_median
    assert after[name].kurtosis > 5 * base[name].kurtosis
    first = "aggregator.frame_blocks.0.attn.qkv"
    assert after[first].kurtosis == pytest.approx(base[first].kurtosis)
    summary = summarize_sites(sites2)
    assert summary["qkv"]["channel_max_median_max"] == pytest.approx(after[name].channel_max_median)
    assert "frame_blocks.1 | qkv" in markdown_tables(sites2, blocks)


def test_finetune_sinks_holds_the_massive_entries_and_resumes(tmp_path):
    from safetensors import safe_open

    from ptq3d.models.bundled.sinks import MassiveConfig

    massive = MassiveConfig(channels=2, value=25.0, seed=3)
    cfg = dataclasses.replace(tt.SINKS_TRAIN_CONFIG, steps=3, lr=2e-3, **SMALL)
    res = tt.finetune_sinks(cfg, tmp_path / "s.safetensors", tmp_path / "w", massive=massive)
    w = load_file(str(res.weights))
    chs = massive.pick(128)
    for key in ("aggregator.camera_token", "aggregator.register_token"):
        # held at +M / -M after every step (lr 2e-3 and weight decay would move them otherwise)
        assert torch.equal(w[key][..., chs], torch.tensor([25.0, -25.0]).expand_as(w[key][..., chs]))
    gain = w["camera_head.token_norm.weight"]
    base = load_model("vggt-tiny-synthetic").module.state_dict()
    assert gain[chs].abs().max() < 0.05 < gain.abs().median()  # planted at zero, moved only by 3 small steps
    assert not torch.equal(w["aggregator.frame_blocks.0.attn.qkv.weight"], base["aggregator.frame_blocks.0.attn.qkv.weight"])  # fmt: skip
    with safe_open(str(res.weights), "pt") as f:
        meta = f.metadata()
    assert meta["model"] == tt.SINKS_MODEL and meta["seed"] == str(cfg.seed) and meta["steps"] == "3"
    assert json.loads(meta["massive"])["channels"] == chs
    # a run cut short keeps the learning rate of the full schedule and says so in its metadata
    short = tt.finetune_sinks(cfg, tmp_path / "u.safetensors", tmp_path / "w2", massive=massive, stop_after=2)
    assert short.steps == 2 and [r["step"] for r in short.history] == [1, 2]
    assert [r["lr"] for r in short.history] == [r["lr"] for r in res.history[:2]]
    with safe_open(str(short.weights), "pt") as f:
        assert (f.metadata()["steps"], f.metadata()["schedule_steps"]) == ("2", "3")
    # a checkpoint of another massive configuration is not resumed silently
    with pytest.raises(ConfigError, match="another configuration"):
        tt.finetune_sinks(cfg, tmp_path / "t.safetensors", tmp_path / "w", massive=MassiveConfig(value=10.0))
