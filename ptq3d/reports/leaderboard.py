"""The leaderboard as text, Markdown and display rows. The scores (per-task retained %, ranked by the worst task,
paired-bootstrap intervals, ties) are computed by ptq3d.results.scores.leaderboard, re-exported here; its
module docstring states the ranking rule.

Public API (also used by the regression gate): `leaderboard(results, stage) -> DataFrame`,
`paired_bootstrap` (ptq3d.results.bootstrap), `leaderboard_rows`, `cost_rows`, `leaderboard_notes`,
`leaderboard_to_text`, `leaderboard_to_markdown`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import pandas as pd

from ptq3d.results.bootstrap import paired_bootstrap, paired_mean_difference
from ptq3d.results.read import Results
from ptq3d.results.scores import leaderboard as _score_board
from ptq3d.results.tasks import TASK_TITLES

__all__ = [
    "cost_rows",
    "leaderboard",
    "leaderboard_notes",
    "leaderboard_rows",
    "leaderboard_to_markdown",
    "leaderboard_to_text",
    "paired_bootstrap",
    "paired_mean_difference",
]

BACKEND_NAMES = {
    "fp": "FP",
    "emulated": "emulated int (CPU)",
    "emulated-cpu": "emulated int (CPU)",
    "emulated-cuda": "emulated int (CUDA)",
    "triton": "triton",
    "fake": "fake-quant",
    "fp-cpu": "FP (CPU)",
    "fp-cuda": "FP (CUDA)",
    "fake-cpu": "fake-quant (CPU)",
    "fake-cuda": "fake-quant (CUDA)",
    "triton-interpreter": "triton interpreter (not a timing)",
}


def leaderboard(results: Results, stage: str = "fake", **kwargs: Any) -> pd.DataFrame:
    """The ranked leaderboard of `results` for `stage` (see ptq3d.results.scores.leaderboard)."""
    if hasattr(results, "leaderboard"):
        return results.leaderboard(stage, **kwargs)
    return _score_board(results, stage, **kwargs)


def _ok(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _get(r: dict[str, Any], key: str) -> Any:
    v = r.get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _txt(r: dict[str, Any], key: str) -> str:
    """A text column of a leaderboard row ("" where the frame holds NaN)."""
    v = r.get(key)
    return v if isinstance(v, str) else ""


def _pct(r: dict[str, Any], key: str, ci: bool = True) -> str:
    v = _get(r, key)
    if v is None:
        return "NaN" if key in r else "–"
    s = f"{v:.2f}"
    lo, hi = _get(r, f"{key.removesuffix('_pct')}_lo"), _get(r, f"{key.removesuffix('_pct')}_hi")
    if ci and lo is not None and hi is not None:
        s += f" [{lo:.2f}, {hi:.2f}]"
    se = _get(r, f"{key.removesuffix('_pct')}_se_seeds")
    if se is not None:
        s += f" ± {se:.2f}"
    return s


def _label(r: dict[str, Any], multi_model: bool, multi_builder: bool) -> str:
    s = str(r.get("method_label"))
    if multi_builder and r.get("calib_builder"):
        s += f" ({r['calib_builder']})"
    if multi_model:
        s += f" · {r.get('model_label')}"
    return s


def _flags(df: pd.DataFrame) -> tuple[bool, bool]:
    if not len(df):
        return False, False
    builders = {b for b in df["calib_builder"].dropna() if b}
    return df["model"].nunique() > 1, len(builders) > 1


def _missing_of(df: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(variant label 'model | method | scheme', task) -> 'missing' / 'NaN' from attrs["missing"]."""
    from ptq3d.results.tasks import task_of

    out = {}
    for m in df.attrs.get("missing", []):
        out[(m["variant"], task_of(m["metric"]) or "")] = m["what"]
    return out


def leaderboard_rows(df: pd.DataFrame, ci: bool = True) -> list[dict[str, str]]:
    """Accuracy display strings per row: rank, method, scheme, score (worst task) with its interval, mean, one
    column per task, seeds, failures. Shared by the terminal, Markdown and HTML renderings."""
    multi_model, multi_builder = _flags(df)
    tasks = df.attrs.get("tasks", [])
    missing = _missing_of(df)
    out = []
    for r in df.to_dict("records"):
        variant = f"{r.get('model_label')} | {r.get('method_label')} | {r.get('scheme')}"
        row = {
            "Rank": str(r.get("rank", "")),
            "Method": _label(r, multi_model, multi_builder),
            "Scheme": str(r.get("scheme", "")),
            "Format": r["format"] if isinstance(r.get("format"), str) else "",
            "Retained % (worst task)": _pct(r, "score_pct", ci),
            "Mean %": _pct(r, "mean_pct", False),
        }
        for t in tasks:
            cell = _pct(r, f"ret_{t}", ci)
            if cell == "NaN" and (variant, t) in missing:
                cell = missing[(variant, t)]
            if r.get("worst_task") == t and r.get("status") != "reference":
                cell += " ◂"
            row[f"{TASK_TITLES.get(t, t)} %"] = cell
        row["vs FP"] = _vs_fp(r, tasks)
        row["Seeds"] = str(int(r["n_seeds"])) if _ok(r.get("n_seeds")) else "–"
        status = r.get("status", "")
        if status == "failed":  # nothing was measured: no number, not even NaN
            row.update({k: "–" for k in row if k.endswith("%") or k.endswith(")")})
            row["Status"] = f"failed ({int(r['failed'])} cells)"
            out.append(row)
            continue
        row["Status"] = (
            {"reference": "FP", "ok": "ok"}.get(status, status)
            + (f", {int(r['failed'])} failed" if _ok(r.get("failed")) and r["failed"] else "")
            + (f"; {r['failed_stages']} failed" if _txt(r, "failed_stages") else "")
        )
        out.append(row)
    return out


def _vs_fp(r: dict[str, Any], tasks: list[str]) -> str:
    """Which tasks differ from FP beyond noise: the bootstrap interval of q - fp excludes 0 ("worse: camera";
    "better: depth"), or "= FP" when no scored task does (a row "beating" FP inside its interval is noise)."""
    if r.get("status") in ("reference", "failed"):
        return "–"
    worse, better, known = [], [], 0
    for t in tasks:
        lo, hi = _get(r, f"diff_{t}_lo"), _get(r, f"diff_{t}_hi")
        if lo is None or hi is None:
            continue
        known += 1
        ret = _get(r, f"ret_{t}")  # below 100 % is worse, whichever the metric's direction
        if lo <= 0 <= hi or ret is None:
            continue
        (worse if ret < 100 else better).append(t)
    if not known:
        return "–"
    parts = ([f"worse: {', '.join(worse)}"] if worse else []) + (
        [f"better: {', '.join(better)}"] if better else []
    )
    return "; ".join(parts) or "= FP"


def _latency(r: dict[str, Any]) -> str:
    med = _get(r, "latency_ms")
    if med is None:
        return "–"
    s = f"{med:.1f}"
    lo, hi = _get(r, "latency_min_ms"), _get(r, "latency_max_ms")
    if lo is not None and hi is not None and (_get(r, "latency_repeats") or 0) > 1:
        s += f" [{lo:.1f}–{hi:.1f}]"
    elif lo is not None and (_get(r, "latency_repeats") or 0) > 1:
        s += f" [min {lo:.1f}]"
    return s


def cost_rows(df: pd.DataFrame) -> list[dict[str, str]]:
    """Cost display strings per row: backend, latency median [min–max], the same cells' FP latency, speedup =
    FP / quantized (n/a with the reason where it means nothing), model MB, calibration time and memory."""
    multi_model, multi_builder = _flags(df)
    out = []
    for r in df.to_dict("records"):
        backends = [b for b in _txt(r, "latency_backend").split(",") if b]
        speed = _get(r, "speedup")
        note = _txt(r, "speedup_note")
        out.append(
            {
                "Method": _label(r, multi_model, multi_builder),
                "Scheme": str(r.get("scheme", "")),
                "Backend": ", ".join(BACKEND_NAMES.get(b, b) for b in backends) or "–",
                "Latency ms": _latency(r),
                "FP ms": "–" if _get(r, "latency_fp_ms") is None else f"{r['latency_fp_ms']:.1f}",
                "Speedup": f"{speed:.2f}x"
                if speed is not None
                else (f"n/a: {note.split(';')[0].split(' (')[0]}" if note else "–"),
                "Model MB": "–" if _get(r, "model_mb") is None else f"{r['model_mb']:.2f}",
                "W bits": "–" if _get(r, "w_bits_effective") is None else f"{r['w_bits_effective']:.2f}",
                "Calib s": "–" if _get(r, "calib_time_s") is None else f"{r['calib_time_s']:.2f}",
                "Calib MiB": "–" if _get(r, "calib_peak_mb") is None else f"{r['calib_peak_mb']:.0f}",
            }
        )
    return out


def leaderboard_notes(df: pd.DataFrame) -> list[str]:
    """The lines a reader needs beside the table: the rule, what is excluded (degenerate metrics), what is
    missing, which cells and stages failed, the too-few-scenes warnings and the cost caveats."""
    a = df.attrs
    units = a.get("units", [])
    notes = []
    if units:
        prim = ", ".join(
            dict.fromkeys(f"{TASK_TITLES.get(u['task'], u['task'])}: {u['metric']}" for u in units)
        )
        notes.append(
            f"Ranked by the worst task's retained % (primary metrics {prim}; retained = q/FP, or FP/q where lower "
            f"is better); Mean % beside it. [lo, hi]: {a.get('confidence', 0.95):.0%} paired bootstrap over "
            "scenes (same resamples for every method); ± standard error over calibration seeds; ◂ marks the "
            "worst task; '=k' ranks cannot be told apart (k = 1 + rows significantly better)."
        )
    for d in a.get("degenerate", []):
        notes.append(
            f"EXCLUDED from every score: {d['metric']} on {d['protocol']} ({d['model']}): {d['why']}."
        )
    for m in a.get("missing", []):
        seed = "" if m.get("seed") is None else f" seed {m['seed']}"
        notes.append(
            f"MISSING: {m['variant']}{seed}: {m['metric']} is {m['what']} in stage {m['stage']} on "
            f"{m['protocol']}; the row is incomplete and ranks below complete rows."
        )
    for f in a.get("failures", []):
        where = f"stage {f['stage']}" if f.get("stage") else "a stage"
        kept = " (cell kept: the other stages stand)" if f.get("status") == "ok" else ""
        notes.append(f"FAILED: {f['cell']}: {where}: {f['reason']}{kept}")
    notes += [f"WARNING: {w}" for w in a.get("warnings", [])]
    notes += [f"Note: {n}" for n in a.get("ci_notes", [])]
    for r in df.to_dict("records"):
        if _txt(r, "speedup_note"):
            notes.append(f"No speedup for {r.get('method_label')} {r.get('scheme')}: {r['speedup_note']}.")
    busy = [
        f"{r.get('method_label')} {r.get('scheme')}"
        for r in df.to_dict("records")
        if r.get("latency_overloaded") is True
    ]
    if busy:
        notes.append(
            "WARNING: the load average exceeded the core count while timing "
            + ", ".join(busy)
            + ": those latencies are not comparable."
        )
    backends = a.get("cost_backends", [])
    if len(backends) > 1:
        notes.append(
            "Costs: rows were timed on different backends ("
            + ", ".join(BACKEND_NAMES.get(b, b) for b in backends)
            + "); compare latency only within one backend (no cost column is ranked)."
        )
    return notes


def _text_table(rows: list[dict[str, str]]) -> list[str]:
    cols = list(rows[0])
    width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    out = ["  ".join(c.ljust(width[c]) for c in cols), "  ".join("-" * width[c] for c in cols)]
    return out + ["  ".join(r[c].ljust(width[c]) for c in cols) for r in rows]


def leaderboard_to_text(df: pd.DataFrame) -> str:
    rows = leaderboard_rows(df)
    if not [r for r in rows if r["Rank"] != "FP"]:
        return "(no finished quantized cells)\n" + "".join(n + "\n" for n in leaderboard_notes(df))
    out = _text_table(rows) + [""] + _text_table(cost_rows(df)) + [""] + leaderboard_notes(df)
    return "\n".join(out) + "\n"


def leaderboard_to_markdown(df: pd.DataFrame) -> str:
    from ptq3d.reports.tables import md_escape, md_table

    rows = leaderboard_rows(df)
    if not [r for r in rows if r["Rank"] != "FP"]:
        return "(no finished quantized cells)\n"
    out = [md_table(rows), "", "Costs:", "", md_table(cost_rows(df)), ""]
    out += [f"- {md_escape(n)}" for n in leaderboard_notes(df)]
    return "\n".join(out) + "\n"
