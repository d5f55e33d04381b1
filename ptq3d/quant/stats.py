"""Calibration statistics: wall time, peak memory, per-layer and per-block error records.

Peak memory: torch's CPU tensors are allocated outside Python's allocator, so tracemalloc does not see
them; we sample the process resident set size (RSS, /proc/self/statm) in a background thread every
`interval` seconds and report the peak and the peak minus the RSS at start. On CUDA we also report
torch.cuda.max_memory_allocated over the section.
"""

from __future__ import annotations

import math
import os
import resource
import threading
from dataclasses import dataclass, field
from typing import Any

import torch


def current_rss_bytes() -> int:
    """Resident set size of this process in bytes (Linux /proc; elsewhere the lifetime peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Context manager: `with PeakMemory() as pm: ...` then pm.peak_rss_bytes, pm.delta_rss_bytes,
    pm.cuda_peak_bytes (None without CUDA)."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.start_rss_bytes = 0
        self.peak_rss_bytes = 0
        self.cuda_peak_bytes: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_rss_bytes = max(self.peak_rss_bytes, current_rss_bytes())

    def __enter__(self) -> PeakMemory:
        self.start_rss_bytes = self.peak_rss_bytes = current_rss_bytes()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_rss_bytes = max(self.peak_rss_bytes, current_rss_bytes())
        if torch.cuda.is_available():
            self.cuda_peak_bytes = int(torch.cuda.max_memory_allocated())

    @property
    def delta_rss_bytes(self) -> int:
        return self.peak_rss_bytes - self.start_rss_bytes


def _finite(v: Any) -> Any:
    """JSON-safe floats (inf -> 'inf')."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _jsonable(v: Any) -> Any:
    """Nested dicts/lists of numbers and strings with non-finite floats as strings (as _finite does)."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "tolist"):  # numpy / torch scalars and arrays
        return _jsonable(v.tolist())
    return _finite(v)


@dataclass
class CalibrationStats:
    """What one quantize_model call measured. layers: name -> record (sqnr_db, rel_mse, time_s, ...);
    blocks: list of records (name, kind, sqnr_db, rel_mse) in execution order; extra: method-specific,
    JSON-serialisable summaries (e.g. FGQ's Fisher statistics and the Fisher pass's own cost)."""

    wall_time_s: float = 0.0
    peak_rss_bytes: int = 0
    delta_rss_bytes: int = 0
    cuda_peak_bytes: int | None = None
    num_calibration_samples: int = 0
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    blocks: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def layer(self, name: str, **fields: Any) -> None:
        """Merge fields into the record of layer `name`; numeric fields named *time_s accumulate."""
        rec = self.layers.setdefault(name, {})
        for k, v in fields.items():
            if k.endswith("time_s") and k in rec:
                rec[k] += v
            else:
                rec[k] = v

    def to_dict(self) -> dict[str, Any]:
        return {
            "wall_time_s": self.wall_time_s,
            "peak_rss_bytes": self.peak_rss_bytes,
            "delta_rss_bytes": self.delta_rss_bytes,
            "cuda_peak_bytes": self.cuda_peak_bytes,
            "num_calibration_samples": self.num_calibration_samples,
            "layers": {n: {k: _finite(v) for k, v in r.items()} for n, r in self.layers.items()},
            "blocks": [{k: _finite(v) for k, v in r.items()} for r in self.blocks],
            "extra": _jsonable(self.extra),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CalibrationStats:
        def back(v):
            return float(v) if v in ("inf", "-inf", "nan") else v

        return cls(
            wall_time_s=d.get("wall_time_s", 0.0),
            peak_rss_bytes=d.get("peak_rss_bytes", 0),
            delta_rss_bytes=d.get("delta_rss_bytes", 0),
            cuda_peak_bytes=d.get("cuda_peak_bytes"),
            num_calibration_samples=d.get("num_calibration_samples", 0),
            layers={n: {k: back(v) for k, v in r.items()} for n, r in d.get("layers", {}).items()},
            blocks=[{k: back(v) for k, v in r.items()} for r in d.get("blocks", [])],
            extra=dict(d.get("extra", {})),
        )
