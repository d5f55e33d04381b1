"""Leaderboard scores on constructed stores: a collapse cannot be averaged away, degenerate metrics are excluded
and named, NaN is reported, bootstrap intervals are scipy's, ties are shown, costs carry their reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from ptq3d.reports.leaderboard import leaderboard_notes, leaderboard_rows, leaderboard_to_text
from ptq3d.results.bootstrap import paired_bootstrap, paired_mean_difference
from ptq3d.results.read import load_results, retained
from ptq3d.results.tasks import paper_name, primary_metrics, task_of
from tests.reports.stores import FP, cell, scaled, scenes, write

KEEP = {"pose.auc@30": 0.99, "depth.abs_rel": 1 / 0.99, "points.acc": 1 / 0.99}  # 99 % retained everywhere


def _row(lb, label, scheme="w4a4"):
    sel = lb[(lb["method_label"] == label) & (lb["scheme"] == scheme)]
    assert len(sel) == 1, (label, scheme, list(lb["method_label"]))
    return sel.iloc[0]


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """FP; 'steady' keeps 99 % of every task; 'collapse' keeps 10 % of pose but improves depth and points (its
    MEAN beats steady's); 'nanny' has a NaN AbsRel; 'broken' failed in calibration; 'fakeq' was timed on fake."""
    collapse = {"pose.auc@30": 0.10, "depth.abs_rel": 1 / 1.5, "points.acc": 1 / 1.5}
    nan_depth = scaled(KEEP)
    nan_depth["depth.abs_rel"] = np.full(len(scenes()), np.nan)
    cells = [
        cell("fp", "fp32"),
        cell("rtn", "w4a4", scaled(KEEP, 0.002, 1), label="steady", overloaded=True),
        cell("rtn", "w4a4", scaled(collapse, 0.002, 2), label="collapse"),
        cell("rtn", "w4a4", nan_depth, label="nanny"),
        cell(
            "rtn",
            "w4a4",
            None,
            label="broken",
            status="failed",
            reason="calibrate: RuntimeError: boom",
            failed_stage="calibrate",
        ),  # fmt: skip
        cell(
            "taptq",
            "w4a4",
            scaled(KEEP, 0.002, 3),
            label="fakeq",
            backend="fake",
            failed_stages={"eval_real": "backend emulated failed: no kernel"},
        ),  # fmt: skip
    ]
    path = write(tmp_path_factory.mktemp("board") / "results.sqlite", cells)
    return load_results(path).leaderboard("fake", n_resamples=500)


def test_tasks_and_primaries():
    assert task_of("pose.auc@30") == "camera" and task_of("traj.ate") == "trajectory" and task_of("x") is None
    assert primary_metrics(
        "p", {"pose.auc@30", "pose.auc@5", "depth.abs_rel", "points.acc", "points.chamfer"}
    ) == {
        "camera": "pose.auc@30",
        "depth": "depth.abs_rel",
        "points": "points.chamfer",
    }
    assert [
        paper_name(m) for m in ("pose.auc@30", "pose.rra@30", "depth.abs_rel", "points.nc", "points.comp")
    ] == [
        "AUC@30",
        "RRA@30",
        "AbsRel",
        "N.C.",
        "Comp.",
    ]


def test_a_collapse_ranks_below_a_method_that_keeps_every_task(board):
    steady, collapse = _row(board, "steady"), _row(board, "collapse")
    assert collapse["mean_pct"] > steady["mean_pct"]  # a mean would have ranked the collapse first
    assert collapse["rank_num"] > steady["rank_num"] and collapse["worst_task"] == "camera"
    assert (
        collapse["score_pct"] == pytest.approx(10, abs=1) and collapse["ret_camera"] == collapse["score_pct"]
    )
    assert steady["score_pct"] == pytest.approx(99, abs=0.5)
    text = leaderboard_to_text(board)
    line = next(ln for ln in text.splitlines() if ln.split()[1:2] == ["collapse"])
    assert "◂" in line and "10." in line  # the row shows where it collapsed
    vs_fp = {r["Method"]: r["vs FP"] for r in leaderboard_rows(board)}
    assert vs_fp["collapse"] == "worse: camera; better: depth, points" and vs_fp["broken"] == "–"


def test_degenerate_metric_is_excluded_and_named(board, tmp_path):
    assert retained(0.0018, 0.0, True) != retained(0.0018, 0.0, True)  # NaN: no ratio against FP = 0
    assert [d["metric"] for d in board.attrs["degenerate"]] == ["pose.auc@5"]
    assert all(u["metric"] != "pose.auc@5" for u in board.attrs["units"])
    assert any("EXCLUDED" in n and "pose.auc@5" in n for n in leaderboard_notes(board))
    # a degenerate PRIMARY leaves its task unscored, named
    zero_auc = dict(FP, **{"pose.auc@30": np.zeros(len(scenes()))})
    path = write(tmp_path / "z.sqlite", [cell("fp", "fp32", fp=zero_auc),
                                         cell("rtn", "w8a8", scaled({}, 0.01, base=zero_auc), fp=zero_auc)])  # fmt: skip
    lb = load_results(path).leaderboard(n_resamples=200)
    assert "pose.auc@30" in {d["metric"] for d in lb.attrs["degenerate"]}
    assert "ret_camera" not in lb or math.isnan(lb.iloc[1].get("ret_camera", math.nan))
    assert math.isfinite(lb.iloc[1]["score_pct"])  # scored on depth and points


def test_nan_is_reported_and_never_ranked_above_complete_rows(board):
    nanny = _row(board, "nanny")
    assert nanny["status"] == "incomplete" and math.isnan(nanny["ret_depth"])
    complete = board[board["status"] == "ok"]
    assert (nanny["rank_num"] > complete["rank_num"]).all()  # even though its other tasks keep 99 %
    assert [m["what"] for m in board.attrs["missing"]] == ["NaN"]
    row = next(r for r in leaderboard_rows(board) if r["Method"] == "nanny")
    assert row["Depth %"] == "NaN" and "incomplete" in row["Status"]
    assert any("MISSING" in n and "depth.abs_rel" in n for n in leaderboard_notes(board))


def test_failures_are_named_and_not_ranked(board):
    broken = _row(board, "broken")
    assert broken["status"] == "failed" and broken["rank"] == "–" and broken["failed"] == 1
    fails = {(f["cell"].split(" | ")[1], f["stage"]) for f in board.attrs["failures"]}
    assert fails == {("broken", "calibrate"), ("fakeq", "eval_real")}
    assert _row(board, "fakeq")["failed_stages"] == "eval_real"


def test_costs_have_their_reference_and_backend(board):
    fp = board[board["status"] == "reference"].iloc[0]
    assert fp["rank"] == "FP" and fp["latency_ms"] == 100.0 and fp["model_mb"] == pytest.approx(8e6 / 2**20)
    steady = _row(board, "steady")
    assert steady["speedup"] == pytest.approx(100 / 80) and steady["latency_fp_ms"] == 100.0
    assert steady["latency_min_ms"] == pytest.approx(72) and steady["latency_max_ms"] == pytest.approx(96)
    fake = _row(board, "fakeq")
    assert math.isnan(fake["speedup"]) and "fake quantization" in fake["speedup_note"]
    assert board.attrs["cost_backends"] == ["emulated", "fake"]
    assert any("different backends" in n for n in leaderboard_notes(board))
    assert any("load average exceeded" in n and "steady w4a4" in n for n in leaderboard_notes(board))


def test_paired_bootstrap_is_scipys():
    rng = np.random.default_rng(3)
    fp = rng.uniform(0.1, 0.4, 9)
    q = fp * rng.uniform(0.8, 1.05, 9)

    def ratio(r):
        x = r["p"]
        return x[1].mean(-1) / x[0].mean(-1)

    ours = paired_bootstrap({"p": np.stack([fp, q])}, ratio, 999, 0.9, seed=11)
    ref = scipy.stats.bootstrap((fp, q), lambda a, b, axis=-1: b.mean(axis) / a.mean(axis), paired=True,
                                vectorized=True, n_resamples=999, confidence_level=0.9, method="percentile", rng=11)  # fmt: skip
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=1e-12)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=1e-12)
    assert ours.se == pytest.approx(ref.standard_error, abs=1e-12)
    diff = paired_mean_difference(q, fp, 999, 0.9, seed=11)
    ref = scipy.stats.bootstrap((q, fp), lambda a, b, axis=-1: a.mean(axis) - b.mean(axis), paired=True,
                                vectorized=True, n_resamples=999, confidence_level=0.9, method="percentile", rng=11)  # fmt: skip
    assert (diff.low, diff.high) == pytest.approx(tuple(ref.confidence_interval), abs=1e-12)


def test_leaderboard_intervals_agree_with_scipy(tmp_path):
    """The retained interval of a row and the gap interval between two rows, against scipy.stats.bootstrap on
    the same per-scene values (one protocol: the same resamples, scenes in sorted order)."""
    better = {
        "depth.abs_rel": 1 / 1.2,
        "points.acc": 1 / 1.2,
    }  # 120 %: camera stays the worst task in every resample
    a, b = scaled({"pose.auc@30": 0.97, **better}, 0.05, 4), scaled({"pose.auc@30": 0.85, **better}, 0.05, 5)
    path = write(tmp_path / "s.sqlite", [cell("fp", "fp32"), cell("rtn", "w8a8", a, label="A"),
                                          cell("rtn", "w8a8", b, label="B")])  # fmt: skip
    lb = load_results(path).leaderboard(n_resamples=800, confidence=0.9, seed=5)
    fp_auc, qa, qb = FP["pose.auc@30"], a["pose.auc@30"], b["pose.auc@30"]
    ra = _row(lb, "A", "w8a8")
    ref = scipy.stats.bootstrap((fp_auc, qa), lambda f, q, axis=-1: 100 * q.mean(axis) / f.mean(axis), paired=True,
                                vectorized=True, n_resamples=800, confidence_level=0.9, method="percentile", rng=5)  # fmt: skip
    assert (ra["ret_camera_lo"], ra["ret_camera_hi"]) == pytest.approx(
        tuple(ref.confidence_interval), rel=1e-9
    )
    # the gap from the first to the second row: worst task of each (camera for both here)
    first, second = (
        lb[lb["rank_num"].notna()].sort_values("score_pct", ascending=False).iloc[:2].to_dict("records")
    )
    assert {first["worst_task"], second["worst_task"]} == {"camera"}
    qf, qs = (qa, qb) if first["method_label"] == "A" else (qb, qa)
    ref = scipy.stats.bootstrap((fp_auc, qf, fp_auc, qs),
                                lambda f1, x, f2, y, axis=-1: 100 * (x.mean(axis) / f1.mean(axis) - y.mean(axis) / f2.mean(axis)),
                                paired=True, vectorized=True, n_resamples=800, confidence_level=0.9,
                                method="percentile", rng=5)  # fmt: skip
    assert (first["gap_lo"], first["gap_hi"]) == pytest.approx(tuple(ref.confidence_interval), rel=1e-9)


def test_ties_are_shown_and_few_scenes_warn(tmp_path):
    n = 4
    fp = {m: v[:n] for m, v in FP.items()}
    cells = [cell("fp", "fp32", fp=fp)]
    for i, label in enumerate(("a", "b", "c")):  # a, b, c within noise of each other
        cells.append(cell("rtn", "w8a8", scaled(KEEP, 0.01, 10 + i, base=fp), label=label, fp=fp))
    cells.append(cell("rtn", "w8a8", scaled({"pose.auc@30": 0.3}, 0.01, 20, base=fp), label="low", fp=fp))
    lb = load_results(write(tmp_path / "t.sqlite", cells)).leaderboard(n_resamples=400)
    ranks = {r["method_label"]: r["rank"] for r in lb.to_dict("records") if r["status"] == "ok"}
    assert ranks["a"] == ranks["b"] == ranks["c"] == "=1" and ranks["low"] == "4"
    assert any("only 4 scenes" in w for w in lb.attrs["warnings"])


def test_effective_format_is_shown_beside_the_scheme(tmp_path):
    """Issue 17.4: a per-tensor static method and a per-channel dynamic one in the same w4a8 column say so."""
    static = cell("taptq", "w4a8", scaled({}, noise=0.01, seed=1))
    static.manifest = {"effective_format": {"short": "W4 per-tensor / A8 static per-tensor + twin"}}
    dynamic = cell("rtn", "w4a8", scaled({}, noise=0.01, seed=2))
    dynamic.manifest = {"effective_format": {"short": "W4 per-channel / A8 dynamic per-token"}}
    res = load_results(write(tmp_path / "r.sqlite", [cell("fp", "fp32"), static, dynamic]))
    rows = {r["Method"]: r for r in leaderboard_rows(res.leaderboard("fake"))}
    assert rows["taptq"]["Format"] == "W4 per-tensor / A8 static per-tensor + twin"
    assert rows["rtn"]["Format"] == "W4 per-channel / A8 dynamic per-token"
