"""Method registry (incl. entry-point plugins), config handling, calibration sets, the block loop, errors."""

from __future__ import annotations

import dataclasses
import importlib
import sys
import textwrap

import pytest
import torch
from toy_model import toy_scenes

from ptq3d.errors import ConfigError, UserError
from ptq3d.methods import (
    CalibrationSet,
    build_random,
    get_calibration_builder,
    get_method,
    list_methods,
    quantize_model,
    run_blockwise,
)
from ptq3d.methods import registry as reg


def test_builtin_methods_registered():
    assert {"fp", "rtn", "smoothquant", "gptq", "quarot"} <= set(list_methods())
    spec = get_method("smoothquant")
    assert spec.propagate == "fp" and get_method("gptq").propagate == "quantized"
    assert dataclasses.is_dataclass(spec.config_cls)


def test_unknown_method_suggests():
    with pytest.raises(UserError, match="unknown method 'gtpq'; did you mean 'gptq'"):
        get_method("gtpq")


def test_config_from_dict_and_cli_strings():
    cfg = get_method("gptq").make_config({"actorder": "true", "percdamp": "0.05", "blocksize": "64"})
    assert cfg.actorder is True and cfg.percdamp == 0.05 and cfg.blocksize == 64
    sq = get_method("smoothquant").make_config({"fold": "attn.qkv:norm1", "alpha": 1})
    assert sq.fold == {"attn.qkv": "norm1"} and sq.alpha == 1.0
    with pytest.raises(UserError, match="did you mean 'percdamp'"):
        get_method("gptq").make_config({"percdam": 0.1})
    with pytest.raises(ConfigError, match="actorder"):
        get_method("gptq").make_config({"actorder": "maybe"})


def test_entry_point_plugin(tmp_path, monkeypatch, toy, toy_calib):
    """A third-party method declared through the ptq3d.methods entry-point group (no pip install)."""
    (tmp_path / "ptq3d_plugin_demo.py").write_text(
        textwrap.dedent(
            """
            from dataclasses import dataclass
            from ptq3d.methods.registry import MethodConfig, register_method
            from ptq3d.methods.rtn import rtn_linear

            @dataclass
            class HalfConfig(MethodConfig):
                only: str = "mlp.fc1"

            @register_method("half_rtn", config=HalfConfig, requires_calibration="never")
            def half_rtn(model, calibration, scheme, config, ctx):
                for site, lin in ctx.sites().items():
                    if site.endswith(config.only):
                        ctx.replace(site, rtn_linear(lin, scheme, config))
            """
        )
    )
    dist = tmp_path / "ptq3d_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ptq3d-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ptq3d.methods]\nhalf_rtn = ptq3d_plugin_demo\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.setitem(reg._loaded, "plugins", False)
    try:
        spec = get_method("half_rtn")
        assert spec.source == "ptq3d_plugin_demo"
        assert "half_rtn" in list_methods()
        qm = quantize_model(toy, "half_rtn", "w8a8", None, {"only": "mlp.fc2"})
        assert sorted(qm.manifest["sites"]) == [
            f"{k}_blocks.{i}.mlp.fc2" for k in ("frame", "global") for i in (0, 1)
        ]
    finally:
        reg._METHODS.pop("half_rtn", None)
        sys.modules.pop("ptq3d_plugin_demo", None)


def test_calibration_set_hash_and_random_builder():
    pool = toy_scenes(6, seed=5)
    a = build_random(pool, 3, seed=7)
    b = get_calibration_builder("random")(pool, 3, seed=7)
    c = build_random(pool, 3, seed=8)
    assert a.hash == b.hash and len(a.hash) == 16
    assert [s.meta["scene"] for s in a.samples] == [s.meta["scene"] for s in b.samples]
    assert a.hash != c.hash or [s.meta["scene"] for s in a.samples] == [s.meta["scene"] for s in c.samples]
    assert a.describe()["num_frames"] == 9
    with pytest.raises(ConfigError, match="exceeds the pool of 6"):
        build_random(pool, 7)
    with pytest.raises(ConfigError, match="pool is empty"):
        build_random([], 1)
    with pytest.raises(UserError, match="did you mean 'random'"):
        get_calibration_builder("randm")


def test_empty_or_missing_calibration_errors(toy, toy_calib):
    with pytest.raises(ConfigError, match="empty"):
        CalibrationSet([])
    with pytest.raises(ConfigError, match="needs a calibration set"):
        quantize_model(toy, "gptq", "w4a8", None)
    with pytest.raises(ConfigError, match="needs a calibration set"):
        quantize_model(toy, "rtn", "w8a8", None, {"act_static": True})
    # a config can ask for calibration whatever the activations: QuaRot with GPTQ weights, not with RTN ones
    with pytest.raises(ConfigError, match="needs a calibration set for its statistics"):
        quantize_model(toy, "quarot", "w8a8", None)
    assert quantize_model(toy, "quarot", "w8a8", None, {"weight_method": "rtn"}).method == "quarot"


def test_impossible_scheme_errors(toy, toy_calib):
    with pytest.raises(
        ConfigError, match="group size 48 does not divide the width 64 of the weight of frame_blocks.0"
    ):
        quantize_model(toy, "rtn", "w4g48a8", toy_calib)
    with pytest.raises(UserError, match="unknown scheme"):
        quantize_model(toy, "rtn", "int4", toy_calib)
    with pytest.raises(ConfigError, match="weight bits 12"):
        quantize_model(toy, "rtn", "w12a8", toy_calib)


def test_fp_method_is_identity(toy, toy_images):
    qm = quantize_model(toy, "fp", None)
    assert qm.manifest["sites"] == {} and qm.scheme.name == "fp"
    torch.testing.assert_close(qm.predict(toy_images).depth, toy.predict(toy_images).depth, rtol=0, atol=0)


def test_run_blockwise_global_blocks_see_all_frames_and_propagation(toy, toy_calib):
    """Global blocks' linears see one scene's S*P tokens per sequence; fp propagation feeds FP outputs,
    quantized propagation feeds the calibrated block's outputs."""
    import copy

    from ptq3d.methods.registry import MethodConfig
    from ptq3d.methods.rtn import rtn_linear
    from ptq3d.quant.spec import get_scheme

    scheme = get_scheme("w4a4")
    S = toy_calib.samples[0].num_frames
    P = 5 + (32 // 8) ** 2
    for propagate in ("fp", "quantized"):
        model = copy.deepcopy(toy)
        fp_chain = []  # FP inputs of every block, by running the FP model block by block
        x, c = toy.capture_block_input(toy_calib.samples[0].images[None])
        for b in toy.blocks():
            fp_chain.append(x)
            x = b.forward(x, c)
        seen = []

        def calibrate(bd, seen=seen):
            shapes = []
            bd.collect(lambda rel, inp: shapes.append(tuple(inp.shape)), ["attn.qkv"])
            seen.append((bd.block.attention, shapes[0], bd.inputs[0].clone()))
            for rel, lin in bd.linears().items():
                bd.replace(rel, rtn_linear(lin, scheme, MethodConfig()))

        recs = run_blockwise(model, toy_calib, "aggregator", calibrate, propagate)
        assert len(recs) == 4 and all(r["sqnr_db"] < 40 for r in recs)
        for attention, shape, _ in seen:
            assert shape == ((1, S * P, 64) if attention == "global" else (S, P, 64))
        for k, (_, _, block_in) in enumerate(seen):
            same = torch.allclose(block_in, fp_chain[k], atol=1e-5)
            assert same if (propagate == "fp" or k == 0) else not same, (propagate, k)
