"""Where a result came from: git commit of the ptq3d checkout, package versions, device, host."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

from ptq3d.kernels.bench import cpu_name

PACKAGES = ("ptq3d", "torch", "numpy", "scipy", "triton", "safetensors", "open3d-cpu", "evo")


@cache
def git_info() -> dict[str, Any]:
    """{"commit": sha or None, "dirty": bool or None} of the checkout ptq3d is imported from."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


@cache
def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    try:
        import torch

        out["torch"] = torch.__version__
        out["cuda"] = torch.version.cuda
    except ImportError:  # pragma: no cover
        pass
    return out


@cache
def device_info(device: str = "cpu") -> dict[str, Any]:
    """CPU model and count, and the GPU name when `device` is CUDA."""
    from ptq3d.kernels.timing import cpu_count

    info: dict[str, Any] = {
        "device": device,
        "cpu": cpu_name(),
        "cpus": cpu_count(),
        "host": platform.node(),
    }
    try:
        import torch

        if device.startswith("cuda") and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    except ImportError:  # pragma: no cover
        pass
    return info


def collect(device: str = "cpu") -> dict[str, Any]:
    """git, versions and device, plus what changes during a run: torch threads and the 1-minute load average
    (timings taken on a busy machine are not comparable)."""
    device_now = dict(device_info(device))
    try:
        import torch

        device_now["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    with contextlib.suppress(OSError):
        device_now["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return {"git": git_info(), "versions": package_versions(), "device": device_now}
