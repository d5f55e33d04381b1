"""Calibration time and peak memory per block, for every registered method, at VGGT-1B size.

    .venv/bin/python -m pytest benchmarks/test_fullsize_calibration.py -s
    PTQ3D_BENCH_METHODS=rtn,gptq PTQ3D_BENCH_TIMEOUT_S=1800 .venv/bin/python -m pytest benchmarks/test_fullsize_calibration.py -s

What is measured: VGGT-1B (random init; ViT-L DINOv2 encoder, width 1024, heads as published) built with an
aggregator of ONE frame + ONE global block, then of TWO of each, calibrated by each method at its paper preset
and scheme w4a4 (w4a8 for TAPTQ, whose paper has no W4A4) on one calibration scene of 2 frames at 518x392 (the
synthetic generator's `synthetic-heldout-518` scene 0). Each method runs in its own process, so its peak resident
memory is its own. From the two depths:

    per block pair  = t(2 pairs) - t(1 pair)                   (seconds)
    fixed cost      = t(1 pair) - per block pair                 (the encoder pass, the heads, Fisher / task passes)
    48 blocks       = fixed cost + 24 x per block pair
    peak memory     = peak(1 pair) + 23 x max(peak(2 pairs) - peak(1 pair), fp32 weights of one pair)

The paper's calibration sizes (e.g. QuantVGGT 40 x 10 frames, FGQ 64 x 4) multiply the iterative methods'
per-pair time by their sample count: the table in the README states one scene of 2 frames. A method that does
not finish within PTQ3D_BENCH_TIMEOUT_S (default 900 s) per depth is reported as "not finished", never
estimated. Torch runs one thread on CPU (PTQ3D_BENCH_THREADS overrides); on a GPU, CUDA peak bytes are reported.
Results: printed, and written as JSON to $PTQ3D_BENCH_OUT (default benchmarks/out/fullsize_calibration.json).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PAIRS = (1, 2)
FULL_PAIRS = 24
SCHEME = {"taptq": "w4a8"}  # TAPTQ reports W4A8 / W6A6 / W8A8 only
DEFAULT_SCHEME = "w4a4"

CHILD = textwrap.dedent(
    """
    import dataclasses, json, sys, time
    import torch
    torch.set_num_threads(int(sys.argv[4]))
    from ptq3d.datasets import load_protocol_scenes
    from ptq3d.calibration.sets import build_random
    from ptq3d.methods import quantize_model
    from ptq3d.methods.registry import get_method
    from ptq3d.models import load_model
    from ptq3d.models.vggt import VGGTConfig
    from ptq3d.quant.stats import PeakMemory

    method, scheme, pairs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cfg = dataclasses.replace(VGGTConfig.vggt_1b(), depth=pairs, dpt_intermediate_layer_idx=(0, 0, 0, pairs - 1))
    torch.manual_seed(0)
    model = load_model(cfg)
    agg = model.module.aggregator
    pair_param_bytes = sum(
        p.numel() * p.element_size() for b in (agg.frame_blocks[0], agg.global_blocks[0]) for p in b.parameters()
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.module.to(device)
    scene = load_protocol_scenes("synthetic-heldout-518", limit=1)[0]
    two = dataclasses.replace(
        scene,
        images=scene.images[:2], depth=scene.depth[:2], valid_mask=scene.valid_mask[:2],
        intrinsics=scene.intrinsics[:2], extrinsics=scene.extrinsics[:2],
        points=None if scene.points is None else scene.points[:2],
    )
    calib = build_random([two], n=1, seed=0)
    defaults = get_method(method).calibration_defaults("paper")
    scope = defaults.get("scope", "aggregator")
    config = {"epochs": defaults["epochs"]} if "epochs" in defaults else None
    t0 = time.perf_counter()
    with PeakMemory() as pm:
        q = quantize_model(model, method, scheme, calibration=calib, config=config, scope=scope, inplace=True)
    wall = time.perf_counter() - t0
    print(json.dumps({"wall_s": wall, "peak_rss_bytes": pm.peak_rss_bytes, "cuda_peak_bytes": pm.cuda_peak_bytes,
                      "scope": scope, "blocks": len(q.stats.blocks),
                      "pair_param_bytes": pair_param_bytes}))
    """
)


def _methods() -> list[str]:
    from ptq3d.methods.registry import list_methods

    wanted = os.environ.get("PTQ3D_BENCH_METHODS")
    names = [m for m in list_methods() if m != "fp"]
    return [m.strip() for m in wanted.split(",")] if wanted else names


def _run(method: str, pairs: int, timeout: float, threads: int) -> dict:
    scheme = SCHEME.get(method, DEFAULT_SCHEME)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, method, scheme, str(pairs), str(threads)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"status": f"not finished in {timeout:.0f} s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"status": f"failed: {last}"}
    return {"status": "ok", **json.loads(proc.stdout.strip().splitlines()[-1])}


def extrapolate(one: dict, two: dict) -> dict:
    """48-block (24-pair) estimates from the 1-pair and 2-pair measurements (see the module docstring)."""
    pair_s = two["wall_s"] - one["wall_s"]
    fixed_s = one["wall_s"] - pair_s
    # the resident-memory difference of two processes is allocator noise next to one block pair's weights
    # (~100 MB at VGGT-1B size): the 23 more pairs cost at least their fp32 weights
    pair_b = max(two["peak_rss_bytes"] - one["peak_rss_bytes"], one.get("pair_param_bytes", 0))
    out = {
        "per_pair_s": pair_s,
        "fixed_s": fixed_s,
        "full_s": fixed_s + FULL_PAIRS * pair_s,
        "per_pair_rss_bytes": pair_b,
        "full_peak_rss_bytes": one["peak_rss_bytes"] + (FULL_PAIRS - 1) * pair_b,
    }
    if one.get("cuda_peak_bytes") is not None and two.get("cuda_peak_bytes") is not None:
        pair_c = two["cuda_peak_bytes"] - one["cuda_peak_bytes"]
        out["full_cuda_peak_bytes"] = one["cuda_peak_bytes"] + (FULL_PAIRS - 1) * pair_c
    return out


def test_extrapolation_arithmetic():
    one = {"wall_s": 10.0, "peak_rss_bytes": 5_000, "cuda_peak_bytes": None, "pair_param_bytes": 100}
    two = {"wall_s": 13.0, "peak_rss_bytes": 5_400, "cuda_peak_bytes": None}
    e = extrapolate(one, two)
    assert (e["per_pair_s"], e["fixed_s"], e["full_s"]) == (3.0, 7.0, 7.0 + 24 * 3.0)
    assert e["full_peak_rss_bytes"] == 5_000 + 23 * 400
    # a smaller RSS difference than the pair's weights is noise: the weights count
    assert extrapolate({**one, "pair_param_bytes": 1_000}, two)["full_peak_rss_bytes"] == 5_000 + 23 * 1_000


@pytest.mark.slow
def test_fullsize_calibration_per_block():
    timeout = float(os.environ.get("PTQ3D_BENCH_TIMEOUT_S", "900"))
    threads = int(os.environ.get("PTQ3D_BENCH_THREADS", "1"))
    out_path = Path(
        os.environ.get("PTQ3D_BENCH_OUT", Path(__file__).parent / "out" / "fullsize_calibration.json")
    )
    results = {}
    for method in _methods():
        runs = {}
        for pairs in PAIRS:
            runs[pairs] = _run(method, pairs, timeout, threads)
            if runs[pairs]["status"] != "ok":
                break
        row = {"scheme": SCHEME.get(method, DEFAULT_SCHEME), "runs": runs}
        if all(runs.get(p, {}).get("status") == "ok" for p in PAIRS):
            est = extrapolate(runs[1], runs[2])
            if est["per_pair_s"] > 0:
                row.update(est)
            else:  # machine noise larger than one block pair's cost: no number rather than a wrong one
                runs[2]["status"] = (
                    f"unmeasurable: 2 pairs took {runs[2]['wall_s']:.1f} s, 1 pair {runs[1]['wall_s']:.1f} s "
                    "(machine noise exceeds a block pair's cost; rerun on a quieter machine)"
                )
        results[method] = row
        done = row.get("full_s")
        print(
            f"{method:12s} {row['scheme']}: "
            + (
                f"pair {row['per_pair_s']:.1f} s, fixed {row['fixed_s']:.1f} s, 48 blocks {done / 3600:.2f} h, "
                f"peak RSS 48 blocks {row['full_peak_rss_bytes'] / 2**30:.1f} GiB"
                if done is not None
                else "; ".join(f"{p} pair(s): {r['status']}" for p, r in runs.items())
            ),
            flush=True,
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({"threads": threads, "methods": results}, indent=2))
    assert results, "no method measured"
    # every measured method's 2-pair model is at least as costly as its 1-pair one (a sanity check on the data)
    for method, row in results.items():
        if "per_pair_s" in row:
            assert row["runs"][2]["wall_s"] > 0 and row["runs"][1]["wall_s"] > 0, method
