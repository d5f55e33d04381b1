"""A self-contained HTML report (jinja2, autoescaped; no JavaScript, no external resources).

Top of the page: what was run (model and what it is, protocols with their scene counts, schemes, methods,
calibration builders and seeds, scored stage and backends, device, threads and load average while timing),
then a failure banner naming every failed cell and every failed stage with its reason, then the notes a
reader must see (degenerate metrics excluded, missing values, too few scenes to separate the table).
Sections: the leaderboard (per-task retained %, worst task first, bootstrap intervals, ties), costs (backend
per row, FP latency and bytes, speedup with both latencies), plots (per-task loss with intervals, loss vs
bits, loss vs cost; one colour per method everywhere, FP marked), the paper tables, per-block error, outlier
statistics, coverage and stage costs (each folded into one collapsible) and the failed cells.
Every string from the store goes through autoescaping; only the SVG produced by ptq3d.reports.plots is marked
safe. A Content-Security-Policy forbids scripts outright. Tables wrap instead of scrolling sideways.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from ptq3d.reports import plots
from ptq3d.reports.leaderboard import (
    BACKEND_NAMES,
    cost_rows,
    leaderboard,
    leaderboard_notes,
    leaderboard_rows,
)
from ptq3d.reports.sensitivity import sensitivity_sections
from ptq3d.reports.tables import arrow, build_tables, fmt
from ptq3d.results.read import Results, scheme_bits
from ptq3d.results.records import FP_METHOD
from ptq3d.results.tasks import TASK_TITLES, paper_name


def _env() -> Environment:
    env = Environment(
        loader=PackageLoader("ptq3d.reports", "templates"),
        autoescape=select_autoescape(["html", "j2", "html.j2"], default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = fmt
    env.filters["arrow"] = arrow
    env.filters["paper"] = lambda m: paper_name(m).replace("delta<", "δ<")
    env.filters["task"] = lambda t: TASK_TITLES.get(t, t)
    env.filters["mib"] = lambda b: "–" if b is None or b != b else f"{b / 2**20:.1f}"
    return env


def _site_group(site: dict[str, Any]) -> str:
    """A short description of a quantized site's settings (everything scalar but its block name)."""
    parts = [
        f"{k}={v}" for k, v in site.items() if k not in ("block", "layer") and not isinstance(v, dict | list)
    ]
    return ", ".join(parts) or "quantized"


def coverage(results: Results) -> list[dict[str, Any]]:
    """One entry per (model, method, scheme) with the first ok cell's manifest summarised; `sites_key` groups
    variants with the same quantized-site list (the list is shown once per group)."""
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


def site_lists(cov: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Distinct (quantized sites, FP linears) lists with the variants that share them."""
    out: dict[tuple, dict[str, Any]] = {}
    for c in cov:
        key = (tuple(c["sites"]), tuple(c["fp_linears"]))
        entry = out.setdefault(key, {"variants": [], "sites": c["sites"], "fp_linears": c["fp_linears"]})
        entry["variants"].append(f"{c['method']} · {c['scheme']}")
    return list(out.values())


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


def run_info(results: Results, lb: pd.DataFrame, stage: str) -> dict[str, Any]:
    """What was run, for the top of the report (every field read from the store)."""
    cells = results.cells
    raw = results.raw_cells
    models: dict[str, dict[str, Any]] = {}
    protocols: dict[str, dict[str, Any]] = {}
    calib: dict[str, set] = {"builders": set(), "protocols": set(), "num_scenes": set()}
    devices, loads, threads, timing, real = set(), [], set(), set(), set()
    prov_any: dict[str, Any] = {}
    for c in raw:
        prov = c.get("provenance") or {}
        spec = c.get("spec") or {}
        if prov.get("git") and not prov_any:
            prov_any = prov
        mp = prov.get("model") or {}
        m = models.setdefault(
            c["model_label"],
            {"label": c["model_label"], "name": c["model"], "notes": [], "family": "", "params": None},
        )
        m["family"] = m["family"] or mp.get("family", "")
        m["params"] = m["params"] or mp.get("params")
        m["weights"] = m.get("weights") or mp.get("weights") or (spec.get("model") or {}).get("weights") or ""
        if mp.get("note") and mp["note"] not in m["notes"]:
            m["notes"].append(mp["note"])
        p = protocols.setdefault(
            c["protocol"], {"name": c["protocol"], "hash": prov.get("protocol_hash", ""), "scenes": 0}
        )
        p["scenes"] = max(p["scenes"], len(prov.get("scenes") or {}))
        cal = spec.get("calibration") or {}
        if cal:
            calib["builders"].add(cal.get("builder"))
            calib["protocols"].add(cal.get("protocol"))
            calib["num_scenes"].add(cal.get("num_scenes"))
        dev = prov.get("device") or {}
        if dev:
            devices.add(
                " · ".join(str(x) for x in (dev.get("cpu"), f"{dev.get('cpus')} CPUs", dev.get("gpu")) if x)
            )
            if isinstance(dev.get("load_avg_1m"), int | float):
                loads.append((float(dev["load_avg_1m"]), dev.get("cpus") or 0))
            if dev.get("torch_threads"):
                threads.add(dev["torch_threads"])
        costs = c.get("costs") or {}
        if costs.get("latency_backend"):
            timing.add(costs["latency_backend"])
        if costs.get("real_backend"):
            real.add(costs["real_backend"])
    if len(results.metrics):
        n = results.metrics.groupby("protocol")["n_scenes"].max()
        for name, k in n.items():
            if name in protocols:
                protocols[name]["scenes"] = max(protocols[name]["scenes"], int(k))
    seeds = sorted({int(s) for s in cells["calib_seed"].dropna()}) if len(cells) else []
    git = prov_any.get("git") or {}
    max_load = max(loads, default=None)
    return {
        "models": list(models.values()),
        "protocols": list(protocols.values()),
        "schemes": sorted({s for s in cells["scheme"] if s != "fp32"}, key=lambda s: -sum(scheme_bits(s)))
        if len(cells)
        else [],
        "methods": list(dict.fromkeys(cells.loc[cells["method"] != FP_METHOD, "method_label"]))
        if len(cells)
        else [],
        "calibration": {
            k: ", ".join(str(x) for x in sorted(v, key=str) if x is not None) for k, v in calib.items()
        },
        "seeds": ", ".join(map(str, seeds)) or "none (no calibration)",
        "stage": stage,
        "real_backends": ", ".join(sorted(real)) or "none",
        "timing_backends": ", ".join(BACKEND_NAMES.get(b, b) for b in sorted(timing)) or "not timed",
        "device": "; ".join(sorted(devices)) or "unknown",
        "threads": ", ".join(map(str, sorted(threads))) or "unknown",
        "load": (
            f"{min(x for x, _ in loads):.2f}–{max_load[0]:.2f} (1-minute load average while cells ran)"
            if loads
            else "not recorded"
        ),  # fmt: skip
        "overloaded": bool(max_load and max_load[1] and max_load[0] > max_load[1]),
        "cpus": max_load[1] if max_load else None,
        "commit": (git.get("commit") or "unknown") + (" (dirty)" if git.get("dirty") else ""),
        "versions": ", ".join(f"{k} {v}" for k, v in (prov_any.get("versions") or {}).items() if v),
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
    labels = list(cells["method_label"]) if len(cells) else []
    colors = plots.method_colors(labels)
    notes = leaderboard_notes(lb)
    cov = coverage(results)
    ctx = {
        "title": title,
        "store": str(results.path),
        "stage": stage,
        "n_cells": len(cells),
        "n_ok": int((cells["status"] == "ok").sum()) if len(cells) else 0,
        "n_failed": len(failed),
        "run": run_info(results, lb, stage),
        "failures": lb.attrs.get("failures", []),
        "warnings": [n for n in notes if n.startswith(("EXCLUDED", "MISSING", "WARNING"))],
        "rule": [n for n in notes if not n.startswith(("EXCLUDED", "MISSING", "WARNING", "FAILED"))],
        "leaderboard": leaderboard_rows(lb),
        "costs": cost_rows(lb),
        "colors": colors,
        "plot_tasks": _safe(plots.task_loss(lb, colors)),
        "plot_bits": _safe(plots.loss_vs_bits(lb, colors)),
        "plot_cost": _safe(plots.accuracy_vs_cost(lb, colors)),
        "plot_blocks": _safe(plots.block_error(results, colors)),
        "tables": tables,
        "block_errors": block_error_rows(results),
        "sensitivity": sensitivity_sections(results.path.parent),  # sensitivity.json in the run directory
        "outliers": outlier_sections(results),
        "coverage": cov,
        "site_lists": site_lists(cov),
        "stages": _stage_rows(results),
        "failed": failed,
        "isfinite": lambda v: isinstance(v, int | float) and math.isfinite(v),
    }
    return _env().get_template("report.html.j2").render(**ctx)
