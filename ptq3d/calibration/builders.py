"""The registry of calibration-set builders.

A builder is `builder(pool, n, seed, model=None, **options) -> CalibrationSet`, registered with
`@register_calibration_builder(name)`. Built-in builders: random (ptq3d.calibration.sets), nfds
(ptq3d.calibration.nfds, QuantVGGT) and taptq (ptq3d.calibration.taptq_builder, TAPTQ's coarse-to-fine).
Third-party builders register the same way from a method plugin's module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ptq3d.errors import unknown_name_error

BUILTIN_BUILDER_MODULES = (
    "ptq3d.calibration.sets",
    "ptq3d.calibration.nfds",
    "ptq3d.calibration.taptq_builder",
)
_BUILDERS: dict[str, Callable[..., Any]] = {}
_loaded = {"builtin": False}


def _load_builtin() -> None:
    if not _loaded["builtin"]:
        _loaded["builtin"] = True
        for mod in BUILTIN_BUILDER_MODULES:
            importlib.import_module(mod)


def register_calibration_builder(name: str) -> Callable[[Callable], Callable]:
    """Decorator registering `builder(pool, n, seed, model=None, **kw) -> CalibrationSet` as `name`; callers
    always pass the FP GeometryModel as `model` (builders that score candidates with it need it, others ignore it)."""

    def deco(fn: Callable) -> Callable:
        _BUILDERS[name] = fn
        return fn

    return deco


def get_calibration_builder(name: str) -> Callable[..., Any]:
    _load_builtin()
    if name not in _BUILDERS:
        raise unknown_name_error("calibration builder", str(name), _BUILDERS)
    return _BUILDERS[name]


def list_calibration_builders() -> list[str]:
    _load_builtin()
    return sorted(_BUILDERS)
