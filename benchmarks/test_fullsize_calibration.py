"""Calibration time and peak memory per block, for every registered method, at VGGT-1B size.

    PTQ3D_BENCH_THREADS=2 .venv/bin/python -m pytest benchmarks/test_fullsize_calibration.py -m slow -s
    PTQ3D_BENCH_METHODS=rtn,gptq .venv/bin/python -m pytest benchmarks/test_fullsize_calibration.py -m slow -s

What is measured: VGGT-1B (random init; ViT-L DINOv2 encoder, width 1024, heads as published) built with an
aggregator of ONE frame and ONE global block, calibrated by each method (its "paper" preset) at w4a4 (w4a8 for
TAPTQ, whose paper has no W4A4) on one calibration scene of 2 frames at 518x392 (the synthetic generator's
`synthetic-heldout-518` scene 0), each method in its own process so that its peak resident memory is its own.
Inside that process the benchmark records, without changing any method:
- per block: its wall time (the shared block loop's record: FP forward, calibration, quantized re-run) and the
  peak resident memory while it ran (a 20 ms RSS sampler, split at the block loop's BlockData creation);
- per block: the time of every `loss.backward()`; the median gap between consecutive ones is one iteration
  (forward, backward, optimiser step) of a learned method;
- the whole call's wall time; FGQ's Fisher pass time (its own record); the time of each full-model
  `task_outputs` pass (QVGGT runs with 1 scale candidate, so none of its task-aware forwards; they are added at
  the measured forward time x the depth factor below).

Extrapolation (`extrapolate`), all of it arithmetic on the measurements above:

    block(paper)  = block(measured) + (paper iterations - measured iterations) x iteration time   (learned)
    fixed         = call wall time - frame block - global block   (input capture, encoder pass, Fisher pass)
    48 blocks     = fixed + 24 x (frame block(paper) + global block(paper))
    TAPTQ         + 24 x frame block(paper)  (its scope adds the 24 encoder blocks: same width and tokens as a
                                              frame block; calibrated here on the aggregator pair only)
    FGQ's Fisher  = Fisher(1 scene, 1 pair) x paper scenes x (24 + 48) / (24 + 2) blocks in the graph
    peak, 48 blocks = peak(1 pair) + 23 x one pair's fp32 weights

Learned methods run a few iterations (BENCH_CONFIG) and are extrapolated to their paper's counts (`paper_steps`,
read from the method's config class and CALIBRATION_DEFAULTS["paper"]). Every step here sees ONE scene of 2
frames; the papers' steps see more frames (QuantVGGT 1 x 10, FlatQuant / FGQ 2 x 4), so their per-step cost
is higher by at least that factor (the table gives it; attention in the global blocks grows faster). A
method that does not finish within PTQ3D_BENCH_TIMEOUT_S (default 900 s) is reported as not finished, never
estimated. Results: the raw runs as JSON and the Markdown tables (per method; per paper config of
ptq3d/harness/examples/papers, with each config's calibration overrides) in benchmarks/results/
(PTQ3D_BENCH_OUT names another folder); `python benchmarks/test_fullsize_calibration.py [JSON]` re-renders the
Markdown from stored runs. PTQ3D_BENCH_MODEL=tiny runs the same path on the tiny reference config (a smoke test).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

FULL_PAIRS = 24  # VGGT-1B: 24 frame + 24 global blocks
BENCH_FRAMES = 2  # frames of the calibration scene
ENCODER_BLOCKS = 24  # DINOv2 ViT-L, in TAPTQ's scope
SCHEME = {"taptq": "w4a8"}  # TAPTQ reports W4A8 / W6A6 / W8A8 only
DEFAULT_SCHEME = "w4a4"
# a few iterations per block for the learned methods (one scene: steps = epochs); TAPTQ's search has no
# iteration count and runs as in its paper, on the aggregator pair (its encoder blocks are extrapolated)
BENCH_CONFIG = {
    "quantvggt": {"epochs": 3},
    "flatquant": {"epochs": 3},
    "fgq": {"epochs": 3},
    "brecq": {"epochs": 4},  # iters_w 4, iters_a 1
    "qdrop": {"epochs": 4},  # 4 joint iterations
    # QVGGT scores its best task_candidates scales per linear group with full-model forwards: those forwards
    # are too slow here, so the run scores none (1 candidate = a*) and they are added at the measured forward time
    "qvggt": {"task_candidates": 1},
}
# a full-model pass at 48 aggregator blocks vs at 2: the transformer blocks in the graph (encoder + aggregator;
# the heads, which do not grow, are ignored, so this overstates)
DEPTH_FACTOR = (ENCODER_BLOCKS + 2 * FULL_PAIRS) / (ENCODER_BLOCKS + 2)
BENCH_SCOPE = {"taptq": "aggregator"}
BENCH_NO_ITERS = ("qvggt",)  # extrapolated from its timed task forwards, not from iterations run here

CHILD = textwrap.dedent(
    """
    import dataclasses, json, os, statistics, sys, threading, time
    import torch
    torch.set_num_threads(int(sys.argv[4]))
    from ptq3d.calibration import blockwise
    from ptq3d.calibration.sets import build_random
    from ptq3d.datasets import load_protocol_scenes
    from ptq3d.methods import quantize_model
    from ptq3d.methods.registry import get_method
    from ptq3d.models import load_model
    from ptq3d.models.vggt import VGGTConfig
    from ptq3d.quant.stats import PeakMemory, current_rss_bytes

    method, scheme, config, scope = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[5]
    base = getattr(VGGTConfig, os.environ.get("PTQ3D_BENCH_MODEL", "vggt_1b"))()  # "tiny": a smoke test
    cfg = dataclasses.replace(base, depth=1, dpt_intermediate_layer_idx=(0, 0, 0, 0))
    torch.manual_seed(0)
    model = load_model(cfg)
    agg = model.module.aggregator
    pair_param_bytes = sum(
        p.numel() * p.element_size() for b in (agg.frame_blocks[0], agg.global_blocks[0]) for p in b.parameters()
    )
    scene = load_protocol_scenes("synthetic-heldout-518", limit=1)[0]
    two = dataclasses.replace(
        scene,
        images=scene.images[:2], depth=scene.depth[:2], valid_mask=scene.valid_mask[:2],
        intrinsics=scene.intrinsics[:2], extrinsics=scene.extrinsics[:2],
        points=None if scene.points is None else scene.points[:2],
    )
    calib = build_random([two], n=1, seed=0)

    marks, backward_t, rss = [], [], []  # (t, block name, kind); t; (t, bytes)
    init = blockwise.BlockData.__init__
    def marked_init(self, *a, **k):
        init(self, *a, **k)
        marks.append((time.perf_counter(), self.block.name, self.block.kind))
    blockwise.BlockData.__init__ = marked_init
    backward = torch.Tensor.backward
    def timed_backward(self, *a, **k):
        out = backward(self, *a, **k)
        backward_t.append(time.perf_counter())
        return out
    torch.Tensor.backward = timed_backward
    task_fwd = []  # durations of full-model task_outputs passes (FGQ's Fisher, QVGGT's probes)
    model_cls = type(model)
    task_outputs = model_cls.task_outputs
    def timed_task_outputs(self, *a, **k):
        t = time.perf_counter()
        out = task_outputs(self, *a, **k)
        task_fwd.append(time.perf_counter() - t)
        return out
    model_cls.task_outputs = timed_task_outputs
    stop = threading.Event()
    def sample():
        while not stop.wait(0.02):
            rss.append((time.perf_counter(), current_rss_bytes()))
    threading.Thread(target=sample, daemon=True).start()

    rss_before = current_rss_bytes()
    t0 = time.perf_counter()
    with PeakMemory() as pm:
        q = quantize_model(model, method, scheme, calibration=calib, config=config or None, scope=scope,
                           inplace=True)
    t1 = time.perf_counter()
    stop.set()
    # a method may build more BlockData per block (dataclasses.replace): a block's segments are merged by name
    blocks = {}
    for i, (tm, name, kind) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else t1
        steps = [t for t in backward_t if tm <= t < end]
        b = blocks.setdefault(name, {"name": name, "kind": kind, "iters": 0, "gaps": [],
                                     "peak_rss_bytes": 0})
        b["iters"] += len(steps)
        b["gaps"] += [y - x for x, y in zip(steps, steps[1:])]
        b["peak_rss_bytes"] = max([b["peak_rss_bytes"]] + [r for t, r in rss if tm <= t < end])
    for b in blocks.values():
        b["time_s"] = sum(r["time_s"] for r in q.stats.blocks if r["name"] == b["name"])
        gaps = b.pop("gaps")
        b["iter_s"] = statistics.median(gaps) if gaps else None
    blocks = list(blocks.values())
    fisher = (q.stats.extra or {}).get("fisher", {}).get("cost", {})
    print(json.dumps({
        "wall_s": t1 - t0, "rss_before_bytes": rss_before, "peak_rss_bytes": pm.peak_rss_bytes,
        "cuda_peak_bytes": pm.cuda_peak_bytes, "scope": scope, "config": config, "blocks": blocks,
        "fisher_s": fisher.get("time_s"), "fisher_samples": fisher.get("forward_passes"),
        "pair_param_bytes": pair_param_bytes, "threads": torch.get_num_threads(),
        "task_forwards": len(task_fwd), "task_forward_s": statistics.median(task_fwd) if task_fwd else None,
    }))
    """
)


def paper_steps(method: str, calibration: dict | None = None) -> tuple[int | None, str, int | None]:
    """(iterations per block in the paper's setting, where that count comes from, frames per iteration);
    (None, ..., None) for methods without a learned loop. `calibration`: a paper config's override of the
    method's CALIBRATION_DEFAULTS (e.g. QuantVGGT on TAPTQ's 8 DTU scans)."""
    from ptq3d.methods.registry import get_method

    spec = get_method(method)
    cal = {**spec.calibration_defaults("paper"), **(calibration or {})}
    cfg = spec.make_config(None, "paper")
    if method == "quantvggt":  # one scene per AdamW step, epochs x scenes steps
        return (
            cal["epochs"] * cal["num_scenes"],
            f"{cal['epochs']} epochs x {cal['num_scenes']} scenes, 1 scene/step "
            + (
                "(CALIBRATION_DEFAULTS['paper']: the paper's 40 samples, the code's 15 epochs)"
                if not calibration
                else "(the paper config's calibration)"
            ),
            cal["frames"],
        )
    if method in ("flatquant", "fgq"):  # batches of batch_size scenes
        steps = cal["epochs"] * math.ceil(cal["num_scenes"] / cfg.batch_size)
        return (
            steps,
            f"{cal['epochs']} epochs x ceil({cal['num_scenes']} scenes / batch {cfg.batch_size}) "
            "(CALIBRATION_DEFAULTS['paper'], FGQ's calibration script)",
            cal["frames"] * cfg.batch_size,
        )
    if method == "brecq":  # weights, then activation steps (quantized activations)
        return (
            cfg.iters_w + cfg.iters_a,
            f"iters_w {cfg.iters_w} + iters_a {cfg.iters_a} (BRECQConfig: the paper's / yhhhli/BRECQ's)",
            None,
        )
    if method == "qdrop":  # one joint pass
        return cfg.iters_w, f"iters {cfg.iters_w} (QDropConfig: wimh966/QDrop's)", None
    if method == "qvggt":  # full-model forwards of the task-aware scale scoring
        groups = len(cfg.fold_targets())  # one scale search per linear: qkv, proj, fc1, fc2
        return (
            groups * cfg.task_candidates * cfg.task_scenes,
            f"task-aware scoring: {groups} linear groups x {cfg.task_candidates} candidates x {cfg.task_scenes} "
            "scenes full-model forwards per block (QVGGTConfig), each at the measured forward time x "
            f"{DEPTH_FACTOR:.2f} (48 vs 2 aggregator blocks); lower bound: the sensitivity pass (one forward "
            "per block, in 'fixed') grows with the square of the depth",
            None,
        )
    return None, "", None


def extrapolate(
    run: dict,
    steps: int | None,
    encoder_blocks: int = 0,
    fisher_scenes: int = 1,
    step_s: float | None = None,
    step_scale: float = 1.0,
) -> dict:
    """48-block estimates from one run of a 1-pair model (module docstring). `run`: the child's JSON (wall_s,
    peak_rss_bytes, pair_param_bytes, blocks [{kind, time_s, iters, iter_s}], fisher_s); `steps`: the paper's
    iterations per block (None: not a learned method); encoder_blocks: blocks in scope beyond the aggregator,
    costed as frame blocks; fisher_scenes: the paper's Fisher samples (the run used one); step_s: the time of
    one paper iteration where the run measured none (QVGGT's task forwards), else each block's median gap;
    step_scale: multiplies the time of the iterations added (e.g. the paper's frames per step / the run's 2)."""
    by_kind = {b["kind"]: b for b in run["blocks"]}
    missing = {"frame", "global"} - set(by_kind)
    if missing:
        raise ValueError(f"run has no {', '.join(sorted(missing))} block record")

    def paper_time(b: dict) -> float:
        it = step_s if step_s is not None else b.get("iter_s")
        if steps is None or not it:
            return b["time_s"]
        return b["time_s"] + (steps - b["iters"]) * it * step_scale

    frame, glob = by_kind["frame"], by_kind["global"]
    fixed = run["wall_s"] - frame["time_s"] - glob["time_s"]
    fisher = run.get("fisher_s") or 0.0
    fisher_full = fisher * fisher_scenes * (ENCODER_BLOCKS + 2 * FULL_PAIRS) / (ENCODER_BLOCKS + 2)
    pair_measured = frame["time_s"] + glob["time_s"]
    pair_paper = paper_time(frame) + paper_time(glob)
    full = fixed - fisher + fisher_full + FULL_PAIRS * pair_paper + encoder_blocks * paper_time(frame)
    return {
        "frame_s": frame["time_s"],
        "global_s": glob["time_s"],
        "frame_paper_s": paper_time(frame),
        "global_paper_s": paper_time(glob),
        "fixed_s": fixed,
        "fisher_full_s": fisher_full if fisher else None,
        "full_measured_iters_s": fixed + FULL_PAIRS * pair_measured + encoder_blocks * frame["time_s"],
        "full_s": full,
        "frame_peak_rss_bytes": frame["peak_rss_bytes"],
        "global_peak_rss_bytes": glob["peak_rss_bytes"],
        "full_peak_rss_bytes": run["peak_rss_bytes"] + (FULL_PAIRS - 1) * run["pair_param_bytes"],
    }


def _methods() -> list[str]:
    from ptq3d.methods.registry import list_methods

    wanted = os.environ.get("PTQ3D_BENCH_METHODS")
    # QVGGT last: the slowest here (full-model forwards per block), so a timeout there costs no other method
    names = sorted((m for m in list_methods() if m != "fp"), key=lambda m: m == "qvggt")
    return [m.strip() for m in wanted.split(",")] if wanted else names


def _run(method: str, timeout: float, threads: int) -> dict:
    scheme = SCHEME.get(method, DEFAULT_SCHEME)
    from ptq3d.methods.registry import get_method

    scope = BENCH_SCOPE.get(
        method, get_method(method).calibration_defaults("paper").get("scope", "aggregator")
    )
    args = [method, scheme, json.dumps(BENCH_CONFIG.get(method, {})), str(threads), scope]
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"status": f"not finished in {timeout:.0f} s"}
    load = {"load_before": load0, "load_after": os.getloadavg()[0], "process_s": time.perf_counter() - t0}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"status": f"failed: {last}", **load}
    return {"status": "ok", **load, **json.loads(proc.stdout.strip().splitlines()[-1])}


def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")


def _gib(b: float | None) -> str:
    return "-" if b is None else f"{b / 2**30:.1f} GiB"


def _dur(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.0f} s" if s < 3600 else f"{s / 3600:.1f} h"


def render_markdown(results: dict, meta: dict) -> str:
    """The Markdown table of `results` (method -> row) with the machine `meta` (threads, load, torch)."""
    lines = [
        "# Calibration cost per block at VGGT-1B size",
        "",
        f"Measured {meta['date']} by `benchmarks/test_fullsize_calibration.py` on {meta['machine']}, "
        f"torch {meta['torch']}, code {meta.get('code', '?')}, {meta['threads']} torch threads, load average {meta['load_min']:.1f}-"
        f"{meta['load_max']:.1f} (1 min, sampled before and after each method). VGGT-1B at random init with one "
        "frame + one global block, one calibration scene of 2 frames at 518x392, each method at its paper preset "
        "in its own process. CPU wall times of a shared machine, not GPU times: no GPU was lent, so GPU hours "
        "are not measured.",
        "",
        "| Method | scheme | iters run / block | frame block | global block | fixed | peak RSS frame / global "
        "| 48 blocks, iters as run | paper iters / block | 48 blocks at paper iters | frames / iter (paper) "
        "| 48 blocks at paper iters x frames (lower bound) | peak RSS, 48 blocks |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, row in results.items():
        if "full_s" not in row:
            lines.append(f"| {m} | {row['scheme']} | {row['run']['status']} |" + " |" * 10)
            continue
        run = row["run"]
        iters = "/".join(str(b["iters"]) for b in run["blocks"] if b["kind"] in ("frame", "global"))
        paper = row.get("paper_steps")
        lines.append(
            f"| {m} | {row['scheme']} | {iters if paper else '-'} | {_dur(row['frame_s'])} | "
            f"{_dur(row['global_s'])} | {_dur(row['fixed_s'])} | {_gib(row['frame_peak_rss_bytes'])} / "
            f"{_gib(row['global_peak_rss_bytes'])} | {_dur(row['full_measured_iters_s'])} | "
            f"{paper if paper else '-'} | {_dur(row['full_s']) + (' (extrapolated)' if paper else '')} | "
            f"{row.get('paper_frames') or '-'} | {_dur(row.get('full_frames_s'))} | "
            f"{_gib(row['full_peak_rss_bytes'])} |"
        )
    lines += [
        "",
        "Per block: the shared block loop's time for that block (FP forward, calibration, quantized re-run); fixed: "
        "the rest of the call (input capture with the encoder pass, Fisher passes). 48 blocks = fixed + 24 x (frame "
        "+ global); TAPTQ adds its 24 encoder blocks at the frame block's time (72 blocks). Peak RSS, 48 blocks = "
        "the run's peak + 23 x one pair's fp32 weights; the Fisher passes of FGQ and BRECQ (paper preset) hold a "
        "backward graph through the whole model, which grows with depth beyond that. QVGGT's sensitivity pass (one "
        "full forward per block, in 'fixed') grows with the square of the depth: its row is a lower bound.",
    ]
    notes = [f"- {m}: {row['paper_source']}" for m, row in results.items() if row.get("paper_source")]
    if notes:
        lines += [
            "",
            "Paper iteration counts per block (extrapolated linearly in the measured iteration time):",
        ]
        lines += notes
    return "\n".join(lines) + "\n"


PAPERS_DIR = Path(__file__).resolve().parents[1] / "ptq3d" / "harness" / "examples" / "papers"


def derive(results: dict) -> dict:
    """method -> row with the extrapolation recomputed from its raw run (rows as the slow test stores them)."""
    out = {}
    for method, row in results.items():
        run = row["run"]
        steps, source, frames = paper_steps(method)
        new = {"scheme": row["scheme"], "run": run}
        if steps:
            new.update(paper_steps=steps, paper_source=source, paper_frames=frames)
        if run.get("status") == "ok":
            new.update(_extrapolate_method(method, run, steps))
            if frames:  # the paper's steps see more frames: at least linear in them (global attention: more)
                scale = frames / BENCH_FRAMES
                new["full_frames_s"] = _extrapolate_method(method, run, steps, scale)["full_s"]
        out[method] = new
    return out


def _extrapolate_method(method: str, run: dict, steps: int | None, step_scale: float = 1.0) -> dict:
    from ptq3d.methods.registry import get_method

    fisher_scenes = 1
    if method == "fgq":
        spec = get_method("fgq")
        fisher_scenes = (
            spec.make_config(None, "paper").fisher_samples or spec.calibration_defaults("paper")["num_scenes"]
        )
    step_s = run["task_forward_s"] * DEPTH_FACTOR if method == "qvggt" and run.get("task_forward_s") else None
    enc = ENCODER_BLOCKS if method == "taptq" else 0
    return extrapolate(
        run, steps, encoder_blocks=enc, fisher_scenes=fisher_scenes, step_s=step_s, step_scale=step_scale
    )


def paper_config_costs(results: dict, papers_dir: Path = PAPERS_DIR) -> list[dict]:
    """Per paper config (TOML beside its published values): its calibration cells (method x scheme) on
    VGGT-1B, the summed 48-block CPU time at the paper's iteration counts (with the config's calibration
    overrides) and the largest 48-block peak RSS; methods not measured are listed, Pi3 configs are not costed."""
    import tomllib

    out = []
    for path in sorted(papers_dir.glob("*.toml")):
        cfg = tomllib.loads(path.read_text())
        models = [m["name"] for m in cfg.get("models", [])]
        methods = [m for m in cfg.get("methods", []) if m["name"] != "fp"]
        schemes = cfg.get("run", {}).get("schemes", [])
        row = {"config": path.stem, "models": models, "cells": len(methods) * len(schemes), "missing": []}
        if models != ["vggt-1b"]:
            row["note"] = "Pi3: not measured (this benchmark builds VGGT-1B only)"
            out.append(row)
            continue
        total, peak = 0.0, 0
        for m in methods:
            res = results.get(m["name"])
            if res is None or res["run"].get("status") != "ok":
                row["missing"].append(m["name"])
                continue
            steps = paper_steps(m["name"], m.get("calibration"))[0]
            est = _extrapolate_method(m["name"], res["run"], steps)
            total += len(schemes) * est["full_s"]
            peak = max(peak, est["full_peak_rss_bytes"])
        row.update(cpu_s=total, peak_rss_bytes=peak)
        out.append(row)
    return out


def render_configs(rows: list[dict]) -> str:
    lines = [
        "| Paper config | calibration cells (methods x schemes) | CPU time, all cells, 48 blocks, paper iterations "
        "| largest peak RSS | not measured |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if "note" in r:
            lines.append(f"| {r['config']} | {r['cells']} | - | - | {r['note']} |")
            continue
        lines.append(
            f"| {r['config']} | {r['cells']} | {_dur(r['cpu_s'])} (extrapolated) | {_gib(r['peak_rss_bytes'])} "
            f"| {', '.join(r['missing']) or '-'} |"
        )
    return "\n".join(lines) + "\n"


def rerender(json_path: Path) -> str:
    """Recompute the tables from the raw runs in `json_path` and rewrite the Markdown beside it."""
    data = json.loads(Path(json_path).read_text())
    results = derive(data["methods"])
    md = render_markdown(results, data["meta"])
    md += "\nPer paper config (VGGT-1B; schemes cost as the measured w4a4 / w4a8 run):\n\n"
    md += render_configs(paper_config_costs(results))
    Path(json_path).with_suffix(".md").write_text(md)
    return md


def test_extrapolation_arithmetic():
    run = {
        "wall_s": 100.0,
        "peak_rss_bytes": 5_000,
        "pair_param_bytes": 100,
        "fisher_s": None,
        "blocks": [
            {"kind": "frame", "time_s": 10.0, "iters": 3, "iter_s": 2.0, "peak_rss_bytes": 4_000},
            {"kind": "global", "time_s": 20.0, "iters": 3, "iter_s": 4.0, "peak_rss_bytes": 4_500},
        ],
    }
    e = extrapolate(run, steps=None)
    assert (e["fixed_s"], e["full_s"]) == (70.0, 70.0 + 24 * 30.0)
    assert e["full_peak_rss_bytes"] == 5_000 + 23 * 100
    e = extrapolate(run, steps=603)  # 600 more iterations at 2 s (frame) and 4 s (global)
    assert (e["frame_paper_s"], e["global_paper_s"]) == (1210.0, 2420.0)
    assert e["full_s"] == 70.0 + 24 * 3630.0 and e["full_measured_iters_s"] == 70.0 + 24 * 30.0
    # TAPTQ's encoder blocks cost as frame blocks; FGQ's Fisher grows with scenes and with the blocks in the graph
    assert extrapolate(run, None, encoder_blocks=24)["full_s"] == 70.0 + 24 * 30.0 + 24 * 10.0
    assert extrapolate(run, 10, step_s=1.0)["frame_paper_s"] == 10.0 + 7 * 1.0
    assert extrapolate(run, 10, step_scale=5.0)["frame_paper_s"] == 10.0 + 7 * 2.0 * 5.0
    e = extrapolate({**run, "fisher_s": 26.0}, None, fisher_scenes=2)
    assert e["fisher_full_s"] == 26.0 * 2 * 72 / 26
    assert e["full_s"] == 70.0 - 26.0 + e["fisher_full_s"] + 24 * 30.0
    with pytest.raises(ValueError, match="global"):
        extrapolate({**run, "blocks": run["blocks"][:1]}, None)


def test_paper_steps_follow_the_configs():
    assert paper_steps("quantvggt")[0] == 15 * 40
    assert paper_steps("flatquant")[0] == paper_steps("fgq")[0] == 15 * 32
    assert paper_steps("brecq")[0] == 25_000 and paper_steps("qdrop")[0] == 20_000
    assert paper_steps("gptq") == (None, "", None)
    md = render_markdown(
        {"rtn": {"scheme": "w4a4", "run": {"status": "failed: boom"}}},
        {"date": "d", "machine": "m", "torch": "t", "threads": 2, "load_min": 1.0, "load_max": 2.0},
    )
    assert "| rtn | w4a4 | failed: boom |" in md


def test_paper_config_costs_sum_cells_and_list_the_unmeasured():
    run = {
        "status": "ok",
        "wall_s": 100.0,
        "peak_rss_bytes": 5_000,
        "pair_param_bytes": 100,
        "fisher_s": None,
        "blocks": [
            {"kind": "frame", "time_s": 10.0, "iters": 0, "iter_s": None, "peak_rss_bytes": 4_000},
            {"kind": "global", "time_s": 20.0, "iters": 0, "iter_s": None, "peak_rss_bytes": 4_500},
        ],
    }
    rows = {r["config"]: r for r in paper_config_costs(derive({"rtn": {"scheme": "w4a4", "run": run}}))}
    qv = rows["quantvggt_table1_co3d"]  # rtn at w8a8 / w6a6 / w4a4, every other method unmeasured
    assert qv["cpu_s"] == 3 * (70.0 + 24 * 30.0) and qv["peak_rss_bytes"] == 5_000 + 23 * 100
    assert "quantvggt" in qv["missing"] and "rtn" not in qv["missing"]
    assert "note" in rows["fgq_appD_pi3"]  # Pi3 configs are not costed
    assert "| fgq_appD_pi3 |" in render_configs(list(rows.values()))
    # a config's calibration override changes the paper iteration count (QuantVGGT on TAPTQ's 8 scans)
    assert paper_steps("quantvggt", {"num_scenes": 8, "frames": 10})[0] == 15 * 8


@pytest.mark.slow
def test_fullsize_calibration_per_block():  # ~30 min on 2 loaded vCPUs
    import platform

    import torch

    timeout = float(os.environ.get("PTQ3D_BENCH_TIMEOUT_S", "900"))
    threads = int(os.environ.get("PTQ3D_BENCH_THREADS", "1"))
    out_dir = Path(os.environ.get("PTQ3D_BENCH_OUT", Path(__file__).parent / "results"))
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    results = {}
    for method in _methods():
        run = _run(method, timeout, threads)
        row = derive({method: {"scheme": SCHEME.get(method, DEFAULT_SCHEME), "run": run}})[method]
        results[method] = row
        print(
            f"{method:12s} {row['scheme']}: "
            + (
                f"frame {row['frame_s']:.1f} s, global {row['global_s']:.1f} s, fixed {row['fixed_s']:.1f} s, "
                f"48 blocks {row['full_s'] / 3600:.2f} h, peak 48 blocks {_gib(row['full_peak_rss_bytes'])}, "
                f"load {run['load_before']:.1f}->{run['load_after']:.1f}"
                if "full_s" in row
                else run["status"]
            ),
            flush=True,
        )
    loads = [r["run"][k] for r in results.values() for k in ("load_before", "load_after") if k in r["run"]]
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{_cpu_name() or platform.machine()} ({os.cpu_count()} vCPU, no GPU)"
        if not torch.cuda.is_available()
        else torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "code": f"git {head or '?'} at the start (plus uncommitted changes)",
        "threads": threads,
        "load_min": min(loads, default=float("nan")),
        "load_max": max(loads, default=float("nan")),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fullsize_calibration.json").write_text(
        json.dumps({"meta": meta, "methods": results}, indent=2)
    )
    rerender(out_dir / "fullsize_calibration.json")
    assert results, "no method measured"
    for method, row in results.items():  # every measured block took time and every learned block iterated
        if "full_s" in row:
            assert row["frame_s"] > 0 and row["global_s"] > 0, method
            if row.get("paper_steps") and method not in BENCH_NO_ITERS:
                assert all(b["iters"] >= 2 for b in row["run"]["blocks"]), method


if __name__ == "__main__":  # re-render the Markdown from stored raw runs: python benchmarks/... [JSON]
    print(
        rerender(
            Path(
                sys.argv[1]
                if len(sys.argv) > 1
                else Path(__file__).parent / "results" / "fullsize_calibration.json"
            )
        )
    )
