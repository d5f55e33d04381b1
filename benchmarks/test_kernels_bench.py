"""pytest-benchmark timings of the quantized kernels at VGGT shapes (not part of the default test run).

    .venv/bin/python -m pytest benchmarks/test_kernels_bench.py --benchmark-only
    PTQ3D_BENCH_FULL=1 ...   # all frame counts S = 1, 2, 8, 32 (default on CPU: S = 1, 2)

On CPU the benchmarks use one torch thread (PTQ3D_BENCH_THREADS overrides): on a shared machine, two
OpenMP threads make every elementwise op wait for a descheduled thread, which distorts the quantization
and epilogue passes far more than the GEMMs. The process keeps freed memory for reuse (glibc mallopt, see
ptq3d.kernels.timing), so large outputs are not page-faulted afresh per call. Each case's TOPS goes to the
benchmark's extra_info. `test_w8a8_emulated_vs_fp32_ratio` measures the CPU
acceptance number (emulated W8A8 vs FP32 matmul, same run) and asserts only that integer math wins.
"""

from __future__ import annotations

import functools
import os

import pytest
import torch

from ptq3d.kernels import bench
from ptq3d.kernels.timing import retain_freed_memory

# a benchmark process: keep freed buffers for reuse, as `ptq3d bench` does (ptq3d.kernels.timing)
retain_freed_memory()

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FRAMES = (
    bench.FULL_FRAMES if os.environ.get("PTQ3D_BENCH_FULL") or DEVICE.type == "cuda" else bench.CPU_FRAMES
)
SHAPES = bench.vggt_shapes(FRAMES)


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    if DEVICE.type == "cpu":
        torch.set_num_threads(int(os.environ.get("PTQ3D_BENCH_THREADS", "1")))
    yield
    torch.set_num_threads(before)


@functools.lru_cache(maxsize=1)
def _operands(shape: bench.GemmShape) -> bench.GemmOperands:
    return bench.make_operands(shape, DEVICE)


@pytest.mark.parametrize("case", bench.CASES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s.layer}-S{s.frames}")
def test_kernel(benchmark, shape, case):
    try:
        fn = bench._case_fn(case, _operands(shape), DEVICE)
    except RuntimeError as exc:
        pytest.skip(str(exc))

    def run():
        out = fn()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return out

    with torch.no_grad():
        benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(m=shape.m, k=shape.k, n=shape.n, flops=shape.flops)
    if bench._PEAK_KIND[case]:
        benchmark.extra_info["tops_min"] = shape.flops / benchmark.stats.stats.min / 1e12


def test_w8a8_emulated_vs_fp32_ratio(benchmark):
    """W8A8 through the emulated int8 path (per-token quantization + int GEMM + epilogue) vs FP32 matmul,
    measured in one run at each shape; the ratios land in extra_info and are printed."""
    cases = ("torch_fp32", "torch_bf16", "torch_int8", "emulated_w8a8", "emulated_w4a8")
    res = benchmark.pedantic(
        lambda: bench.bench_gemms(SHAPES, DEVICE, cases, min_time_s=1.0), rounds=1, iterations=1
    )
    ratios = {}
    for r in res["results"]:
        if r["case"] in ("emulated_w8a8", "emulated_w4a8", "torch_int8"):
            ratios[f"{r['layer']}-S{r['frames']}-{r['case']}"] = (r["speedup_vs_fp32"], r["speedup_vs_bf16"])
    benchmark.extra_info["speedup_vs_fp32_bf16"] = ratios
    benchmark.extra_info["device"] = res["device"]
    for k, (v32, v16) in ratios.items():
        print(f"{k}: {v32:.2f}x vs fp32, {v16:.2f}x vs bf16")
    w8 = [v32 for k, (v32, _) in ratios.items() if k.endswith("emulated_w8a8")]
    assert min(w8) > 1.0, ratios  # integer GEMM + quantization beats fp32 matmul at every VGGT shape
