"""Regression gate between two results stores (`ptq3d compare`).

Cells are matched by (model, method label, scheme, protocol, calibration builder, seed), not by cell id, so two
machines with different data paths still compare. For every metric with a direction, aggregated over scenes
(the FP stage for the reference cells, `stage` for quantized ones):
    worse = baseline - new  (higher is better)   or   new - baseline  (lower is better)
and it regresses when worse > tolerance (absolute) or worse > tolerance * |baseline| (relative). A non-finite
new value where the baseline was finite regresses; so does a cell that finished in the baseline but failed
or is missing in the new store (unless allow_missing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ptq3d.results.read import Results, load_results
from ptq3d.results.records import FP_METHOD

KEY = ["model_label", "method_label", "scheme", "protocol", "calib_builder", "calib_seed"]


@dataclass
class Regression:
    cell: str
    metric: str
    baseline: float
    new: float
    allowed: float
    why: str = ""


@dataclass
class CompareResult:
    regressions: list[Regression] = field(default_factory=list)
    compared_cells: int = 0
    compared_values: int = 0
    only_in_new: list[str] = field(default_factory=list)
    improved: int = 0

    def to_text(self) -> str:
        lines = [
            f"compared {self.compared_values} metric values over {self.compared_cells} cells; "
            f"{len(self.regressions)} regressions, {self.improved} improved"
        ]
        if self.regressions:
            lines.append("REGRESSIONS (worse beyond tolerance):")
            for r in self.regressions:
                if r.why:
                    lines.append(f"  {r.cell}: {r.why}")
                else:
                    lines.append(
                        f"  {r.cell}: {r.metric} {r.baseline:.6g} -> {r.new:.6g} "
                        f"(worse by {abs(r.new - r.baseline):.6g}, allowed {r.allowed:.6g})"
                    )
        for c in self.only_in_new:
            lines.append(f"  new cell (no baseline): {c}")
        lines.append("FAIL" if self.regressions else "PASS")
        return "\n".join(lines)


def _key(row) -> tuple:
    seed = row["calib_seed"]
    return (
        row["model_label"],
        row["method_label"],
        row["scheme"],
        row["protocol"],
        row["calib_builder"] or "",
        None
        if seed is None or (isinstance(seed, float) and math.isnan(seed)) or str(seed) == "<NA>"
        else int(seed),
    )


def _describe(k: tuple) -> str:
    s = " | ".join(str(x) for x in k[:4])
    if k[4]:
        s += f" | {k[4]}/seed{k[5]}"
    return s


def _values(res: Results, stage: str) -> dict[tuple, dict[str, float]]:
    out: dict[tuple, dict[str, float]] = {}
    cells = {c["cell_id"]: c for c in res.cells.to_dict("records")}
    m = res.metrics
    for r in m.to_dict("records"):
        want = "fp" if r["method"] == FP_METHOD else stage
        if (
            r["stage"] != want
            or r["higher_is_better"] is None
            or r["higher_is_better"] != r["higher_is_better"]
        ):
            continue
        out.setdefault(_key(cells[r["cell_id"]]), {})[r["metric"]] = r["value"]
    return out


def compare_stores(
    baseline: str | Path,
    new: str | Path,
    tolerance: float = 0.0,
    relative: bool = False,
    metric_tolerances: dict[str, float] | None = None,
    metrics: list[str] | None = None,
    stage: str = "fake",
    allow_missing: bool = False,
) -> CompareResult:
    base_res, new_res = load_results(baseline), load_results(new)
    base_vals, new_vals = _values(base_res, stage), _values(new_res, stage)
    status_new = {_key(c): c["status"] for c in new_res.cells.to_dict("records")}
    reason_new = {_key(c): c["reason"] for c in new_res.cells.to_dict("records")}
    ok_base = {_key(c) for c in base_res.cells.to_dict("records") if c["status"] == "ok"}
    per = metric_tolerances or {}
    out = CompareResult()
    for k in sorted(ok_base, key=str):
        name = _describe(k)
        if k not in status_new:
            if not allow_missing:
                out.regressions.append(
                    Regression(name, "", math.nan, math.nan, 0, "missing from the new store")
                )
            continue
        if status_new[k] != "ok":
            out.regressions.append(
                Regression(name, "", math.nan, math.nan, 0, f"failed in the new store: {reason_new[k]}")
            )
            continue
        out.compared_cells += 1
        bv, nv = base_vals.get(k, {}), new_vals.get(k, {})
        for metric, b in bv.items():
            if metrics and metric not in metrics:
                continue
            hib = base_res.higher_is_better(metric)
            if metric not in nv:
                out.regressions.append(
                    Regression(name, metric, b, math.nan, 0, f"{metric} missing from the new store")
                )
                continue
            n = nv[metric]
            out.compared_values += 1
            tol = per.get(metric, tolerance)
            allowed = tol * abs(b) if relative else tol
            if not math.isfinite(b):
                continue
            if not math.isfinite(n):
                out.regressions.append(
                    Regression(name, metric, b, n, allowed, f"{metric} is {n} (baseline {b:.6g})")
                )
                continue
            worse = (b - n) if hib else (n - b)
            if worse > allowed:
                out.regressions.append(Regression(name, metric, b, n, allowed))
            elif worse < 0:
                out.improved += 1
    base_all = {_key(c) for c in base_res.cells.to_dict("records")}
    out.only_in_new = [_describe(k) for k in status_new if k not in base_all]
    return out
