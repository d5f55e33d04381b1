"""Report plots as inline SVG strings (matplotlib, Agg): accuracy vs bits, accuracy vs cost, per-block
quantization error and per-block activation outliers.

Labels come from user data (method labels, scene names); matplotlib escapes SVG text, and `_svg` also drops
comments and the XML prologue so the markup can be inlined in HTML.
"""

from __future__ import annotations

import io
import itertools
import math
import re
from typing import Any

import pandas as pd

from ptq3d.results.read import Results, scheme_bits

_counter = itertools.count()


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _svg(fig) -> str:
    plt = _plt()
    # unique id salt per figure: several SVGs inline in one page must not share clip-path ids
    with plt.rc_context({"svg.hashsalt": f"ptq3d-{next(_counter)}", "svg.fonttype": "path"}):
        buf = io.StringIO()
        fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    s = buf.getvalue()
    s = re.sub(r"<\?xml[^>]*\?>", "", s)
    s = re.sub(r"<!DOCTYPE[^>]*>", "", s)
    s = re.sub(r"<!--.*?-->", "", s, flags=re.S)
    s = re.sub(r"<metadata>.*?</metadata>", "", s, flags=re.S)
    return s.strip()


def _short(label: str, n: int = 28) -> str:
    return label if len(label) <= n else label[: n - 1] + "…"


def accuracy_vs_bits(lb: pd.DataFrame) -> str | None:
    """Retained accuracy (%) per scheme, one line per model/method; schemes ordered by total bits."""
    d = lb.dropna(subset=["retained_pct"])
    if not len(d):
        return None
    plt = _plt()
    schemes = sorted(dict.fromkeys(d["scheme"]), key=lambda s: -sum(scheme_bits(s)))
    x_of = {s: i for i, s in enumerate(schemes)}
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    multi_builder = len({b for b in d["calib_builder"].dropna() if b}) > 1
    for (model, method, builder), g in d.groupby(["model", "method", "calib_builder"], sort=False):
        g = g.sort_values("scheme", key=lambda c: c.map(x_of))
        label = _short(
            f"{method}"
            + (f" ({builder})" if multi_builder and builder else "")
            + (f" · {model}" if d["model"].nunique() > 1 else "")
        )
        ax.errorbar(
            [x_of[s] for s in g["scheme"]],
            g["retained_pct"],
            yerr=g["retained_se_pct"].fillna(0),
            marker="o",
            capsize=3,
            label=label,
        )
    ax.axhline(100, color="0.5", lw=0.8, ls="--")
    ax.set_xticks(range(len(schemes)), schemes)
    ax.set_xlabel("scheme (fewer bits →)")
    ax.set_ylabel("accuracy retained vs FP (%)")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    return _svg(fig)


def accuracy_vs_cost(lb: pd.DataFrame) -> str | None:
    """Retained accuracy vs calibration time, calibration peak memory, latency and weight bytes (one point per
    variant)."""
    d = lb.dropna(subset=["retained_pct"])
    if not len(d):
        return None
    plt = _plt()
    panels = [
        ("calib_time_s", "calibration time (s)"),
        ("calib_peak_mb", "calibration peak RSS (MiB)"),
        ("latency_ms", "latency (ms)"),
        ("model_mb", "weights (MiB)"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(12, 3.4), sharey=True)
    methods = list(dict.fromkeys(d["method"]))
    cmap = plt.get_cmap("tab10")
    markers = dict(zip(dict.fromkeys(d["scheme"]), itertools.cycle("os^Dv<>p*h"), strict=False))
    for ax, (col, name) in zip(axes, panels, strict=True):
        for r in d.itertuples(index=False):
            v = getattr(r, col)
            if v is None or not math.isfinite(float(v)):
                continue
            ax.scatter(
                float(v),
                r.retained_pct,
                color=cmap(methods.index(r.method) % 10),
                marker=markers[r.scheme],
                s=28,
            )
        ax.set_xlabel(name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy retained (%)")
    handles = [
        plt.Line2D([], [], color=cmap(i % 10), marker="o", ls="", label=_short(m))
        for i, m in enumerate(methods)
    ] + [plt.Line2D([], [], color="0.3", marker=mk, ls="", label=s) for s, mk in markers.items()]
    fig.legend(
        handles=handles, fontsize=7, loc="upper center", ncol=min(8, len(handles)), bbox_to_anchor=(0.5, 1.12)
    )
    return _svg(fig)


def block_error(results: Results) -> str | None:
    """Per-block SQNR (dB) of the quantized vs FP block output, one panel per scheme, one line per method
    (first seed of each variant)."""
    rows: list[dict[str, Any]] = []
    for c in results.raw_cells:
        if c["status"] != "ok":
            continue
        blocks = ((c.get("stats") or {}).get("calibration") or {}).get("blocks") or []
        if not blocks or any(r["cell"] == _variant(c) for r in rows):
            continue
        for i, b in enumerate(blocks):
            v = b.get("sqnr_db")
            if isinstance(v, int | float) and math.isfinite(v):
                rows.append(
                    {
                        "cell": _variant(c),
                        "scheme": c["scheme"],
                        "method": c["method_label"],
                        "i": i,
                        "sqnr": v,
                    }
                )
    if not rows:
        return None
    d = pd.DataFrame(rows)
    plt = _plt()
    schemes = list(dict.fromkeys(d["scheme"]))
    fig, axes = plt.subplots(
        1, len(schemes), figsize=(3.6 * len(schemes) + 0.8, 3.2), sharey=True, squeeze=False
    )
    for ax, s in zip(axes[0], schemes, strict=True):
        for (method,), g in d[d["scheme"] == s].groupby(["method"], sort=False):
            ax.plot(g["i"], g["sqnr"], marker=".", label=_short(str(method)))
        ax.set_title(s, fontsize=9)
        ax.set_xlabel("block (execution order)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("block output SQNR (dB)")
    axes[0][-1].legend(fontsize=7)
    return _svg(fig)


def _variant(c: dict[str, Any]) -> tuple:
    return (c["model"], c["method_label"], c["scheme"], c["protocol"], c["calib_builder"])


def outliers(block_rows: list[dict[str, Any]], title: str) -> str | None:
    """Per-block activation outlier statistics of the FP model: max channel ratio and max kurtosis."""
    if not block_rows:
        return None
    plt = _plt()
    fig, ax1 = plt.subplots(figsize=(7, 3.0))
    x = range(len(block_rows))
    ax1.bar(x, [b["act_channel_ratio_max"] for b in block_rows], color="tab:blue", alpha=0.7)
    ax1.set_ylabel("max channel ratio", color="tab:blue")
    ax1.set_yscale("log")
    ax2 = ax1.twinx()
    ax2.plot(list(x), [b["act_kurtosis_max"] for b in block_rows], color="tab:red", marker=".")
    ax2.set_ylabel("max kurtosis", color="tab:red")
    ax2.set_yscale("log")
    ax1.set_xlabel("block (execution order)")
    ax1.set_title(_short(title, 60), fontsize=9)
    return _svg(fig)
