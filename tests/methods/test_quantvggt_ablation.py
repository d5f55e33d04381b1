"""QuantVGGT paper Table 4 ablation on the bundled tiny model at w4a4 (slow; also a script).

Rows: FP, RTN (reference), base (no smoothing), rotation only, scale only, scale-then-rotate, DSFQ
(rotate-then-scale) on a random calibration set, DSFQ on an NFDS calibration set, and DSFQ with the
authors' code settings. Per row: output SQNR (dB) against the FP model on held-out synthetic scenes for
depth (log), world points and the camera pose encoding; task metrics against ground truth; calibration
time and peak memory (total and per block); the mean over blocks of the SQNR of each block's residual update
(output - input, same input), which is what the quantizer actually perturbs.

    python tests/methods/test_quantvggt_ablation.py [model-name] [epochs]
"""

from __future__ import annotations

import sys
import time

import pytest
import torch

from ptq3d.calibration.sets import build_random, synthetic_pool
from ptq3d.methods import get_calibration_builder, quantize_model
from ptq3d.quant.spec import sqnr_db

METRICS = ("pose.auc@30", "pose.auc@5", "depth.abs_rel", "depth.delta<1.25", "points.acc", "points.comp")
CODE_SETTINGS = {"lr_smooth": 1e-3, "lr_clip": 1e-2, "smooth_weight": "unrotated", "act_stat": "ema"}


def evaluate(model, scenes, fp_preds=None):
    """(output SQNR per output vs fp_preds (None for the FP row), aggregated task metrics)."""
    from ptq3d.metrics import aggregate, evaluate_scene

    preds = [model.predict(s.images.unsqueeze(0)) for s in scenes]
    per_scene = [evaluate_scene(p, s, list(METRICS)) for p, s in zip(preds, scenes, strict=True)]
    agg = {k: v[0] for k, v in aggregate(per_scene, list(METRICS)).items() if k in METRICS}
    sq = None
    if fp_preds is not None:
        cat = lambda ps, f: torch.cat([f(p).flatten() for p in ps])  # noqa: E731
        sq = {
            "depth(log)": sqnr_db(
                cat(fp_preds, lambda p: p.depth.log()), cat(preds, lambda p: p.depth.log())
            ),
            "points": sqnr_db(cat(fp_preds, lambda p: p.world_points), cat(preds, lambda p: p.world_points)),
            "camera": sqnr_db(
                cat(fp_preds, lambda p: p.raw["pose_enc"]), cat(preds, lambda p: p.raw["pose_enc"])
            ),
        }
    return preds, sq, agg


def run_ablation(model, epochs=15, n_calib=8, pool_size=16, n_eval=4, frames=4, scheme="w4a4", log=print):
    from ptq3d.datasets.synthetic import generate_scene, heldout_seed

    h = w = 112
    pool = synthetic_pool(pool_size, frames, h, w, first_seed=0)
    rand = build_random(pool, n_calib, seed=0)
    nfds = get_calibration_builder("nfds")(pool, n_calib, seed=0, model=model, num_clusters=4)
    scenes = [generate_scene(heldout_seed(i), num_frames=frames, height=h, width=w) for i in range(n_eval)]
    fp_preds, _, fp_metrics = evaluate(model, scenes)
    rows = [("FP", None, fp_metrics, None)]
    runs = [
        ("RTN", "rtn", rand, {}),
        ("base (no smoothing)", "quantvggt", rand, {"variant": "base"}),
        ("rotation only", "quantvggt", rand, {"variant": "rotation"}),
        ("scale only", "quantvggt", rand, {"variant": "scale"}),
        ("scale-then-rotate", "quantvggt", rand, {"variant": "scale_rot"}),
        ("DSFQ (rotate-then-scale)", "quantvggt", rand, {"variant": "dsfq"}),
        ("DSFQ + NFDS calibration", "quantvggt", nfds, {"variant": "dsfq"}),
        (
            "DSFQ, authors' code settings",
            "quantvggt",
            rand,
            {"variant": "dsfq", "init_samples": max(1, n_calib // 5), **CODE_SETTINGS},
        ),
    ]
    for label, method, calib, cfg in runs:
        if method == "quantvggt":
            cfg = {"epochs": epochs, **cfg}
        t0 = time.perf_counter()
        qm = quantize_model(model, method, scheme, calib, cfg)
        _, sq, agg = evaluate(qm, scenes, fp_preds)
        st = qm.stats
        blocks = st.blocks
        deltas = [b["delta_sqnr_db"] for b in blocks if b.get("delta_sqnr_db") is not None]
        cost = {
            "block_update_sqnr_mean": sum(deltas) / len(deltas),
            "wall_s": st.wall_time_s,
            "peak_rss_MiB": st.peak_rss_bytes / 2**20,
            "block_s_mean": sum(b.get("calib_time_s", 0) for b in blocks) / max(1, len(blocks)),
            "block_delta_rss_MiB_max": max((b.get("calib_delta_rss_bytes", 0) for b in blocks), default=0)
            / 2**20,
        }
        rows.append((label, sq, agg, cost))
        log(
            f"{label}: {time.perf_counter() - t0:.1f} s, SQNR {fmt(sq)}, metrics {fmt(agg)}, cost {fmt(cost)}"
        )
    return rows, {"random": rand.describe(), "nfds": {k: v for k, v in nfds.meta.items() if k != "per_scene"}}


def fmt(d):
    return None if d is None else {k: round(v, 4) for k, v in d.items()}


def markdown(rows) -> str:
    head = ["variant", "SQNR depth(log)", "SQNR points", "SQNR camera", "block update SQNR", *METRICS]
    head += ["calib s", "s/block", "peak RSS MiB"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, sq, agg, cost in rows:
        cells = [label]
        cells += ["-"] * 3 if sq is None else [f"{sq[k]:.2f}" for k in ("depth(log)", "points", "camera")]
        cells += ["-"] if cost is None else [f"{cost['block_update_sqnr_mean']:.2f}"]
        cells += [f"{agg.get(m, float('nan')):.4f}" for m in METRICS]
        if cost is None:
            cells += ["-", "-", "-"]
        else:
            cells += [f"{cost['wall_s']:.1f}", f"{cost['block_s_mean']:.2f}", f"{cost['peak_rss_MiB']:.0f}"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


@pytest.mark.slow
def test_table4_ablation_bundled_model():
    """DSFQ beats its own base on every output SQNR, on the bundled model with the function-preserving
    outlier channels of ptq3d.models.bundled.outliers (where smoothing and rotation have work to do)."""
    from ptq3d.models import load_model

    try:
        model = load_model("vggt-tiny-synthetic")
    except Exception as exc:  # weights not bundled
        pytest.skip(f"vggt-tiny-synthetic unavailable: {exc}")
    from ptq3d.models.bundled.outliers import inject_channel_outliers

    inject_channel_outliers(model)
    torch.set_num_threads(2)
    rows, _ = run_ablation(model, epochs=5)
    print("\n" + markdown(rows))
    by = {r[0]: r for r in rows}
    base, dsfq = by["base (no smoothing)"], by["DSFQ (rotate-then-scale)"]
    assert all(dsfq[1][k] > base[1][k] + 3 for k in ("depth(log)", "points", "camera"))
    assert dsfq[3]["block_update_sqnr_mean"] > base[3]["block_update_sqnr_mean"] + 3


if __name__ == "__main__":
    from ptq3d.models import load_model

    torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
    name = sys.argv[1] if len(sys.argv) > 1 else "vggt-tiny-synthetic"
    rows, calib = run_ablation(load_model(name), epochs=int(sys.argv[2]) if len(sys.argv) > 2 else 15)
    print(f"\nmodel {name}\n" + markdown(rows))
    print(calib)
