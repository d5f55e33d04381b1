"""ptq3d.kernels.timing: repeated timings with min / median / max, load average, allocator and backend label."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ptq3d.errors import ConfigError, UserError
from ptq3d.kernels.timing import TimingStats, allocator_info, backend_label, time_callable, time_pair


def test_time_callable_counts_calls_and_orders_stats():
    calls = []
    st = time_callable(lambda: calls.append(1), warmup=3, repeats=7, backend="emulated-cpu")
    assert len(calls) == 10 and st.n == 7 and st.warmup == 3 and len(st.times_s) == 7
    assert st.min_s <= st.median_s <= st.max_s
    assert st.min_s == min(st.times_s) and st.max_s == max(st.times_s)
    assert st.backend == "emulated-cpu" and st.cpu_count >= 1 and st.threads >= 1
    assert st.load_avg is None or st.load_avg >= 0
    assert "cpu" in st.allocator and "mallopt" in st.allocator
    d = json.loads(json.dumps(st.as_dict()))
    assert d["median_ms"] == pytest.approx(1e3 * st.median_s) and d["overloaded"] == st.overloaded
    assert d["repeats"] == 7 and d["max_ms"] == pytest.approx(1e3 * st.max_s)


def test_time_callable_min_time_adds_repeats_and_rejects_bad_counts():
    st = time_callable(lambda: sum(range(1000)), warmup=0, repeats=2, min_time_s=0.02, max_repeats=5000)
    assert 2 < st.n <= 5000  # kept calling until 0.02 s had passed
    with pytest.raises(ConfigError, match="repeats=0"):
        time_callable(lambda: None, repeats=0)


def test_overloaded_flag():
    base = dict(median_s=1.0, min_s=1.0, max_s=1.0, n=1, warmup=0, times_s=(1.0,), cpu_count=2)
    assert TimingStats(load_avg=2.5, **base).overloaded
    assert not TimingStats(load_avg=1.5, **base).overloaded
    assert not TimingStats(load_avg=None, **base).overloaded


def test_backend_labels():
    assert backend_label("emulated", "cpu") == "emulated-cpu"
    assert backend_label("fake") == "fake-cpu" and backend_label("fp") == "fp-cpu"
    assert backend_label("triton", "cuda") == "triton"
    assert backend_label("triton", "cpu") == "triton-interpreter"
    with pytest.raises(UserError, match="emulatd"):
        backend_label("emulatd")


def test_retain_freed_memory_is_recorded(tmp_path):
    """mallopt changes the whole process: checked in a child process, not in the test session."""
    code = (
        "import json; from ptq3d.kernels import timing; "
        "before = timing.allocator_info()['mallopt']; applied = timing.retain_freed_memory(); "
        "print(json.dumps([before, applied, timing.allocator_info()['mallopt']]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, applied, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert isinstance(before, str) and before.startswith("defaults")
    if applied:  # glibc
        assert applied == {"M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": 1 << 30} and after == applied
    assert isinstance(allocator_info()["mallopt"], (str, dict))


def test_time_pair_alternates_and_labels():
    order = []
    ref, cand = time_pair(lambda: order.append("r"), lambda: order.append("c"), warmup=2, repeats=4,
                          reference_backend="fp-cpu", candidate_backend="emulated-cpu")  # fmt: skip
    assert order == ["r", "c"] * 6  # 2 warm-up pairs, then 4 timed pairs, alternating
    assert ref.n == cand.n == 4 and ref.warmup == 2
    assert (ref.backend, cand.backend) == ("fp-cpu", "emulated-cpu")
    assert cand.min_s <= cand.median_s <= cand.max_s
    with pytest.raises(ConfigError, match="repeats=0"):
        time_pair(lambda: None, lambda: None, repeats=0)
