"""Public entry points: quantize_model, QuantizedModel, save_quantized, load_quantized.

On-disk format of a quantized model (a directory):
- model.safetensors: the full state_dict of the quantized nn.Module (QuantLinear codes int8, qparams,
  transforms' buffers, every FP parameter, including norms changed by SmoothQuant folding);
- manifest.json: format tag, model name, method, scheme, config, scope, calibration description and hash,
  the preset, the effective format (`effective_format`: what the weights / activations really are), the
  coverage manifest (per quantized site: block, kind, bits, granularity, transform, and the layer
  config needed to rebuild it; the linears left FP; what else stays FP), the calibration statistics and
  the SHA-256 of model.safetensors.
load_quantized rebuilds the model (ptq3d.models.load_model(name) unless one is given), swaps in empty
QuantLinears from the manifest and loads the state strictly, so the result is bit-identical.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ptq3d.calibration.blockwise import QuantContext, replace_module
from ptq3d.calibration.sets import CalibrationSet
from ptq3d.errors import CheckpointError, ConfigError, MethodError, UserError
from ptq3d.methods.registry import get_method
from ptq3d.models.base import GeometryModel
from ptq3d.quant.plan import PrecisionPlan
from ptq3d.quant.qlinear import QuantLinear, set_backend
from ptq3d.quant.spec import QuantSpec, Scheme, get_scheme
from ptq3d.quant.stats import CalibrationStats, PeakMemory

FORMAT = "ptq3d.quantized/1"
STATE_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
FP_SCHEME = Scheme("fp", QuantSpec(16, "tensor"), None)
ALWAYS_FP = (
    "attention matmuls (QK^T, softmax, AV), LayerNorm / QK-norm, RoPE, LayerScale, residual adds, GELU, "
    "the patch-embedding conv, and every linear listed in fp_linears"
)


class QuantizedModel(GeometryModel):
    """A GeometryModel with QuantLinears swapped in, plus what produced it.

    model: the wrapped GeometryModel; `module` is its nn.Module (holding the QuantLinears) and predict,
    blocks, capture_block_input, task_outputs (and any other attribute) are delegated to it, so a
    QuantizedModel is used wherever a GeometryModel is.
    manifest: coverage manifest (dict, JSON-serialisable). stats: CalibrationStats.
    method, scheme (Scheme), config (the method's config dataclass), calibration_hash (str or None).
    """

    def __init__(
        self,
        model: GeometryModel,
        manifest: dict[str, Any],
        stats: CalibrationStats,
        method: str,
        scheme: Scheme,
        config: Any,
        calibration_hash: str | None,
    ):
        super().__init__(model.module, name=getattr(model, "name", None))
        self.model = model
        self.manifest = manifest
        self.stats = stats
        self.method = method
        self.scheme = scheme
        self.config = config
        self.calibration_hash = calibration_hash

    def __getattr__(self, name: str) -> Any:
        if name == "model":  # not yet set (copy / unpickle): avoid recursion
            raise AttributeError(name)
        return getattr(self.model, name)

    def predict(self, images: torch.Tensor):
        return self.model.predict(images)

    def blocks(self, scope="aggregator"):
        return self.model.blocks(scope)

    def capture_block_input(self, images: torch.Tensor, scope="aggregator"):
        return self.model.capture_block_input(images, scope)

    def task_outputs(self, images: torch.Tensor):
        return self.model.task_outputs(images)

    def quant_layers(self) -> dict[str, QuantLinear]:
        """Full name -> QuantLinear, in module order."""
        return {n: m for n, m in self.module.named_modules() if isinstance(m, QuantLinear)}

    def set_backend(self, backend: str) -> int:
        return set_backend(self.module, backend)

    def __repr__(self) -> str:
        return (
            f"QuantizedModel(model={self.name}, method={self.method}, "
            f"scheme={self.scheme.name}, sites={len(self.manifest.get('sites', {}))})"
        )


def _config_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config or {})


def _weight_granularity(q: QuantLinear) -> str:
    """What the weight scales really are: a "channel" spec whose rows share a few scales (TAPTQ's qkv with one
    interval each for q, k, v) is per-tensor in effect."""
    g = q.weight_spec.granularity
    if g == "group":
        return f"per-group{q.weight_spec.group_size}"
    if g == "tensor":
        return "per-tensor"
    distinct = int(torch.unique(q.weight_scale.detach().reshape(-1)).numel())
    if q.weight_scale.shape[0] > 3 and distinct <= 3:
        return "per-tensor"
    return "per-channel"


def _act_format(q: QuantLinear) -> str:
    spec = q.act_spec
    if spec is None:
        return "fp"
    return ("dynamic" if spec.dynamic else "static") + " per-" + spec.granularity


def _majority(values: list[str]) -> str:
    return max(dict.fromkeys(values), key=values.count) if values else "none"


def effective_format(module: nn.Module, sites: dict[str, Any], fp_linears: list[str]) -> dict[str, Any]:
    """The format the quantized model really uses (for reports next to the scheme name).

    weight: the granularity most sites use ("per-channel", "per-tensor", "per-group128", "per-tensor x3 row
    blocks", ...); act: "dynamic per-token", "static per-tensor", "fp"; extras: what else differs from a plain
    quantized linear: twin post-GELU activation quantizers, input transforms (online or folded), low-rank
    compensation branches, FP-kept linears in the model, sites whose format differs from the majority.
    short: one line, e.g. "W4 per-tensor / A8 static per-tensor + twin fc2 + compensation".
    """
    qls = {n: m for n, m in module.named_modules() if isinstance(m, QuantLinear)}
    if not qls:
        return {"weight": "fp", "act": "fp", "extras": [], "short": "FP"}
    wg = {n: _weight_granularity(q) for n, q in qls.items()}
    ag = {n: _act_format(q) for n, q in qls.items()}
    weight, act = _majority(list(wg.values())), _majority(list(ag.values()))
    extras: list[str] = []
    blocks = sorted(
        {
            int(torch.unique(q.weight_scale.reshape(-1)).numel())
            for n, q in qls.items()
            if wg[n] == "per-tensor" and q.weight_spec.granularity == "channel"
        }
        - {1}
    )
    if blocks:
        extras.append(
            "per-tensor weights with " + "/".join(map(str, blocks)) + " row blocks on some sites (qkv)"
        )
    twin = sorted(
        {n.rpartition(".")[2] for n, q in qls.items() if "twin" in str(q.config().get("act_quantizer", ""))}
    )
    if twin:
        extras.append("twin post-GELU " + ", ".join(twin))
    kinds = sorted({str(v["transform"]) for v in sites.values() if v.get("transform")})
    if kinds:
        extras.append("input transform " + ", ".join(kinds))
    rot = [n for n, m in module.named_modules() if type(m).__name__ == "ResidualRotation"]
    if rot:
        extras.append(f"residual-stream rotation ({len(rot)} blocks)")
    comp = [n for n, m in module.named_modules() if type(m).__name__ == "LowRankCompensation"]
    if comp:
        extras.append(f"low-rank compensation ({len(comp)} modules)")
    odd_w = sorted(n for n, g in wg.items() if g != weight)
    odd_a = sorted(n for n, g in ag.items() if g != act)
    if odd_w:
        extras.append(f"{len(odd_w)} sites with other weight granularity")
    if odd_a:
        extras.append(f"{len(odd_a)} sites with other activation format")
    if fp_linears:
        extras.append(f"{len(fp_linears)} linears FP")
    bits_w = _majority([str(q.weight_spec.bits) for q in qls.values()])
    bits_a = _majority([str(q.act_spec.bits) if q.act_spec is not None else "16" for q in qls.values()])
    set_w = sorted({q.weight_spec.bits for q in qls.values()})
    set_a = sorted({16 if q.act_spec is None else q.act_spec.bits for q in qls.values()})
    if len(set_w) > 1:  # a mixed-precision plan: the parameter-weighted mean and the widths used
        bits_w = f"{mean_weight_bits(qls.values()):.2f} mixed ({'/'.join(map(str, set_w))})"
    if len(set_a) > 1:
        short_act = f"A mixed ({'/'.join(map(str, set_a))})"
    else:
        short_act = f"A{bits_a} {act}" if act != "fp" else "A16"
    short = f"W{bits_w} {weight} / {short_act}"
    if twin:
        short += " + twin"
    if comp:
        short += " + compensation"
    return {
        "weight": weight,
        "act": act,
        "extras": extras,
        "short": short,
        "sites_other_weight": odd_w,
        "sites_other_act": odd_a,
    }


def build_manifest(
    model: Any,
    scope: str,
    method: str,
    scheme: Scheme,
    config: Any,
    calibration: CalibrationSet | None,
    preset: str = "paper",
) -> dict[str, Any]:
    """The coverage manifest of a quantized model (see module docstring)."""
    blocks = {b.name: b for b in model.blocks(scope)}
    sites: dict[str, Any] = {}
    fp_linears: list[str] = []
    weight_bits = 0
    fp_params = 0
    for name, mod in model.module.named_modules():
        if isinstance(mod, QuantLinear):
            blk = next((b for b in blocks if name.startswith(b + ".")), None)
            sites[name] = {
                "block": blk,
                "kind": blocks[blk].kind if blk else None,
                "attention": blocks[blk].attention if blk else None,
                "weight": mod.weight_spec.describe(),
                "act": "fp" if mod.act_spec is None else mod.act_spec.describe(),
                "transform": None if mod.input_transform is None else mod.input_transform.config()["kind"],
                "layer": mod.config(),
            }
            weight_bits += mod.qweight.numel() * mod.weight_spec.bits
        elif isinstance(mod, nn.Linear):
            fp_linears.append(name)
            fp_params += mod.weight.numel()
    return {
        "format": FORMAT,
        "model": {"name": getattr(model, "name", type(model).__name__), "class": type(model).__name__},
        "method": method,
        "scheme": scheme.to_dict(),
        "config": _config_dict(config),
        "preset": preset,
        "scope": scope,
        "effective_format": effective_format(model.module, sites, fp_linears),
        "calibration": None if calibration is None else calibration.describe(),
        "sites": sites,
        "fp_linears": fp_linears,
        "always_fp": ALWAYS_FP,
        "summary": {
            "num_quantized_linears": len(sites),
            "num_fp_linears": len(fp_linears),
            "quantized_weight_bits": weight_bits,
            "fp_linear_weights": fp_params,
            "weight_spec": scheme.weight.describe() if sites else None,
            "act_spec": (scheme.act.describe() if scheme.act is not None else "fp") if sites else None,
            **plan_summary(model.module),
        },
        "plan": None if scheme.plan is None else {**scheme.plan.to_dict(), "hash": scheme.plan.hash},
    }


def _check_widths(model: Any, scheme: Scheme, scope: str) -> None:
    for blk, lins in model.iter_block_sites(scope):
        for rel, lin in lins.items():
            name = f"{blk.name}.{rel}"
            sch = scheme.for_site(name, blk.name)
            sch.weight.check_width(lin.in_features, f"the weight of {name}")
            if sch.act is not None and sch.act.granularity == "group":
                sch.act.check_width(lin.in_features, f"the input of {name}")


def _check_plan_names(model: Any, plan: PrecisionPlan, scope: str) -> None:
    blocks = [b.name for b in model.blocks(scope)]
    plan.check_names(blocks, list(model.quant_sites(scope)))


def _check_plan_held(
    module: nn.Module, method: str, scheme: Scheme, site_block: dict[str, str | None]
) -> None:
    """MethodError naming the first site whose bits differ from what the plan asks: a method that built a layer
    from the run-wide scheme instead of BlockData.scheme_for would otherwise report a mixed plan it did not run."""
    for name, mod in module.named_modules():
        if not isinstance(mod, QuantLinear):
            continue
        want = scheme.for_site(name, site_block.get(name))
        want_a = None if want.act is None else want.act.bits
        got_a = None if mod.act_spec is None else mod.act_spec.bits
        if mod.weight_spec.bits != want.weight.bits or want_a != got_a:
            raise MethodError(
                f"method '{method}' ignored the precision plan '{scheme.plan.name}' at {name}: it has "
                f"W{mod.weight_spec.bits}/A{got_a or 16}, the plan asks for W{want.weight.bits}/A{want_a or 16}"
            )


def mean_weight_bits(qls: Iterable[QuantLinear]) -> float | None:
    """Parameter-weighted mean weight bits, sum(numel * bits) / sum(numel) (None without quantized linears)."""
    qls = list(qls)
    den = sum(q.qweight.numel() for q in qls)
    return sum(q.qweight.numel() * q.weight_spec.bits for q in qls) / den if den else None


def plan_summary(module: nn.Module) -> dict[str, Any]:
    """Bits and bytes of the quantized sites as built (mixed plans included).

    effective_weight_bits: sum(numel * bits) / sum(numel) over the QuantLinear weights;
    effective_act_bits: the same average weighted by in_features (16 for FP inputs), a per-site mean;
    quantized_weight_bytes: packed codes + scales + zero-points, as ptq3d.kernels.model_bytes counts them;
    bits_histogram: "W<b>A<b>" -> number of sites."""
    from ptq3d.kernels import model_bytes

    qls = [m for m in module.modules() if isinstance(m, QuantLinear)]
    act_bits = [16 if q.act_spec is None else q.act_spec.bits for q in qls]
    hist: dict[str, int] = {}
    for q, ab in zip(qls, act_bits, strict=True):
        key = f"W{q.weight_spec.bits}A{ab}"
        hist[key] = hist.get(key, 0) + 1
    act_den = sum(q.in_features for q in qls)
    return {
        "effective_weight_bits": mean_weight_bits(qls),
        "effective_act_bits": (
            sum(q.in_features * ab for q, ab in zip(qls, act_bits, strict=True)) / act_den
            if act_den
            else None
        ),
        # None where a site has no integer packing (weights above 8 bits, e.g. a 16-bit exactness check)
        "quantized_weight_bytes": (
            int(model_bytes(module).quant_packed_bytes)
            if qls and max(q.weight_spec.bits for q in qls) <= 8
            else None
        ),
        "bits_histogram": dict(sorted(hist.items())),
    }


def quantize_model(
    model: Any,
    method: str,
    scheme: str | Scheme | None,
    calibration: CalibrationSet | None = None,
    config: dict | Any | None = None,
    scope: str = "aggregator",
    *,
    progress: bool = False,
    inplace: bool = False,
    preset: str = "paper",
    plan: PrecisionPlan | str | Path | None = None,
) -> QuantizedModel:
    """Quantize `model` (GeometryModel) with registered `method` at `scheme` (name like "w4a8" or a Scheme).

    calibration: required by calibrating methods (and by any method with static activations).
    config: dict (unknown keys are errors) or the method's config dataclass. scope: "aggregator" | "all".
    The input model is left untouched unless inplace=True (it is deep-copied). progress: tqdm per block.
    preset: the method's preset ("paper" default, "code" where the authors' release differs; MethodSpec.presets)
    applied before the explicit config keys; recorded in the manifest with the effective format.
    plan: a mixed-precision plan (PrecisionPlan or a .toml/.json path) on top of `scheme` (which may also carry
    one: Scheme.with_plan); every unit it names must exist in scope, and every site must end with the bits the
    plan asks for (else MethodError). A method may make its own plan when the run has none, by setting
    `ctx.scheme = ctx.scheme.with_plan(plan)` (QVGGT); it is then checked and recorded the same way. The manifest
    records the plan, effective bits and bytes; QuantizedModel.scheme carries it.
    """
    spec = get_method(method)
    cfg = spec.make_config(config, preset=preset)
    if scheme is None:
        if method != "fp":
            raise ConfigError(f"method '{method}' needs a scheme (e.g. w8a8, w4a8)")
        scheme_obj = FP_SCHEME
    else:
        scheme_obj = get_scheme(scheme)
    if plan is not None:
        if scheme is None:
            raise ConfigError("a precision plan needs a base scheme (e.g. w4a16)")
        plan_obj = plan if isinstance(plan, PrecisionPlan) else PrecisionPlan.load(plan)
        scheme_obj = scheme_obj.with_plan(plan_obj)
    if getattr(cfg, "act_static", False):
        scheme_obj = scheme_obj.with_static_act()
    if scope not in ("aggregator", "all"):
        raise ConfigError(f"scope must be 'aggregator' or 'all', got {scope!r}")
    if scheme_obj.plan is not None:
        _check_plan_names(model, scheme_obj.plan, scope)
    if method != "fp":
        _check_widths(model, scheme_obj, scope)
    static = scheme_obj.act is not None and not scheme_obj.act.dynamic
    if spec.needs_calibration(static, cfg) and calibration is None:
        why = (
            "static activation ranges"
            if spec.requires_calibration == "static_act" and static
            else "its statistics"
        )
        raise ConfigError(f"method '{method}' needs a calibration set for {why}; pass calibration=")
    if calibration is not None and not isinstance(calibration, CalibrationSet):
        raise ConfigError(f"calibration must be a CalibrationSet, got {type(calibration).__name__}")
    site_blocks = {
        s: b.name for b, lins in model.iter_block_sites(scope) for s in (f"{b.name}.{r}" for r in lins)
    }
    target = model if inplace else copy.deepcopy(model)
    target.module.eval()
    ctx = QuantContext(target, scope, scheme_obj, progress, method, spec.propagate)
    with PeakMemory() as pm:
        t0 = time.perf_counter()
        spec.fn(target, calibration, scheme_obj, cfg, ctx)
        wall = time.perf_counter() - t0
    st = ctx.stats
    st.wall_time_s = wall
    st.peak_rss_bytes, st.delta_rss_bytes, st.cuda_peak_bytes = (
        pm.peak_rss_bytes,
        pm.delta_rss_bytes,
        pm.cuda_peak_bytes,
    )
    st.num_calibration_samples = 0 if calibration is None else len(calibration)
    if ctx.scheme is not scheme_obj and ctx.scheme.plan is not None and scheme_obj.plan is None:
        # a method that makes its own plan (QVGGT's selective mixed precision) sets ctx.scheme: record that plan
        _check_plan_names(target, ctx.scheme.plan, scope)
        scheme_obj = ctx.scheme
    elif ctx.scheme != scheme_obj:
        raise MethodError(
            f"method '{method}' replaced the run's scheme {scheme_obj.name} by {ctx.scheme.name}"
        )
    if scheme_obj.plan is not None:
        _check_plan_held(target.module, method, scheme_obj, site_blocks)
    manifest = build_manifest(target, scope, method, scheme_obj, cfg, calibration, preset)
    return QuantizedModel(
        target, manifest, st, method, scheme_obj, cfg, None if calibration is None else calibration.hash
    )


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def save_quantized(qm: QuantizedModel, directory: str | Path) -> Path:
    """Write model.safetensors + manifest.json into `directory` (created). Returns the directory."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in qm.module.state_dict().items()}
    save_file(state, str(d / STATE_FILE), metadata={"format": FORMAT, "method": qm.method})
    doc = dict(qm.manifest)
    doc["calibration_hash"] = qm.calibration_hash
    doc["stats"] = qm.stats.to_dict()
    doc["state_sha256"] = _sha256(d / STATE_FILE)
    (d / MANIFEST_FILE).write_text(json.dumps(doc, indent=1, allow_nan=False, default=str))
    return d


def load_quantized(directory: str | Path, model: Any = None) -> QuantizedModel:
    """Restore a save_quantized directory bit-exactly. model: a GeometryModel of the same architecture
    (its weights are overwritten); default ptq3d.models.load_model(manifest model name)."""
    from safetensors.torch import load_file

    d = Path(directory)
    mpath = d / MANIFEST_FILE
    if not mpath.is_file():
        raise CheckpointError(f"{mpath}: no manifest.json (not a ptq3d quantized-model directory)")
    try:
        doc = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{mpath}: invalid JSON ({exc})") from exc
    if doc.get("format") != FORMAT:
        raise CheckpointError(f"{mpath}: format {doc.get('format')!r}, expected {FORMAT!r}")
    spath = d / STATE_FILE
    if not spath.is_file():
        raise CheckpointError(f"{spath}: missing")
    if doc.get("state_sha256") and _sha256(spath) != doc["state_sha256"]:
        raise CheckpointError(f"{spath}: SHA-256 does not match manifest.json (file changed or corrupt)")
    if model is None:
        try:
            from ptq3d.models import load_model
        except ImportError as exc:
            raise UserError(
                f"load_quantized: pass model= (ptq3d.models.load_model unavailable: {exc})"
            ) from exc
        model = load_model(doc["model"]["name"])
    else:
        model = copy.deepcopy(model)
    spec = get_method(doc["method"])  # imports the method's module (and plugins) so its transform kinds exist
    for site, entry in doc["sites"].items():
        try:
            replace_module(model.module, site, QuantLinear.from_config(entry["layer"]))
        except AttributeError as exc:
            raise CheckpointError(
                f"{mpath}: site '{site}' does not exist in model {doc['model']['name']}"
            ) from exc
    # a method whose quantized state holds modules beyond QuantLinear (e.g. TAPTQ's low-rank compensation,
    # twin quantizers) declares fn.rebuild_modules(module, manifest) to recreate them before loading
    rebuild = getattr(spec.fn, "rebuild_modules", None)
    if rebuild is not None:
        rebuild(model.module, doc)
    state = load_file(str(spath))
    try:
        model.module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{spath}: state does not fit the model: {str(exc).splitlines()[0]}") from exc
    model.module.eval()
    manifest = {k: v for k, v in doc.items() if k not in ("stats", "calibration_hash", "state_sha256")}
    return QuantizedModel(
        model,
        manifest,
        CalibrationStats.from_dict(doc.get("stats", {})),
        doc["method"],
        Scheme.from_dict(doc["scheme"]),
        spec.make_config(doc.get("config") or None),
        doc.get("calibration_hash"),
    )
