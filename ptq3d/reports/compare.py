"""Regression gate between two results stores (`ptq3d compare BASELINE NEW`).

Cells are matched by what they ran, never by display label:
    model name (and init seed / loader options), method name, hash of the method config and preset, scheme,
    quantization scope, protocol name, calibration (builder, calibration protocol, scenes, frames, options) and
    calibration seed.
The method's code version is deliberately not part of the match: gating a code change is what compare is for
(a changed version is reported). Two matched cells must also have run the same thing underneath, read from
their spec and provenance:
    - "scenes": the evaluated scene set (names and content hashes),
    - "protocol": the protocol hash (it covers the protocol's version and every setting, the scene limit too)
      and the alignment policy the grid chose (preset and overrides),
    - "model": the checkpoint's SHA-256 / the model's weight hash,
    - "calibration": the content hash of the calibration set.
A mismatch of any of these is refused with one line, unless `allow_mismatch` names its kind; then it is
reported with the result.

For every directed metric (the FP stage for the FP reference cells, `stage` for quantized ones), with
    worse = baseline - new  (higher is better)   or   new - baseline  (lower is better)
and allowed = tolerance (absolute) or tolerance * |baseline| (relative):
- plain mode: the stored aggregates over scenes regress when worse > allowed;
- noise-aware mode: the per-scene paired differences over the scenes both cells share are resampled (seeded
  percentile bootstrap, `scipy.stats.bootstrap`, the same scenes for baseline and new); a metric regresses only
  when the whole confidence interval of the mean paired difference lies above `allowed`, so a few-scene CI gate
  passes a difference that is within scene noise and still fails a real regression. The statistic is the
  unweighted mean over scenes, also for a weighted / pooled metric (whose weight key the store records in
  metric_info; the leaderboard's intervals use it, this gate does not yet); the stored aggregate is shown beside it.
A non-finite new value where the baseline was finite regresses, and so does a cell that finished in the
baseline but failed in the new store; a cell that failed in the baseline is listed, not gated. Cells only in
the new store ("new") and cells missing from it ("missing") are listed apart; missing cells fail the gate unless
allow_missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptq3d.errors import UserError, unknown_name_error
from ptq3d.results.bootstrap import paired_mean_difference
from ptq3d.results.records import AGGREGATE_SCENE, FP_METHOD, short_hash
from ptq3d.results.store import ResultsStore

MISMATCH_KINDS: tuple[str, ...] = ("scenes", "protocol", "model", "calibration")


# --- identity ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class CellIdentity:
    """What a cell ran, independent of labels and paths: the matching key of `compare_stores`."""

    model: str
    method: str
    config_hash: str
    scheme: str
    scope: str
    protocol: str
    calibration: str
    seed: int | None


@dataclass
class StoredCell:
    """One cell of a store as compare reads it. scenes: {scene name: content hash} ({} when not recorded);
    fingerprints: what `_mismatches` compares (kind -> [(label, value)]; "" = not recorded)."""

    identity: CellIdentity
    display: str
    status: str
    reason: str
    scenes: dict[str, str]
    fingerprints: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    method_version: str = ""
    aggregate: dict[str, float] = field(default_factory=dict)  # metric -> value over scenes
    per_scene: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> {scene: value}


def cell_identity(spec: dict[str, Any]) -> CellIdentity:
    """The identity of a cell from its stored spec (CellSpec.to_dict()); paths, labels and content
    fingerprints are left out (fingerprints are checked as mismatches instead)."""
    model, method, cal = spec["model"], spec["method"], spec.get("calibration")
    model_key = model["name"]
    if model.get("init_seed") or model.get("options"):
        model_key += (
            f"[init_seed={model.get('init_seed', 0)},options={short_hash(model.get('options') or {}, 8)}]"
        )
    calibration = ""
    if cal:
        setup = {k: cal.get(k) for k in ("limit", "frames", "options")}
        calibration = f"{cal['builder']}@{cal['protocol']}x{cal['num_scenes']}[{short_hash(setup, 8)}]"
    return CellIdentity(
        model=model_key,
        method=method["name"],
        config_hash=short_hash(
            {"config": method.get("config") or {}, "preset": method.get("preset", "paper")}, 12
        ),
        scheme=spec["scheme"],
        scope=str((spec.get("options") or {}).get("scope", "aggregator")),
        protocol=spec["protocol"]["name"],
        calibration=calibration,
        seed=cal["seed"] if cal else None,
    )


def _fingerprints(spec: dict[str, Any], prov: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """Content fingerprints only: the specs' data_hash fields also hash file mtimes, which differ between two
    copies of one dataset, so scenes are checked by their content hashes (provenance "scenes") instead."""
    proto = spec["protocol"]
    policy = {k: proto.get(k) for k in ("alignment", "alignment_options")}
    return {
        "protocol": [
            ("hash", str(prov.get("protocol_hash") or "")),
            ("alignment policy", f"{proto.get('alignment') or 'default'}/{short_hash(policy, 8)}"),
        ],
        "model": [
            ("checkpoint sha256", str(spec["model"].get("weights_sha256") or "")[:16]),
            ("weight hash", str(prov.get("model_hash") or "")),
        ],
        "calibration": [("content hash", str(prov.get("calibration_hash") or ""))],
    }


def _display(row: dict[str, Any]) -> str:
    s = f"{row['model_label']} | {row['method_label']} | {row['scheme']} | {row['protocol']}"
    if row["calib_builder"]:
        s += f" | {row['calib_builder']}/seed{row['calib_seed']}"
    return s


def read_cells(path: str | Path, stage: str) -> tuple[dict[CellIdentity, StoredCell], dict[str, Any]]:
    """(cells by identity, metric_info) of the store at `path` (a store file or a run directory); metric values
    of `stage` (FP cells: "fp")."""
    from ptq3d.results.read import resolve_store

    with ResultsStore(resolve_store(path), readonly=True) as store:
        rows, metric_rows, info = store.cells(), store.metric_rows(), store.metric_info()
    by_id: dict[str, StoredCell] = {}
    out: dict[CellIdentity, StoredCell] = {}
    for r in rows:
        if r["status"] == "stale":  # superseded by a recomputed cell: never compared
            continue
        ident = cell_identity(r["spec"])
        prov = r["provenance"] or {}
        if ident in out:
            raise UserError(
                f"{path}: two cells have the same identity ({_display(r)}); compare cannot tell them apart"
            )
        cell = StoredCell(
            ident,
            _display(r),
            r["status"],
            r["reason"] or "",
            dict(prov.get("scenes") or {}),
            _fingerprints(r["spec"], prov),
            str(r["spec"]["method"].get("version") or ""),
        )
        out[ident] = by_id[r["cell_id"]] = cell
    for m in metric_rows:
        cell = by_id.get(m["cell_id"])
        if cell is None or m["stage"] != ("fp" if cell.identity.method == FP_METHOD else stage):
            continue
        if m["scene"] == AGGREGATE_SCENE:
            cell.aggregate[m["metric"]] = m["value"]
        else:
            cell.per_scene.setdefault(m["metric"], {})[m["scene"]] = m["value"]
    for cell in out.values():  # stores that predate provenance["scenes"]: the scenes that have metric rows
        if not cell.scenes and cell.per_scene:
            cell.scenes = {s: "" for v in cell.per_scene.values() for s in v}
    return out, info


# --- statistics ----------------------------------------------------------------------------------------------
def paired_bootstrap_ci(
    differences: np.ndarray, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of paired per-scene differences [n] (scenes resampled with
    replacement, seeded). One scene has no spread: its interval is the point; constant differences likewise."""
    d = np.asarray(differences, dtype=np.float64)
    if d.size == 0:
        raise ValueError("paired_bootstrap_ci: no differences")
    if d.size == 1 or np.ptp(d) == 0:
        return float(d.mean()), float(d.mean())
    # the leaderboard's paired bootstrap (scipy.stats.bootstrap's draw and percentile interval) on d vs 0
    r = paired_mean_difference(d, np.zeros_like(d), n_resamples, confidence, seed)
    return float(r.low), float(r.high)


# --- result --------------------------------------------------------------------------------------------------
@dataclass
class Regression:
    """cell: display name; baseline / new: the stored aggregates; allowed: the tolerance in metric units;
    ci: (low, high) of the mean paired worsening in noise-aware mode; why: a reason instead of numbers."""

    cell: str
    metric: str
    baseline: float
    new: float
    allowed: float
    why: str = ""
    ci: tuple[float, float] | None = None
    n_scenes: int = 0

    def to_text(self) -> str:
        if self.why:
            return f"  {self.cell}: {self.why}"
        s = (
            f"  {self.cell}: {self.metric} {self.baseline:.6g} -> {self.new:.6g} "
            f"(worse by {abs(self.new - self.baseline):.6g}, allowed {self.allowed:.6g}"
        )
        if self.ci is not None:
            s += f"; paired worsening over {self.n_scenes} scenes, CI [{self.ci[0]:.4g}, {self.ci[1]:.4g}]"
        return s + ")"


@dataclass
class CompareResult:
    regressions: list[Regression] = field(default_factory=list)
    compared_cells: int = 0
    compared_values: int = 0
    improved: int = 0
    within_noise: int = 0
    new_cells: list[str] = field(default_factory=list)
    missing_cells: list[str] = field(default_factory=list)
    baseline_failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    allow_missing: bool = False
    noise_aware: bool = False
    confidence: float = 0.95

    @property
    def passed(self) -> bool:
        return not self.regressions and (self.allow_missing or not self.missing_cells)

    def to_text(self) -> str:
        mode = f"noise-aware, {self.confidence:.0%} paired bootstrap CI" if self.noise_aware else "aggregates"
        lines = [
            f"compared {self.compared_values} metric values over {self.compared_cells} matched cells ({mode}); "
            f"{len(self.regressions)} regressions, {self.improved} improved"
            + (f", {self.within_noise} worse but within noise" if self.noise_aware else "")
        ]
        if self.notes:
            lines.append("NOTES:")
            lines += [f"  {m}" for m in self.notes]
        if self.mismatches:
            lines.append("ALLOWED MISMATCHES (compared anyway):")
            lines += [f"  {m}" for m in self.mismatches]
        if self.regressions:
            lines.append("REGRESSIONS (worse beyond tolerance):")
            lines += [r.to_text() for r in self.regressions]
        if self.missing_cells:
            lines.append(
                "MISSING from the new store" + (" (allowed):" if self.allow_missing else " (fails the gate):")
            )
            lines += [f"  {c}" for c in self.missing_cells]
        if self.new_cells:
            lines.append("NEW cells (no baseline, not gated):")
            lines += [f"  {c}" for c in self.new_cells]
        if self.baseline_failed:
            lines.append("FAILED in the baseline (nothing to gate against):")
            lines += [f"  {c}" for c in self.baseline_failed]
        lines.append("PASS" if self.passed else "FAIL")
        return "\n".join(lines)


# --- the gate ------------------------------------------------------------------------------------------------
def _directed(info: dict[str, Any]) -> set[str]:
    return {m for m, i in info.items() if i.get("higher_is_better") is not None}


def _check_names(what: str, names: list[str], known: set[str]) -> None:
    for n in names:
        if n not in known:
            raise unknown_name_error(f"metric in {what} (metrics with a direction in both stores)", n, known)


def _mismatches(b: StoredCell, n: StoredCell) -> list[tuple[str, str]]:
    """(kind, one-line description) of every way two matched cells ran different things, scenes first."""
    out = []
    if set(b.scenes) != set(n.scenes):
        only_b, only_n = sorted(set(b.scenes) - set(n.scenes)), sorted(set(n.scenes) - set(b.scenes))
        out.append(
            (
                "scenes",
                f"scene sets differ ({len(b.scenes)} vs {len(n.scenes)} scenes; only in baseline: "
                f"{only_b[:3]}{'...' if len(only_b) > 3 else ''}, only in new: {only_n[:3]}"
                f"{'...' if len(only_n) > 3 else ''})",
            )
        )
    else:
        changed = sorted(s for s in b.scenes if b.scenes[s] and n.scenes[s] and b.scenes[s] != n.scenes[s])
        if changed:
            out.append(("scenes", f"scene content differs for {len(changed)} scenes (e.g. '{changed[0]}')"))
    what = {"scenes": "dataset files differ", "protocol": f"protocol '{b.identity.protocol}' differs",
            "model": "model weights differ", "calibration": "calibration data differs"}  # fmt: skip
    for kind in MISMATCH_KINDS:
        for (label, bv), (_, nv) in zip(
            b.fingerprints.get(kind, []), n.fingerprints.get(kind, []), strict=True
        ):
            # a fingerprint one store did not record cannot be checked; the protocol hash always is
            if bv != nv and ((bv and nv) or (kind == "protocol" and label == "hash")):
                out.append((kind, f"{what[kind]} ({label} {bv or 'unrecorded'} vs {nv or 'unrecorded'})"))
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
    allow_mismatch: tuple[str, ...] | list[str] = (),
    noise_aware: bool = False,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> CompareResult:
    """Gate `new` against `baseline` (module doc). Raises UserError (one line) on bad arguments, on a refused
    mismatch and when no cell of the two stores matches."""
    per = dict(metric_tolerances or {})
    for name, value in [
        ("--tolerance", tolerance),
        *((f"--metric-tolerance {k}", v) for k, v in per.items()),
    ]:
        if not (math.isfinite(value) and value >= 0):
            raise UserError(f"{name}: {value} must be a finite number >= 0")
    if not 0 < confidence < 1:
        raise UserError(f"--confidence {confidence}: must lie strictly between 0 and 1")
    bad = [k for k in allow_mismatch if k not in MISMATCH_KINDS]
    if bad:
        raise UserError(f"--allow-mismatch {bad[0]!r}: allowed kinds are {', '.join(MISMATCH_KINDS)}")
    base_cells, base_info = read_cells(baseline, stage)
    new_cells, new_info = read_cells(new, stage)
    known = _directed(base_info) & _directed(new_info)
    _check_names("--metrics", list(metrics or []), known)
    _check_names("--metric-tolerance", list(per), known)
    gated = set(metrics) if metrics else known

    out = CompareResult(allow_missing=allow_missing, noise_aware=noise_aware, confidence=confidence)
    matched = sorted(set(base_cells) & set(new_cells))
    if base_cells and new_cells and not matched:
        raise UserError(
            f"no cell of '{new}' matches a cell of '{baseline}' by model, method, method config, scheme, protocol "
            f"and calibration ({len(base_cells)} vs {len(new_cells)} cells); nothing to compare"
        )
    for ident in matched:
        b, n = base_cells[ident], new_cells[ident]
        for kind, text in _mismatches(b, n):
            if kind not in allow_mismatch:
                raise UserError(
                    f"{n.display}: {text}; refusing to compare unlike runs (--allow-mismatch {kind} to compare "
                    "anyway)"
                )
            out.mismatches.append(f"{n.display}: {text}")
        if b.method_version != n.method_version:
            out.notes.append(
                f"{n.display}: method code version {b.method_version or '?'} -> {n.method_version or '?'}"
            )
    out.missing_cells = [base_cells[k].display for k in sorted(set(base_cells) - set(new_cells))]
    out.new_cells = [new_cells[k].display for k in sorted(set(new_cells) - set(base_cells))]

    for ident in matched:
        b, n = base_cells[ident], new_cells[ident]
        if b.status != "ok":
            out.baseline_failed.append(f"{n.display} ({b.reason})")
            continue
        if n.status != "ok":
            out.regressions.append(
                Regression(n.display, "", math.nan, math.nan, 0, f"failed in the new store: {n.reason}")
            )
            continue
        out.compared_cells += 1
        for metric in sorted(gated & set(b.aggregate)):
            bv = b.aggregate[metric]
            if metric not in n.aggregate:
                out.regressions.append(
                    Regression(n.display, metric, bv, math.nan, 0, f"{metric} missing from the new store")
                )
                continue
            nv = n.aggregate[metric]
            out.compared_values += 1
            hib = bool(base_info[metric]["higher_is_better"])
            tol = per.get(metric, tolerance)
            allowed = tol * abs(bv) if relative and math.isfinite(bv) else tol
            if not math.isfinite(bv):
                continue
            if not math.isfinite(nv):
                out.regressions.append(
                    Regression(n.display, metric, bv, nv, allowed, f"{metric} is {nv} (baseline {bv:.6g})")
                )
                continue
            worse = (bv - nv) if hib else (nv - bv)
            if not noise_aware:
                if worse > allowed:
                    out.regressions.append(Regression(n.display, metric, bv, nv, allowed))
                elif worse < 0:
                    out.improved += 1
                continue
            bs, ns = b.per_scene.get(metric, {}), n.per_scene.get(metric, {})
            common = sorted(s for s in set(bs) & set(ns) if math.isfinite(bs[s]) and math.isfinite(ns[s]))
            if not common:
                out.regressions.append(
                    Regression(
                        n.display, metric, bv, nv, allowed, f"{metric}: no common scene with finite values"
                    )
                )
                continue
            d = np.array([(bs[s] - ns[s]) if hib else (ns[s] - bs[s]) for s in common])
            lo, hi = paired_bootstrap_ci(d, confidence, n_resamples, seed)
            if lo > allowed:
                out.regressions.append(
                    Regression(n.display, metric, bv, nv, allowed, ci=(lo, hi), n_scenes=d.size)
                )
            elif worse > allowed:
                out.within_noise += 1
            elif worse < 0:
                out.improved += 1
    return out
