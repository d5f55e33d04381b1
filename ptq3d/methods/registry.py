"""Registries of PTQ methods and calibration-set builders, with third-party plugins.

A method is a function `fn(model, calibration, scheme, config, ctx) -> None` that replaces the linears
of `model` (a GeometryModel, already a private copy) by QuantLinears, registered with
`@register_method(name, config=ConfigDataclass, ...)`. `ptq3d.methods.api.quantize_model` wraps it
(timing, memory, coverage manifest, QuantizedModel).

Third-party methods: any installed distribution declaring an entry point in the group `ptq3d.methods`
(`name = module` or `name = module:object`); loading it runs its @register_method decorators (or the
object may itself be a MethodSpec). Plugins load lazily on the first lookup.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ptq3d.errors import ConfigError, UserError, unknown_name_error

ENTRY_POINT_GROUP = "ptq3d.methods"
BUILTIN_METHOD_MODULES = (
    "ptq3d.methods.fp",
    "ptq3d.methods.rtn",
    "ptq3d.methods.smoothquant",
    "ptq3d.methods.gptq",
    "ptq3d.methods.quarot",
    "ptq3d.methods.quantvggt",
    "ptq3d.methods.taptq",
    "ptq3d.methods.flatquant",
    "ptq3d.methods.fgq",
)


@dataclass
class MethodConfig:
    """Options every method accepts.

    act_static: replace the scheme's activation quantizer by a static per-tensor one (calibrated as the
        max |T(x)| over calibration tokens); needs a calibration set.
    act_clip_ratio: multiply the activation range (dynamic per-token or static) by this factor.
    sym_rule: symmetric weight scale rule, "absmax" (max/(2^(b-1)-1)) or "range" (GPTQ repo, 2max/(2^b-1)).
    """

    act_static: bool = False
    act_clip_ratio: float = 1.0
    sym_rule: str = "absmax"


@dataclass
class MethodSpec:
    """A registered method: name, its function, its config dataclass and its documented choices.

    requires_calibration: "always", "never" or "static_act" (only when activations are static). A config
        dataclass may refine it per instance with a method `needs_calibration() -> bool` (True: this config
        calibrates whatever the activations, e.g. QuaRot with GPTQ weights).
    propagate: how the block loop feeds the next block: "fp" (outputs of the FP block) or "quantized".
    """

    name: str
    fn: Callable[..., Any]
    config_cls: type = MethodConfig
    requires_calibration: str = "always"
    propagate: str = "quantized"
    description: str = ""
    source: str = "builtin"

    def make_config(self, config: Any = None) -> Any:
        return make_config(self.config_cls, config, what=f"method '{self.name}'")

    def needs_calibration(self, static_act: bool, config: Any = None) -> bool:
        """Whether a run with (static or dynamic) activations and this method config needs calibration data."""
        if config is not None and hasattr(config, "needs_calibration") and config.needs_calibration():
            return True
        return self.requires_calibration == "always" or (
            self.requires_calibration == "static_act" and static_act
        )


_METHODS: dict[str, MethodSpec] = {}
_BUILDERS: dict[str, Callable[..., Any]] = {}
_loaded = {"builtin": False, "plugins": False}


def register_method(
    name: str,
    *,
    config: type = MethodConfig,
    requires_calibration: str = "always",
    propagate: str = "quantized",
    description: str = "",
) -> Callable[[Callable], Callable]:
    """Decorator registering `fn(model, calibration, scheme, config, ctx)` as method `name`."""
    if requires_calibration not in ("always", "never", "static_act"):
        raise ValueError(
            f"requires_calibration must be always/never/static_act, got {requires_calibration!r}"
        )
    if propagate not in ("fp", "quantized"):
        raise ValueError(f"propagate must be 'fp' or 'quantized', got {propagate!r}")
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"method '{name}': config must be a dataclass, got {config!r}")

    def deco(fn: Callable) -> Callable:
        module = getattr(fn, "__module__", "")
        spec = MethodSpec(
            name,
            fn,
            config,
            requires_calibration,
            propagate,
            description or (fn.__doc__ or "").strip().split("\n")[0],
            source="builtin" if module.startswith("ptq3d.") else module,
        )
        _METHODS[name] = spec
        fn.method_spec = spec
        return fn

    return deco


def _load_builtin() -> None:
    if not _loaded["builtin"]:
        _loaded["builtin"] = True
        import importlib

        for mod in BUILTIN_METHOD_MODULES:
            importlib.import_module(mod)


def load_plugins(force: bool = False) -> list[str]:
    """Load the `ptq3d.methods` entry points (once unless force). Returns the entry point names loaded."""
    if _loaded["plugins"] and not force:
        return []
    _loaded["plugins"] = True
    loaded = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break ptq3d; say which one
            raise UserError(f"cannot load ptq3d method plugin '{ep.name}' ({ep.value}): {exc}") from exc
        if isinstance(obj, MethodSpec):
            obj.source = ep.value
            _METHODS[obj.name] = obj
        loaded.append(ep.name)
    return loaded


def get_method(name: str) -> MethodSpec:
    """The MethodSpec registered as `name` (built-ins and plugins); UserError with a suggestion if unknown."""
    _load_builtin()
    if name not in _METHODS:
        load_plugins()
    if name not in _METHODS:
        raise unknown_name_error("method", str(name), _METHODS)
    return _METHODS[name]


def list_methods() -> list[str]:
    _load_builtin()
    load_plugins()
    return sorted(_METHODS)


# --- calibration-set builders ---------------------------------------------------------------------


def register_calibration_builder(name: str) -> Callable[[Callable], Callable]:
    """Decorator registering `builder(pool, n, seed, model=None, **kw) -> CalibrationSet` as `name`; callers
    always pass the FP GeometryModel as `model` (builders that score candidates with it need it, others ignore it)."""

    def deco(fn: Callable) -> Callable:
        _BUILDERS[name] = fn
        return fn

    return deco


def get_calibration_builder(name: str) -> Callable[..., Any]:
    import ptq3d.methods.calibration  # noqa: F401  (registers the built-in builders)

    _load_builtin()
    if name not in _BUILDERS:
        raise unknown_name_error("calibration builder", str(name), _BUILDERS)
    return _BUILDERS[name]


def list_calibration_builders() -> list[str]:
    import ptq3d.methods.calibration  # noqa: F401

    _load_builtin()
    return sorted(_BUILDERS)


# --- config dataclasses ---------------------------------------------------------------------------


def _coerce(value: Any, default: Any, type_hint: Any, key: str, what: str) -> Any:
    """Convert CLI strings (and ints for floats) to the type of the field."""
    hint = type_hint if isinstance(type_hint, str) else getattr(type_hint, "__name__", str(type_hint))
    if not isinstance(value, str):
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    v = value.strip()
    try:
        if isinstance(default, bool) or hint == "bool":
            if v.lower() in ("1", "true", "yes", "on"):
                return True
            if v.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if v.lower() in ("none", "null") and ("None" in hint or default is None):
            return None
        if isinstance(default, int) or hint.startswith("int"):
            return int(v)
        if isinstance(default, float) or hint.startswith("float"):
            return float(v)
        if isinstance(default, tuple | list):
            return tuple(p.strip() for p in v.split(",") if p.strip())
        if isinstance(default, dict):  # "a:b,c:d"
            pairs = [p.split(":", 1) for p in v.split(",") if p.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ValueError("expected key:value[,key:value...]")
            return {k.strip(): val.strip() for k, val in pairs}
    except ValueError as exc:
        raise ConfigError(f"{what}: config key '{key}' = {value!r}: {exc}") from exc
    return v


def make_config(config_cls: type, config: Any = None, what: str = "config") -> Any:
    """An instance of `config_cls` from None (defaults), a dict (unknown keys are errors, strings from the
    CLI are converted to the field types) or an instance (returned as is)."""
    if config is None:
        return config_cls()
    if isinstance(config, config_cls):
        return config
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, dict):
        raise ConfigError(
            f"{what}: config must be a dict or {config_cls.__name__}, got {type(config).__name__}"
        )
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    try:
        hints = typing.get_type_hints(config_cls)
    except Exception:  # unresolvable annotations: fall back to the defaults' types
        hints = {}
    kwargs = {}
    for key, value in config.items():
        if key not in fields:
            raise unknown_name_error(f"config key for {what}", key, fields)
        f = fields[key]
        default = f.default if f.default is not dataclasses.MISSING else None
        if default is None and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        kwargs[key] = _coerce(value, default, hints.get(key, f.type), key, what)
    try:
        return config_cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what}: bad config {config!r}: {exc}") from exc
