"""The leaderboard: per-task accuracy retained vs FP, ranked by the worst task, with paired-bootstrap intervals.

The rule (a collapse on one task cannot be averaged away):
1. Units. For every protocol, each task (camera, depth, points, trajectory) is scored by its primary metric
   (ptq3d.results.tasks.primary_metrics: AUC@30, AbsRel, Overall/Acc., ATE unless the protocol pins others).
2. Retained. A cell's retained on a unit is q / fp when higher is better, fp / q when lower is better (100 % =
   nothing lost), q from the scored stage ("fake" or "real"), fp from the same cell's FP stage, both
   aggregated over the protocol's scenes as the metric defines.
3. A variant (model, method, scheme, calibration builder) averages its calibration seeds per unit. Its task
   column is the worst unit of that task over protocols.
4. Score = the WORST task column; Mean = the mean of the task columns, shown beside it. Variants rank by
   score, descending.
5. Degenerate FP metrics (FP value 0: a higher-is-better fraction or a lower-is-better error at 0) have no
   ratio: they enter no score and are named in `attrs["degenerate"]`; a degenerate primary leaves its task
   unscored for that model and protocol (named too).
6. Completeness. A variant with a NaN or missing primary metric on any unit or seed, or with a failed cell, is
   "incomplete": its row shows NaN / "missing" where a value is absent (listed in `attrs["missing"]`) and it
   ranks below every complete variant. A variant without any ok cell is "failed" and has no rank. Failed
   cells, and failed stages of ok cells, are listed with their reasons in `attrs["failures"]`.
7. Uncertainty. Scenes are resampled with one paired bootstrap (ptq3d.results.bootstrap; the same resamples
   for every method, FP included): percentile intervals for every retained value, its difference from FP (in
   the metric's units, q - fp), the score, the mean and the gap to the next ranked row. Standard errors over
   calibration seeds are the std (ddof=1) / sqrt(k) of the per-seed values.
8. Ties. Adjacent rows of the same completeness share a rank (shown "=k") when the bootstrap interval of their
   score gap contains 0, or when the gap is within 1.96 x sqrt(se_seeds_a^2 + se_seeds_b^2).
9. Warnings (`attrs["warnings"]`) when scenes x seeds are too few to separate the table.

Costs per variant: calibration time and peak memory (mean over cells), latency median over cells with the
min and max over every repeat, the backend it was timed on, the same cells' FP latency, speedup = FP latency /
quantized latency (median over cells); "fake" timings (float quantize-dequantize) get no speedup, with the
reason. `attrs["cost_backends"]` lists the backends; a table must not rank a cost column across several.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ptq3d.results.bootstrap import CONFIDENCE, N_RESAMPLES, paired_bootstrap, percentile_interval
from ptq3d.results.read import Results, is_degenerate, retained
from ptq3d.results.records import FP_METHOD
from ptq3d.results.tasks import TASKS, primary_metrics

KEY = ["model", "model_label", "method", "method_label", "scheme", "calib_builder"]
# per-scene count that weights a "weighted" / "pooled" aggregate, by task prefix: only for stores written before
# metric_info kept each metric's weight_key (newer stores name it per metric)
LEGACY_WEIGHT_KEYS = {"depth": "depth.valid_pixels", "pose": "pose.n_pairs"}
TIE_Z = 1.96
MIN_SCENES = 8  # below this a percentile bootstrap over scenes understates the uncertainty


@dataclass(frozen=True)
class Unit:
    """One scored (protocol, task) pair and its primary metric."""

    protocol: str
    task: str
    metric: str
    higher_is_better: bool


def _finite(v: Any) -> bool:
    return isinstance(v, int | float | np.floating) and math.isfinite(float(v))


def _cell_label(c: dict[str, Any]) -> str:
    seed = c.get("calib_seed")
    s = "" if seed is None or pd.isna(seed) else f" seed {int(seed)}"
    return f"{c['model_label']} | {c['method_label']} | {c['scheme']} | {c['protocol']}{s}"


def failures(results: Results) -> list[dict[str, str]]:
    """Every failed cell (stage and reason) and every failed stage of an ok cell (e.g. a real-kernel backend
    that could not run, the fake-quant numbers standing)."""
    out = []
    cells = results.cells
    if not len(cells):
        return out
    for c in cells[cells["status"] != "ok"].to_dict("records"):
        reason = str(c.get("reason") or "")
        stage = str(c.get("failed_stage") or "") or (reason.split(":", 1)[0] if ":" in reason else "")
        reason = reason.removeprefix(f"{stage}: ") if stage else reason
        out.append({"cell": _cell_label(c), "cell_id": c["cell_id"], "status": c["status"], "stage": stage,
                    "reason": reason or c["status"]})  # fmt: skip
    if len(results.stages):
        by_id = cells.set_index("cell_id")
        bad = results.stages[results.stages["status"] == "failed"]
        for r in bad.itertuples(index=False):
            if r.cell_id in by_id.index and by_id.loc[r.cell_id, "status"] == "ok":
                c = by_id.loc[r.cell_id].to_dict() | {"cell_id": r.cell_id}
                out.append({"cell": _cell_label(c), "cell_id": r.cell_id, "status": "ok", "stage": r.stage,
                            "reason": str(r.note or "failed")})  # fmt: skip
    return out


class _Board:
    """Builds the leaderboard frame; see the module docstring for the rule."""

    def __init__(self, results: Results, stage: str, n_resamples: int, confidence: float, seed: int):
        self.res, self.stage = results, stage
        self.n_resamples, self.confidence, self.seed = n_resamples, confidence, seed
        self.degenerate: list[dict[str, Any]] = []
        self.missing: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.ci_notes: list[str] = []

    # --- inputs --------------------------------------------------------------------------------------------
    def units(self) -> list[Unit]:
        m = self.res.metrics
        out = []
        for protocol in dict.fromkeys(m["protocol"]):
            present = {
                x
                for x in m.loc[m["protocol"] == protocol, "metric"]
                if self.res.higher_is_better(x) is not None
            }
            for task, metric in primary_metrics(protocol, present).items():
                out.append(Unit(protocol, task, metric, bool(self.res.higher_is_better(metric))))
        return out

    def find_degenerate(self) -> set[tuple[str, str, str]]:
        """(model, protocol, metric) whose FP value is degenerate; every one is named, scored or not."""
        m = self.res.metrics
        fp = m[(m["stage"] == "fp") & m["higher_is_better"].notna()]
        out = set()
        for (model, protocol, metric), g in fp.groupby(["model", "protocol", "metric"], sort=False):
            vals = [float(v) for v in g["value"] if _finite(v)]
            hib = self.res.higher_is_better(metric)
            if vals and is_degenerate(vals[0], hib):
                out.add((model, protocol, metric))
                self.degenerate.append({
                    "model": model, "protocol": protocol, "metric": metric, "fp_value": vals[0],
                    "why": f"FP {metric} = 0 ({'higher' if hib else 'lower'} is better): no retained ratio",
                })  # fmt: skip
        return out

    # --- the board -----------------------------------------------------------------------------------------
    def build(self) -> pd.DataFrame:
        cells = self.res.cells
        if not len(cells):
            return self.frame([])
        self.units_ = units = self.units()
        degenerate = self.find_degenerate()
        m = self.res.metrics
        value = {(r.cell_id, r.stage, r.metric): float(r.value) for r in m.itertuples(index=False)}
        self.value = value
        quant = cells[cells["method"] != FP_METHOD]
        groups = list(quant.groupby(KEY, sort=False, dropna=False))
        rows, series = [], []  # series: (row index, unit index, seed, cell_id)
        for key, g in groups:
            ok = g[g["status"] == "ok"]
            row = dict(zip(KEY, key, strict=True))
            row["cells"] = g
            row["status"] = "ok" if len(ok) == len(g) else ("incomplete" if len(ok) else "failed")
            row["applicable"] = []
            for ui, u in enumerate(units):
                if (row["model"], u.protocol, u.metric) in degenerate:
                    continue
                pc = ok[ok["protocol"] == u.protocol]
                if not len(g[g["protocol"] == u.protocol]):
                    continue  # the variant did not run this protocol
                row["applicable"].append(ui)
                for c in pc.itertuples(index=False):
                    q = value.get((c.cell_id, self.stage, u.metric))
                    fp = value.get((c.cell_id, "fp", u.metric))
                    if q is None or not math.isfinite(q) or fp is None or not math.isfinite(fp):
                        what = "missing" if q is None else ("NaN" if not _finite(q) else "FP missing")
                        self.missing.append({
                            "variant": f"{row['model_label']} | {row['method_label']} | {row['scheme']}",
                            "protocol": u.protocol, "metric": u.metric, "stage": self.stage,
                            "seed": None if pd.isna(c.calib_seed) else int(c.calib_seed), "what": what,
                        })  # fmt: skip
                        row["status"] = "incomplete"
                    series.append((len(rows), ui, c.calib_seed, c.cell_id))
                if row["status"] == "ok" and len(pc) < len(g[g["protocol"] == u.protocol]):
                    row["status"] = "incomplete"
            rows.append(row)
        self.rows, self.series = rows, series
        est, dist = self.bootstrap()
        # all-NaN slices (failed or missing rows) are expected: NaN is the answer there
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return self.frame(self.assemble(est, dist))

    def bootstrap(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
        """Aggregates q and fp per series: point estimates from the stored aggregates, resampled ones from the
        per-scene rows (NaN where those cannot reproduce the stored aggregate)."""
        S = len(self.series)
        q_est = np.array([self.value.get((cid, self.stage, self.units_[u].metric), np.nan)
                          for _, u, _, cid in self.series], dtype=np.float64).reshape(S, 1)  # fmt: skip
        f_est = np.array([self.value.get((cid, "fp", self.units_[u].metric), np.nan)
                          for _, u, _, cid in self.series], dtype=np.float64).reshape(S, 1)  # fmt: skip
        est = {"q": q_est, "fp": f_est}
        if not S or not len(self.res.scenes):
            if S:
                self.ci_notes.append("no per-scene rows in the store: no bootstrap intervals")
            return est, None
        sc = self.res.scenes
        per_scene = {(r.cell_id, r.stage, r.metric, r.scene): r.value for r in sc.itertuples(index=False)}
        strata: dict[str, np.ndarray] = {}
        where: dict[int, tuple[str, int]] = {}
        for protocol in dict.fromkeys(self.units_[u].protocol for _, u, _, _ in self.series):
            idx = [i for i, (_, u, _, _) in enumerate(self.series) if self.units_[u].protocol == protocol]
            ids = {self.series[i][3] for i in idx}
            scenes = sorted(set(sc.loc[sc["cell_id"].isin(ids), "scene"]))
            if len(scenes) < 2:
                self.ci_notes.append(f"protocol '{protocol}': {len(scenes)} scene(s), no bootstrap interval")
                continue
            arr = np.full((4, len(idx), len(scenes)), np.nan)
            for j, i in enumerate(idx):
                _, u, _, cid = self.series[i]
                metric = self.units_[u].metric
                for stage, what in ((self.stage, 0), ("fp", 2)):
                    vals = [per_scene.get((cid, stage, metric, s), np.nan) for s in scenes]
                    w = self.weights(cid, stage, metric, scenes)
                    arr[what, j], arr[what + 1, j] = vals, w
                    agg = float(np.sum(np.asarray(vals) * w) / np.sum(w))
                    stored = self.value.get((cid, stage, metric), np.nan)
                    if not (math.isfinite(agg) and math.isclose(agg, stored, rel_tol=1e-5, abs_tol=1e-9)):
                        if math.isfinite(stored):
                            self.ci_notes.append(
                                f"{metric} of cell {cid[:8]} ({stage}): per-scene rows give {agg:.6g}, the stored "
                                f"aggregate is {stored:.6g}; no interval for it"
                            )
                        arr[what, j] = np.nan
            strata[protocol] = arr
            for j, i in enumerate(idx):
                where[i] = (protocol, j)
        if not strata:
            return est, None

        def stat(r: dict[str, np.ndarray]) -> np.ndarray:
            outs = {}
            for key, a in r.items():  # a: [4, series, B, n]
                q = np.sum(a[0] * a[1], axis=-1) / np.sum(a[1], axis=-1)
                f = np.sum(a[2] * a[3], axis=-1) / np.sum(a[3], axis=-1)
                outs[key] = (q, f)
            B = next(iter(outs.values()))[0].shape[-1]
            full = np.full((2, S, B), np.nan)
            for i, (key, j) in where.items():
                full[0, i], full[1, i] = outs[key][0][j], outs[key][1][j]
            return full

        with np.errstate(invalid="ignore", divide="ignore"):
            res = paired_bootstrap(strata, stat, self.n_resamples, self.confidence, self.seed)
        self.n_scenes = {k: v.shape[-1] for k, v in strata.items()}
        return est, {"q": res.distribution[0], "fp": res.distribution[1]}

    def weights(self, cell_id: str, stage: str, metric: str, scenes: list[str]) -> np.ndarray:
        agg = self.res.metric_info.get(metric, {}).get("aggregation", "mean")
        if agg in ("weighted", "pooled"):
            info = self.res.metric_info.get(metric, {})
            wkey = info.get("weight_key") or LEGACY_WEIGHT_KEYS.get(metric.split(".", 1)[0])
            sc = self.res.scenes
            sel = sc[(sc["cell_id"] == cell_id) & (sc["stage"] == stage) & (sc["metric"] == wkey)]
            w = dict(zip(sel["scene"], sel["value"], strict=True))
            return np.array([w.get(s, np.nan) for s in scenes], dtype=np.float64)
        return np.ones(len(scenes))

    # --- from per-series aggregates to rows -----------------------------------------------------------------
    def derive(self, q: np.ndarray, fp: np.ndarray) -> dict[str, np.ndarray]:
        """q, fp: [S, B] -> per row: task retained [R, T, B], diffs [R, T, B], score, mean [R, B]; plus the
        per-seed values for the standard errors over seeds."""
        units, R, T = self.units_, len(self.rows), len(TASKS)
        B = q.shape[-1]
        hib = np.array([units[u].higher_is_better for _, u, _, _ in self.series], dtype=bool).reshape(-1, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            ret = np.where(hib, q / fp, fp / q)
        diff = q - fp
        acc_r: dict[tuple[int, int], list[np.ndarray]] = defaultdict(list)
        acc_d: dict[tuple[int, int], list[np.ndarray]] = defaultdict(list)
        for i, (row, u, _, _) in enumerate(self.series):
            acc_r[(row, u)].append(ret[i])
            acc_d[(row, u)].append(diff[i])
        task_ret = np.full((R, T, B), np.nan)
        task_diff = np.full((R, T, B), np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for r, row in enumerate(self.rows):
                for ui in row["applicable"]:
                    t = TASKS.index(units[ui].task)
                    if (r, ui) not in acc_r:
                        continue
                    mean_r = np.nanmean(np.stack(acc_r[(r, ui)]), axis=0)
                    mean_d = np.nanmean(np.stack(acc_d[(r, ui)]), axis=0)
                    worse = ~(mean_r >= task_ret[r, t])  # NaN-safe: a first value always enters
                    task_ret[r, t] = np.where(worse, mean_r, task_ret[r, t])
                    task_diff[r, t] = np.where(worse, mean_d, task_diff[r, t])
            score = np.nanmin(task_ret, axis=1)
            mean = np.nanmean(task_ret, axis=1)
        return {"task": task_ret, "diff": task_diff, "score": score, "mean": mean}

    def per_seed(self) -> dict[int, tuple[np.ndarray, float]]:
        """Row -> (per-task se over seeds [T], se of the per-seed score)."""
        out = {}
        units = self.units_
        by_row: dict[int, dict[Any, dict[int, list[float]]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(list))
        )
        for row, u, seed, cid in self.series:
            q = self.value.get((cid, self.stage, units[u].metric), np.nan)
            fp = self.value.get((cid, "fp", units[u].metric), np.nan)
            by_row[row][seed][TASKS.index(units[u].task)].append(retained(q, fp, units[u].higher_is_better))
        for row, seeds in by_row.items():
            k = len(seeds)
            if k < 2:
                continue
            per = np.array(
                [[min(v[t]) if v.get(t) else np.nan for t in range(len(TASKS))] for v in seeds.values()]
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                se_task = np.nanstd(per, axis=0, ddof=1) / math.sqrt(k)
                scores = np.nanmin(per, axis=1)
            out[row] = (se_task, float(np.std(scores, ddof=1) / math.sqrt(k)))
        return out

    def assemble(
        self, est: dict[str, np.ndarray], dist: dict[str, np.ndarray] | None
    ) -> list[dict[str, Any]]:
        e = self.derive(est["q"], est["fp"])
        d = self.derive(dist["q"], dist["fp"]) if dist is not None else None
        seeds_se = self.per_seed()
        out = []
        for r, row in enumerate(self.rows):
            g = row.pop("cells")
            ok = g[g["status"] == "ok"]
            rec: dict[str, Any] = {k: row[k] for k in KEY}
            rec["status"] = row["status"]
            rec["n_seeds"] = (
                int(ok["calib_seed"].nunique()) if ok["calib_seed"].notna().any() else (1 if len(ok) else 0)
            )
            rec["failed"] = int((g["status"] != "ok").sum())
            rec["failed_stages"] = self.failed_stages(ok)
            scored = [TASKS.index(self.units_[u].task) for u in row["applicable"]]
            for t, task in enumerate(TASKS):
                if t not in scored:
                    continue
                rec[f"ret_{task}"] = 100 * float(e["task"][r, t, 0])
                rec[f"diff_{task}"] = float(e["diff"][r, t, 0])
                rec[f"metric_{task}"] = ", ".join(
                    dict.fromkeys(
                        self.units_[u].metric for u in row["applicable"] if self.units_[u].task == task
                    )
                )
                if d is not None:
                    lo, hi = percentile_interval(d["task"][r, t], self.confidence)
                    rec[f"ret_{task}_lo"], rec[f"ret_{task}_hi"] = 100 * float(lo), 100 * float(hi)
                    rec[f"ret_{task}_se_scenes"] = 100 * float(np.nanstd(d["task"][r, t], ddof=1))
                    lo, hi = percentile_interval(d["diff"][r, t], self.confidence)
                    rec[f"diff_{task}_lo"], rec[f"diff_{task}_hi"] = float(lo), float(hi)
                if r in seeds_se:
                    rec[f"ret_{task}_se_seeds"] = 100 * float(seeds_se[r][0][t])
            rec["score_pct"] = 100 * float(e["score"][r, 0])
            rec["mean_pct"] = 100 * float(e["mean"][r, 0])
            if scored and math.isfinite(rec["score_pct"]):
                vals = [(rec.get(f"ret_{TASKS[t]}", math.nan), TASKS[t]) for t in set(scored)]
                rec["worst_task"] = min((v for v in vals if math.isfinite(v[0])), default=(0, ""))[1]
            if d is not None:
                for name in ("score", "mean"):
                    lo, hi = percentile_interval(d[name][r], self.confidence)
                    rec[f"{name}_lo"], rec[f"{name}_hi"] = 100 * float(lo), 100 * float(hi)
                rec["score_se_scenes"] = 100 * float(np.nanstd(d["score"][r], ddof=1))
            if r in seeds_se:
                rec["score_se_seeds"] = 100 * seeds_se[r][1]
            rec.update(self.costs(ok))
            rec["_dist"] = d["score"][r] if d is not None else None
            out.append(rec)
        return out

    def failed_stages(self, ok: pd.DataFrame) -> str:
        """Stages that failed in ok cells (e.g. "eval_real"): the row stands on the others, and says so."""
        st = self.res.stages
        if not len(st) or not len(ok):
            return ""
        bad = st[st["cell_id"].isin(set(ok["cell_id"])) & (st["status"] == "failed")]
        return ", ".join(dict.fromkeys(bad["stage"]))

    @staticmethod
    def costs(ok: pd.DataFrame) -> dict[str, Any]:
        if not len(ok):
            return {}
        f = lambda c: ok[c].astype(float) if c in ok else pd.Series(dtype=float)  # noqa: E731
        backends = sorted({str(b) for b in ok["latency_backend"].dropna() if b})
        per_cell_speedup = f("latency_fp_ms") / f("latency_ms")
        rec = {
            "calib_time_s": f("calib_time_s").mean(),
            "calib_peak_mb": f("calib_peak_bytes").mean() / 2**20,
            "latency_fp_ms": f("latency_fp_ms").median(),
            "latency_ms": f("latency_ms").median(),
            "latency_min_ms": f("latency_min_ms").min(),
            "latency_max_ms": f("latency_max_ms").max(),
            "latency_repeats": f("latency_repeats").sum(min_count=1),
            "latency_backend": ",".join(backends),
            "speedup": per_cell_speedup.median(),
            "speedup_note": "",
            "format": " / ".join(dict.fromkeys(str(x) for x in ok["format"].dropna() if x))
            if "format" in ok
            else "",
            "model_mb_fp": f("model_bytes_fp").mean() / 2**20,
            "model_mb": f("model_bytes").mean() / 2**20,
            "w_bits_effective": f("w_bits_effective").mean(),
        }
        rec["latency_overloaded"] = (
            bool(ok["latency_overloaded"].any()) if "latency_overloaded" in ok else False
        )
        if any(b.split("-")[0] == "fake" or b == "triton-interpreter" for b in backends):
            errors = [e for e in ok.get("real_backend_error", pd.Series(dtype=str)).fillna("") if e]
            rec["speedup"] = math.nan
            rec["speedup_note"] = "timed with fake quantization or the Triton interpreter, not a kernel" + (
                f"; real backend: {errors[0]}" if errors else ""
            )
        elif len(backends) > 1:
            rec["speedup"] = math.nan
            rec["speedup_note"] = f"cells timed on different backends ({', '.join(backends)})"
        return rec

    def reference_rows(self) -> list[dict[str, Any]]:
        cells = self.res.cells
        fp = cells[(cells["method"] == FP_METHOD) & (cells["status"] == "ok")]
        out = []
        for (model, label), g in fp.groupby(["model", "model_label"], sort=False):
            rec = {"model": model, "model_label": label, "method": FP_METHOD, "scheme": "fp32",
                   "method_label": str(g["method_label"].iloc[0]), "calib_builder": "", "status": "reference",
                   "rank": "FP", "n_seeds": math.nan, "failed": 0, "score_pct": 100.0, "mean_pct": 100.0}  # fmt: skip
            for u in getattr(self, "units_", []):
                rec[f"ret_{u.task}"] = 100.0
            f = lambda c, g=g: g[c].astype(float)  # noqa: E731
            rec.update({
                "latency_fp_ms": f("latency_fp_ms").median(), "latency_ms": f("latency_fp_ms").median(),
                "latency_min_ms": f("latency_min_ms").min(), "latency_max_ms": f("latency_max_ms").max(),
                "latency_repeats": f("latency_repeats").sum(min_count=1), "latency_backend": "fp",
                "speedup": 1.0, "speedup_note": "", "model_mb_fp": f("model_bytes_fp").mean() / 2**20,
                "model_mb": f("model_bytes_fp").mean() / 2**20,
            })  # fmt: skip
            out.append(rec)
        return out

    def separated(self, a: dict[str, Any], b: dict[str, Any]) -> bool | None:
        """Whether a's score is significantly above b's: the bootstrap interval of the gap excludes 0 and,
        with several seeds, the gap exceeds TIE_Z standard errors over seeds. None without an interval."""
        gap = a.get("score_pct", math.nan) - b.get("score_pct", math.nan)
        if a.get("_dist") is None or b.get("_dist") is None or not math.isfinite(gap):
            return None
        lo, hi = percentile_interval(100 * (a["_dist"] - b["_dist"]), self.confidence)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return None
        se = math.hypot(a.get("score_se_seeds", math.nan), b.get("score_se_seeds", math.nan))
        return bool(not lo <= 0 <= hi and not (math.isfinite(se) and abs(gap) <= TIE_Z * se))

    def rank(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Sort (complete, then incomplete, by score) and rank: a row's rank is 1 + the number of rows above it
        that are significantly better (kept non-decreasing), so rows that cannot be told apart share it."""
        order = {"ok": 0, "incomplete": 1, "failed": 2}
        rows.sort(
            key=lambda r: (order[r["status"]], -r["score_pct"] if _finite(r.get("score_pct")) else math.inf)
        )
        ranked = [r for r in rows if r["status"] != "failed"]
        ties = 0
        for i, r in enumerate(ranked):
            better = 0
            for j in range(i):
                sep = self.separated(ranked[j], r)
                # no interval (or a different completeness group): the order alone decides
                better += 1 if sep is None or ranked[j]["status"] != r["status"] else int(sep)
            r["rank_num"] = max(better + 1, ranked[i - 1]["rank_num"] if i else 1)
            nxt = ranked[i + 1] if i + 1 < len(ranked) else None
            if nxt is None:
                continue
            r["gap_next"] = r.get("score_pct", math.nan) - nxt.get("score_pct", math.nan)
            if r.get("_dist") is not None and nxt.get("_dist") is not None:
                lo, hi = percentile_interval(100 * (r["_dist"] - nxt["_dist"]), self.confidence)
                r["gap_lo"], r["gap_hi"] = float(lo), float(hi)
            r["tied_next"] = self.separated(r, nxt) is False
            ties += int(r["tied_next"])
        counts: dict[int, int] = defaultdict(int)
        for r in ranked:
            counts[r["rank_num"]] += 1
        for r in ranked:
            r["rank"] = ("=" if counts[r["rank_num"]] > 1 else "") + str(r["rank_num"])
        for r in rows:
            r.setdefault("rank", "–")
            r.pop("_dist", None)
        pairs = max(0, len(ranked) - 1)
        n_scenes = min(getattr(self, "n_scenes", {}).values(), default=0)
        n_seeds = max((r.get("n_seeds", 1) for r in ranked), default=1)
        if pairs and ties * 2 >= pairs:
            self.warnings.append(
                f"{n_scenes} scenes x {n_seeds} seed(s) cannot separate this table: {ties} of {pairs} adjacent "
                f"ranks are statistically tied ({self.confidence:.0%} paired bootstrap over scenes"
                + (", standard error over seeds" if n_seeds > 1 else "")
                + "); evaluate more scenes (protocol limit) or calibration seeds before reading the order"
            )
        if ranked and 0 < n_scenes < MIN_SCENES:
            self.warnings.append(
                f"only {n_scenes} scenes: a bootstrap over fewer than {MIN_SCENES} scenes understates the "
                "uncertainty; treat the intervals as optimistic"
            )
        return rows

    def frame(self, rows: list[dict[str, Any]]) -> pd.DataFrame:
        rows = self.rank(rows) if rows else rows
        rows = self.reference_rows() + rows if rows or len(self.res.cells) else rows
        df = pd.DataFrame(rows)
        for col in ("rank", "rank_num", "status", *KEY, "score_pct", "mean_pct", "n_seeds", "failed"):
            if col not in df:
                df[col] = pd.Series(dtype=object)
        self.ci_notes = list(dict.fromkeys(self.ci_notes))
        df.attrs.update({
            "stage": self.stage, "confidence": self.confidence, "n_resamples": self.n_resamples,
            "tasks": [t for t in TASKS if f"ret_{t}" in df], "units": [u.__dict__ for u in getattr(self, "units_", [])],
            "degenerate": self.degenerate, "missing": self.missing, "failures": failures(self.res),
            "warnings": self.warnings, "ci_notes": self.ci_notes,
            "cost_backends": sorted({b for b in df.get("latency_backend", pd.Series(dtype=str)).dropna()
                                     if b and b.split("-")[0] != "fp"}),
        })  # fmt: skip
        return df


def leaderboard(
    results: Results,
    stage: str = "fake",
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per FP reference (status "reference", rank "FP") and per quantized variant, ranked by the rule of
    the module docstring. Columns: rank ("1", "=3", "–" unranked), rank_num, status, model, model_label,
    method, method_label, scheme, calib_builder, n_seeds, failed; per task t in attrs["tasks"]: ret_t (%),
    ret_t_lo/_hi (CI), ret_t_se_scenes, ret_t_se_seeds, diff_t (q - fp, metric units) with diff_t_lo/_hi,
    metric_t; failed_stages (stages that failed in ok cells); score_pct (worst task) with score_lo/_hi, score_se_scenes, score_se_seeds; mean_pct with
    mean_lo/_hi; worst_task; gap_next with gap_lo/_hi and tied_next; costs (calib_time_s, calib_peak_mb,
    latency_fp_ms, latency_ms, latency_min_ms, latency_max_ms, latency_repeats, latency_backend, speedup,
    speedup_note, model_mb_fp, model_mb). attrs: stage, confidence, n_resamples, tasks, units, degenerate,
    missing, failures, warnings, ci_notes, cost_backends."""
    return _Board(results, stage, n_resamples, confidence, seed).build()
