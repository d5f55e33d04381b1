"""Per-stage wall time and peak memory.

CPU: torch allocates tensors outside Python's allocator (tracemalloc does not see them), so we use the
process resident set size. On Linux the kernel's high-water mark (VmHWM) can be reset by writing "5" to
/proc/self/clear_refs, which gives an exact per-stage peak; where that is not possible a background thread
samples the RSS every 5 ms instead. CUDA: torch.cuda.reset_peak_memory_stats / max_memory_allocated.
Stages run one at a time in a process, so process-wide peaks are per-stage peaks.
"""

from __future__ import annotations

import resource
import threading
import time

from ptq3d.results.records import StageRecord


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def current_rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS counter for this process; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmHWM") is not None
    except OSError:
        return False


def _cuda():
    try:
        import torch
    except ImportError:  # pragma: no cover
        return None
    return torch.cuda if torch.cuda.is_available() else None


class StageTimer:
    """`with StageTimer("calibrate", use_cuda=True) as t: ...` then `t.record` (a StageRecord).

    An exception inside the block marks the record failed (and propagates)."""

    def __init__(self, name: str, use_cuda: bool = False):
        self.record = StageRecord(name)
        self._use_cuda = use_cuda
        self._hwm = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampled_peak = 0

    def _poll(self) -> None:
        while not self._stop.wait(0.005):
            self._sampled_peak = max(self._sampled_peak, current_rss_bytes())

    def __enter__(self) -> StageTimer:
        cuda = _cuda() if self._use_cuda else None
        if cuda is not None:
            cuda.synchronize()
            cuda.reset_peak_memory_stats()
        self._start_rss = current_rss_bytes()
        self._hwm = _reset_hwm()
        if not self._hwm:
            self._sampled_peak = self._start_rss
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        cuda = _cuda() if self._use_cuda else None
        if cuda is not None:
            cuda.synchronize()
        self.record.wall_s = time.perf_counter() - self._t0
        if self._hwm:
            peak = (_status_kib("VmHWM") or 0) * 1024
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            peak = self._sampled_peak
        peak = max(peak, current_rss_bytes())
        self.record.cpu_peak_bytes = int(peak)
        self.record.cpu_delta_bytes = int(max(0, peak - self._start_rss))
        if cuda is not None:
            self.record.cuda_peak_bytes = int(cuda.max_memory_allocated())
        if exc_type is not None:
            self.record.status = "failed"
            self.record.note = f"{exc_type.__name__}: {exc}"
