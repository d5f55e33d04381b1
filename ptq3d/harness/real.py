"""RealComponents: the harness's adapter onto ptq3d.models, .datasets, .metrics, .methods and .kernels.

Every call the runner makes into the rest of ptq3d goes through this class, so a signature change elsewhere
touches this file only. Heavy modules are imported on first use.

Per-process memos (what a grid of many cells on one model would otherwise redo per cell):
- protocol scenes and calibration pools, by (protocol, root, limit, data hash);
- the loaded FP model, by (name, weights path and its size/mtime/content hash, init seed, device, options),
  handed out again only while its fingerprint (model_fingerprint: every tensor's identity, version counter and
  float64 sums, module hooks, train/eval mode) is unchanged, so a cell that modified the FP model gets a fresh
  one (and its content hash is recomputed);
- calibration sets, by (CalibRef, the model's fingerprint), re-verified by content hash before reuse.
`clear_memos()` empties them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import math
import types
import typing
from collections import OrderedDict
from pathlib import Path
from typing import Any

from ptq3d.errors import ConfigError, UserError, unknown_name_error
from ptq3d.harness.components import Components, MetricInfo, QuantOutcome
from ptq3d.results.records import FP_METHOD, CalibRef, ModelRef, ProtocolRef

# The headline metrics per task (the tables stay readable); [[protocols]].metrics picks others.
DEFAULT_METRICS: tuple[str, ...] = (
    "pose.auc@30",
    "pose.auc@5",
    "depth.abs_rel",
    "depth.delta<1.25",
    "points.acc",
    "points.comp",
    "points.nc",
)


def state_hash(module) -> str:
    """SHA-256 (16 hex) over a module's state_dict names, dtypes, shapes and bytes."""
    import numpy as np
    import torch

    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(np.ascontiguousarray(t.numpy()).tobytes())
    return h.hexdigest()[:16]


# the (weight bits, activation bits) pairs the quantizers and the integer kernels are benchmarked at: those of
# the named schemes (`ptq3d ls schemes`); modifiers (g<G>, -static, -asym) may vary the format, not the widths
def _supported_bit_pairs() -> dict[tuple[int, int | None], str]:
    from ptq3d.methods import get_scheme, list_schemes

    out: dict[tuple[int, int | None], str] = {}
    for name in list_schemes():
        s = get_scheme(name)
        out[(s.weight.bits, None if s.act is None else s.act.bits)] = name
    return out


def _matches(value: Any, hint: Any) -> bool:
    """Whether a TOML value fits a config field's type hint (unknown hints: left to the config's own check)."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint in (list, tuple) or origin in (list, tuple):
        if not isinstance(value, list | tuple):
            return False
        inner = [a for a in args if a is not Ellipsis]
        return len(inner) != 1 or all(_matches(v, inner[0]) for v in value)
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            return False
        return len(args) != 2 or all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
    return True


def _plain(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


def check_config_values(instance: Any, keys: Any, what: str) -> None:
    """Type- and range-check the given keys of a config dataclass instance (UserError naming the key), then
    run the dataclass's own check()/validate() where it has one."""
    from ptq3d.quant.spec import SYM_RULES

    try:
        hints = typing.get_type_hints(type(instance))
    except Exception:  # unresolvable annotations: the config's own checks still run
        hints = {}
    for key in keys:
        value = getattr(instance, key)
        if key in hints and not _matches(value, hints[key]):
            raise ConfigError(f"{what}: config key '{key}' = {value!r}: expected {hints[key]}")
        if not _finite(value):
            raise ConfigError(f"{what}: config key '{key}' = {value!r}: must be finite")
    ratio = getattr(instance, "act_clip_ratio", 1.0)
    if isinstance(ratio, int | float) and not 0.0 < ratio <= 1.0:
        raise ConfigError(f"{what}: config key 'act_clip_ratio' = {ratio!r}: must be in (0, 1]")
    rule = getattr(instance, "sym_rule", "absmax")
    if rule not in SYM_RULES:
        raise ConfigError(
            f"{what}: config key 'sym_rule' = {rule!r}: allowed values are {', '.join(SYM_RULES)}"
        )
    for check in ("check", "validate", "alphas"):  # alphas: SmoothQuant's candidate list validates its alpha
        fn = getattr(instance, check, None)
        if callable(fn):
            try:
                fn()
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{what}: {exc}") from None


def _builder_config_class(fn: Any) -> type | None:
    """The config dataclass of a builder's `config` parameter (NFDSConfig, TAPTQCalibConfig), if it has one."""
    if "config" not in inspect.signature(fn).parameters:
        return None
    try:
        hint = typing.get_type_hints(fn).get("config")
    except Exception:
        return None
    for a in typing.get_args(hint) or (hint,):
        if dataclasses.is_dataclass(a) and isinstance(a, type):
            return a
    return None


# --- per-process memos ------------------------------------------------------------------------------------

_SCENES: OrderedDict[tuple, list[Any]] = OrderedDict()
_MODELS: OrderedDict[tuple, tuple[Any, tuple]] = OrderedDict()
_CALIBRATIONS: OrderedDict[tuple, tuple[Any, str, list[Any]]] = OrderedDict()
MEMO_SIZES = {"scenes": 4, "models": 1, "calibrations": 8}


def clear_memos() -> None:
    _SCENES.clear()
    _MODELS.clear()
    _CALIBRATIONS.clear()


def _remember(memo: OrderedDict, key: tuple, value: Any, size: int) -> None:
    memo[key] = value
    memo.move_to_end(key)
    while len(memo) > size:
        memo.popitem(last=False)


def model_fingerprint(model: Any) -> tuple:
    """Proof that a model was not modified, cheaper than reloading it: every state tensor's identity, storage,
    in-place version counter and float64 sum and absolute sum, each module's hooks and train/eval mode (a
    replaced or re-assigned tensor, an in-place write, a hook left behind changes it)."""
    import torch

    module = model.module
    with torch.no_grad():  # the sums catch writes through .data, which bypass the version counter
        tensors = tuple(
            (k, id(t), t._version, t.data_ptr(), float(t.double().sum()), float(t.double().abs().sum()))
            for k, t in module.state_dict(keep_vars=True).items()
        )
    modules = tuple(
        (
            id(m),
            m.training,
            len(m._forward_hooks),
            len(m._forward_pre_hooks),
            len(getattr(m, "_backward_hooks", {})),
        )
        for m in module.modules()
    )
    return tensors, modules


def _file_key(path: str | Path | None) -> tuple:
    if not path:
        return ()
    p = Path(path)
    if not p.is_file():
        return (str(p),)
    st = p.stat()
    return (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


class RealComponents(Components):
    """The ptq3d implementations (see Components for the contract)."""

    name = "real"

    # --- names -----------------------------------------------------------------------------------------
    def list_models(self) -> list[str]:
        from ptq3d.models import model_names

        return model_names()

    def list_methods(self) -> list[str]:
        from ptq3d.methods import list_methods

        return [m for m in list_methods() if m != FP_METHOD]

    def list_schemes(self) -> list[str]:
        from ptq3d.methods import list_schemes

        return list_schemes()

    def check_plan(self, ref: ModelRef, plan: dict[str, Any], scope: str) -> None:
        """Every block / site a mixed-precision plan names exists in model `ref` at `scope` (the architecture is
        built on the meta device: no weights are read, so validating a VGGT-1B plan costs no memory)."""
        import torch

        from ptq3d.models.registry import get_spec
        from ptq3d.quant.plan import PrecisionPlan

        with torch.device("meta"):
            model = get_spec(ref.name).builder()
        PrecisionPlan.from_dict(plan).check_names(
            [b.name for b in model.blocks(scope)], list(model.quant_sites(scope))
        )

    def check_scheme(self, scheme: str) -> None:
        """Named schemes and the w<b>[g<G>]a<b>[-static|-asym] grammar, at the bit widths of the named ones."""
        from ptq3d.methods import get_scheme

        s = get_scheme(scheme)
        pairs = _supported_bit_pairs()
        if (s.weight.bits, None if s.act is None else s.act.bits) not in pairs:
            act = "FP activations" if s.act is None else f"{s.act.bits}-bit activations"
            raise ConfigError(
                f"scheme '{scheme}': {s.weight.bits}-bit weights with {act} are not a supported width pair "
                f"(supported: {', '.join(sorted(pairs.values()))}, with optional g<G>, -static, -asym)"
            )

    def list_protocols(self) -> list[str]:
        from ptq3d.datasets import list_protocols

        return [p.name for p in list_protocols()]

    def list_datasets(self) -> list[str]:
        from ptq3d.datasets.protocols import DATASETS

        return list(DATASETS)

    def list_metrics(self) -> list[str]:
        from ptq3d.metrics import list_metrics

        return list_metrics()

    def list_calibration_builders(self) -> list[str]:
        from ptq3d.calibration.builders import list_calibration_builders

        return list_calibration_builders()

    def describe(self, kind: str, name: str) -> str:
        """One line for `ptq3d ls`."""
        try:
            if kind == "models":
                from ptq3d.models.registry import get_spec

                return get_spec(name).description
            if kind == "methods":
                from ptq3d.methods import get_method

                return get_method(name).description
            if kind == "protocols":
                from ptq3d.datasets import get_protocol

                p = get_protocol(name)
                return f"[{p.dataset} v{p.version}] {p.description}"
            if kind == "metrics":
                from ptq3d.metrics import get_metric

                s = get_metric(name)
                d = {True: "higher is better", False: "lower is better", None: "count"}[s.higher_is_better]
                return f"{s.unit}, {d}, {s.aggregation} over scenes"
        except UserError:
            return ""
        return ""

    def check_method_config(self, method: str, config: dict[str, Any]) -> None:
        self.resolve_method_config(method, "paper", config)

    def resolve_method_config(
        self, method: str, preset: str, config: dict[str, Any], defaults: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Every field of the method's config dataclass: `preset`'s values (MethodSpec.presets), then `defaults`
        for fields the class has, then `config`; type- and range-checked. Every field is spelled out, so the
        cell's record is the whole config and no other preset can creep in at quantize time."""
        from ptq3d.methods import get_method

        if method == FP_METHOD:
            return dict(config)
        spec = get_method(method)
        fields = {f.name for f in dataclasses.fields(spec.config_cls)}
        extra = {k: v for k, v in (defaults or {}).items() if k in fields and k not in config}
        what = f"method '{method}'" + (f" preset '{preset}'" if preset != "paper" else "")
        instance = spec.make_config({**extra, **config}, preset=preset)
        check_config_values(instance, [*extra, *config], what)
        # tuples as lists: the spec is what a stored record (JSON) or a worker gets back, so in-process runs
        # see the same values as distributed ones and a stored spec equals the one that ran
        return {f.name: _plain(getattr(instance, f.name)) for f in dataclasses.fields(instance)}

    def method_presets(self, method: str) -> list[str]:
        from ptq3d.methods import get_method

        return ["paper"] if method == FP_METHOD else list(get_method(method).presets())

    def method_calibration_defaults(self, method: str, preset: str) -> dict[str, Any]:
        from ptq3d.methods import get_method

        if method == FP_METHOD:
            return {}
        return get_method(method).calibration_defaults(preset)

    def check_builder_options(self, builder: str, options: dict[str, Any]) -> None:
        from ptq3d.calibration.builders import get_calibration_builder
        from ptq3d.typed_config import make_config

        fn = get_calibration_builder(builder)
        cls = _builder_config_class(fn)
        if cls is None:
            super().check_builder_options(builder, options)
            return
        instance = make_config(cls, dict(options), what=f"calibration builder '{builder}'")
        check_config_values(instance, list(options), f"calibration builder '{builder}'")

    def protocol_frames(self, protocol: str) -> int | None:
        from ptq3d.datasets import get_protocol

        p = get_protocol(protocol)
        if p.dataset == "synthetic":
            return int(p.option("num_frames", 8))
        return p.max_frames or p.frames_per_scene or None

    def method_needs_calibration(
        self, method: str, config: dict[str, Any], scheme: str | None = None
    ) -> bool:
        if method == FP_METHOD:
            return False
        from ptq3d.methods import get_method, get_scheme

        spec = get_method(method)
        cfg = spec.make_config(config)
        if spec.needs_calibration(False, cfg):
            return True  # calibrates whatever the activations (e.g. QuaRot with GPTQ weights)
        static = bool(getattr(cfg, "act_static", False))
        if scheme is not None:
            s = get_scheme(scheme)
            static = static or (s.act is not None and not s.act.dynamic)
        elif spec.requires_calibration == "static_act":
            return True  # some scheme might be static: ask for calibration data
        return spec.needs_calibration(static)

    def protocol_needs_root(self, protocol: str) -> bool:
        from ptq3d.datasets import get_protocol

        return get_protocol(protocol).dataset != "synthetic"

    # --- models ----------------------------------------------------------------------------------------
    def load_model(self, ref: ModelRef, device: str) -> Any:
        from ptq3d.models import load_model

        if ref.options:
            raise ConfigError(
                f"model '{ref.name}': options {sorted(ref.options)} are not supported by load_model"
            )
        from ptq3d.models.registry import get_spec

        weights = ref.weights or get_spec(ref.name).default_weights
        key = (
            ref.name,
            _file_key(weights),
            getattr(ref, "weights_sha256", ""),
            ref.init_seed,
            device,
        )
        hit = _MODELS.get(key)
        if hit is not None and model_fingerprint(hit[0]) == hit[1]:
            _MODELS.move_to_end(key)
            return hit[0]
        model = load_model(ref.name, weights=ref.weights, device=device)
        model._ptq3d_state_hash = None  # filled by model_hash; valid while the fingerprint holds
        _remember(_MODELS, key, (model, model_fingerprint(model)), MEMO_SIZES["models"])
        return model

    def model_hash(self, model: Any) -> str:
        cached = getattr(model, "_ptq3d_state_hash", None)
        if cached is not None and cached[1] == model_fingerprint(model):
            return cached[0]
        digest = state_hash(model.module)
        with contextlib.suppress(AttributeError):  # a model type that takes no attributes: hash every time
            model._ptq3d_state_hash = (digest, model_fingerprint(model))
        return digest

    def predict(self, model: Any, images: Any) -> Any:
        return model.predict(images)

    def model_bytes(self, model: Any) -> int:
        from ptq3d.kernels import model_bytes

        mb = model_bytes(model.module)
        return mb.model_bytes_quantized if mb.quant_sites else mb.model_bytes_fp16

    def quant_sites(self, model: Any, scope: str) -> dict[str, Any]:
        return model.quant_sites(scope)

    def block_of_site(self, model: Any, scope: str) -> dict[str, str]:
        out = {}
        for blk, sites in model.iter_block_sites(scope):
            for rel in sites:
                out[f"{blk.name}.{rel}"] = blk.name
        return out

    def describe_model(self, model: Any, ref: ModelRef) -> dict[str, Any]:
        from ptq3d.models.registry import get_spec

        spec = get_spec(ref.name)
        weights = ref.weights or (str(spec.default_weights) if spec.default_weights else None)
        out: dict[str, Any] = {"name": ref.name, "family": spec.family, "params": model.num_parameters()}
        if weights:
            out["weights"] = weights
        else:
            out["weights"] = f"random init (seed {ref.init_seed})"
            out["note"] = (
                f"{ref.name} has random weights (seed {ref.init_seed}): accuracy is measured against the ground "
                "truth of the scenes, but an untrained model predicts noise, so read the numbers as quantization "
                "error relative to FP, not as geometry quality."
            )
        return out

    # --- data ------------------------------------------------------------------------------------------
    def _protocol(self, ref: ProtocolRef):
        from ptq3d.datasets import get_protocol

        p = get_protocol(ref.name)
        if getattr(ref, "scenes", None):
            p = p.restrict(ref.scenes)
        return p.with_limit(ref.limit) if ref.limit else p

    def check_protocol_data(self, ref: ProtocolRef) -> list[str]:
        from ptq3d.datasets.protocols import check_roots

        return check_roots(self._protocol(ref), ref.root)

    def load_scenes(self, ref: ProtocolRef) -> list[Any]:
        from ptq3d.datasets import load_protocol_scenes

        protocol = self._protocol(ref)
        key = (protocol.hash, ref.root, ref.limit, getattr(ref, "data_hash", ""))
        if key not in _SCENES:
            _remember(_SCENES, key, load_protocol_scenes(protocol, ref.root), MEMO_SIZES["scenes"])
        _SCENES.move_to_end(key)
        return list(_SCENES[key])

    def protocol_hash(self, ref: ProtocolRef) -> str:
        return self._protocol(ref).hash[:16]

    # --- metrics ---------------------------------------------------------------------------------------
    def metric_names(self, ref: ProtocolRef) -> list[str]:
        return list(ref.metrics) if ref.metrics else list(DEFAULT_METRICS)

    def metric_info(self, name: str) -> MetricInfo:
        from ptq3d.metrics import get_metric

        s = get_metric(name)
        return MetricInfo(name, s.higher_is_better, s.unit, s.aggregation, s.weight_key)

    def _policy(self, ref: ProtocolRef):
        from ptq3d.metrics import AlignmentPolicy

        opts = dict(ref.alignment_options)
        try:
            return AlignmentPolicy.preset(ref.alignment, **opts) if ref.alignment else AlignmentPolicy(**opts)
        except TypeError as exc:
            raise ConfigError(f"protocol '{ref.name}': bad alignment_options {opts}: {exc}") from None

    def check_alignment(self, ref: ProtocolRef) -> None:
        self._policy(ref)

    def required_fields(self, ref: ProtocolRef) -> tuple[str, ...]:
        base = ("depth", "depth_conf", "world_points", "points_conf", "extrinsics")
        # VGGT with random weights can predict a zero field of view (ReLU), i.e. infinite focal lengths;
        # only the depth-unprojection policy reads the predicted intrinsics
        return base + (("intrinsics",) if self._policy(ref).point_source == "depth_unproject" else ())

    def evaluate(self, pred: Any, scene: Any, ref: ProtocolRef, metrics) -> dict[str, float]:
        from ptq3d.metrics import evaluate_scene

        return evaluate_scene(pred.to("cpu"), scene, list(metrics), self._policy(ref))

    def aggregate(self, per_scene, metrics, groups=None) -> dict[str, tuple[float, float]]:
        from ptq3d.metrics import aggregate

        return aggregate(per_scene, list(metrics), groups=groups)

    def scene_groups(self, ref: ProtocolRef, scenes: list[Any]) -> list[str] | None:
        from ptq3d.metrics import scene_groups

        grouping = dict(self._protocol(ref).options).get("pose_aggregation", "scene")
        if grouping == "scene":
            return None
        if grouping != "category":
            raise ConfigError(
                f"protocol '{ref.name}': pose_aggregation {grouping!r} is not 'scene' or 'category'"
            )
        return scene_groups(scenes)

    # --- calibration and quantization ------------------------------------------------------------------
    def build_calibration(self, ref: CalibRef, pool: list[Any], model: Any = None) -> Any:
        """The calibration set of `ref`: the first `ref.frames` frames of every pool scene, then the builder
        with `ref.options` (its config dataclass's fields). Memoized per process by (ref, model fingerprint)."""
        from ptq3d.datasets.protocols import select_frames
        from ptq3d.methods import get_calibration_builder
        from ptq3d.results.records import canonical_json

        if ref.num_scenes > len(pool):
            raise ConfigError(
                f"calibration: num_scenes = {ref.num_scenes} but protocol '{ref.protocol}' has {len(pool)} scenes"
            )
        key = (
            canonical_json(dataclasses.asdict(ref)),
            tuple(id(s) for s in pool),  # the memo entry keeps the pool alive, so the ids stay its scenes
            None if model is None else (id(model), model_fingerprint(model)),
        )
        hit = _CALIBRATIONS.get(key)
        if hit is not None and hit[0].hash == hit[1]:
            return hit[0]
        if ref.frames is not None:
            short = [s for s in pool if s.num_frames < ref.frames]
            if short:
                raise ConfigError(
                    f"calibration: frames = {ref.frames} but scene '{short[0].meta.get('scene', '?')}' of protocol "
                    f"'{ref.protocol}' has {short[0].num_frames} frames"
                )
            pool = [select_frames(s, list(range(ref.frames))) for s in pool]
        fn = get_calibration_builder(ref.builder)
        options = dict(ref.options)
        if options:
            if _builder_config_class(fn) is None:
                raise ConfigError(
                    f"calibration builder '{ref.builder}' takes no options (got {sorted(options)})"
                )
            calibration = fn(pool, ref.num_scenes, ref.seed, model=model, config=options)
        else:
            calibration = fn(pool, ref.num_scenes, ref.seed, model=model)
        _remember(_CALIBRATIONS, key, (calibration, calibration.hash, pool), MEMO_SIZES["calibrations"])
        return calibration

    def calibration_hash(self, calibration: Any) -> str:
        return calibration.hash

    def quantize(
        self, model, method, scheme, calibration, config, scope, progress=False, plan=None
    ) -> QuantOutcome:
        from ptq3d.methods import quantize_model
        from ptq3d.quant.plan import PrecisionPlan

        plan_obj = None if plan is None else PrecisionPlan.from_dict(plan)
        qm = quantize_model(
            model, method, scheme, calibration, config, scope, progress=progress, plan=plan_obj
        )
        st = qm.stats
        return QuantOutcome(qm, qm.manifest, st.to_dict(), st.wall_time_s, st.peak_rss_bytes)

    def backends(self, device: str) -> list[str]:
        out = ["emulated"]
        if device.startswith("cuda"):
            out.append("triton")
        return out

    def set_backend(self, model: Any, backend: str) -> None:
        from ptq3d.methods import set_backend

        if backend not in ("fake", "emulated", "triton"):
            raise unknown_name_error("backend", backend, ("fake", "emulated", "triton"))
        set_backend(model, backend)
