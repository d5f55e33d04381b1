"""Run one cell of the grid through its fixed, timed stages.

    load -> fp_eval -> calibrate -> eval_fake -> eval_real -> bench

`run_cell(spec, cache_dir) -> CellResult` is a pure function of the (picklable) spec and the on-disk FP cache:
it writes nothing but cache entries, so any executor (in-process, a process pool, a cluster) can run it and the
driver alone writes the results store. Every exception, any non-finite value in a model's predictions, any
metric that comes out NaN/Inf or is missing for a scene, and any stage that fails (including the real-kernel
stage under real_backend = "auto") turns into a failed CellResult: failed_stage names the first failed stage
and reason says why; failed cells are recorded, never ranked.

Faults that are not the cell's: a full disk (DiskFullError) and Ctrl-C (KeyboardInterrupt) propagate to the
driver instead of becoming a failed cell that a resume would skip.

FP predictions and their metrics are cached by content hash (ptq3d.harness.fpcache), so ten methods on one
model and protocol cost one FP pass; `result.counters` says how many FP passes ran and how many were cache hits.
"""

from __future__ import annotations

import contextlib
import math
import time
import traceback
from collections.abc import Iterable
from typing import Any

from ptq3d.harness import provenance
from ptq3d.harness.components import Components, get_components
from ptq3d.harness.fpcache import FPCache, fp_key
from ptq3d.harness.measure import StageTimer
from ptq3d.kernels.timing import allocator_info, backend_label, retain_freed_memory, time_callable, time_pair
from ptq3d.results.records import (
    AGGREGATE_SCENE,
    CellResult,
    CellSpec,
    MetricRow,
    ProtocolRef,
    StageRecord,
    short_hash,
)
from ptq3d.results.store import DiskFullError, disk_full_error, is_disk_full


class CellFailure(Exception):
    """A cell cannot produce trustworthy numbers (e.g. NaN predictions); recorded as failed with this reason."""


def _progress(items: Iterable, desc: str, enabled: bool, total: int | None = None):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True, position=1)


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover
        return "cpu"


def _nonfinite_fields(pred: Any) -> list[str]:
    import torch

    return [k for k, v in pred.tensors().items() if not bool(torch.isfinite(v).all())]


def _note_nonfinite(result: CellResult, what: str, name: str, fields: list[str]) -> None:
    notes = result.stats.setdefault("nonfinite_unscored", [])
    entry = f"{what}: {', '.join(fields)}"
    if entry not in notes:
        notes.append(entry)


def _unique_names(comp: Components, scenes: list[Any]) -> list[str]:
    names, seen = [], {}
    for s in scenes:
        n = comp.scene_name(s)
        seen[n] = seen.get(n, 0) + 1
        names.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return names


class _Cell:
    """State of one cell while it runs (kept off the module so run_cell stays a pure function)."""

    def __init__(self, spec: CellSpec, cache_dir: str | None, progress: bool):
        import torch

        self.spec = spec
        self.comp: Components = None  # type: ignore[assignment]  (resolved inside run(), so errors are recorded)
        self.cache = FPCache(cache_dir)
        self.progress = progress
        self.device = resolve_device(spec.options.device)
        self.use_cuda = self.device.startswith("cuda")
        self.result = CellResult(spec=spec, started_at=time.time())
        self.result.counters = {
            "fp_passes": 0,
            "fp_cache_hits": 0,
            "fp_metric_cache_hits": 0,
            "quant_passes": 0,
        }
        self.stage = "setup"
        self.torch = torch

    # --- helpers ----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def timed(self, name: str):
        self.stage = name
        timer = StageTimer(name, use_cuda=self.use_cuda)
        try:
            with timer:
                yield timer.record
        finally:
            self.result.stages.append(timer.record)

    def skip(self, name: str, why: str) -> None:
        self.result.stages.append(StageRecord(name, status="skipped", note=why))

    def images(self, scene: Any):
        return scene.images[None].to(self.device)

    def precision(self):
        """The evaluation precision context ([eval].precision; ptq3d.models.base.eval_precision)."""
        from ptq3d.models.base import eval_precision

        return eval_precision(self.spec.options.precision, self.device.split(":")[0])

    def predict(self, model: Any, scene: Any, what: str, name: str):
        with self.torch.no_grad(), self.precision():
            pred = self.comp.predict(model, self.images(scene))
        bad = _nonfinite_fields(pred)
        required = set(self.comp.required_fields(self.spec.protocol))
        fatal = [f for f in bad if f in required]
        if fatal:
            raise CellFailure(
                f"non-finite values in {what} predictions ({', '.join(fatal)}) on scene '{name}'"
            )
        if bad:  # in fields no metric reads: keep the cell, say so
            _note_nonfinite(self.result, what, name, bad)
        return pred

    def check_metrics(self, stage: str, scene: str, values: dict[str, Any]) -> None:
        """Every metric of the protocol present and finite, else CellFailure naming it: a score must never
        skip a metric that could not be computed."""
        missing = [m for m in self.metrics if m not in values]
        if missing:
            raise CellFailure(
                f"metric {', '.join(missing)} missing for scene '{scene}' ({stage} predictions)"
            )
        for m in self.metrics:
            v = values[m]
            if not isinstance(v, int | float) or not math.isfinite(float(v)):
                raise CellFailure(f"metric {m} = {v} on scene '{scene}' ({stage} predictions)")

    def add_metrics(self, stage: str, names: list[str], per_scene: list[dict[str, float]]) -> None:
        for scene, values in zip(names, per_scene, strict=True):
            for metric, value in values.items():
                self.result.metrics.append(MetricRow(stage, scene, metric, float(value)))
        for scene, values in zip(names, per_scene, strict=True):
            self.check_metrics(stage, scene, values)
        agg = self.comp.aggregate(per_scene, self.metrics, groups=getattr(self, "groups", None))
        for metric in self.metrics:
            if metric not in agg or not math.isfinite(float(agg[metric][0])):
                raise CellFailure(
                    f"aggregate of metric {metric} over scenes is {agg.get(metric, ('missing',))[0]} "
                    f"({stage} predictions)"
                )
        for metric, (value, stderr) in agg.items():
            se = (
                None
                if stderr is None or (isinstance(stderr, float) and math.isnan(stderr))
                else float(stderr)
            )
            self.result.metrics.append(
                MetricRow(stage, AGGREGATE_SCENE, metric, float(value), se, len(per_scene))
            )

    def evaluate_all(self, model: Any, stage: str) -> tuple[list[Any], list[dict[str, float]]]:
        preds, values = [], []
        for scene, name in _progress(
            list(zip(self.scenes, self.scene_names, strict=True)), f"{stage} scenes", self.progress
        ):
            pred = self.predict(model, scene, stage, name)
            preds.append(pred)
            values.append(self.comp.evaluate(pred, scene, self.spec.protocol, self.metrics))
        self.result.counters["quant_passes"] += len(self.scenes)
        return preds, values

    # --- stages -----------------------------------------------------------------------------------------
    def load(self) -> None:
        spec, comp = self.spec, self.comp
        with self.timed("load"):
            self.torch.manual_seed(spec.model.init_seed)
            self.model = comp.load_model(spec.model, self.device)
            self.model_hash = comp.model_hash(self.model)
            self.scenes = comp.load_scenes(spec.protocol)
            if not self.scenes:
                raise CellFailure(f"protocol '{spec.protocol.name}' produced no scenes")
            self.scene_names = _unique_names(comp, self.scenes)
            self.scene_hashes = [comp.scene_hash(s) for s in self.scenes]
            self.protocol_hash = comp.protocol_hash(spec.protocol)
            self.groups = comp.scene_groups(spec.protocol, self.scenes)
            self.metrics = comp.metric_names(spec.protocol)
            self.metrics_key = short_hash(
                {
                    "metrics": self.metrics,
                    "alignment": spec.protocol.alignment,
                    "options": spec.protocol.alignment_options,
                },
                12,
            )
        self.result.metric_info = {m: comp.metric_info(m).__dict__ for m in self.metrics}
        self.result.provenance.update(
            {
                "model": comp.describe_model(self.model, spec.model),
                "model_hash": self.model_hash,
                "protocol_hash": self.protocol_hash,
                "data_hash": short_hash(self.scene_hashes),
                "scenes": dict(zip(self.scene_names, self.scene_hashes, strict=True)),
                "metrics": self.metrics,
            }
        )

    def fp_eval(self) -> None:
        device_kind = self.device.split(":")[0]
        if self.spec.options.precision != "fp32":  # bf16 FP predictions never answer for fp32 ones
            device_kind = f"{device_kind}+{self.spec.options.precision}"
        values, self.fp_preds = [], []
        with self.timed("fp_eval"):
            for scene, name, h in _progress(
                list(zip(self.scenes, self.scene_names, self.scene_hashes, strict=True)),
                "FP scenes",
                self.progress,
            ):
                key = fp_key(self.model_hash, self.protocol_hash, h, device_kind)
                pred = self.cache.get_predictions(key)
                if pred is None:
                    pred = self.predict(self.model, scene, "FP", name)
                    self.cache.put_predictions(key, pred)
                    self.result.counters["fp_passes"] += 1
                else:
                    self.result.counters["fp_cache_hits"] += 1
                self.fp_preds.append(pred)
                vals = self.cache.get_metrics(key, self.metrics_key)  # None for a non-finite entry
                if vals is None or not set(self.metrics) <= set(vals):
                    vals = self.comp.evaluate(pred, scene, self.spec.protocol, self.metrics)
                    self.check_metrics("fp", name, vals)
                    self.cache.put_metrics(key, self.metrics_key, vals)
                else:
                    self.result.counters["fp_metric_cache_hits"] += 1
                values.append(vals)
        self.add_metrics("fp", self.scene_names, values)

    def calibrate(self) -> None:
        spec, comp, cal = self.spec, self.comp, self.spec.calibration
        with self.timed("calibrate") as rec:
            calibration = None
            if cal is not None:
                pool = comp.load_scenes(ProtocolRef(cal.protocol, cal.root, cal.limit))
                calibration = comp.build_calibration(cal, pool, model=self.model)
                self.result.provenance["calibration_hash"] = comp.calibration_hash(calibration)
                self.result.provenance["calibration"] = {
                    "builder": cal.builder,
                    "protocol": cal.protocol,
                    "num_scenes": cal.num_scenes,
                    "seed": cal.seed,
                }
            if spec.options.outlier_stats:
                probe = calibration_first_scene(calibration) or self.scenes[0]
                self.result.stats["outliers"] = activation_outliers(self, probe)
            self.torch.manual_seed(cal.seed if cal is not None else 0)
            outcome = comp.quantize(
                self.model,
                spec.method.name,
                spec.scheme,
                calibration,
                dict(spec.method.config),
                spec.options.scope,
                progress=self.progress,
                # only when there is a plan: components written before plans existed keep working without one
                **({"plan": spec.method.plan} if spec.method.plan is not None else {}),
            )
        if calibration is None:
            rec.note = "no calibration data"
        self.qmodel = outcome.model
        self.result.manifest = outcome.manifest
        self.result.stats["calibration"] = outcome.stats
        self.result.costs["calib_time_s"] = (
            outcome.calib_time_s if outcome.calib_time_s is not None else rec.wall_s
        )
        self.result.costs["calib_peak_bytes"] = (
            outcome.calib_peak_bytes if outcome.calib_peak_bytes is not None else rec.cpu_peak_bytes
        )
        self.result.costs["calib_stage_s"] = rec.wall_s

    def eval_fake(self) -> None:
        with self.timed("eval_fake"):
            self.comp.set_backend(self.qmodel, "fake")
            self.fake_preds, values = self.evaluate_all(self.qmodel, "fake")
        self.add_metrics("fake", self.scene_names, values)
        self.result.stats["fp_agreement"] = prediction_agreement(self.fp_preds, self.fake_preds)

    def pick_real_backend(self) -> str | None:
        want = self.spec.options.real_backend
        available = self.comp.backends(self.device)
        if want == "none":
            return None
        if want == "auto":  # the real kernels where there is a GPU, their bit-exact torch emulation elsewhere
            return next((b for b in ("triton", "emulated") if b in available), None)
        if want not in available:
            raise CellFailure(
                f"real backend '{want}' is not available on {self.device} (available: {available})"
            )
        return want

    def eval_real(self) -> None:
        self.stage = "eval_real"
        backend = self.pick_real_backend()
        if backend is None:
            why = (
                "real_backend = 'none'"
                if self.spec.options.real_backend == "none"
                else "no real-kernel backend here"
            )
            self.skip("eval_real", why)
            return
        try:
            with self.timed("eval_real") as rec:
                self.comp.set_backend(self.qmodel, backend)
                real_preds, values = self.evaluate_all(self.qmodel, "real")
                rec.note = f"backend {backend}"
        except CellFailure:
            raise
        except (DiskFullError, KeyboardInterrupt):
            raise
        except Exception as exc:
            if is_disk_full(exc) or self.spec.options.real_backend != "auto":
                raise
            # "auto" asked for real kernels where they exist; one that cannot run this scheme fails this stage
            # (so the cell counts as failed, with the reason), but the cell goes on to bench on fake
            # quantization so that what it did measure is stored
            note = f"backend {backend} failed: {type(exc).__name__}: {exc}".splitlines()[0][:500]
            self.result.stages[-1].note = note
            self.result.costs["real_backend_error"] = note
            self.fail("eval_real", note)
            self.comp.set_backend(self.qmodel, "fake")
            return
        self.real_backend = backend
        self.add_metrics("real", self.scene_names, values)
        self.result.costs["real_backend"] = backend
        self.result.stats["parity"] = prediction_agreement(self.fake_preds, real_preds)

    def bench(self, quantized: bool) -> None:
        if not self.spec.options.bench:
            self.skip("bench", "bench = false")
            return
        opts = self.spec.options
        images = self.images(self.scenes[0])
        dev = "cuda" if self.use_cuda else "cpu"
        retain_freed_memory()  # glibc would return large buffers to the OS between calls and time the refaults
        self.result.provenance["allocator"] = allocator_info()
        with self.timed("bench"), self.torch.no_grad(), self.precision():
            self.result.costs["model_bytes_fp"] = int(self.comp.model_bytes(self.model))
            if not quantized:
                fp = time_callable(
                    lambda: self.comp.predict(self.model, images),
                    opts.bench_warmup,
                    opts.bench_repeats,
                    device=dev,
                    backend=backend_label("fp", dev),
                )
                self.result.costs["latency_fp"] = fp.as_dict()
            else:
                backend = getattr(self, "real_backend", None) or "fake"
                self.comp.set_backend(self.qmodel, backend)
                # FP and quantized timed in alternation in this cell, so the speedup divides like by like
                fp, q = time_pair(
                    lambda: self.comp.predict(self.model, images),
                    lambda: self.comp.predict(self.qmodel, images),
                    opts.bench_warmup,
                    opts.bench_repeats,
                    device=dev,
                    reference_backend=backend_label("fp", dev),
                    candidate_backend=backend_label(backend, dev),
                )
                self.result.costs["latency_fp"] = fp.as_dict()
                self.result.costs["latency_q"] = q.as_dict()
                self.result.costs["latency_backend"] = q.backend
                self.result.costs["speedup"] = fp.median_s / max(q.median_s, 1e-12)
                self.result.costs["model_bytes_q"] = int(self.comp.model_bytes(self.qmodel))
        self.result.costs["bench_frames"] = int(images.shape[1])
        self.result.costs["bench_image_size"] = list(images.shape[-2:])

    def run(self) -> CellResult:
        spec = self.spec
        try:
            self.comp = get_components(spec.components)
            if spec.options.threads:
                self.torch.set_num_threads(spec.options.threads)
            self.result.provenance.update(provenance.collect(self.device))
            self.result.provenance["eval_precision"] = spec.options.precision
            self.load()
            self.fp_eval()
            if spec.is_reference:
                for name in ("calibrate", "eval_fake", "eval_real"):
                    self.skip(name, "FP reference")
                self.bench(quantized=False)
            else:
                self.calibrate()
                self.eval_fake()
                self.eval_real()
                self.bench(quantized=True)
        except CellFailure as exc:
            self.fail(self.stage, str(exc))
        except DiskFullError:
            raise  # not the cell's fault: stop the run, store nothing for this cell
        except Exception as exc:  # a bug or bad data in one cell must not stop the sweep; record it
            if is_disk_full(exc):
                raise disk_full_error(getattr(exc, "filename", None) or "a file", exc) from None
            self.fail(self.stage, f"{type(exc).__name__}: {exc}")
            self.result.provenance["traceback"] = traceback.format_exc(limit=20)
        failed = next((s for s in self.result.stages if s.status == "failed"), None)
        if self.result.ok and failed is not None:  # a failed stage fails the cell, even when the cell went on
            self.fail(failed.name, failed.note or "failed")
        self.result.finished_at = time.time()
        self.result.costs["cell_wall_s"] = self.result.finished_at - self.result.started_at
        return self.result

    def fail(self, stage: str, why: str) -> None:
        """Mark `stage` failed; the cell's failed_stage and reason ("<stage>: <first line of why>") keep the
        first failure."""
        first = why.strip().splitlines()[0] if why.strip() else "failed"
        for rec in reversed(self.result.stages):  # the stage's own record says failed too
            if rec.name == stage:
                if rec.status == "ok":
                    rec.status, rec.note = "failed", first[:500]
                break
        if self.result.ok:
            self.result.status = "failed"
            self.result.failed_stage = stage
            self.result.reason = f"{stage}: {first}"[:2000]


def calibration_first_scene(calibration: Any) -> Any | None:
    samples = getattr(calibration, "samples", None)
    return samples[0] if samples else None


def _kurtosis(x) -> float:
    x = x.double().flatten()
    if x.numel() > 1_000_000:  # a strided subsample keeps the estimate cheap on big activations
        x = x[:: x.numel() // 1_000_000 + 1]
    mu, var = x.mean(), x.var(unbiased=False)
    return float(((x - mu) ** 4).mean() / var.clamp_min(1e-30) ** 2)


def activation_outliers(cell: _Cell, scene: Any) -> dict[str, Any]:
    """Outlier statistics of the FP model on one scene, per quant site and per block.

    Per site (input activations X [N, C] and weight W [C_out, C]): absmax, kurtosis of X, channel ratio =
    max over channels of max|X[:, c]| / median of the same (how much one channel dominates the per-token
    range), and W's absmax/std and kurtosis. Per block: the max channel ratio and max kurtosis of its sites."""
    torch = cell.torch
    sites = cell.comp.quant_sites(cell.model, cell.spec.options.scope)
    if not sites:
        return {"sites": {}, "blocks": []}
    block_of = cell.comp.block_of_site(cell.model, cell.spec.options.scope)
    records: dict[str, dict[str, float]] = {}

    def hook(name):
        def fn(module, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            ch = x.abs().amax(0)
            w = module.weight.detach().float()
            records[name] = {
                "act_absmax": float(x.abs().max()),
                "act_kurtosis": _kurtosis(x),
                "act_channel_ratio": float(ch.max() / ch.median().clamp_min(1e-12)),
                "w_absmax_over_std": float(w.abs().max() / w.std().clamp_min(1e-12)),
                "w_kurtosis": _kurtosis(w),
            }

        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in sites.items()]
    try:
        with torch.no_grad():
            cell.comp.predict(cell.model, cell.images(scene))
    finally:
        for h in handles:
            h.remove()
    blocks: dict[str, list[dict[str, float]]] = {}
    for name, rec in records.items():
        blocks.setdefault(block_of.get(name, name.rsplit(".", 2)[0]), []).append(rec)
    block_rows = [
        {
            "name": b,
            "sites": len(recs),
            "act_channel_ratio_max": max(r["act_channel_ratio"] for r in recs),
            "act_kurtosis_max": max(r["act_kurtosis"] for r in recs),
            "act_absmax": max(r["act_absmax"] for r in recs),
            "w_kurtosis_max": max(r["w_kurtosis"] for r in recs),
        }
        for b, recs in blocks.items()
    ]
    return {"sites": records, "blocks": block_rows}


def prediction_agreement(ref: list[Any], other: list[Any]) -> dict[str, float]:
    """Mean over scenes of the relative L2 error ||other - ref|| / ||ref|| per prediction field."""
    import torch

    out: dict[str, list[float]] = {}
    for a, b in zip(ref, other, strict=True):
        ta, tb = a.tensors(), b.tensors()
        for k in ta:
            if k in tb and ta[k].shape == tb[k].shape:
                x, y = ta[k].detach().double().cpu(), tb[k].detach().double().cpu()
                out.setdefault(k, []).append(
                    float(torch.linalg.norm(y - x) / torch.linalg.norm(x).clamp_min(1e-30))
                )
    return {f"{k}_rel_err": sum(v) / len(v) for k, v in out.items()}


def run_cell(spec: CellSpec, cache_dir: str | None = None, progress: bool = False) -> CellResult:
    """Run one cell through load, fp_eval, calibrate, eval_fake, eval_real and bench; never raises for a
    failing cell (the result says failed and why)."""
    return _Cell(spec, str(cache_dir) if cache_dir else None, progress).run()
