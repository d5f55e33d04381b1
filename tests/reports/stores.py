"""Constructed results stores for the report tests: cells written with the store API, per-scene values chosen by
the test, aggregates computed as the runner does (plain mean over scenes, standard error over scenes)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ptq3d.results.records import (
    AGGREGATE_SCENE,
    CalibRef,
    CellResult,
    CellSpec,
    EvalOptions,
    MethodRef,
    MetricRow,
    ModelRef,
    ProtocolRef,
    StageRecord,
)
from ptq3d.results.store import ResultsStore

INFO = {
    "pose.auc@30": {"higher_is_better": True, "unit": "fraction", "aggregation": "mean"},
    "pose.auc@5": {"higher_is_better": True, "unit": "fraction", "aggregation": "mean"},
    "depth.abs_rel": {"higher_is_better": False, "unit": "ratio", "aggregation": "mean"},
    "points.acc": {"higher_is_better": False, "unit": "m", "aggregation": "mean"},
}
N_SCENES = 12
# FP per-scene values: AUC@30 around 0.25, AUC@5 exactly 0 (degenerate), AbsRel around 0.14, Acc around 0.18
_rng = np.random.default_rng(7)
FP = {
    "pose.auc@30": 0.25 + 0.05 * _rng.standard_normal(N_SCENES),
    "pose.auc@5": np.zeros(N_SCENES),
    "depth.abs_rel": 0.14 + 0.01 * _rng.standard_normal(N_SCENES),
    "points.acc": 0.18 + 0.02 * _rng.standard_normal(N_SCENES),
}


def scenes(n: int = N_SCENES) -> list[str]:
    return [f"scene-{i:02d}" for i in range(n)]


def _rows(stage: str, values: dict[str, np.ndarray]) -> list[MetricRow]:
    rows = []
    names = scenes(len(next(iter(values.values()))))
    for metric, v in values.items():
        v = np.asarray(v, dtype=float)
        for s, x in zip(names, v, strict=True):
            rows.append(MetricRow(stage, s, metric, float(x)))
        mean = float(v.mean())
        se = float(v.std(ddof=1) / math.sqrt(v.size))
        rows.append(
            MetricRow(stage, AGGREGATE_SCENE, metric, mean, se if math.isfinite(mean) else None, v.size)
        )
    return rows


def cell(
    method: str,
    scheme: str,
    quant: dict[str, np.ndarray] | None = None,
    *,
    seed: int | None = 0,
    label: str = "",
    status: str = "ok",
    reason: str = "",
    failed_stage: str = "",
    fp: dict[str, np.ndarray] | None = None,
    protocol: str = "toy-protocol",
    model_label: str = "Toy model",
    backend: str = "emulated",
    latency_ms: tuple[float, float] = (100.0, 80.0),
    failed_stages: dict[str, str] | None = None,
    overloaded: bool = False,
) -> CellResult:
    """One cell: `quant` per-scene values of the fake stage (None for FP), `fp` per-scene FP values."""
    fp = FP if fp is None else fp
    is_fp = method == "fp"
    spec = CellSpec(
        ModelRef("toy", label=model_label),
        MethodRef(method, label=label),
        "fp32" if is_fp else scheme,
        ProtocolRef(protocol),
        None if is_fp or seed is None else CalibRef("random", "toy-calib", seed=seed),
        EvalOptions(),
    )
    res = CellResult(spec, status=status, reason=reason, metric_info=dict(INFO))
    if failed_stage and hasattr(res, "failed_stage"):
        res.failed_stage = failed_stage
    res.metrics = _rows("fp", fp) + ([] if is_fp or quant is None else _rows("fake", quant))
    res.stages = [StageRecord("fp_eval")]
    for stage, note in (failed_stages or {}).items():
        res.stages.append(StageRecord(stage, status="failed", note=note))
    fp_ms, q_ms = latency_ms
    res.costs = {
        "latency_fp": {"median_ms": fp_ms, "min_ms": fp_ms * 0.95, "max_ms": fp_ms * 1.1, "repeats": 3},
        "model_bytes_fp": 8_000_000,
    }
    if not is_fp:
        res.costs.update(
            {
                "latency_q": {
                    "median_ms": q_ms,
                    "min_ms": q_ms * 0.9,
                    "max_ms": q_ms * 1.2,
                    "repeats": 3,
                    "overloaded": overloaded,
                },  # fmt: skip
                "latency_backend": backend,
                "speedup": fp_ms / q_ms,
                "model_bytes_q": 4_000_000,
                "calib_time_s": 1.0,
            }
        )
    return res


def scaled(factors: dict[str, float], noise: float = 0.0, seed: int = 0, base: dict | None = None) -> dict:
    """FP per-scene values times a factor per metric (plus relative noise): a quantized method's values."""
    rng = np.random.default_rng(seed)
    base = FP if base is None else base
    return {
        m: np.asarray(v) * factors.get(m, 1.0) * (1 + noise * rng.standard_normal(len(v)))
        for m, v in base.items()
    }


def write(path: Path, cells: list[CellResult]) -> Path:
    with ResultsStore(path) as store:
        for c in cells:
            store.write_cell(c, run_id="test")
    return path
