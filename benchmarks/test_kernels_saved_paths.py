"""Issue 16.3's bit-exact savings and allocator setting, measured as ratios in one run (not a unit test).

    .venv/bin/python -m pytest benchmarks/test_kernels_saved_paths.py --benchmark-only -s
    .venv/bin/python benchmarks/test_kernels_saved_paths.py          # the same, printed as a table

Compared at VGGT shapes (M = 1374 * S tokens, one torch thread), each pair on the same operands:
- quantize_per_token: `torch.aminmax(dim=-1)` (before) vs separate amin + amax (now);
- gemm_int epilogue: int32 -> new float32 buffer (before) vs in-place conversion in the int32 buffer (now);
- the emulated W8A8 / W4A8 layer (quantize + GEMM + epilogue): before vs now;
- the allocator: the now-layer in a child process with glibc's defaults vs `retain_freed_memory()`.
Every "before" output is checked equal to "now" (the savings are bit-exact). Ratios are now / before
(< 1 = faster) of medians and of minima, before and now timed call by call in alternation; the highest load
average seen while timing is printed with them (above the core count, trust the minima more).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import pytest
import torch

from ptq3d.kernels import emulated
from ptq3d.kernels.bench import make_operands, vggt_shapes
from ptq3d.kernels.timing import time_callable

FRAMES = (1, 2)
LAYERS = ("qkv", "fc1", "fc2")
REPEATS = int(os.environ.get("PTQ3D_BENCH_REPEATS", "9"))


def quantize_per_token_before(x: torch.Tensor, bits: int = 8, clip_ratio: float = 1.0):
    """The pre-issue-16 per-token quantizer (one torch.aminmax pass)."""
    lo, hi = emulated.qrange(bits)
    xf = x.to(torch.float32)
    mn, mx = torch.aminmax(xf, dim=-1)
    scale = emulated.dynamic_scale(torch.maximum(-mn, mx), bits, clip_ratio)
    v = xf / scale[:, None]
    return v.clamp_(lo, hi).round_().to(torch.int8), scale


def gemm_int_before(xq, x_scale, w, bias=None, out_dtype=torch.float32):
    """The pre-issue-16 epilogue: a second [M, N] float32 buffer per group."""
    acc = None
    for i, p in enumerate(emulated.gemm_int_accumulators(xq, w)):
        term = p.to(torch.float32).mul_(w.scale[:, i][None, :])
        acc = term if acc is None else acc.add_(term)
    acc.mul_(x_scale.to(torch.float32).reshape(-1, 1))
    if bias is not None:
        acc.add_(bias.to(torch.float32))
    return acc.to(out_dtype)


def _pairs(ops, bits: int):
    pw = ops.packed8 if bits == 8 else ops.packed4
    xq, xs = emulated.quantize_per_token(ops.x)
    return {
        "quantize_per_token": (
            lambda: quantize_per_token_before(ops.x),
            lambda: emulated.quantize_per_token(ops.x),
        ),
        f"gemm_int_w{bits}a8": (lambda: gemm_int_before(xq, xs, pw), lambda: emulated.gemm_int(xq, xs, pw)),
        f"layer_w{bits}a8": (
            lambda: gemm_int_before(*quantize_per_token_before(ops.x), pw),
            lambda: emulated.gemm_int(*emulated.quantize_per_token(ops.x), pw),
        ),
    }


def _same(a, b) -> bool:
    if isinstance(a, tuple):
        return all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    return torch.equal(a, b)


def ab_timings(before, now, repeats: int) -> dict:
    """Alternate before / now call by call (after one warm-up each), so load that drifts during the run
    hits both alike. Returns before/now median and min (ms), the ratios now/before of both, and the
    highest load average seen (time_callable samples it)."""
    sb = time_callable(before, warmup=1, repeats=1)
    sn = time_callable(now, warmup=1, repeats=1)
    tb, tn = list(sb.times_s), list(sn.times_s)
    loads = [sb.load_avg or 0.0, sn.load_avg or 0.0]
    for _ in range(repeats - 1):
        a = time_callable(before, warmup=0, repeats=1)
        b = time_callable(now, warmup=0, repeats=1)
        tb += a.times_s
        tn += b.times_s
        loads += [a.load_avg or 0.0, b.load_avg or 0.0]
    med = statistics.median
    return {"before_ms": 1e3 * med(tb), "now_ms": 1e3 * med(tn), "ratio": med(tn) / med(tb),
            "before_min_ms": 1e3 * min(tb), "now_min_ms": 1e3 * min(tn), "min_ratio": min(tn) / min(tb),
            "load_avg": max(loads)}  # fmt: skip


def compare_saved_paths(frames=FRAMES, layers=LAYERS, repeats: int = REPEATS) -> list[dict]:
    """[{shape, what, before_ms, now_ms, ratio, before_min_ms, now_min_ms, min_ratio, load_avg, bit_exact}]."""
    rows = []
    with torch.no_grad():
        for shape in vggt_shapes(frames, layers):
            ops = make_operands(shape, torch.device("cpu"))
            for bits in (8, 4):
                for what, (before, now) in _pairs(ops, bits).items():
                    if bits == 4 and what == "quantize_per_token":
                        continue
                    exact = _same(before(), now())
                    rows.append({"shape": f"{shape.layer} S={shape.frames} M={shape.m}", "what": what,
                                 **ab_timings(before, now, repeats), "bit_exact": exact})  # fmt: skip
    return rows


_CHILD = """
import json, sys, torch
from ptq3d.kernels import emulated, timing
from ptq3d.kernels.bench import make_operands, vggt_shapes
torch.set_num_threads(1)
if sys.argv[1] == "retain":
    timing.retain_freed_memory()
out = {}
for shape in vggt_shapes((1, 2), ("qkv", "fc1", "fc2")):
    ops = make_operands(shape, torch.device("cpu"))
    with torch.no_grad():
        st = timing.time_callable(lambda: emulated.gemm_int(*emulated.quantize_per_token(ops.x), ops.packed8),
                                  warmup=1, repeats=int(sys.argv[2]), backend="emulated-cpu")
    out[f"{shape.layer} S={shape.frames} M={shape.m}"] = [st.median_s, st.min_s, st.max_s, st.load_avg]
print(json.dumps({"allocator": timing.allocator_info()["mallopt"], "t": out}))
"""


def compare_allocator(repeats: int = REPEATS) -> list[dict]:
    """The emulated W8A8 layer under glibc's default allocator settings vs retain_freed_memory (child
    processes, alternated twice; the better median of each is kept)."""
    runs: dict[str, list[dict]] = {"default": [], "retain": []}
    for _ in range(2):
        for mode in ("default", "retain"):
            res = subprocess.run([sys.executable, "-c", _CHILD, mode, str(repeats)], capture_output=True,
                                 text=True, check=True)  # fmt: skip
            runs[mode].append(json.loads(res.stdout.strip().splitlines()[-1]))
    rows = []
    for key in runs["default"][0]["t"]:
        d = min(r["t"][key][0] for r in runs["default"])
        r = min(x["t"][key][0] for x in runs["retain"])
        dmin = min(x["t"][key][1] for x in runs["default"])
        rmin = min(x["t"][key][1] for x in runs["retain"])
        load = max(x["t"][key][3] or 0 for x in runs["default"] + runs["retain"])
        rows.append({"shape": key, "what": "layer_w8a8 allocator", "before_ms": 1e3 * d, "now_ms": 1e3 * r,
                     "ratio": r / d, "before_min_ms": 1e3 * dmin, "now_min_ms": 1e3 * rmin,
                     "min_ratio": rmin / dmin, "load_avg": load, "bit_exact": None})  # fmt: skip
    return rows


def print_rows(rows: list[dict]) -> None:
    print(f"{'shape':<22} {'what':<22} {'before ms':>10} {'now ms':>9} {'now/before':>10} "
          f"{'min: before':>11} {'now':>8} {'ratio':>6} {'load':>5} exact")  # fmt: skip
    for r in rows:
        print(f"{r['shape']:<22} {r['what']:<22} {r['before_ms']:10.2f} {r['now_ms']:9.2f} {r['ratio']:10.2f} "
              f"{r['before_min_ms']:11.2f} {r['now_min_ms']:8.2f} {r['min_ratio']:6.2f} "
              f"{r['load_avg']:5.1f} {r['bit_exact']}")  # fmt: skip
    print(f"({torch.get_num_threads()} torch thread(s), {os.cpu_count()} cores)")


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_saved_paths_bit_exact_and_ratios(benchmark):
    rows = benchmark.pedantic(compare_saved_paths, rounds=1, iterations=1)
    print_rows(rows)
    benchmark.extra_info["rows"] = rows
    assert all(r["bit_exact"] for r in rows)


def test_allocator_ratio(benchmark):
    rows = benchmark.pedantic(compare_allocator, rounds=1, iterations=1)
    print_rows(rows)
    benchmark.extra_info["rows"] = rows


if __name__ == "__main__":
    torch.set_num_threads(1)
    print_rows(compare_saved_paths() + compare_allocator())
