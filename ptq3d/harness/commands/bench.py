"""`ptq3d bench`: kernel and model latency / memory benchmarks.

    ptq3d bench kernels [--shapes vggt] [--frames 1,2 | --full] [--device cpu|cuda] [--out results.json]
    ptq3d bench model   [--model vggt-tiny] [--scheme w8a8] [--frames 2] [--size 518] [--device cpu|cuda]

Kernel results: every case of a shape runs in the same process, so compare ratios (speedup_vs_bf16,
speedup_vs_fp32, median over median), not absolute times across machines. Model results report weight
bytes (packed vs FP16) and peak memory separately (notes/performance.md). Every latency is the median of
repeated timings after warm-up, with min and max, the backend that ran it, the load average while timing
(a warning is printed when it exceeded the cores) and the allocator (ptq3d.kernels.timing). By default
the process keeps freed memory for reuse (`--allocator retain`: glibc mallopt M_MMAP_MAX=0,
M_TRIM_THRESHOLD=1 GiB), so a large output buffer is not page-faulted afresh on every call;
`--allocator default` keeps glibc's defaults. On a shared CPU pass --threads 1: with two OpenMP threads
and a loaded machine, the elementwise passes (quantization, epilogue) stall on descheduled threads and
the integer paths look several times slower than they are.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="benchmark quantized kernels and models (latency, memory)")
    sub = p.add_subparsers(dest="bench_what", metavar="WHAT")
    k = sub.add_parser("kernels", help="time each kernel at VGGT GEMM shapes against torch's matmuls")
    k.add_argument("--shapes", default="vggt", choices=["vggt"], help="shape set (default: vggt)")
    k.add_argument("--frames", default=None,
                   help="comma-separated frame counts S (M = 1374*S); default 1,2 on CPU, 1,2,8,32 on CUDA")  # fmt: skip
    k.add_argument("--full", action="store_true", help="all frame counts 1,2,8,32 (slow on CPU)")
    k.add_argument("--layers", default="qkv,fc1,fc2", help="VGGT linears: qkv,fc1,fc2 (default all)")
    k.add_argument(
        "--cases", default=None, help="comma-separated cases (default all; see ptq3d.kernels.bench)"
    )
    k.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda if available")
    k.add_argument(
        "--min-time", type=float, default=0.5, help="seconds of timed calls per case (default 0.5)"
    )
    k.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    k.add_argument("--allocator", default="retain", choices=["retain", "default"],
                   help="retain: keep freed buffers for reuse (default); default: glibc's settings")  # fmt: skip
    k.add_argument("--out", default=None, help="write the JSON results here")
    k.set_defaults(func=handle_kernels)
    m = sub.add_parser("model", help="end-to-end latency, peak memory and weight bytes: FP vs quantized")
    m.add_argument("--model", default="vggt-tiny")
    m.add_argument("--weights", default=None, help="checkpoint (default: the model's default / random init)")
    m.add_argument("--method", default="rtn")
    m.add_argument("--scheme", default="w8a8")
    m.add_argument("--frames", type=int, default=2)
    m.add_argument("--size", type=int, default=518, help="square input size (multiple of 14)")
    m.add_argument("--backends", default="fake,emulated", help="comma-separated: fake, emulated, triton")
    m.add_argument("--device", default=None, choices=["cpu", "cuda"])
    m.add_argument("--reps", type=int, default=5, help="timed repeats after 1 warm-up (median reported)")
    m.add_argument("--threads", type=int, default=None)
    m.add_argument("--allocator", default="retain", choices=["retain", "default"],
                   help="retain: keep freed buffers for reuse (default); default: glibc's settings")  # fmt: skip
    m.add_argument("--out", default=None)
    m.set_defaults(func=handle_model)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def _device(name: str | None):
    import torch

    from ptq3d.errors import UserError

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available (use --device cpu)")
    return torch.device(name)


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    from ptq3d.errors import UserError

    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{flag} '{text}': expected comma-separated integers") from None
    if not vals or min(vals) < 1:
        raise UserError(f"{flag} '{text}': expected positive integers")
    return vals


def _setup_allocator(choice: str) -> None:
    from ptq3d.kernels.timing import retain_freed_memory

    if choice == "retain" and not retain_freed_memory():
        print("note: --allocator retain has no effect here (not glibc); timings use the C library's defaults")


def _warn_load(records: list[dict]) -> None:
    from ptq3d.kernels.timing import cpu_count

    over = [r for r in records if r.get("overloaded")]
    if over:
        worst = max(r["load_avg"] for r in over)
        print(f"WARNING: the load average reached {worst:.1f} on {cpu_count()} cores while timing "
              f"{len(over)} of {len(records)} measurements: their latencies include waiting for a core")  # fmt: skip


def _write(out: str | None, payload: dict) -> None:
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=1))
        print(f"wrote {path}")


def handle_kernels(args: argparse.Namespace) -> int:
    import torch

    from ptq3d.errors import unknown_name_error
    from ptq3d.kernels import bench

    device = _device(args.device)
    _setup_allocator(args.allocator)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.full:
        frames = bench.FULL_FRAMES
    elif args.frames:
        frames = _int_list(args.frames, "--frames")
    else:
        frames = bench.FULL_FRAMES if device.type == "cuda" else bench.CPU_FRAMES
    shapes = bench.vggt_shapes(frames, tuple(v.strip() for v in args.layers.split(",") if v.strip()))
    cases = bench.CASES
    if args.cases:
        cases = tuple(c.strip() for c in args.cases.split(",") if c.strip())
        for c in cases:
            if c not in bench.CASES:
                raise unknown_name_error("benchmark case", c, bench.CASES)

    def show(r: dict) -> None:
        head = f"{r['layer']:>4} S={r['frames']:<3} M={r['m']:<6} K={r['k']:<5} N={r['n']:<5} {r['case']:<24}"
        if "skipped" in r:
            print(f"{head} skipped: {r['skipped']}", flush=True)
            return
        tops = f"{r['tops']:8.3f} TOPS" if r["tops"] is not None else " " * 13
        frac = f"  {100 * r['peak_fraction']:5.1f}% of peak" if r.get("peak_fraction") is not None else ""
        spread = f"[{1e3 * r['min_s']:.3f}-{1e3 * r['max_s']:.3f}]"
        print(f"{head} {1e3 * r['median_s']:9.3f} ms {spread:>19} {tops}{frac}", flush=True)

    result = bench.bench_gemms(shapes, device, cases, min_time_s=args.min_time, progress=show)
    print("speedups (same run; median over median):")
    for r in result["results"]:
        if "median_s" in r and r["case"] not in ("torch_fp32",):
            vs32 = r.get("speedup_vs_fp32")
            vs16 = r.get("speedup_vs_bf16")
            print(f"  {r['layer']:>4} S={r['frames']:<3} {r['case']:<24} "
                  f"vs fp32 {vs32 or float('nan'):6.2f}x   vs bf16 {vs16 or float('nan'):6.2f}x")  # fmt: skip
    _warn_load([r for r in result["results"] if "median_s" in r])
    result["command"] = " ".join(sys.argv)
    _write(args.out, result)
    return 0


def _time_predict(model, images, reps: int, device, backend: str, autocast_bf16: bool = False) -> dict:
    import torch

    from ptq3d.kernels.timing import time_callable
    from ptq3d.quant.stats import PeakMemory

    def run():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
            model.predict(images)

    with PeakMemory() as pm:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        # 1 warm-up call (packs integer weights on first use), then `reps` timed calls
        st = time_callable(run, warmup=1, repeats=reps, device=device, backend=backend)
    out = {"median_s": st.median_s, "min_s": st.min_s, "max_s": st.max_s, "reps": st.n, "backend": st.backend,
           "load_avg": st.load_avg, "overloaded": st.overloaded}  # fmt: skip
    if device.type == "cuda":
        out["peak_cuda_bytes"] = pm.cuda_peak_bytes
    else:
        out["peak_rss_bytes"] = pm.peak_rss_bytes
        out["peak_rss_delta_bytes"] = pm.delta_rss_bytes
    return out


def handle_model(args: argparse.Namespace) -> int:
    import torch

    from ptq3d.errors import UserError
    from ptq3d.kernels import model_bytes, set_backend
    from ptq3d.kernels.bench import device_info
    from ptq3d.methods.api import quantize_model
    from ptq3d.models import load_model

    device = _device(args.device)
    _setup_allocator(args.allocator)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.size % 14:
        raise UserError(f"--size {args.size}: must be a multiple of the patch size 14")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    fp = load_model(args.model, args.weights, device=device)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(1, args.frames, 3, args.size, args.size, generator=g).to(device)
    fp_params = sum(p.numel() for p in fp.module.parameters())
    rows = []
    from ptq3d.kernels.timing import backend_label

    def show(r: dict) -> None:
        print(f"{r['variant']:<24} {r['backend']:<18} {1e3 * r['median_s']:9.1f} ms "
              f"[{1e3 * r['min_s']:.1f}-{1e3 * r['max_s']:.1f}]", flush=True)  # fmt: skip

    fp_label = backend_label("fp", device)
    for name, kw in [("fp32", {}), ("bf16-autocast", {"autocast_bf16": True})]:
        rows.append({"variant": name, **_time_predict(fp, images, args.reps, device, fp_label, **kw)})
        show(rows[-1])
    qm = quantize_model(fp, args.method, args.scheme)
    for b in backends:
        set_backend(qm, b)
        r = _time_predict(qm, images, args.reps, device, backend_label(b, device))
        rows.append({"variant": f"{args.method}-{args.scheme}/{b}", **r})
        if b == "triton" and device.type != "cuda":
            rows[-1]["note"] = "Triton interpreter on CPU: a correctness run, its time means nothing"
        show(rows[-1])
    _warn_load(rows)
    mb = model_bytes(qm).as_dict()
    base = rows[0]["median_s"]
    for r in rows:
        r["speedup_vs_fp32"] = base / r["median_s"]
    payload = {
        "device": device_info(device),
        "model": args.model,
        "frames": args.frames,
        "size": args.size,
        "tokens_per_frame": (args.size // 14) ** 2 + 5,
        "weights": {"fp32_bytes": 4 * fp_params, "fp16_bytes": 2 * fp_params, **mb},
        "latency": rows,
        "command": " ".join(sys.argv),
    }
    print(f"weights: FP16 {mb['model_bytes_fp16'] / 1e6:.1f} MB, quantized {mb['model_bytes_quantized'] / 1e6:.1f} MB "
          f"(quantized sites {mb['quant_ratio']:.3f}x their FP16 bytes)")  # fmt: skip
    _write(args.out, payload)
    return 0
