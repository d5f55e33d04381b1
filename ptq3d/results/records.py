"""Cell specifications and results: the picklable records that travel between the driver and executors.

A run is a grid of cells (model x method x scheme x protocol x calibration builder x seed). A `CellSpec` holds
only plain values (str, int, float, dicts of those), so it pickles and JSON-serialises; its `cell_id` is the
SHA-256 of its canonical JSON, which keys the results store (a killed sweep resumes by skipping known ids).
`run_cell(spec, cache_dir) -> CellResult` (ptq3d.harness.runner) is a pure function of the spec and the
on-disk caches; only the driver writes the store.

Identity by content: the spec carries content fingerprints (ModelRef.weights_sha256, ProtocolRef.data_hash,
CalibRef.data_hash, MethodRef.version), filled by ptq3d.harness.identity.prepare before a run, so replacing a
checkpoint or a dataset file in place, or changing a method's code version, makes a different cell_id.
`row_key` is what a report row shows (labels, scheme, protocol, calibration builder and seed); the store keeps
at most one cell per row key (`slot_id`), so a recomputed cell replaces its stale predecessor instead of
sitting beside it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

FP_METHOD = "fp"  # the full-precision reference cell: no calibration, no quantization
FP_SCHEME = "fp32"
AGGREGATE_SCENE = "*"  # scene name of the aggregated (over scenes) metric rows
STAGES = ("load", "fp_eval", "calibrate", "eval_fake", "eval_real", "bench")
EVAL_STAGES = ("fp", "fake", "real")  # which predictions a metric row scores


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces) used for hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def short_hash(obj: Any, n: int = 16) -> str:
    """SHA-256 hex prefix of the canonical JSON of `obj` (or of bytes/str as is)."""
    if isinstance(obj, bytes):
        data = obj
    elif isinstance(obj, str):
        data = obj.encode()
    else:
        data = canonical_json(obj).encode()
    return hashlib.sha256(data).hexdigest()[:n]


@dataclass(frozen=True)
class ModelRef:
    """name: registered model name; weights: checkpoint path or None (seeded random init with `init_seed`);
    label: shown in tables; options: extra keyword arguments for the model loader; weights_sha256: SHA-256 of
    the checkpoint file's bytes ("" until ptq3d.harness.identity fills it; part of the cell id)."""

    name: str
    weights: str | None = None
    label: str = ""
    init_seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""

    @property
    def display(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class ProtocolRef:
    """A versioned evaluation protocol: name, data root (None for synthetic), scene limit, metric names (None =
    the components' defaults), alignment preset (None = the default policy) and alignment_options (policy
    fields overriding the preset, e.g. max_points); scenes: the subset of its scenes to run (None = all); data_hash: fingerprint of the protocol definition and of
    the files under root ("" until ptq3d.harness.identity fills it; part of the cell id)."""

    name: str
    root: str | None = None
    limit: int | None = None
    metrics: tuple[str, ...] | None = None
    alignment: str | None = None
    alignment_options: dict[str, Any] = field(default_factory=dict)
    data_hash: str = ""
    scenes: tuple[str, ...] | None = None  # a subset of the protocol's scenes (a partial copy of a dataset)


@dataclass(frozen=True)
class MethodRef:
    """name: registered method; label: shown in tables (defaults to name); config: the method's config keys as the
    method receives them (its preset's values, then the user's keys); preset: "paper" (default) or another preset
    the method's config declares (e.g. "code", the authors' released settings); version: the method's code
    version from its registry entry ("" until ptq3d.harness.identity fills it; part of the cell id); plan: a
    mixed-precision plan (ptq3d.quant.plan.PrecisionPlan.to_dict, its content, not a path) applied on top of
    every scheme of the run, or None (then it is left out of the cell id, so plain cells keep their ids)."""

    name: str
    label: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    preset: str = "paper"
    version: str = ""
    plan: dict[str, Any] | None = None

    @property
    def display(self) -> str:
        if self.label:
            return self.label
        return self.name if self.plan is None else f"{self.name} [{self.plan.get('name', 'plan')}]"


@dataclass(frozen=True)
class CalibRef:
    """How the calibration set is drawn: builder over the scenes of `protocol` (at `root`), `num_scenes` of
    them, with `seed`; limit: first N pool scenes only; frames: the first N frames of every pool scene (None =
    all); options: the builder's options (e.g. NFDS's filter, num_clusters); data_hash: fingerprint of the
    calibration protocol and its files, as ProtocolRef.data_hash (part of the cell id)."""

    builder: str
    protocol: str
    root: str | None = None
    num_scenes: int = 4
    seed: int = 0
    limit: int | None = None
    frames: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    data_hash: str = ""


@dataclass(frozen=True)
class EvalOptions:
    """scope: quantization scope ("aggregator" | "all"); real_backend: "auto" (triton on a GPU, else the
    emulated integer backend; a backend error is noted on the stage and the cell stays ok), "emulated",
    "triton" or "none" (explicit backends fail the cell on error); bench: run the bench stage; bench_warmup/bench_repeats: latency timing;
    device: "auto" | "cpu" | "cuda"; outlier_stats: collect activation outlier statistics; threads: torch
    intra-op threads (0 = leave as is); precision: "fp32" | "bf16-autocast" of every evaluation forward pass
    (ptq3d.models.base.eval_precision; calibration always runs in float32)."""

    scope: str = "aggregator"
    real_backend: str = "auto"
    bench: bool = True
    bench_warmup: int = 1
    bench_repeats: int = 3
    device: str = "auto"
    outlier_stats: bool = True
    threads: int = 0
    precision: str = "fp32"


@dataclass(frozen=True)
class CellSpec:
    """One cell of the grid. calibration is None for the FP reference and for methods that need none.
    components: which component set runs it ("real", or "module:attr" of a Components factory)."""

    model: ModelRef
    method: MethodRef
    scheme: str
    protocol: ProtocolRef
    calibration: CalibRef | None
    options: EvalOptions = EvalOptions()
    components: str = "real"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["method"].get("plan") is None:
            d["method"].pop("plan", None)  # cells without a plan keep the ids they had before plans existed
        if d["protocol"]["metrics"] is not None:
            d["protocol"]["metrics"] = list(d["protocol"]["metrics"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CellSpec:
        p = dict(d["protocol"])
        if p.get("metrics") is not None:
            p["metrics"] = tuple(p["metrics"])
        return cls(
            model=ModelRef(**d["model"]),
            method=MethodRef(**d["method"]),
            scheme=d["scheme"],
            protocol=ProtocolRef(**p),
            calibration=CalibRef(**d["calibration"]) if d.get("calibration") else None,
            options=EvalOptions(**d.get("options", {})),
            components=d.get("components", "real"),
        )

    @property
    def cell_id(self) -> str:
        """SHA-256 prefix of the canonical spec; the store's primary key."""
        return short_hash(self.to_dict(), 20)

    @property
    def row_key(self) -> tuple[Any, ...]:
        """What one report row shows: (model label, method label, scheme, protocol, calibration builder, seed).
        Two different cells with one row key would be merged by a report: the store keeps one per key."""
        cal = self.calibration
        return (
            self.model.display,
            self.method.display,
            self.scheme,
            self.protocol.name,
            cal.builder if cal else None,
            cal.seed if cal else None,
        )

    @property
    def slot_id(self) -> str:
        """SHA-256 prefix of row_key: the store's one-cell-per-row key."""
        return short_hash(list(self.row_key), 20)

    @property
    def is_reference(self) -> bool:
        return self.method.name == FP_METHOD

    @property
    def seed(self) -> int | None:
        return self.calibration.seed if self.calibration else None

    def describe(self) -> str:
        cal = f" {self.calibration.builder}/seed{self.calibration.seed}" if self.calibration else ""
        return f"{self.model.display} | {self.method.display} | {self.scheme} | {self.protocol.name}{cal}"


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def spec_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two CellSpec dicts, as 'key: old -> new' (hashes cut to 12 characters)."""

    def show(v: Any) -> str:
        text = "unset" if v in (None, "") else str(v)
        return text[:12] + "..." if len(text) > 15 and " " not in text else text

    a, b = _flatten(old), _flatten(new)
    return [
        f"{k}: {show(a.get(k))} -> {show(b.get(k))}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
    ]


@dataclass
class StageRecord:
    """One timed stage: wall seconds, peak resident memory (bytes, and the increase over the stage start),
    CUDA peak bytes (None off GPU); status "ok" | "skipped" | "failed"; note says why when not ok."""

    name: str
    wall_s: float = 0.0
    cpu_peak_bytes: int = 0
    cpu_delta_bytes: int = 0
    cuda_peak_bytes: int | None = None
    status: str = "ok"
    note: str = ""


@dataclass
class MetricRow:
    """One metric value. stage: "fp" | "fake" | "real"; scene: scene name or AGGREGATE_SCENE; stderr: standard
    error over scenes for aggregate rows (None for per-scene rows); n: scenes aggregated."""

    stage: str
    scene: str
    metric: str
    value: float
    stderr: float | None = None
    n: int = 1


@dataclass
class CellResult:
    """Everything one cell measured. status "ok" | "failed": failed_stage names the first stage that failed
    (or "worker" when the process running it died) and reason says why. A failed cell keeps the stages and
    metrics it finished, but reports never rank it."""

    spec: CellSpec
    status: str = "ok"
    reason: str = ""
    failed_stage: str = ""
    metrics: list[MetricRow] = field(default_factory=list)
    metric_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    stages: list[StageRecord] = field(default_factory=list)
    costs: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    started_at: float = 0.0
    finished_at: float = 0.0

    @property
    def cell_id(self) -> str:
        return self.spec.cell_id

    @property
    def ok(self) -> bool:
        return self.status == "ok"
