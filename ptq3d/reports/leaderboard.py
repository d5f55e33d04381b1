"""The leaderboard: quantized variants ranked by accuracy retained vs FP.

A cell's score is the mean over its metrics with a direction of retained = q/fp (higher is better) or fp/q
(lower is better), so 100 % means no accuracy lost. A variant (model, method, scheme, calibration builder)
averages its cells over protocols per seed, then over seeds (± = standard error over seeds). Costs are the
variant's mean calibration time, latency (with the backend it was timed on), speedup vs FP and model bytes.
Failed cells are counted, never averaged in.
"""

from __future__ import annotations

import math

import pandas as pd

from ptq3d.results.read import Results
from ptq3d.results.records import FP_METHOD

COLUMNS = [
    "rank",
    "model",
    "method",
    "scheme",
    "calib_builder",
    "retained_pct",
    "retained_se_pct",
    "n_seeds",
    "n_metrics",
    "calib_time_s",
    "calib_peak_mb",
    "latency_ms",
    "latency_backend",
    "speedup",
    "model_mb",
    "failed",
]


def leaderboard(results: Results, stage: str = "fake") -> pd.DataFrame:
    m = results.metrics
    cells = results.cells
    if not len(cells):
        return pd.DataFrame(columns=COLUMNS)
    q = m[(m["method"] != FP_METHOD) & (m["stage"] == stage) & m["higher_is_better"].notna()]
    per_cell = q.groupby("cell_id")["retained"].agg(["mean", "count"])
    ok = cells[(cells["status"] == "ok") & (cells["method"] != FP_METHOD)].set_index("cell_id")
    ok = ok.join(per_cell, how="inner")
    keys = ["model_label", "method_label", "scheme", "calib_builder"]
    rows = []
    failed = cells[(cells["status"] != "ok") & (cells["method"] != FP_METHOD)]
    for key, g in ok.groupby(keys, sort=False):
        seeds = g.assign(seed=g["calib_seed"].fillna(-1)).groupby("seed")["mean"].mean()
        k = len(seeds)
        nf = int(((failed[keys] == pd.Series(key, index=keys)).all(axis=1)).sum()) if len(failed) else 0
        rows.append(
            {
                "model": key[0],
                "method": key[1],
                "scheme": key[2],
                "calib_builder": key[3],
                "retained_pct": 100 * float(seeds.mean()),
                "retained_se_pct": 100 * float(seeds.std(ddof=1) / math.sqrt(k)) if k > 1 else math.nan,
                "n_seeds": k,
                "n_metrics": int(g["count"].max()),
                "calib_time_s": g["calib_time_s"].astype(float).mean(),
                "calib_peak_mb": g["calib_peak_bytes"].astype(float).mean() / 2**20,
                "latency_ms": g["latency_ms"].astype(float).mean(),
                "latency_backend": ",".join(sorted({str(b) for b in g["latency_backend"].dropna()})),
                "speedup": g["speedup"].astype(float).mean(),
                "model_mb": g["model_bytes"].astype(float).mean() / 2**20,
                "failed": nf,
            }
        )
    # variants whose every cell failed still appear, at the bottom
    if len(failed):
        have = {(r["model"], r["method"], r["scheme"], r["calib_builder"]) for r in rows}
        for key, g in failed.groupby(keys, sort=False):
            if key not in have:
                rows.append(
                    {
                        "model": key[0],
                        "method": key[1],
                        "scheme": key[2],
                        "calib_builder": key[3],
                        "retained_pct": math.nan,
                        "failed": len(g),
                    }
                )
    df = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "rank"])
    df = df.sort_values("retained_pct", ascending=False, na_position="last", kind="stable").reset_index(
        drop=True
    )
    df.insert(0, "rank", range(1, len(df) + 1))
    return df


def _f(v, pattern: str = "{:.2f}") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return pattern.format(v)


def leaderboard_rows(df: pd.DataFrame) -> list[dict[str, str]]:
    """Display strings per row (shared by the terminal, Markdown and HTML renderings)."""
    out = []
    # name the calibration builder only when the store compares several
    multi_builder = len({b for b in df["calib_builder"].dropna() if b}) > 1 if len(df) else False
    for r in df.itertuples(index=False):
        ret = _f(r.retained_pct, "{:.2f}")
        if isinstance(r.retained_se_pct, float) and math.isfinite(r.retained_se_pct):
            ret += f" ± {r.retained_se_pct:.2f}"
        out.append(
            {
                "Rank": str(r.rank),
                "Model": str(r.model),
                "Method": str(r.method)
                + (f" ({r.calib_builder})" if multi_builder and r.calib_builder else ""),
                "Scheme": str(r.scheme),
                "Retained %": ret,
                "Seeds": _f(r.n_seeds, "{:.0f}"),
                "Calib s": _f(r.calib_time_s, "{:.2f}"),
                "Latency ms": _f(r.latency_ms, "{:.1f}")
                + (
                    f" ({r.latency_backend})"
                    if isinstance(r.latency_backend, str) and r.latency_backend
                    else ""
                ),
                "Speedup": _f(r.speedup, "{:.2f}x"),
                "Model MB": _f(r.model_mb, "{:.2f}"),
                "Failed": str(int(r.failed)) if r.failed == r.failed else "0",
            }
        )
    return out


def leaderboard_to_text(df: pd.DataFrame) -> str:
    rows = leaderboard_rows(df)
    if not rows:
        return "(no finished quantized cells)\n"
    cols = list(rows[0])
    width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    line = "  ".join(c.ljust(width[c]) for c in cols)
    out = [line, "  ".join("-" * width[c] for c in cols)]
    out += ["  ".join(r[c].ljust(width[c]) for c in cols) for r in rows]
    return "\n".join(out) + "\n"


def leaderboard_to_markdown(df: pd.DataFrame) -> str:
    from ptq3d.reports.tables import md_escape

    rows = leaderboard_rows(df)
    if not rows:
        return "(no finished quantized cells)\n"
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    out += ["| " + " | ".join(md_escape(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(out) + "\n"
