"""Full-size VGGT-1B (random init) forward on CPU: shapes and peak memory. Minutes and ~6+ GB."""

from __future__ import annotations

import resource
import time

import pytest
import torch

from ptq3d.models import load_model


@pytest.mark.slow
def test_vggt_1b_forward_cpu():
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = load_model("vggt-1b")
    t_build = time.perf_counter() - t0
    images = torch.rand(1, 2, 3, 392, 518)
    t0 = time.perf_counter()
    pred = model.predict(images)
    t_fwd = time.perf_counter() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
    print(
        f"\nVGGT-1B random init, 2 frames 518x392, CPU fp32: build {t_build:.1f} s, forward {t_fwd:.1f} s, "
        f"peak RSS {peak_gb:.2f} GiB"
    )
    assert pred.depth.shape == (1, 2, 392, 518)
    assert pred.world_points.shape == (1, 2, 392, 518, 3)
    assert torch.isfinite(pred.depth).all() and torch.isfinite(pred.extrinsics).all()
