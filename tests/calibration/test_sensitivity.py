"""ptq3d.calibration.sensitivity: measured per-unit sensitivity (a head that reads no output of a block shows
exactly zero for it), the cheap estimates, and plans for a bit budget (hand-counted average bits, most sensitive
unit first, the budget held)."""

from __future__ import annotations

import pytest
import torch

from ptq3d.calibration.sensitivity import SensitivityTable, block_sensitivity, plan_for_budget
from ptq3d.calibration.sets import CalibrationSet, random_pool
from ptq3d.errors import ConfigError
from ptq3d.models import load_model
from ptq3d.models.layers import DinoV2Config
from ptq3d.models.vggt.config import VGGTConfig
from ptq3d.quant.plan import PrecisionPlan
from ptq3d.quant.qlinear import QuantLinear
from ptq3d.quant.spec import get_scheme

DIM = 64
# qkv 64x192, proj 64x64, fc1 64x256, fc2 256x64 weight elements per block
BLOCK_NUMEL = DIM * 3 * DIM + DIM * DIM + DIM * 4 * DIM + 4 * DIM * DIM


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models on a shared 2-core machine run on one torch thread (tests/conftest.py)."""


def three_layer_vggt(seed: int = 0):
    """3 frame/global pairs at width 64, LayerScale 0.5 (each block visible at the outputs); the DPT heads read
    aggregator layers 0 and 1 only, so the two blocks of layer 2 reach the camera head alone."""
    torch.manual_seed(seed)
    cfg = VGGTConfig(
        img_size=56,
        dino=DinoV2Config(img_size=56, embed_dim=DIM, depth=1, num_heads=4, num_register_tokens=4),
        embed_dim=DIM,
        depth=3,
        num_heads=4,
        init_values=0.5,
        camera_trunk_depth=1,
        camera_num_heads=4,
        dpt_features=16,
        dpt_out_channels=(8, 16, 32, 32),
        dpt_intermediate_layer_idx=(0, 0, 1, 1),
    )
    return load_model(cfg)


@pytest.fixture(scope="module")
def model():
    return three_layer_vggt()


@pytest.fixture(scope="module")
def calib():
    return CalibrationSet(random_pool(2, num_frames=2, height=56, width=56, first_seed=3), seed=0)


@pytest.fixture(scope="module")
def table(model, calib):
    return block_sensitivity(model, calib, "w4a4", granularity="site")


def test_unread_block_has_zero_sensitivity_for_that_head(model, table):
    camera_only = {"aggregator.frame_blocks.2", "aggregator.global_blocks.2"}
    assert len(table.rows) == 6 * 4 and table.granularity == "site"
    for r in table.rows:
        if r["block"] in camera_only:
            # depth and points are bit-identical to FP: exactly zero, measured and estimated
            assert r["depth"] == 0.0 and r["points"] == 0.0, r["unit"]
            assert r["fisher_depth"] == 0.0 and r["gn_points"] == 0.0, r["unit"]
            assert r["camera"] > 0 and r["fisher_camera"] > 0, r["unit"]
        else:
            assert r["camera"] > 0 and r["depth"] > 0 and r["points"] > 0, r["unit"]
        assert (
            r["num_params"] == {"qkv": 3, "proj": 1, "fc1": 4, "fc2": 4}[r["unit"].rsplit(".", 1)[1]] * DIM**2
        )
    assert set(table.correlations) == {"block_rel_mse", "fisher", "gn"}
    assert set(table.correlations["fisher"]) == {"camera", "depth", "points"}


def test_model_is_left_fp_and_unchanged(calib):
    m = three_layer_vggt()
    before = {k: v.clone() for k, v in m.module.state_dict().items()}
    flags = [p.requires_grad for p in m.module.parameters()]
    block_sensitivity(m, calib, "w4a8-static", granularity="block", tasks=("depth",))
    after = m.module.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(isinstance(x, QuantLinear) for x in m.module.modules())
    assert flags == [p.requires_grad for p in m.module.parameters()]


def test_static_activation_ranges_are_calibrated(model, calib):
    """W8A8 with static per-tensor ranges observed on the calibration scenes is far more accurate than W4A4;
    uncalibrated ranges (scale 1) would clip everything and make it worse."""
    w8 = block_sensitivity(model, calib, "w8a8-static", tasks=("points",), estimates=False)
    w4 = block_sensitivity(model, calib, "w4a4", tasks=("points",), estimates=False)
    for a, b in zip(w8.rows, w4.rows, strict=True):
        if b["points"] > 0:
            assert a["points"] < 0.5 * b["points"], a["unit"]
    assert all(r["fisher_points"] is None for r in w8.rows) and set(w8.correlations) == {"block_rel_mse"}


def test_table_round_trips_through_json(table, tmp_path):
    back = SensitivityTable.load_json(table.save_json(tmp_path / "s.json"))
    assert back.units() == table.units() and back.tasks == table.tasks
    assert back.column("camera") == table.column("camera")
    table.save_csv(tmp_path / "s.csv")
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert len(lines) == 1 + len(table.rows) and lines[0].startswith("unit,block,kind,num_params,camera")


# --- plans -----------------------------------------------------------------------------------------------


def _table(values: dict[str, tuple[float, float, float]], granularity: str = "block", model_units=None):
    rows = [
        {"unit": u, "block": u, "kind": "frame", "num_params": 0, "camera": c, "depth": d, "points": p}
        for u, (c, d, p) in values.items()
    ]
    return SensitivityTable("m", "w4a4", "aggregator", granularity, ("camera", "depth", "points"), rows)


BLOCKS = [f"aggregator.{k}_blocks.{i}" for i in range(3) for k in ("frame", "global")]


def test_plan_raises_the_most_sensitive_block_first_and_counts_bits_by_hand(model):
    vals = {b: (0.01, 0.01, 0.01) for b in BLOCKS}
    vals["aggregator.global_blocks.1"] = (0.02, 0.5, 0.03)  # most sensitive by depth and by the worst task
    vals["aggregator.frame_blocks.0"] = (0.03, 0.2, 0.02)  # camera's top, second by the worst task
    t = _table(vals)
    total = 6 * BLOCK_NUMEL
    one = (4 * total + 4 * BLOCK_NUMEL) / total  # 4 + 4/6: one block of six at W8
    plan = plan_for_budget(t, model, "w4a4", budget_bits=4.7, task="depth")
    assert plan.blocks == {"aggregator.global_blocks.1": "w8"} and plan.sites == {}
    assert plan.source["average_weight_bits"] == pytest.approx(one)
    avg = plan.average_weight_bits(model, "aggregator", get_scheme("w4a4"))
    assert avg == pytest.approx(one) and avg <= 4.7
    assert plan_for_budget(t, model, "w4a4", 4.7, task="camera").blocks == {"aggregator.frame_blocks.0": "w8"}
    # worst task: both units score 1 (each tops one task); global_blocks.1 wins on the mean over tasks
    two = plan_for_budget(t, model, "w4a4", budget_bits=5.4, task="worst", name="two")
    assert two.source["order"] == ["aggregator.global_blocks.1", "aggregator.frame_blocks.0"]
    avg = two.average_weight_bits(model, "aggregator", get_scheme("w4a4"))
    assert avg == pytest.approx(4 + 8 / 6) and avg <= 5.4
    # W6 for the raised units
    six = plan_for_budget(t, model, "w4a4", budget_bits=4.4, high_bits=6, task="depth")
    assert six.blocks == {"aggregator.global_blocks.1": "w6"}
    assert six.source["average_weight_bits"] == pytest.approx(4 + 2 / 6)


def test_site_plan_skips_a_unit_that_does_not_fit(model):
    sites = [f"{b}.{r}" for b in BLOCKS for r in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]
    vals = {s: (0.0, 0.001, 0.0) for s in sites}
    vals["aggregator.global_blocks.0.mlp.fc1"] = (0.0, 0.9, 0.0)  # 4*64*64 weights: too big for the budget
    vals["aggregator.frame_blocks.2.attn.proj"] = (0.0, 0.5, 0.0)  # 64*64 weights: fits
    t = _table(vals, granularity="site")
    total = 6 * BLOCK_NUMEL
    budget = 4 + 4 * (2 * DIM * DIM) / total  # room for two proj-sized sites, not for one fc1
    plan = plan_for_budget(t, model, "w4a4", budget_bits=budget, task="depth")
    assert list(plan.sites)[0] == "aggregator.frame_blocks.2.attn.proj" and plan.blocks == {}
    assert "aggregator.global_blocks.0.mlp.fc1" not in plan.sites
    avg = 4 + 4 * DIM * DIM * len(plan.sites) / total
    assert len(plan.sites) == 2 and plan.source["average_weight_bits"] == pytest.approx(avg)
    assert plan.average_weight_bits(model, "aggregator", get_scheme("w4a4")) <= budget + 1e-9


def test_plan_is_taken_by_a_method(model, tmp_path):
    vals = {b: (0.0, 0.0, 0.0) for b in BLOCKS}
    vals["aggregator.frame_blocks.1"] = (0.1, 0.1, 0.1)
    plan = plan_for_budget(_table(vals), model, "w4a4", budget_bits=4.7, high_act_bits=8)
    assert plan.blocks == {"aggregator.frame_blocks.1": "w8a8"}
    back = PrecisionPlan.load(plan.save(tmp_path / "plan.toml"))
    assert back == plan
    from ptq3d.methods import quantize_model

    qm = quantize_model(model, "rtn", "w4a4", None, plan=back)
    bits = {
        n: (m.weight_spec.bits, m.act_spec.bits)
        for n, m in qm.module.named_modules()
        if isinstance(m, QuantLinear)
    }
    assert {n for n, b in bits.items() if b == (8, 8)} == {
        f"aggregator.frame_blocks.1.{r}" for r in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    }
    assert len(bits) == 24 and sum(b == (4, 4) for b in bits.values()) == 20


def test_plan_errors(model):
    t = _table({b: (0.1, 0.1, 0.1) for b in BLOCKS})
    with pytest.raises(ConfigError, match="raises no unit"):
        plan_for_budget(t, model, "w4a4", budget_bits=4.5)  # one block needs 4 + 4/6
    with pytest.raises(ConfigError, match="below the base"):
        plan_for_budget(t, model, "w4a4", budget_bits=3.5)
    with pytest.raises(ConfigError, match="high_bits"):
        plan_for_budget(t, model, "w8a8", budget_bits=8, high_bits=8)
    with pytest.raises(ConfigError, match="high_act_bits"):
        plan_for_budget(t, model, "w4a4", budget_bits=5, high_act_bits=1)
    with pytest.raises(ConfigError, match="would lower the activations"):
        plan_for_budget(t, model, "w4a16", budget_bits=5, high_act_bits=8)
    with pytest.raises(ConfigError, match="sensitivity task"):
        plan_for_budget(t, model, "w4a4", budget_bits=5, task="pose")
    wrong = _table({"encoder.blocks.0": (0.1, 0.1, 0.1)})
    with pytest.raises(ConfigError, match="does not match this model"):
        plan_for_budget(wrong, model, "w4a4", budget_bits=5)
    mixed = get_scheme("w4a4").with_plan(PrecisionPlan("p", blocks={BLOCKS[0]: "w8"}))
    with pytest.raises(ConfigError, match="already has a plan"):
        plan_for_budget(t, model, mixed, budget_bits=5)


def test_bad_arguments(model, calib):
    with pytest.raises(ConfigError, match="granularity"):
        block_sensitivity(model, calib, "w4a4", granularity="layer")
    with pytest.raises(ConfigError, match="tasks"):
        block_sensitivity(model, calib, "w4a4", tasks=("pose",))


def test_zero_rows_are_never_raised(model):
    vals = {b: (0.0, 0.0, 0.0) for b in BLOCKS}
    vals[BLOCKS[3]] = (0.0, 0.0, 1e-6)
    plan = plan_for_budget(_table(vals), model, "w4a4", budget_bits=8.0)
    assert plan.blocks == {BLOCKS[3]: "w8"}  # room for all six; only the one with a nonzero score is raised
