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
