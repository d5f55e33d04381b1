"""Read a results store into pandas frames that every report format shares.

`load_results(path)` takes what the CLI takes: a run directory (holding results.sqlite) or the .sqlite file;
`latest_run()` finds the newest run under ./ptq3d-runs. From a notebook:

    res = load_results("ptq3d-runs/20261206-031500")
    res.cells, res.metrics, res.scenes      # DataFrames
    res.leaderboard("fake")                 # ranked per-task scores with bootstrap intervals (ptq3d.results.scores)

- `cells`: one row per cell (ok, failed, stale) with flattened costs (calibration time and peak memory, latency
  median/min/max, speedup, model bytes) and the failed stage.
- `metrics`: one row per ok cell x stage x metric, aggregated over scenes (value, stderr over scenes), with the
  same cell's FP value and the accuracy *retained* vs FP: q / fp when higher is better, fp / q when lower is
  better (1.0 = no loss); NaN for metrics without a direction (counts) and where the FP value is degenerate
  (0: a higher-is-better fraction or a lower-is-better error at 0 has no ratio; `fp_degenerate` says so).
- `scenes`: the per-scene rows of ok cells (cell_id, stage, scene, metric, value): what the bootstrap resamples.
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

from ptq3d.errors import UserError
from ptq3d.results.records import AGGREGATE_SCENE, FP_METHOD
from ptq3d.results.store import ResultsStore

VARIANT = ["model", "model_label", "method", "method_label", "scheme", "protocol", "calib_builder"]
STORE_FILE = "results.sqlite"  # the store inside a run directory (ptq3d.harness.sweep.STORE_NAME)
RUNS_DIR = "ptq3d-runs"  # where `ptq3d run` puts its runs by default


def scheme_bits(scheme: str) -> tuple[float, float]:
    """(weight bits, activation bits) of names like w4a8, w4g128a8-static; fp32 -> (32, 32)."""
    m = re.match(r"^w(\d+)(?:g\d+)?a(\d+)", scheme)
    if m:
        return float(m.group(1)), float(m.group(2))
    m = re.match(r"^(?:fp|bf|f)(\d+)$", scheme)
    bits = float(m.group(1)) if m else math.nan
    return bits, bits


def is_degenerate(fp: float, higher_is_better: bool | None) -> bool:
    """An FP value that admits no retained ratio: 0 (a higher-is-better fraction at 0 makes q/fp undefined; a
    lower-is-better error at 0 makes fp/q 0 for every method). Such a metric never enters a score."""
    return higher_is_better is not None and math.isfinite(fp) and fp == 0


def retained(q: float, fp: float, higher_is_better: bool | None) -> float:
    """Accuracy retained vs FP (1.0 = none lost): q/fp for higher-is-better metrics, fp/q for lower-is-better.
    NaN without a direction, for a non-finite value and for a degenerate FP value (see is_degenerate)."""
    if higher_is_better is None or not (math.isfinite(q) and math.isfinite(fp)) or is_degenerate(fp, True):
        return math.nan
    num, den = (q, fp) if higher_is_better else (fp, q)
    if den == 0:  # lower is better and q == 0: an error below FP's, down to zero; no finite ratio
        return math.inf
    return num / den


def resolve_store(path: str | Path) -> Path:
    """A run directory -> its results.sqlite; a store file -> itself. One-line UserError otherwise."""
    p = Path(path)
    if p.is_dir():
        if not (p / STORE_FILE).is_file():
            raise UserError(
                f"'{p}' is a directory without a results store ({STORE_FILE}); pass a run directory"
            )
        return p / STORE_FILE
    if not p.is_file():
        raise UserError(f"results store '{p}' does not exist (pass a run directory or its {STORE_FILE})")
    return p


def latest_run(root: str | Path = RUNS_DIR) -> Path:
    """The run directory under `root` whose results store was written last (UserError if there is none)."""
    root = Path(root)
    stores = (
        sorted(root.glob(f"*/{STORE_FILE}"), key=lambda p: (p.stat().st_mtime, str(p)))
        if root.is_dir()
        else []
    )
    if not stores:
        raise UserError(
            f"no run under '{root}' (no {root}/*/{STORE_FILE}); run `ptq3d run` or name a run directory"
        )
    return stores[-1].parent


def _flat_costs(costs: dict[str, Any]) -> dict[str, Any]:
    lat_fp = costs.get("latency_fp") or {}
    lat_q = costs.get("latency_q") or lat_fp
    return {
        "calib_time_s": costs.get("calib_time_s"),
        "calib_peak_bytes": costs.get("calib_peak_bytes"),
        "latency_fp_ms": lat_fp.get("median_ms"),
        "latency_ms": lat_q.get("median_ms"),
        "latency_min_ms": lat_q.get("min_ms"),
        "latency_max_ms": lat_q.get("max_ms"),
        "latency_repeats": lat_q.get("repeats"),
        # the load average exceeded the core count while timing (recorded by ptq3d.kernels.timing)
        "latency_overloaded": bool(lat_q.get("overloaded") or lat_fp.get("overloaded")),
        "latency_backend": costs.get("latency_backend", "fp" if lat_fp else None),
        "speedup": costs.get("speedup", 1.0 if lat_fp and not lat_q else None),
        "model_bytes_fp": costs.get("model_bytes_fp"),
        "model_bytes": costs.get("model_bytes_q", costs.get("model_bytes_fp")),
        "cell_wall_s": costs.get("cell_wall_s"),
        "real_backend": costs.get("real_backend"),
        "real_backend_error": costs.get("real_backend_error", ""),
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
    scenes: pd.DataFrame = field(default_factory=pd.DataFrame)
    _boards: dict[tuple, pd.DataFrame] = field(default_factory=dict, repr=False)

    def leaderboard(self, stage: str = "fake", **kwargs: Any) -> pd.DataFrame:
        """The ranked leaderboard (ptq3d.results.scores.leaderboard): per-task retained %, worst task, CIs.
        Computed once per stage and options (every report format shares it); returns a copy."""
        from ptq3d.results.scores import leaderboard

        key = (stage, tuple(sorted(kwargs.items())))
        if key not in self._boards:
            self._boards[key] = leaderboard(self, stage, **kwargs)
        board = self._boards[key]
        out = board.copy()
        out.attrs = board.attrs
        return out

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
    """Read a run directory or a results store file (read-only)."""
    path = resolve_store(path)
    with ResultsStore(path, readonly=True) as store:
        raw = store.cells()
        every_row = store.metric_rows()
        rows = [r for r in every_row if r["scene"] == AGGREGATE_SCENE]
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
                "failed_stage": c.get("failed_stage") or "",
                # what the method really runs (granularity, static/dynamic, extras), beside the scheme name
                "format": ((c.get("manifest") or {}).get("effective_format") or {}).get("short", ""),
                "w_bits": scheme_bits(c["scheme"])[0],
                # the parameter-weighted mean weight bits as built (differs from w_bits under a mixed plan)
                "w_bits_effective": ((c.get("manifest") or {}).get("summary") or {}).get(
                    "effective_weight_bits"
                ),
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
                "fp_degenerate": is_degenerate(fp, hib),
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
            "fp_degenerate",
        ],
    )
    ok_ids = {c["cell_id"] for c in cell_rows if c["status"] == "ok"}
    scenes = pd.DataFrame(
        [
            {k: r[k] for k in ("cell_id", "stage", "scene", "metric", "value")}
            for r in every_row
            if r["scene"] != AGGREGATE_SCENE and r["cell_id"] in ok_ids
        ],
        columns=["cell_id", "stage", "scene", "metric", "value"],
    )
    return Results(Path(path), cells, metrics, stages, info, raw, runs, scenes)
