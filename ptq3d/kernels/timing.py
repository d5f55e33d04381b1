"""Latency measurement that survives a shared, noisy machine: `time_callable` -> `TimingStats`.

latency = median of `repeats` timed calls after `warmup` untimed ones, with min and max recorded, plus what
decides whether the number can be trusted:

- the load average (1 min) sampled before and after timing and the usable core count; `overloaded` is True
  when the load exceeded the cores, and a report should warn next to such a number;
- the allocator. With glibc's defaults every allocation above the dynamic mmap threshold (at most 32 MiB on
  64-bit) is mmap'ed and returned to the OS on free, so a kernel whose outputs are that large page-faults
  fresh zeroed memory on every call. Measured on this project's 2-core Xeon (1 thread, torch 2.13 CPU):
  `torch._int_mm` at M=2748, K=1024, N=3072 (a 33.8 MB int32 result) took 44 ms per call with the defaults
  and 21 ms with `retain_freed_memory()`, 20 ms writing into a preallocated output. The bench processes
  call `retain_freed_memory()` (mallopt M_MMAP_MAX = 0, M_TRIM_THRESHOLD = 1 GiB: freed buffers stay in
  the heap and are reused) and `allocator_info()` records what is in force;
- the backend label per measurement (`backend_label`), so a report never ranks "emulated-cpu" next to
  "triton" or "fake" in one column.

CUDA: the device is synchronised before and after each timed call (wall time of the whole call, including
launch overhead, which is what a user of the model waits for).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from ptq3d.errors import ConfigError

# glibc mallopt parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
RETAIN_TRIM_THRESHOLD = 1 << 30  # 1 GiB: free memory at the top of the heap is kept up to this size

_applied: dict[str, int] = {}  # mallopt settings this process applied (recorded in allocator_info)


def _libc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def retain_freed_memory(trim_threshold: int = RETAIN_TRIM_THRESHOLD) -> dict[str, int]:
    """Make glibc keep freed buffers for reuse (no mmap for large blocks, no trimming below
    `trim_threshold` bytes) for the rest of this process. Returns the settings applied ({} where the C
    library is not glibc: nothing changes, and allocator_info says so). Meant for benchmark processes: the
    process keeps up to `trim_threshold` bytes of freed memory, so its RSS no longer shrinks after a peak."""
    libc = _libc()
    if libc is None:
        return {}
    wanted = {"M_MMAP_MAX": (_M_MMAP_MAX, 0), "M_TRIM_THRESHOLD": (_M_TRIM_THRESHOLD, int(trim_threshold))}
    for name, (param, value) in wanted.items():
        if libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) != 1:
            raise ConfigError(f"retain_freed_memory: glibc mallopt({name}, {value}) failed")
        _applied[name] = value
    return dict(_applied)


def allocator_info() -> dict:
    """What allocates the tensors being timed: torch's CPU allocator goes through the C library's malloc
    (posix_memalign) unless a replacement is preloaded; CUDA tensors use torch's caching allocator."""
    libc_name, libc_version = platform.libc_ver()
    info = {
        "cpu": "torch default CPU allocator -> "
        + (f"{libc_name} {libc_version}" if libc_name else "libc malloc"),
        "mallopt": dict(_applied) or "defaults (dynamic mmap threshold <= 32 MiB, trim threshold 128 KiB)",
        "ld_preload": os.environ.get("LD_PRELOAD") or None,
    }
    env = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"}
    if env:
        info["env"] = env
    if torch.cuda.is_available():
        info["cuda"] = "torch caching allocator"
        info["cuda_alloc_conf"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or None
    return info


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def load_average() -> float | None:
    """1-minute load average, or None where the OS has none."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def backend_label(backend: str, device: torch.device | str = "cpu") -> str:
    """How a latency's backend is named in results: 'fp-cpu', 'fake-cpu', 'emulated-cpu', 'triton' (CUDA),
    'triton-interpreter' (CPU: a correctness run whose time means nothing). Compare latencies only within
    one label."""
    dev = torch.device(device).type
    if backend == "triton":
        return "triton" if dev == "cuda" else "triton-interpreter"
    if backend not in ("fp", "fake", "emulated"):
        from ptq3d.errors import unknown_name_error

        raise unknown_name_error("backend", backend, ("fp", "fake", "emulated", "triton"))
    return f"{backend}-{dev}"


@dataclass(frozen=True)
class TimingStats:
    """Repeated timings of one callable (seconds).

    median_s / min_s / max_s over n timed calls (after `warmup` untimed ones); times_s: every timed call;
    load_avg: the higher 1-min load average of before / after timing (None without one); cpu_count: usable
    cores; overloaded: load_avg > cpu_count (a report warns); allocator: allocator_info(); backend: label of
    what was timed (see backend_label), or None.
    """

    median_s: float
    min_s: float
    max_s: float
    n: int
    warmup: int
    times_s: tuple[float, ...]
    load_avg: float | None
    cpu_count: int
    allocator: dict = field(default_factory=dict)
    backend: str | None = None
    device: str = "cpu"
    threads: int = 1

    @property
    def overloaded(self) -> bool:
        return self.load_avg is not None and self.load_avg > self.cpu_count

    @property
    def median_ms(self) -> float:
        return 1e3 * self.median_s

    def as_dict(self) -> dict:
        """JSON-ready: every field plus median_ms / min_ms / max_ms / repeats (= n) and overloaded, the keys
        ptq3d.results reads from a cell's latency costs."""
        d = asdict(self)
        d["times_s"] = list(self.times_s)
        d.update(
            median_ms=1e3 * self.median_s,
            min_ms=1e3 * self.min_s,
            max_ms=1e3 * self.max_s,
            repeats=self.n,
            overloaded=self.overloaded,
        )
        return d


def _timed_call(fn: Callable[[], object], dev: torch.device) -> float:
    """Seconds of one fn() call (CUDA synchronised on both sides)."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - t0


def _stats(
    times: list[float], warmup: int, loads: list, backend: str | None, dev: torch.device
) -> TimingStats:
    loads = [v for v in loads if v is not None]
    return TimingStats(
        median_s=statistics.median(times),
        min_s=min(times),
        max_s=max(times),
        n=len(times),
        warmup=warmup,
        times_s=tuple(times),
        load_avg=max(loads) if loads else None,
        cpu_count=cpu_count(),
        allocator=allocator_info(),
        backend=backend,
        device=str(dev),
        threads=torch.get_num_threads(),
    )


def time_callable(
    fn: Callable[[], object],
    warmup: int = 2,
    repeats: int = 10,
    *,
    device: torch.device | str = "cpu",
    backend: str | None = None,
    min_time_s: float = 0.0,
    max_repeats: int = 200,
) -> TimingStats:
    """Call fn() `warmup` times untimed, then time at least `repeats` calls (more, up to max_repeats, until
    min_time_s seconds of timed calls have passed). Returns TimingStats (median, min, max, load, allocator)."""
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"time_callable: repeats={repeats} must be >= 1 and warmup={warmup} >= 0")
    dev = torch.device(device)
    load_before = load_average()
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < min_time_s and len(times) < max_repeats):
        times.append(_timed_call(fn, dev))
    return _stats(times, warmup, [load_before, load_average()], backend, dev)


def time_pair(
    reference: Callable[[], object],
    candidate: Callable[[], object],
    warmup: int = 1,
    repeats: int = 5,
    *,
    device: torch.device | str = "cpu",
    reference_backend: str | None = None,
    candidate_backend: str | None = None,
) -> tuple[TimingStats, TimingStats]:
    """Time two callables in alternation (reference, candidate, reference, ...) after `warmup` untimed calls of
    each, so load that drifts during the measurement hits both alike; e.g. the FP model and its quantized
    version in one cell. Returns (reference stats, candidate stats); speedup = ref.median_s / cand.median_s."""
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"time_pair: repeats={repeats} must be >= 1 and warmup={warmup} >= 0")
    dev = torch.device(device)
    load_before = load_average()
    for _ in range(warmup):
        reference()
        candidate()
    ref_times, cand_times = [], []
    for _ in range(repeats):
        ref_times.append(_timed_call(reference, dev))
        cand_times.append(_timed_call(candidate, dev))
    loads = [load_before, load_average()]
    return (
        _stats(ref_times, warmup, loads, reference_backend, dev),
        _stats(cand_times, warmup, loads, candidate_backend, dev),
    )
