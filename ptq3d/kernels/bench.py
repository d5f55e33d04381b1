"""Kernel benchmarks at VGGT shapes: time, achieved TOPS and fraction of the device's dense peak.

Shapes: M = 1374 * S tokens (518 x 518 frames: 37 * 37 patches + 5 special tokens) for S frames, and the
aggregator linears' (K, N): qkv 1024 -> 3072, fc1 1024 -> 4096, fc2 4096 -> 1024.

Every case of one shape runs in the same process on the same data, so the ratios between cases
(`speedup_vs_fp32`, `speedup_vs_bf16`, from median latencies) are the numbers to compare
(notes/performance.md: baseline against BF16; FP32 only for reference). Each record carries its timing
statistics (ptq3d.kernels.timing.TimingStats: median, min, max, repeats, load average, allocator) and the
backend that ran it ("torch-cpu", "emulated-cpu", "triton"). Run the benchmark in a process that called
`timing.retain_freed_memory()` (`ptq3d bench` does): with glibc's defaults the > 32 MiB outputs of the
larger shapes are mmap'ed and page-faulted on every call, which measured the same emulated W8A8 call at
27 or 37-43 ms (issue 16). Cases:
- torch_fp32 / torch_bf16 / torch_fp16: x @ W^T (fp16 is skipped on CPU, where torch has no fast kernel);
- torch_int8: torch._int_mm on pre-quantized int8 operands; torch_fp8: torch._scaled_mm (e4m3, unit scales);
- emulated_w8a8 / emulated_w4a8: the `emulated` backend end to end from float activations (per-token
  quantization + integer GEMM + epilogue); emulated_w4a16: dequantize + float32 matmul;
- triton_*: the Triton kernels, end to end likewise (CUDA only: interpreter timings mean nothing);
- *_hadamard_quant: the rotation + per-token quantization of x [M, K] alone (time only, no TOPS).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from ptq3d.kernels import emulated
from ptq3d.kernels.packing import pack_weight, quantize_weight_rtn
from ptq3d.kernels.timing import allocator_info, backend_label, cpu_count, time_callable

VGGT_TOKENS_PER_FRAME = 1374
VGGT_LINEARS: dict[str, tuple[int, int]] = {"qkv": (1024, 3072), "fc1": (1024, 4096), "fc2": (4096, 1024)}
FULL_FRAMES = (1, 2, 8, 32)
CPU_FRAMES = (1, 2)

# Dense tensor-core peaks, TFLOPS / TOPS (notes/performance.md section 2). Matched on the CUDA device name.
DEVICE_PEAKS: dict[str, dict[str, float]] = {
    "H100 80GB HBM3": {"bf16": 989.4, "fp16": 989.4, "fp8": 1979.0, "int8": 1979.0},  # SXM
    "H200": {"bf16": 989.4, "fp16": 989.4, "fp8": 1979.0, "int8": 1979.0},
    "A100-SXM4": {"bf16": 312.0, "fp16": 312.0, "int8": 624.0},
    "RTX 4090": {"bf16": 165.2, "fp16": 165.2, "fp8": 330.0, "int8": 660.6},  # FP32 accumulation
}

CASES = (
    "torch_fp32",
    "torch_bf16",
    "torch_fp16",
    "torch_int8",
    "torch_fp8",
    "emulated_w8a8",
    "emulated_w4a8",
    "emulated_w4a16",
    "triton_w8a8",
    "triton_w4a8",
    "triton_w4a16",
    "emulated_hadamard_quant",
    "triton_hadamard_quant",
)
_PEAK_KIND = {
    "torch_fp32": "fp32",
    "torch_bf16": "bf16",
    "torch_fp16": "fp16",
    "torch_int8": "int8",
    "torch_fp8": "fp8",
    "emulated_w8a8": "int8",
    "emulated_w4a8": "int8",
    "emulated_w4a16": "fp32",
    "triton_w8a8": "int8",
    "triton_w4a8": "int8",  # no int4 tensor cores on Hopper: int4 codes run on the int8 path
    "triton_w4a16": "bf16",
    "emulated_hadamard_quant": None,  # not a GEMM of this shape: time only
    "triton_hadamard_quant": None,
}


@dataclass(frozen=True)
class GemmShape:
    """One linear layer at S frames: y [M, N] = x [M, K] @ W[N, K]^T."""

    layer: str
    frames: int
    m: int
    k: int
    n: int

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n


def vggt_shapes(
    frames: tuple[int, ...] = CPU_FRAMES, layers: tuple[str, ...] | None = None
) -> list[GemmShape]:
    """The VGGT aggregator GEMMs at each frame count."""
    names = layers or tuple(VGGT_LINEARS)
    unknown = [n for n in names if n not in VGGT_LINEARS]
    if unknown:
        from ptq3d.errors import unknown_name_error

        raise unknown_name_error("VGGT layer", unknown[0], VGGT_LINEARS)
    return [
        GemmShape(name, s, VGGT_TOKENS_PER_FRAME * s, *VGGT_LINEARS[name]) for s in frames for name in names
    ]


def device_info(device: torch.device) -> dict:
    """Device name, matched dense peaks (or None where we have no sourced number), threads, load."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peaks = next((p for key, p in DEVICE_PEAKS.items() if key in name), None)
        return {
            "device": name,
            "peaks_tflops": peaks,
            "torch": torch.__version__,
            "allocator": allocator_info(),
        }
    info = {
        "device": cpu_name(),
        "peaks_tflops": None,  # no sourced peak for this CPU
        "threads": torch.get_num_threads(),
        "cpu_count": cpu_count(),
        "torch": torch.__version__,
        "allocator": allocator_info(),
    }
    if hasattr(os, "getloadavg"):
        info["loadavg"] = list(os.getloadavg())
    return info


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (else platform's best guess)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def case_backend(case: str, device: torch.device) -> str:
    """The backend label of a case's timing: 'torch-<device>', 'emulated-<device>' or 'triton'."""
    if case.startswith("torch_"):
        return f"torch-{device.type}"
    return backend_label(case.split("_", 1)[0], device)


def time_fn(
    fn: Callable[[], object],
    device: torch.device,
    warmup: int = 2,
    min_reps: int = 5,
    min_time_s: float = 0.5,
    backend: str | None = None,
) -> dict:
    """Time fn (ptq3d.kernels.timing.time_callable). Returns {median_s, min_s, max_s, reps, load_avg,
    overloaded, backend}."""
    st = time_callable(fn, warmup, min_reps, device=device, backend=backend, min_time_s=min_time_s)
    return {"median_s": st.median_s, "min_s": st.min_s, "max_s": st.max_s, "reps": st.n,
            "load_avg": st.load_avg, "overloaded": st.overloaded, "backend": st.backend}  # fmt: skip


@dataclass
class GemmOperands:
    """Random operands of one shape, built once and shared by every case."""

    x: torch.Tensor  # float32 [M, K]
    w: torch.Tensor  # float32 [N, K]
    packed8: object = None
    packed4: object = None
    packed4g: object = None
    extra: dict = field(default_factory=dict)


def make_operands(shape: GemmShape, device: torch.device, seed: int = 0) -> GemmOperands:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape.m, shape.k, generator=g).to(device)
    w = (torch.randn(shape.n, shape.k, generator=g) / shape.k**0.5).to(device)
    q8, s8, _ = quantize_weight_rtn(w, 8)
    q4, s4, _ = quantize_weight_rtn(w, 4)
    q4g, s4g, _ = quantize_weight_rtn(w, 4, 128)
    return GemmOperands(
        x, w, pack_weight(q8, s8, None, 8), pack_weight(q4, s4, None, 4), pack_weight(q4g, s4g, None, 4)
    )


def _case_fn(case: str, ops: GemmOperands, device: torch.device) -> Callable[[], object]:
    """A zero-argument callable running `case`, or raise RuntimeError(reason) to skip it."""
    x, w = ops.x, ops.w
    if case == "torch_fp32":
        return lambda: x @ w.t()
    if case in ("torch_bf16", "torch_fp16"):
        dt = torch.bfloat16 if case == "torch_bf16" else torch.float16
        if dt == torch.float16 and device.type == "cpu" and not os.environ.get("PTQ3D_BENCH_CPU_FP16"):
            raise RuntimeError("fp16 matmul has no fast CPU kernel (~100x slower than fp32 here); "
                               "set PTQ3D_BENCH_CPU_FP16=1 to time it anyway")  # fmt: skip
        xh, wh = x.to(dt), w.to(dt)
        return lambda: xh @ wh.t()
    if case == "torch_int8":
        xq, _ = emulated.quantize_per_token(x)
        wq = ops.packed8.data
        return lambda: torch._int_mm(xq, wq.t())
    if case == "torch_fp8":
        if not hasattr(torch, "float8_e4m3fn"):
            raise RuntimeError("this torch has no float8_e4m3fn")
        xf8 = x.to(torch.float8_e4m3fn)
        wf8 = w.to(torch.float8_e4m3fn)
        one = torch.tensor(1.0, device=device)

        def fp8():
            return torch._scaled_mm(xf8, wf8.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

        try:
            fp8()
        except Exception as exc:  # unsupported GPU generation or build
            raise RuntimeError(f"torch._scaled_mm failed: {str(exc).splitlines()[0]}") from exc
        return fp8
    if case == "emulated_hadamard_quant":
        return lambda: emulated.hadamard_quant(x)
    if case == "triton_hadamard_quant":
        if device.type != "cuda":
            raise RuntimeError(
                "Triton kernels are timed on CUDA only (the CPU interpreter is for correctness)"
            )
        from ptq3d.kernels import triton_hadamard

        return lambda: triton_hadamard.hadamard_quant(x)
    if case.startswith("emulated_"):
        if case == "emulated_w4a16":
            return lambda: emulated.w4a16_gemm(x, ops.packed4g)
        pw = ops.packed8 if case == "emulated_w8a8" else ops.packed4

        def emu():
            xq, xs = emulated.quantize_per_token(x)
            return emulated.gemm_int(xq, xs, pw)

        return emu
    if case.startswith("triton_"):
        if device.type != "cuda":
            raise RuntimeError(
                "Triton kernels are timed on CUDA only (the CPU interpreter is for correctness)"
            )
        from ptq3d.kernels import triton_act_quant, triton_gemm

        if case == "triton_w4a16":
            xb = x.to(torch.bfloat16)
            return lambda: triton_gemm.w4a16_gemm(xb, ops.packed4g)
        pw = ops.packed8 if case == "triton_w8a8" else ops.packed4

        def tri():
            xq, xs = triton_act_quant.quantize_per_token(x)
            return triton_gemm.gemm_int(xq, xs, pw, out_dtype=torch.bfloat16)

        return tri
    from ptq3d.errors import unknown_name_error

    raise unknown_name_error("benchmark case", case, CASES)


def bench_gemms(
    shapes: list[GemmShape],
    device: str | torch.device = "cpu",
    cases: tuple[str, ...] = CASES,
    min_time_s: float = 0.5,
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """Time every case at every shape. Returns {"device": device_info, "results": [record, ...]}.

    record: layer, frames, m, k, n, case, backend, median_s, min_s, max_s, reps, load_avg, overloaded,
    tops (2MKN / median_s / 1e12), peak_kind, peak_fraction (None without a sourced peak), speedup_vs_fp32,
    speedup_vs_bf16 (median over median, same run); or skipped: reason.
    """
    device = torch.device(device)
    info = device_info(device)
    peaks = info["peaks_tflops"] or {}
    results = []
    for shape in shapes:
        ops = make_operands(shape, device)
        rows = []
        for case in cases:
            rec = {**asdict(shape), "case": case}
            try:
                fn = _case_fn(case, ops, device)
            except RuntimeError as exc:
                rec["skipped"] = str(exc)
            else:
                with torch.no_grad():
                    rec.update(time_fn(fn, device, min_time_s=min_time_s, backend=case_backend(case, device)))
                kind = _PEAK_KIND[case]
                rec["peak_kind"] = kind
                rec["tops"] = shape.flops / rec["median_s"] / 1e12 if kind else None
                rec["peak_fraction"] = rec["tops"] / peaks[kind] if kind in peaks else None
            rows.append(rec)
            if progress:
                progress(rec)
        base = {r["case"]: r.get("median_s") for r in rows}
        for r in rows:
            if "median_s" in r:
                r["speedup_vs_fp32"] = base["torch_fp32"] / r["median_s"] if base.get("torch_fp32") else None
                r["speedup_vs_bf16"] = base["torch_bf16"] / r["median_s"] if base.get("torch_bf16") else None
        results.extend(rows)
        del ops
    return {"device": info, "results": results}
