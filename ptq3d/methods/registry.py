"""Registries of PTQ methods and calibration-set builders, with third-party plugins.

A method is a function `fn(model, calibration, scheme, config, ctx) -> None` that replaces the linears
of `model` (a GeometryModel, already a private copy) by QuantLinears, registered with
`@register_method(name, config=ConfigDataclass, ...)`. `ptq3d.methods.api.quantize_model` wraps it
(timing, memory, coverage manifest, QuantizedModel).

Third-party methods: any installed distribution declaring an entry point in the group `ptq3d.methods`
(`name = module` or `name = module:object`); loading it runs its @register_method decorators (or the
object may itself be a MethodSpec). Plugins load lazily on the first lookup; a plugin that fails to import is
set aside with its error (`broken_plugins()`), so only a lookup of its name fails, with that error.

Presets and per-method defaults (read by the harness, ptq3d.harness.real): a method's config dataclass may declare
- `PRESETS: ClassVar[dict[str, dict]]`, preset name -> field overrides (e.g. {"code": {"lr": 1e-3}}); "paper"
  (the default preset) is always known. `MethodSpec.make_config(config, preset)` applies the preset first, then
  the explicit config keys; an unknown preset is an error naming the known ones.
- `CALIBRATION_DEFAULTS: ClassVar[dict[str, dict]]`, preset name -> the method's own calibration settings
  (keys: builder, builder_options, num_scenes, frames, epochs, scope), used unless the run's TOML sets them.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ptq3d.errors import UserError, unknown_name_error
from ptq3d.typed_config import make_config

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
    "ptq3d.methods.awq",
    "ptq3d.methods.brecq",
    "ptq3d.methods.qdrop",
    "ptq3d.methods.repq_vit",
    "ptq3d.methods.qvggt",
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
    version: the method's code version, part of every cell id (bump it when a code change changes numbers, so
        stored results of the old code are recomputed instead of resumed).
    """

    name: str
    fn: Callable[..., Any]
    config_cls: type = MethodConfig
    requires_calibration: str = "always"
    propagate: str = "quantized"
    description: str = ""
    source: str = "builtin"
    version: str = "1"

    def presets(self) -> dict[str, dict[str, Any]]:
        """Preset name -> field overrides (the config class's PRESETS; "paper" = {} when undeclared)."""
        return {"paper": {}, **dict(getattr(self.config_cls, "PRESETS", {}) or {})}

    def calibration_defaults(self, preset: str = "paper") -> dict[str, Any]:
        """The calibration settings of `preset` (CALIBRATION_DEFAULTS; keys among builder, num_scenes,
        frames, epochs, scope, builder_options); {} when the method declares none."""
        self._check_preset(preset)
        return dict((getattr(self.config_cls, "CALIBRATION_DEFAULTS", {}) or {}).get(preset, {}))

    def _check_preset(self, preset: str) -> None:
        if preset not in self.presets():
            raise unknown_name_error(f"preset of method '{self.name}'", str(preset), self.presets())

    def make_config(self, config: Any = None, preset: str = "paper") -> Any:
        """The config dataclass: `preset`'s overrides first, then the explicit keys of `config` (a dict or an
        instance, returned as is). Keys in the class's RAW_KEYS are passed unconverted (e.g. SmoothQuant's
        alpha, a number, "search" or a list) and validated by the config itself."""
        self._check_preset(preset)
        if isinstance(config, self.config_cls):
            return config
        if dataclasses.is_dataclass(config) and not isinstance(config, type):
            config = dataclasses.asdict(config)
        if config is not None and not isinstance(config, dict):
            return make_config(self.config_cls, config, what=f"method '{self.name}'")
        merged = {**self.presets()[preset], **(config or {})}
        raw_keys = tuple(getattr(self.config_cls, "RAW_KEYS", ()) or ())
        raw = {k: merged.pop(k) for k in raw_keys if k in merged}
        cfg = make_config(self.config_cls, merged or None, what=f"method '{self.name}'")
        return dataclasses.replace(cfg, **raw) if raw else cfg

    def needs_calibration(self, static_act: bool, config: Any = None) -> bool:
        """Whether a run with (static or dynamic) activations and this method config needs calibration data."""
        if config is not None and hasattr(config, "needs_calibration") and config.needs_calibration():
            return True
        return self.requires_calibration == "always" or (
            self.requires_calibration == "static_act" and static_act
        )


_METHODS: dict[str, MethodSpec] = {}
_BROKEN: dict[str, str] = {}  # entry point name -> why it failed to load
_loaded = {"builtin": False, "plugins": False}


def register_method(
    name: str,
    *,
    config: type = MethodConfig,
    requires_calibration: str = "always",
    propagate: str = "quantized",
    description: str = "",
    version: str = "1",
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
            version=str(version),
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
        except Exception as exc:  # a broken plugin must not break configs that do not use it: set it aside
            why = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
            _BROKEN[ep.name] = f"cannot load ptq3d method plugin '{ep.name}' ({ep.value}): {why}"
            continue
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
        if name in _BROKEN:
            raise UserError(_BROKEN[name])
        err = unknown_name_error("method", str(name), _METHODS)
        if _BROKEN:
            err = UserError(f"{err}; plugins that failed to load: {', '.join(sorted(_BROKEN))}")
        raise err
    return _METHODS[name]


def broken_plugins() -> dict[str, str]:
    """Entry point name -> the one-line error of every `ptq3d.methods` plugin that failed to load."""
    load_plugins()
    return dict(_BROKEN)


def list_methods() -> list[str]:
    _load_builtin()
    load_plugins()
    return sorted(_METHODS)
