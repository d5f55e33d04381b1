"""The per-block sensitivity map (written by `ptq3d sensitivity` as sensitivity.json) as a heatmap, tables and
rank correlations: an HTML report section, Markdown and a PNG.

Reads only the JSON (format "ptq3d.sensitivity/1", ptq3d.calibration.sensitivity.SensitivityTable.to_dict):
model, scheme, scope, granularity, tasks, rows (unit, block, kind, num_params, one column per task with the
measured relative task-output error when only that unit is quantized, block_rel_mse, block_sqnr_db,
fisher_<task>, gn_<task>), correlations (estimate -> task -> spearman / kendall), time_s, calibration and an
optional plan (PrecisionPlan.to_dict()).

The heatmap shows units (rows, execution order) x tasks (columns); the colour is each task's value divided by
that task's largest unit value (tasks differ in scale by orders of magnitude), the number in a cell the measured
error itself. Units a plan raises are marked with their bits.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from markupsafe import Markup

from ptq3d.reports import plots

FORMAT = "ptq3d.sensitivity/1"
FILE = "sensitivity.json"
ESTIMATE_TITLES = {
    "block_rel_mse": "block output rel. MSE",
    "fisher": "FGQ Fisher x block error",
    "gn": "Gauss-Newton x block error",
}


def load(path: str | Path) -> dict[str, Any]:
    """The sensitivity JSON at `path`; ValueError (one line, naming the file) if it is not one."""
    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{p}: cannot read a sensitivity table ({exc})") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ValueError(f"{p}: not a sensitivity table (format {FORMAT!r} expected)")
    return d


def find(run_dir: str | Path, depth: int = 3) -> list[Path]:
    """Every sensitivity.json in `run_dir` and up to `depth` directories below it (the run stage writes
    sensitivity/<model>/<scheme>/sensitivity.json), shallowest first, then by path."""
    d = Path(run_dir)
    if not d.is_dir():
        return []
    found = []
    for level in range(depth + 1):
        found += sorted(p for p in d.glob("*/" * level + FILE) if p.is_file())
    return found


def _short(unit: str) -> str:
    return unit.replace("aggregator.", "").replace("_blocks.", "")


def plan_marks(data: dict[str, Any]) -> dict[str, str]:
    """unit -> its plan entry (e.g. "w8") for the units the stored plan names."""
    plan = data.get("plan") or {}
    return {**(plan.get("blocks") or {}), **(plan.get("sites") or {})}


def heatmap_figure(data: dict[str, Any]):
    """matplotlib Figure of the units x tasks heatmap (module docstring)."""
    import numpy as np

    plt = plots._plt()
    rows, tasks = data["rows"], list(data["tasks"])
    vals = np.array([[float(r[t]) for t in tasks] for r in rows], dtype=float).reshape(len(rows), len(tasks))
    top = vals.max(axis=0, initial=0.0) if len(rows) else np.zeros(len(tasks))
    norm = np.divide(vals, top, out=np.zeros_like(vals), where=top > 0)
    marks = plan_marks(data)
    fig, ax = plt.subplots(figsize=(1.3 * len(tasks) + 3.2, 0.28 * len(rows) + 1.5))
    im = ax.imshow(norm, aspect="auto", cmap="magma_r", vmin=0, vmax=1)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels([plots.plain(t) for t in tasks])
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(
        [
            plots.plain(_short(r["unit"]) + (f"  [{marks[r['unit']]}]" if r["unit"] in marks else ""))
            for r in rows
        ],
        fontsize=7 if len(rows) > 16 else 8,
    )
    for i in range(len(rows)):
        for j in range(len(tasks)):
            ax.text(j, i, f"{vals[i, j]:.2g}", ha="center", va="center", fontsize=6.5,
                    color="white" if norm[i, j] > 0.6 else "black")  # fmt: skip
    title = f"{data.get('model', '?')} · {data.get('scheme', '?')} · per {data.get('granularity', 'block')}"
    ax.set_title(plots._short(title, 70), fontsize=9)
    fig.colorbar(im, ax=ax, label="relative task error / task max")
    return fig


def heatmap_svg(data: dict[str, Any]) -> str | None:
    """The heatmap as inline SVG (None for an empty table)."""
    if not data.get("rows"):
        return None
    return plots._svg(heatmap_figure(data))


def save_heatmap_png(data: dict[str, Any], path: str | Path, dpi: int = 130) -> Path:
    """Write the heatmap as a PNG file."""
    plt = plots._plt()
    fig = heatmap_figure(data)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(p), format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return p


def correlation_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (estimate, task): estimate title, task, spearman, kendall (None where undefined)."""
    out = []
    for est, per_task in (data.get("correlations") or {}).items():
        for t, c in per_task.items():
            out.append(
                {
                    "estimate": ESTIMATE_TITLES.get(est, est),
                    "task": t,
                    "spearman": c.get("spearman"),
                    "kendall": c.get("kendall"),
                }
            )
    return out


def fragile(data: dict[str, Any], n: int = 3) -> dict[str, list[str]]:
    """task -> the n units with the largest measured error (0-error units left out)."""
    out = {}
    for t in data["tasks"]:
        ranked = sorted(data["rows"], key=lambda r: -float(r[t]))
        out[t] = [r["unit"] for r in ranked[:n] if float(r[t]) > 0]
    return out


def _f(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, int):
        return f"{v:,}"
    a = abs(v)
    return f"{v:.3g}" if a == 0 or 1e-3 <= a < 1e4 else f"{v:.2e}"


def to_markdown(data: dict[str, Any]) -> str:
    """The sensitivity table, the rank correlations, the most fragile units per task and the plan (if any)."""
    tasks = list(data["tasks"])
    marks = plan_marks(data)
    cal = data.get("calibration") or {}
    t = data.get("time_s") or {}
    lines = [
        f"## Sensitivity: {data.get('model')} · {data.get('scheme')} · per {data.get('granularity')}",
        "",
        f"Relative task-output error ||y_q - y|| / ||y|| when only that unit is quantized (mean over "
        f"{cal.get('num_samples', '?')} calibration scenes, hash {cal.get('hash', '?')}); "
        f"time {_f(t.get('total'))} s (measured {_f(t.get('measured'))} s, estimates {_f(t.get('estimates'))} s).",
        "",
        "| unit | kind | params | "
        + " | ".join(tasks)
        + " | block SQNR dB | "
        + " | ".join(f"fisher {x}" for x in tasks)
        + " | plan |",
        "|---|---|---:|" + "---:|" * (len(tasks) * 2 + 1) + "---|",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['unit']} | {r['kind']} | {_f(r['num_params'])} | "
            + " | ".join(_f(r[x]) for x in tasks)
            + f" | {_f(r.get('block_sqnr_db'))} | "
            + " | ".join(_f(r.get(f"fisher_{x}")) for x in tasks)
            + f" | {marks.get(r['unit'], '')} |"
        )
    corr = correlation_rows(data)
    if corr:
        lines += ["", "Rank correlation of each cheap estimate with the measured error, over the units:", "",
                  "| estimate | task | Spearman | Kendall |", "|---|---|---:|---:|"]  # fmt: skip
        lines += [
            f"| {c['estimate']} | {c['task']} | {_f(c['spearman'])} | {_f(c['kendall'])} |" for c in corr
        ]
    lines += [
        "",
        "Most fragile: " + "; ".join(f"{k}: {', '.join(v) or 'none'}" for k, v in fragile(data).items()),
    ]
    plan = data.get("plan")
    if plan:
        src = plan.get("source") or {}
        lines += [
            "",
            f"Plan `{plan.get('name')}`: {len(marks)} unit(s) raised, average weight bits "
            f"{_f(src.get('average_weight_bits'))} within the budget {_f(src.get('budget_bits'))} "
            f"(task {src.get('task', '?')}): {', '.join(f'{u} = {e}' for u, e in marks.items())}",
        ]
    return "\n".join(lines) + "\n"


def section(data: dict[str, Any], source: str = "") -> dict[str, Any]:
    """What the HTML template's Sensitivity section needs for one table."""
    tasks = list(data["tasks"])
    marks = plan_marks(data)
    rows = [
        {
            "unit": r["unit"],
            "kind": r["kind"],
            "params": r["num_params"],
            "tasks": [r[t] for t in tasks],
            "sqnr": r.get("block_sqnr_db"),
            "fisher": [r.get(f"fisher_{t}") for t in tasks],
            "gn": [r.get(f"gn_{t}") for t in tasks],
            "plan": marks.get(r["unit"], ""),
        }
        for r in data["rows"]
    ]
    svg = heatmap_svg(data)
    plan = data.get("plan") or None
    return {
        "title": f"{data.get('model')} · {data.get('scheme')} · per {data.get('granularity')}",
        "source": source,
        "tasks": tasks,
        "rows": rows,
        "correlations": correlation_rows(data),
        "fragile": fragile(data),
        "svg": Markup(svg) if svg else None,
        "calibration": data.get("calibration") or {},
        "time_s": data.get("time_s") or {},
        "plan": plan,
        "plan_source": (plan or {}).get("source") or {},
    }


def sensitivity_sections(run_dir: str | Path) -> list[dict[str, Any]]:
    """One `section` per sensitivity.json found in the run directory (`find`); an unreadable file becomes a
    section carrying only its error, so the report still renders."""
    out = []
    for p in find(run_dir):
        rel = str(p.relative_to(run_dir))
        try:
            out.append(section(load(p), rel))
        except (ValueError, KeyError, TypeError) as exc:
            out.append({"title": rel, "source": "", "error": f"{p}: malformed sensitivity table ({exc!r})"})
    return out


def sensitivity_markdown(run_dir: str | Path) -> str:
    """The Markdown of every sensitivity.json under the run directory (`find`), each after a blank line; an
    unreadable one is named with its error; "" when there is none."""
    parts = []
    for p in find(run_dir):
        try:
            parts.append(to_markdown(load(p)))
        except (ValueError, KeyError, TypeError) as exc:
            parts.append(f"## Sensitivity: {p}\n\nmalformed sensitivity table ({exc!r})\n")
    return "".join("\n" + x for x in parts)
