"""FGQ: the per-task Fisher (zero where a task's head ignores a block), the channel-weight normalisation, the
Fisher-weighted loss, the ablation switches, and keeping / plotting the Fisher with the quantized model."""

from __future__ import annotations

import json

import pytest
import small_models
import torch

from ptq3d.calibration.sets import CalibrationSet, random_pool, synthetic_pool
from ptq3d.errors import ConfigError, DataError
from ptq3d.methods.api import load_quantized, quantize_model
from ptq3d.methods.fgq import (
    TASKS,
    FGQConfig,
    FisherResult,
    channel_weights,
    compute_fisher,
    fisher_weights,
    load_fisher,
    plot_fisher,
    save_fgq,
)
from ptq3d.methods.flatquant import block_loss


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return small_models.visible_branch_vggt(depth=3)  # the DPT heads never read pair 2 (blocks 4 and 5)


@pytest.fixture(scope="module")
def scenes():
    return synthetic_pool(3, num_frames=2, height=56, width=56)


@pytest.fixture(scope="module")
def fisher(model, scenes):
    return compute_fisher(model, scenes)


def test_fisher_shape_cost_and_model_untouched(model, scenes, fisher):
    names = tuple(b.name for b in model.blocks())
    assert fisher.fisher.shape == (3, 6, 64) and fisher.tasks == TASKS and fisher.blocks == names
    assert fisher.num_samples == 3 and fisher.loss == "output_sum"
    assert fisher.cost["time_s"] > 0 and fisher.cost["peak_rss_bytes"] > 0
    assert fisher.cost["backward_passes"] == 9
    assert all(p.grad is None for p in model.module.parameters())


def test_fisher_zero_where_head_ignores_block(fisher):
    """Acceptance: the DPT heads read aggregator outputs (0, 0, 1, 1) only, so the depth and point Fisher is
    exactly 0 at pair 2 (blocks 4, 5) and positive before; the camera head reads the last pair, so the camera
    Fisher is positive everywhere."""
    F = fisher.fisher
    cam, dep, pts = (TASKS.index(t) for t in ("camera", "depth", "points"))
    assert torch.all(F[dep, 4:] == 0) and torch.all(F[pts, 4:] == 0)
    assert torch.all(F[dep, :4].mean(-1) > 0) and torch.all(F[pts, :4].mean(-1) > 0)
    assert torch.all(F[cam].mean(-1) > 0)


def test_fisher_zero_when_head_input_weights_are_zero(scenes):
    """Zero the depth head's input projections of the last pair: depth Fisher 0 there, points Fisher not."""
    m = small_models.visible_branch_vggt(depth=3, dpt_idx=(0, 1, 2, 2))
    with torch.no_grad():
        for i in (2, 3):
            m.module.depth_head.projects[i].weight.zero_()
    f = compute_fisher(m, scenes[:2])
    assert torch.all(f.task("depth")[4:] == 0)
    assert torch.all(f.task("points")[4:].mean(-1) > 0)
    assert torch.all(f.task("depth")[:4].mean(-1) > 0)


def test_fisher_gt_losses(model, scenes):
    f = compute_fisher(model, scenes[:2], loss="gt")
    assert f.loss == "gt" and torch.isfinite(f.fisher).all()
    assert torch.all(f.fisher[:, :4].mean(-1) > 0)
    with pytest.raises(DataError, match="no valid GT depth"):
        compute_fisher(model, random_pool(1, num_frames=2, height=56, width=56), loss="gt")
    with pytest.raises(ConfigError, match="fisher_loss"):
        compute_fisher(model, scenes[:1], loss="nll")


def test_channel_weights_normalise_as_specified():
    g = torch.Generator().manual_seed(0)
    F = torch.rand(3, 5, 16, generator=g) ** 4
    w = channel_weights(F, floor=0.0)
    torch.testing.assert_close(w.mean(dim=1), torch.ones(5), rtol=1e-5, atol=1e-5)  # per-block mean one
    # per-task normalisation: rescaling one task changes nothing
    F2 = F.clone()
    F2[1] *= 1e6
    torch.testing.assert_close(channel_weights(F2, floor=0.0), w, rtol=1e-5, atol=1e-6)
    # by hand: s = sum_k F_k / mean(F_k); w = s / mean_c s
    s = sum(F[k] / F[k].mean() for k in range(3))
    torch.testing.assert_close(w, s / s.mean(dim=1, keepdim=True), rtol=1e-5, atol=1e-6)
    # task weights: (1, 0, 0) is the single-task weight
    torch.testing.assert_close(channel_weights(F, [1.0, 0.0, 0.0], 0.0), channel_weights(F[:1], None, 0.0))
    # floor
    wf = channel_weights(F, floor=0.5)
    assert wf.min() >= 0.5 and torch.equal(wf, w.clamp_min(0.5))
    # a block no task is sensitive to gets 1; an all-zero task contributes nothing
    Fz = F.clone()
    Fz[:, 2] = 0
    Fz[2] = 0
    wz = channel_weights(Fz, floor=0.0)
    torch.testing.assert_close(wz[2], torch.ones(16))
    torch.testing.assert_close(wz[[0, 1, 3, 4]], channel_weights(Fz[:2], floor=0.0)[[0, 1, 3, 4]])
    with pytest.raises(ConfigError, match="task weights"):
        channel_weights(F, [1.0, 1.0])


def test_fisher_weighted_block_loss():
    out, tgt = torch.zeros(2, 3, 4), torch.ones(2, 3, 4)
    w = torch.tensor([0.0, 1.0, 2.0, 5.0])
    assert block_loss(out, tgt, None).item() == 1.0
    assert block_loss(out, tgt, w).item() == pytest.approx(2.0)


def test_fisher_ablation_task_selection(fisher):
    single = fisher_weights(fisher, FGQConfig(tasks=("points",)))
    torch.testing.assert_close(single, channel_weights(fisher.task("points")[None], None, 0.01))
    both = fisher_weights(fisher, FGQConfig(tasks=("points", "depth")))
    allw = fisher_weights(fisher, FGQConfig())
    assert not torch.allclose(both, allw) and not torch.allclose(single, both)
    # pair 2 is camera-only, so with camera excluded its weights are flat
    torch.testing.assert_close(both[4:], torch.ones(2, 64))


def test_fgq_end_to_end_saved_fisher_and_plot(model, scenes, tmp_path):
    calib = CalibrationSet(scenes, builder="random", seed=0)
    qm = quantize_model(model, "fgq", "w4a4", calib, {"epochs": 1})
    f = qm.stats.fisher
    assert isinstance(f, FisherResult) and f.fisher.shape == (3, 6, 64)
    assert qm.stats.extra["fisher"]["cost"]["time_s"] > 0
    assert qm.stats.extra["fisher"]["cost"]["time_s"] < qm.stats.wall_time_s
    rec = {r["name"]: r for r in qm.stats.blocks}
    last = rec["aggregator.global_blocks.2"]
    assert last["fisher_mean"]["depth"] == 0.0 and last["fisher_mean"]["camera"] > 0
    assert all(r["flatquant_steps"] == 2 for r in qm.stats.blocks)
    d = save_fgq(qm, tmp_path / "q")
    back = load_fisher(d)
    assert torch.equal(back.fisher, f.fisher) and back.blocks == f.blocks and back.cost["time_s"] > 0
    qback = load_quantized(d, model=model)
    images = scenes[0].images.unsqueeze(0)
    assert torch.equal(qback.predict(images).extrinsics, qm.predict(images).extrinsics)
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["method"] == "fgq"
    assert manifest["stats"]["blocks"][5]["fisher_mean"]["points"] == 0.0
    # the Fisher summary and the Fisher pass's own cost travel with the stats (manifest and reload)
    assert manifest["stats"]["extra"]["fisher"]["cost"]["time_s"] > 0
    assert qback.stats.extra["fisher"] == json.loads(json.dumps(qm.stats.to_dict()["extra"]["fisher"]))
    svg = plot_fisher(back, tmp_path / "fisher.svg")
    text = svg.read_text()
    assert "<svg" in text and "camera" in text
    svg2 = plot_fisher(back.fisher, tmp_path / "fisher2.svg", tasks=back.tasks)
    assert svg2.stat().st_size > 1000


def test_fgq_fisher_path_and_no_fisher(model, scenes, fisher, tmp_path):
    calib = CalibrationSet(scenes[:2], builder="random", seed=0)
    p = fisher.save(tmp_path / "fisher.safetensors")
    qm = quantize_model(model, "fgq", "w4a8", calib, {"epochs": 0, "fisher_path": str(p)})
    assert torch.equal(qm.stats.fisher.fisher, fisher.fisher)
    qm2 = quantize_model(model, "fgq", "w4a8", calib, {"epochs": 0, "use_fisher": False})
    assert getattr(qm2.stats, "fisher", None) is None
    other = FisherResult(fisher.fisher[:, :2], fisher.tasks, fisher.blocks[:2])
    with pytest.raises(ConfigError, match="blocks"):
        quantize_model(
            model,
            "fgq",
            "w4a8",
            calib,
            {"epochs": 0, "fisher_path": str(other.save(tmp_path / "o.safetensors"))},
        )


@pytest.mark.parametrize(
    "cfg,msg",
    [
        ({"tasks": "camera,foo"}, "tasks"),
        ({"tasks": "camera,depth", "task_weights": "1"}, "task_weights"),
        ({"fisher_loss": "nll"}, "fisher_loss"),
        ({"weight_floor": 2.0}, "weight_floor"),
    ],
)
def test_fgq_bad_config(model, scenes, cfg, msg):
    with pytest.raises(ConfigError, match=msg):
        quantize_model(model, "fgq", "w4a4", CalibrationSet(scenes[:1]), cfg)
