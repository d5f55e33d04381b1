"""Report plots as inline SVG strings (matplotlib, Agg).

- One colour per method in every plot (`method_colors`: methods in sorted order over a fixed palette; FP is
  black) and FP marked on every plot (the "no loss" line, or its own point on the cost axes).
- Accuracy is drawn as the loss vs FP, 100 - retained %, on a symmetric log axis, so methods within 0.1 % of FP
  are separated instead of stacked on the 100 % line; error bars are the leaderboard's bootstrap intervals.
- Labels come from user data (method labels, scheme and model names) and are drawn as plain text: `plain`
  escapes every dollar sign, so matplotlib never parses a label as math text (a label with `$...$` is shown as
  typed and cannot crash the parser; axis tick labels keep their math formatting); `_svg` also drops comments
  and the XML prologue so the markup can be inlined in HTML.
"""

from __future__ import annotations

import io
import itertools
import math
import re
from typing import Any

import pandas as pd

from ptq3d.results.read import Results, scheme_bits
from ptq3d.results.records import FP_METHOD
from ptq3d.results.tasks import TASK_TITLES

_counter = itertools.count()
FP_COLOR = "#000000"
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d",
)  # fmt: skip
LINTHRESH = 0.1  # % loss below which the symmetric log axis is linear


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plain(text: object) -> str:
    """User text drawn literally: one line, every "$" escaped (matplotlib then shows it and parses no math)."""
    return " ".join(str(text).split()).replace("$", r"\$")


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
    label = " ".join(str(label).split())  # one line
    return plain(label if len(label) <= n else label[: n - 1] + "…")


def method_key(row: dict[str, Any] | Any, multi_builder: bool = False, multi_model: bool = False) -> str:
    """The legend name of a leaderboard row's method (the key of its colour)."""
    get = row.get if isinstance(row, dict) else lambda k, d=None: getattr(row, k, d)
    s = str(get("method_label"))
    if multi_builder and get("calib_builder"):
        s += f" ({get('calib_builder')})"
    if multi_model:
        s += f" · {get('model_label')}"
    return s


def method_colors(names) -> dict[str, str]:
    """{method label: colour}: FP black, the others by sorted name over PALETTE, so a method keeps its colour in every
    plot of a report (and in every report of the same set of methods)."""
    out = {}
    others = sorted({str(n) for n in names if str(n) not in ("FP", FP_METHOD)})
    for i, n in enumerate(others):
        out[n] = PALETTE[i % len(PALETTE)]
    out["FP"] = FP_COLOR
    return out


def _ranked(lb: pd.DataFrame) -> pd.DataFrame:
    return lb[(lb["status"] != "reference") & lb["score_pct"].notna()] if len(lb) else lb


def _keys(lb: pd.DataFrame) -> tuple[bool, bool]:
    multi_model = lb["model"].nunique() > 1 if len(lb) else False
    builders = {b for b in lb["calib_builder"].dropna() if b} if len(lb) else set()
    return len(builders) > 1, multi_model


def _loss(v: float) -> float:
    return 100.0 - v


def _err(row: dict[str, Any], base: str) -> tuple[float, float]:
    """(below, above) error-bar lengths in loss units from the row's [lo, hi] retained interval."""
    v, lo, hi = row.get(f"{base}_pct", row.get(base)), row.get(f"{base}_lo"), row.get(f"{base}_hi")
    if not all(isinstance(x, float) and math.isfinite(x) for x in (v, lo, hi)):
        return 0.0, 0.0
    return max(0.0, hi - v), max(0.0, v - lo)  # loss = 100 - retained flips the interval


def _symlog(ax) -> None:
    ax.set_yscale("symlog", linthresh=LINTHRESH)
    ax.axhline(0, color=FP_COLOR, lw=1.2, ls="--", label="FP (no loss)")
    ax.grid(alpha=0.3, which="both")


def task_loss(lb: pd.DataFrame, colors: dict[str, str]) -> str | None:
    """Per-task accuracy loss vs FP (%) with bootstrap intervals: one panel per scheme, bars grouped by task,
    one bar (colour) per method; symmetric log axis; FP at 0."""
    d = _ranked(lb)
    tasks = [t for t in lb.attrs.get("tasks", []) if f"ret_{t}" in d]
    if not len(d) or not tasks:
        return None
    plt = _plt()
    mb, mm = _keys(lb)
    schemes = sorted(dict.fromkeys(d["scheme"]), key=lambda s: -sum(scheme_bits(s)))
    fig, axes = plt.subplots(
        1, len(schemes), figsize=(4.4 * len(schemes) + 1.2, 3.4), sharey=True, squeeze=False
    )
    for ax, scheme in zip(axes[0], schemes, strict=True):
        rows = d[d["scheme"] == scheme].to_dict("records")
        width = 0.8 / max(1, len(rows))
        for i, r in enumerate(rows):
            name = method_key(r, mb, mm)
            xs, ys, errs = [], [], [[], []]
            for t_i, t in enumerate(tasks):
                v = r.get(f"ret_{t}")
                if not (isinstance(v, float) and math.isfinite(v)):
                    continue
                xs.append(t_i - 0.4 + width * (i + 0.5))
                ys.append(_loss(v))
                below, above = _err(r, f"ret_{t}")
                errs[0].append(below)
                errs[1].append(above)
            ax.bar(xs, ys, width=width, color=colors.get(str(r["method_label"])), label=_short(name), yerr=errs, capsize=2,
                   error_kw={"lw": 0.8})  # fmt: skip
        _symlog(ax)
        ax.set_xticks(range(len(tasks)), [TASK_TITLES.get(t, t) for t in tasks])
        ax.set_title(plain(scheme), fontsize=9)
    axes[0][0].set_ylabel("accuracy lost vs FP (%, symlog)")
    handles, labels = _legend(axes[0])
    fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _svg(fig)


def _legend(axes) -> tuple[list, list]:
    seen: dict[str, Any] = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, h)
    fp = seen.pop("FP (no loss)", None)
    labels = sorted(seen)
    handles = [seen[k] for k in labels]
    if fp is not None:
        handles.insert(0, fp)
        labels.insert(0, "FP (no loss)")
    return handles, labels


def loss_vs_bits(lb: pd.DataFrame, colors: dict[str, str]) -> str | None:
    """Worst-task loss vs FP (%) per scheme, one line per method with its bootstrap interval; FP at 0."""
    d = _ranked(lb)
    if not len(d):
        return None
    plt = _plt()
    mb, mm = _keys(lb)
    schemes = sorted(dict.fromkeys(d["scheme"]), key=lambda s: -sum(scheme_bits(s)))
    x_of = {s: i for i, s in enumerate(schemes)}
    fig, ax = plt.subplots(figsize=(6.6, 3.6))
    for name, g in d.assign(_k=[method_key(r, mb, mm) for r in d.to_dict("records")]).groupby(
        "_k", sort=True
    ):
        rows = sorted(g.to_dict("records"), key=lambda r: x_of[r["scheme"]])
        errs = [[_err(r, "score")[0] for r in rows], [_err(r, "score")[1] for r in rows]]
        ax.errorbar([x_of[r["scheme"]] for r in rows], [_loss(r["score_pct"]) for r in rows], yerr=errs,
                    marker="o", capsize=3, color=colors.get(str(rows[0]["method_label"])), label=_short(name))  # fmt: skip
    _symlog(ax)
    ax.set_xticks(range(len(schemes)), [plain(x) for x in schemes])
    ax.set_xlabel("scheme (fewer bits →)")
    ax.set_ylabel("worst-task loss vs FP (%, symlog)")
    handles, labels = _legend([ax])
    ax.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _svg(fig)


def accuracy_vs_cost(lb: pd.DataFrame, colors: dict[str, str]) -> str | None:
    """Worst-task loss vs FP against latency, weight bytes and calibration time (one point per variant, marker
    per scheme); FP is the black star (its latency and bytes; no calibration)."""
    d = _ranked(lb)
    if not len(d):
        return None
    plt = _plt()
    ref = lb[lb["status"] == "reference"].to_dict("records") if len(lb) else []
    panels = [("latency_ms", "latency (ms, backend in the cost table)"), ("model_mb", "weights (MiB)"),
              ("calib_time_s", "calibration time (s)")]  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(12, 3.4), sharey=True)
    markers = dict(zip(dict.fromkeys(d["scheme"]), itertools.cycle("os^Dv<>p*h"), strict=False))
    for ax, (col, name) in zip(axes, panels, strict=True):
        for r in d.to_dict("records"):
            v = r.get(col)
            if isinstance(v, float | int) and math.isfinite(v):
                ax.scatter(float(v), _loss(r["score_pct"]), color=colors.get(str(r["method_label"])),
                           marker=markers[r["scheme"]], s=28)  # fmt: skip
        for r in ref:
            v = 0.0 if col == "calib_time_s" else r.get(col)
            if isinstance(v, float | int) and math.isfinite(v):
                ax.scatter(float(v), 0.0, color=FP_COLOR, marker="*", s=90, zorder=5)
        _symlog(ax)
        ax.set_xlabel(name)
    axes[0].set_ylabel("worst-task loss vs FP (%, symlog)")
    names = sorted({str(r["method_label"]) for r in d.to_dict("records")})
    handles = [plt.Line2D([], [], color=FP_COLOR, marker="*", ls="--", label="FP")]
    handles += [plt.Line2D([], [], color=colors.get(n), marker="o", ls="", label=_short(n)) for n in names]
    handles += [
        plt.Line2D([], [], color="0.3", marker=mk, ls="", label=plain(s)) for s, mk in markers.items()
    ]
    fig.legend(
        handles=handles, fontsize=7, loc="upper center", ncol=min(8, len(handles)), bbox_to_anchor=(0.5, 1.16)
    )
    return _svg(fig)


def block_error(results: Results, colors: dict[str, str]) -> str | None:
    """Per-block SQNR (dB) of the quantized vs FP block output, one panel per scheme, one line per method
    (first seed of each variant); FP has no quantization error, so its reference is the legend note."""
    rows: list[dict[str, Any]] = []
    seen = set()
    for c in results.raw_cells:
        if c["status"] != "ok":
            continue
        blocks = ((c.get("stats") or {}).get("calibration") or {}).get("blocks") or []
        key = _variant(c)
        if not blocks or key in seen:
            continue
        seen.add(key)
        for i, b in enumerate(blocks):
            v = b.get("sqnr_db")
            if isinstance(v, int | float) and math.isfinite(v):
                rows.append({"scheme": c["scheme"], "method": c["method_label"], "i": i, "sqnr": v})
    if not rows:
        return None
    d = pd.DataFrame(rows)
    plt = _plt()
    schemes = sorted(dict.fromkeys(d["scheme"]), key=lambda s: -sum(scheme_bits(s)))
    fig, axes = plt.subplots(
        1, len(schemes), figsize=(3.6 * len(schemes) + 1.6, 3.2), sharey=True, squeeze=False
    )
    for ax, s in zip(axes[0], schemes, strict=True):
        for method, g in d[d["scheme"] == s].groupby("method", sort=True):
            ax.plot(g["i"], g["sqnr"], marker=".", color=colors.get(str(method)), label=_short(str(method)))
        ax.set_title(plain(s), fontsize=9)
        ax.set_xlabel("block (execution order)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("block output SQNR (dB; FP = ∞)")
    handles, labels = _legend(axes[0])
    fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
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
    ax1.set_title(_short(f"{title} (FP model)", 70), fontsize=9)
    return _svg(fig)
