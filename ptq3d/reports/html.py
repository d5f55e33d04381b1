"""A self-contained HTML report (jinja2, autoescaped; no JavaScript, no external resources).

Sections: run provenance and notes, the leaderboard, the metric tables (best bold, second underlined),
accuracy-vs-bits and accuracy-vs-cost plots (inline SVG), per-block quantization error, per-block activation
outlier statistics, per-stage costs, the coverage manifest of each variant, and the failed cells with reasons.
Every string from the store (method labels, scene names, reasons) goes through autoescaping; only the SVG
produced by ptq3d.reports.plots is marked safe. A Content-Security-Policy forbids scripts outright.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from ptq3d.reports import plots
from ptq3d.reports.leaderboard import leaderboard, leaderboard_rows
from ptq3d.reports.tables import arrow, build_tables, fmt
from ptq3d.results.read import Results
from ptq3d.results.records import FP_METHOD


def _env() -> Environment:
    env = Environment(
        loader=PackageLoader("ptq3d.reports", "templates"),
        autoescape=select_autoescape(["html", "j2", "html.j2"], default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = fmt
    env.filters["arrow"] = arrow
    env.filters["mib"] = lambda b: "–" if b is None or b != b else f"{b / 2**20:.1f}"
    return env


def _site_group(site: dict[str, Any]) -> str:
    """A short description of a quantized site's settings (everything scalar but its block name)."""
    parts = [
        f"{k}={v}" for k, v in site.items() if k not in ("block", "layer") and not isinstance(v, dict | list)
    ]
    return ", ".join(parts) or "quantized"


def coverage(results: Results) -> list[dict[str, Any]]:
    """One entry per (model, method, scheme) with the first ok cell's manifest summarised."""
    out, seen = [], set()
    for c in results.raw_cells:
        if c["status"] != "ok" or c["method"] == FP_METHOD:
            continue
        key = (c["model_label"], c["method_label"], c["scheme"])
        if key in seen:
            continue
        seen.add(key)
        man = c.get("manifest") or {}
        sites = man.get("sites") or {}
        groups = Counter(_site_group(s) if isinstance(s, dict) else str(s) for s in sites.values())
        fp_linears = man.get("fp_linears") or list((man.get("skipped") or {}).keys())
        out.append(
            {
                "model": key[0],
                "method": key[1],
                "scheme": key[2],
                "n_sites": len(sites),
                "n_fp": len(fp_linears),
                "groups": sorted(groups.items(), key=lambda kv: -kv[1]),
                "sites": list(sites)[:2000],
                "fp_linears": fp_linears[:2000],
                "always_fp": man.get("always_fp", ""),
                "scope": man.get("scope", ""),
            }
        )
    return out


def block_error_rows(results: Results) -> list[dict[str, Any]]:
    """Per-block error records of the first ok cell of each variant: {variant, blocks: [...]}."""
    out, seen = [], set()
    for c in results.raw_cells:
        blocks = ((c.get("stats") or {}).get("calibration") or {}).get("blocks") or []
        key = (c["model_label"], c["method_label"], c["scheme"])
        if c["status"] != "ok" or not blocks or key in seen:
            continue
        seen.add(key)
        out.append({"variant": " · ".join(key), "blocks": blocks})
    return out


def outlier_sections(results: Results) -> list[dict[str, Any]]:
    """Per-block FP activation outlier statistics, once per model (they do not depend on the method)."""
    out, seen = [], set()
    for c in results.raw_cells:
        blocks = ((c.get("stats") or {}).get("outliers") or {}).get("blocks") or []
        if not blocks or c["model_label"] in seen:
            continue
        seen.add(c["model_label"])
        out.append(
            {
                "model": c["model_label"],
                "blocks": blocks,
                "svg": _safe(plots.outliers(blocks, c["model_label"])),
            }
        )
    return out


def _safe(svg: str | None) -> Markup | None:
    return Markup(svg) if svg else None


def _stage_rows(results: Results) -> list[dict[str, Any]]:
    if not len(results.stages):
        return []
    cells = results.cells.set_index("cell_id")
    rows = []
    for r in results.stages.itertuples(index=False):
        if r.cell_id not in cells.index:
            continue
        c = cells.loc[r.cell_id]
        rows.append(
            {
                "cell": f"{c['model_label']} · {c['method_label']} · {c['scheme']} · {c['protocol']}"
                + ("" if pd.isna(c["calib_seed"]) else f" · seed {int(c['calib_seed'])}"),
                "stage": r.stage,
                "status": r.status,
                "wall_s": r.wall_s,
                "cpu_peak": r.cpu_peak_bytes,
                "cpu_delta": r.cpu_delta_bytes,
                "cuda_peak": r.cuda_peak_bytes if r.cuda_peak_bytes == r.cuda_peak_bytes else None,
                "note": r.note,
            }
        )
    return rows


def _notes(results: Results) -> list[str]:
    notes = []
    for c in results.raw_cells:
        model = (c.get("provenance") or {}).get("model") or {}
        for n in [model.get("note")] if model.get("note") else []:
            text = f"{c['model_label']}: {n}"
            if text not in notes:
                notes.append(text)
    return notes


def _provenance(results: Results) -> dict[str, Any]:
    prov = {}
    for c in results.raw_cells:
        p = c.get("provenance") or {}
        if p.get("git") or p.get("versions"):
            prov = p
            break
    git = prov.get("git") or {}
    return {
        "commit": (git.get("commit") or "unknown") + (" (dirty)" if git.get("dirty") else ""),
        "versions": ", ".join(f"{k} {v}" for k, v in (prov.get("versions") or {}).items() if v),
        "device": ", ".join(f"{k}: {v}" for k, v in (prov.get("device") or {}).items()),
    }


def to_html(
    results: Results, stage: str = "fake", title: str = "ptq3d report", metrics: list[str] | None = None
) -> str:
    """Render the report for `results`; `stage` picks which quantized predictions are scored ("fake"/"real")."""
    lb = leaderboard(results, stage)
    tables = build_tables(results, stage, metrics)
    cells = results.cells
    failed = cells[cells["status"] != "ok"].to_dict("records") if len(cells) else []
    for f in failed:
        f["seed"] = "" if pd.isna(f["calib_seed"]) else int(f["calib_seed"])
    ctx = {
        "title": title,
        "store": str(results.path),
        "stage": stage,
        "n_cells": len(cells),
        "n_ok": int((cells["status"] == "ok").sum()) if len(cells) else 0,
        "n_failed": len(failed),
        "provenance": _provenance(results),
        "notes": _notes(results),
        "leaderboard": leaderboard_rows(lb),
        "tables": tables,
        "plot_bits": _safe(plots.accuracy_vs_bits(lb)),
        "plot_cost": _safe(plots.accuracy_vs_cost(lb)),
        "plot_blocks": _safe(plots.block_error(results)),
        "block_errors": block_error_rows(results),
        "outliers": outlier_sections(results),
        "coverage": coverage(results),
        "stages": _stage_rows(results),
        "failed": failed,
        "isfinite": lambda v: isinstance(v, int | float) and math.isfinite(v),
    }
    return _env().get_template("report.html.j2").render(**ctx)
