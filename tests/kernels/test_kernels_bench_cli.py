"""The benchmark module and `ptq3d bench` (tiny settings: structure, not speed)."""

from __future__ import annotations

import json

import pytest
import torch

from ptq3d.harness.cli import main
from ptq3d.kernels import bench


def test_vggt_shapes():
    shapes = bench.vggt_shapes((1, 2))
    assert [(s.layer, s.m, s.k, s.n) for s in shapes[:3]] == [
        ("qkv", 1374, 1024, 3072), ("fc1", 1374, 1024, 4096), ("fc2", 1374, 4096, 1024)]  # fmt: skip
    assert shapes[3].m == 2748
    assert [s.frames for s in bench.vggt_shapes(bench.FULL_FRAMES, ("fc2",))] == [1, 2, 8, 32]


def test_bench_gemms_records_on_small_shape():
    shape = bench.GemmShape("toy", 1, 64, 256, 128)
    res = bench.bench_gemms([shape], "cpu", ("torch_fp32", "torch_bf16", "emulated_w8a8", "triton_w8a8",
                                               "emulated_hadamard_quant"), min_time_s=0.0)  # fmt: skip
    rows = {r["case"]: r for r in res["results"]}
    assert rows["torch_fp32"]["speedup_vs_fp32"] == 1.0
    emu = rows["emulated_w8a8"]
    assert emu["tops"] == pytest.approx(shape.flops / emu["median_s"] / 1e12)
    assert emu["min_s"] <= emu["median_s"] <= emu["max_s"] and emu["reps"] >= 5
    assert emu["backend"] == "emulated-cpu" and rows["torch_fp32"]["backend"] == "torch-cpu"
    assert "allocator" in res["device"] and res["device"]["cpu_count"] >= 1
    assert rows["emulated_w8a8"]["peak_fraction"] is None  # no sourced CPU peak
    assert rows["emulated_hadamard_quant"]["tops"] is None
    if not torch.cuda.is_available():
        assert "CUDA only" in rows["triton_w8a8"]["skipped"]
    assert res["device"]["threads"] >= 1


def test_cli_bench_kernels_writes_json(tmp_path, capsys):
    out = tmp_path / "k.json"
    rc = main(["bench", "kernels", "--device", "cpu", "--frames", "1", "--layers", "qkv",
               "--cases", "torch_fp32,emulated_w8a8,triton_w4a8", "--min-time", "0", "--out", str(out),
               "--allocator", "default"])  # fmt: skip
    assert rc == 0
    res = json.loads(out.read_text())
    assert {r["case"] for r in res["results"]} == {"torch_fp32", "emulated_w8a8", "triton_w4a8"}
    assert "speedups" in capsys.readouterr().out


def test_cli_bench_errors(capsys):
    assert main(["bench", "kernels", "--frames", "0"]) == 2
    assert main(["bench", "kernels", "--cases", "torch_fp33"]) == 2
    assert "did you mean 'torch_fp32'" in capsys.readouterr().err
    assert main(["bench", "model", "--size", "100"]) == 2


def test_cli_bench_model_tiny(tmp_path):
    out = tmp_path / "m.json"
    rc = main(["bench", "model", "--device", "cpu", "--size", "28", "--frames", "1", "--reps", "1",
               "--scheme", "w4g64a8", "--threads", "1", "--out", str(out), "--allocator", "default"])  # fmt: skip
    assert rc == 0
    res = json.loads(out.read_text())
    variants = [r["variant"] for r in res["latency"]]
    assert variants == ["fp32", "bf16-autocast", "rtn-w4g64a8/fake", "rtn-w4g64a8/emulated"]
    assert [r["backend"] for r in res["latency"]] == ["fp-cpu", "fp-cpu", "fake-cpu", "emulated-cpu"]
    assert all(r["min_s"] <= r["median_s"] <= r["max_s"] for r in res["latency"])
    assert res["latency"][0]["speedup_vs_fp32"] == 1.0
    w = res["weights"]
    assert w["quant_sites"] == 16 and w["quant_ratio"] < 0.3
    assert w["model_bytes_quantized"] < w["model_bytes_fp16"]
