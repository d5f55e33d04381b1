"""Read a results store into pandas frames that every report format shares.

- `cells`: one row per cell (ok and failed) with flattened costs (calibration time and peak memory, latency,
  speedup, model bytes).
- `metrics`: one row per ok cell x stage x metric, aggregated over scenes (value, stderr over scenes), with the
  same cell's FP value and the accuracy *retained* vs FP: q / fp when higher is better, fp / q when lower is
  better (1.0 = no loss), NaN for metrics without a direction (counts).
- `summary(stage)`: the quantized stage of each cell (the FP stage for the reference) averaged over calibration
  seeds: mean, standard error over seeds (None with one seed), number of seeds. Failed cells never enter.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ptq3d.results.records import AGGREGATE_SCENE, FP_METHOD
from ptq3d.results.store import ResultsStore

VARIANT = ["model", "model_label", "method", "method_label", "scheme", "protocol", "calib_builder"]


def scheme_bits(scheme: str) -> tuple[float, float]:
    """(weight bits, activation bits) of names like w4a8, w4g128a8-static; fp32 -> (32, 32)."""
    m = re.match(r"^w(\d+)(?:g\d+)?a(\d+)", scheme)
    if m:
        return float(m.group(1)), float(m.group(2))
    m = re.match(r"^(?:fp|bf|f)(\d+)$", scheme)
    bits = float(m.group(1)) if m else math.nan
    return bits, bits


def retained(q: float, fp: float, higher_is_better: bool | None) -> float:
    """Accuracy retained vs FP (1.0 = none lost): q/fp for higher-is-better metrics, fp/q for lower-is-better."""
    if higher_is_better is None or not (math.isfinite(q) and math.isfinite(fp)):
        return math.nan
    num, den = (q, fp) if higher_is_better else (fp, q)
    if den == 0:
        return 1.0 if num == 0 else math.nan
    return num / den


def _flat_costs(costs: dict[str, Any]) -> dict[str, Any]:
    lat_fp = costs.get("latency_fp") or {}
    lat_q = costs.get("latency_q") or {}
    return {
        "calib_time_s": costs.get("calib_time_s"),
        "calib_peak_bytes": costs.get("calib_peak_bytes"),
        "latency_fp_ms": lat_fp.get("median_ms"),
        "latency_ms": lat_q.get("median_ms", lat_fp.get("median_ms")),
        "latency_backend": costs.get("latency_backend", "fp" if lat_fp else None),
        "speedup": costs.get("speedup", 1.0 if lat_fp and not lat_q else None),
        "model_bytes_fp": costs.get("model_bytes_fp"),
        "model_bytes": costs.get("model_bytes_q", costs.get("model_bytes_fp")),
        "cell_wall_s": costs.get("cell_wall_s"),
        "real_backend": costs.get("real_backend"),
    }


@dataclass
class Results:
    """Frames read from one store (see the module docstring)."""

    path: Path
    cells: pd.DataFrame
    metrics: pd.DataFrame
    stages: pd.DataFrame
    metric_info: dict[str, dict[str, Any]]
    raw_cells: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)

    def higher_is_better(self, metric: str) -> bool | None:
        return self.metric_info.get(metric, {}).get("higher_is_better")

    def directed_metrics(self) -> list[str]:
        """Metrics with a direction, in first-seen order (counts are left out of tables)."""
        seen = list(dict.fromkeys(self.metrics["metric"])) if len(self.metrics) else []
        return [m for m in seen if self.higher_is_better(m) is not None]

    def summary(self, stage: str = "fake") -> pd.DataFrame:
        """One row per variant (model, method, scheme, protocol, calibration builder) x metric: the quantized
        `stage` (FP reference cells: stage "fp"), averaged over seeds with the standard error over seeds."""
        m = self.metrics
        if not len(m):
            return pd.DataFrame(
                columns=[
                    *VARIANT,
                    "metric",
                    "value",
                    "se_seeds",
                    "se_scenes",
                    "n_seeds",
                    "fp_value",
                    "retained",
                ]
            )
        is_ref = m["method"] == FP_METHOD
        sel = m[(is_ref & (m["stage"] == "fp")) | (~is_ref & (m["stage"] == stage))]
        keys = [*VARIANT, "metric"]
        sel = sel.assign(calib_builder=sel["calib_builder"].fillna(""))

        def agg(g: pd.DataFrame) -> pd.Series:
            k = len(g)
            v = g["value"].astype(float)
            return pd.Series(
                {
                    "value": v.mean(),
                    "se_seeds": float(v.std(ddof=1) / math.sqrt(k)) if k > 1 else math.nan,
                    "se_scenes": g["stderr"].astype(float).mean(),
                    "n_seeds": k,
                    "fp_value": g["fp_value"].astype(float).mean(),
                    "retained": g["retained"].astype(float).mean(),
                }
            )

        out = sel.groupby(keys, sort=False, dropna=False)[sel.columns.tolist()].apply(agg).reset_index()
        return out


def load_results(path: str | Path) -> Results:
    """Read the store at `path` (read-only)."""
    with ResultsStore(path, readonly=True) as store:
        raw = store.cells()
        rows = store.metric_rows(AGGREGATE_SCENE)
        stages = pd.DataFrame(store.stage_rows())
        info = store.metric_info()
        runs = store.runs()
    cell_rows = []
    for c in raw:
        cell_rows.append(
            {
                "cell_id": c["cell_id"],
                "status": c["status"],
                "reason": c["reason"] or "",
                "model": c["model"],
                "model_label": c["model_label"],
                "method": c["method"],
                "method_label": c["method_label"],
                "scheme": c["scheme"],
                "protocol": c["protocol"],
                "calib_builder": c["calib_builder"] or "",
                "calib_seed": c["calib_seed"],
                "w_bits": scheme_bits(c["scheme"])[0],
                "a_bits": scheme_bits(c["scheme"])[1],
                **_flat_costs(c["costs"]),
            }
        )
    cells = pd.DataFrame(cell_rows)
    if len(cells):
        cells["calib_seed"] = cells["calib_seed"].astype("Int64")
    by_id = {c["cell_id"]: c for c in cell_rows}
    fp_of: dict[tuple[str, str], float] = {}
    for r in rows:
        if r["stage"] == "fp":
            fp_of[(r["cell_id"], r["metric"])] = r["value"]
    mrows = []
    for r in rows:
        c = by_id.get(r["cell_id"])
        if c is None or c["status"] != "ok":
            continue  # failed cells are reported as failed, never averaged in
        hib = info.get(r["metric"], {}).get("higher_is_better")
        fp = fp_of.get((r["cell_id"], r["metric"]), math.nan)
        mrows.append(
            {
                "cell_id": r["cell_id"],
                **{k: c[k] for k in VARIANT},
                "calib_seed": c["calib_seed"],
                "stage": r["stage"],
                "metric": r["metric"],
                "value": r["value"],
                "stderr": r["stderr"] if r["stderr"] is not None else math.nan,
                "n_scenes": r["n"],
                "fp_value": fp,
                "retained": retained(r["value"], fp, hib),
                "higher_is_better": hib,
            }
        )
    metrics = pd.DataFrame(
        mrows,
        columns=[
            "cell_id",
            *VARIANT,
            "calib_seed",
            "stage",
            "metric",
            "value",
            "stderr",
            "n_scenes",
            "fp_value",
            "retained",
            "higher_is_better",
        ],
    )
    return Results(Path(path), cells, metrics, stages, info, raw, runs)
