"""Mixed-precision plans through every built-in method: each site ends with the bits the plan asks for, the
manifest's effective bits and bytes match a hand count, and a method that ignores the plan fails loudly."""

from __future__ import annotations

import pytest
import torch

from ptq3d.errors import ConfigError, MethodError
from ptq3d.methods import load_quantized, quantize_model, save_quantized
from ptq3d.methods.registry import MethodConfig, get_method, list_methods, register_method
from ptq3d.quant.plan import PrecisionPlan
from ptq3d.quant.qlinear import QuantLinear

FAST = {
    "flatquant": {"epochs": 0},
    "fgq": {"epochs": 0},
    "quantvggt": {"learn": False},
    "brecq": {"iters_w": 2, "iters_a": 2},
    "qdrop": {"iters_w": 2},
    "quarot": {"weight_method": "rtn"},
    "smoothquant": {"alpha": 0.5},
    "qvggt": {"task_candidates": 1},
}
SCHEME = {"repq-vit": "w4a8-static-asym", "taptq": "w4a8"}


def _plan(model) -> PrecisionPlan:
    blocks = [b.name for b in model.blocks("aggregator")]
    return PrecisionPlan(
        "mix",
        blocks={blocks[0]: "w8", blocks[-1]: "w8a8"},
        sites={f"{blocks[1]}.mlp.fc2": "w6"},
        source={"made_by": "test"},
    )


def _expected_bits(site: str, blocks: list[str]) -> tuple[int, int]:
    if site == f"{blocks[1]}.mlp.fc2":
        return 6, 4
    if site.startswith(blocks[0] + "."):
        return 8, 4
    if site.startswith(blocks[-1] + "."):
        return 8, 8
    return 4, 4


BUILTIN = [m for m in list_methods() if get_method(m).source == "builtin" and m != "fp"]


@pytest.mark.parametrize("method", BUILTIN)
def test_every_method_holds_a_block_and_site_plan(toy, toy_calib, method):
    blocks = [b.name for b in toy.blocks("aggregator")]
    scheme = SCHEME.get(method, "w4a4")
    cfg = dict(FAST.get(method, {}))
    try:
        qm = quantize_model(toy, method, scheme, toy_calib, cfg, plan=_plan(toy))
    except ConfigError as exc:  # a method may refuse a plan it cannot run, with a one-line reason
        assert "plan" in str(exc)
        return
    for name, mod in qm.module.named_modules():
        if isinstance(mod, QuantLinear):
            w, a = _expected_bits(name, blocks)
            if method in SCHEME and scheme.startswith("w4a8"):
                a = 8 if a == 4 else a
            assert (mod.weight_spec.bits, mod.act_spec.bits if mod.act_spec else 16) == (w, a), name
    assert qm.manifest["plan"]["name"] == "mix" and qm.scheme.name.endswith("+mix")


def test_manifest_bits_and_bytes_match_a_hand_count(toy):
    plan = _plan(toy)
    qm = quantize_model(toy, "rtn", "w4a16", plan=plan)
    blocks = [b.name for b in toy.blocks("aggregator")]
    num = den = packed = 0
    for site, lin in toy.quant_sites("aggregator").items():
        w, _ = _expected_bits(site, blocks)
        out_f, in_f = lin.weight.shape
        num += lin.weight.numel() * w
        den += lin.weight.numel()
        # packed codes (one byte per code at 8 and 6 bits, two 4-bit codes a byte) + fp32 scales per row
        per_code = {8: 1.0, 6: 1.0, 4: 0.5}[w]
        packed += int(out_f * in_f * per_code) + 4 * out_f
    summ = qm.manifest["summary"]
    assert summ["effective_weight_bits"] == pytest.approx(num / den)
    assert 4 < summ["effective_weight_bits"] < 8
    assert summ["bits_histogram"] == {"W4A16": 3 + 4, "W6A16": 1, "W8A16": 4, "W8A8": 4}
    assert summ["quantized_weight_bytes"] == packed
    assert plan.average_weight_bits(toy, "aggregator", qm.scheme) == pytest.approx(num / den)


def test_plan_round_trips_through_save_and_load(tmp_path, toy, toy_calib, toy_images):
    qm = quantize_model(toy, "gptq", "w4a8", toy_calib, plan=_plan(toy))
    back = load_quantized(save_quantized(qm, tmp_path / "q"), model=toy)
    assert back.scheme == qm.scheme and back.scheme.plan == qm.scheme.plan
    a, b = qm.predict(toy_images).tensors(), back.predict(toy_images).tensors()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert back.manifest["plan"]["hash"] == _plan(toy).hash


def test_plan_from_file_and_unknown_units(tmp_path, toy):
    p = _plan(toy).save(tmp_path / "plan.toml")
    qm = quantize_model(toy, "rtn", "w4a16", plan=p)
    assert qm.scheme.plan == PrecisionPlan.load(p)
    bad = PrecisionPlan("typo", blocks={"aggregator.frame_block.0": "w8"})
    with pytest.raises(ConfigError, match="unknown unit.*frame_block.0"):
        quantize_model(toy, "rtn", "w4a16", plan=bad)


def test_a_method_that_ignores_the_plan_fails_loudly(toy):
    from ptq3d.methods.rtn import rtn_linear

    @register_method("ignores-plan-test", config=MethodConfig, requires_calibration="never")
    def ignores(model, calibration, scheme, config, ctx):
        for site, lin in ctx.sites().items():
            ctx.replace(site, rtn_linear(lin, scheme, config))  # the run-wide scheme: plan ignored

    with pytest.raises(MethodError, match="ignored the precision plan 'mix'"):
        quantize_model(toy, "ignores-plan-test", "w4a16", plan=_plan(toy))


def test_the_integer_backend_runs_a_mixed_plan(toy, toy_calib, toy_images):
    """Each QuantLinear dispatches on its own bits, so a W8/W6/W4 x A8/A4 plan runs on the emulated integer backend
    and matches the fake-quantized model up to the float summation order."""
    from ptq3d.quant.spec import sqnr_db

    qm = quantize_model(toy, "gptq", "w4a4", toy_calib, plan=_plan(toy))
    fake = qm.predict(toy_images)
    assert qm.set_backend("emulated") == 16
    real = qm.predict(toy_images)
    assert sqnr_db(fake.depth, real.depth) > 60 and sqnr_db(fake.world_points, real.world_points) > 60


def test_a_plan_the_method_makes_is_recorded(toy, toy_calib, tmp_path, toy_images):
    """QVGGT makes its own plan when the run has none: the QuantizedModel's scheme and manifest carry it, every site
    holds it, and it survives save/load."""
    qm = quantize_model(toy, "qvggt", "w4a16", toy_calib, {"task_candidates": 1, "budget_bits": 5.0})
    assert qm.scheme.is_mixed and qm.manifest["plan"] is not None
    assert qm.manifest["summary"]["effective_weight_bits"] > 4
    back = load_quantized(save_quantized(qm, tmp_path / "q"), model=toy)
    assert back.scheme.plan == qm.scheme.plan
    a, b = qm.predict(toy_images).tensors(), back.predict(toy_images).tensors()
    assert all(torch.equal(a[k], b[k]) for k in a)
