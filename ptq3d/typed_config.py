"""Config dataclasses from dicts, TOML tables and CLI strings, with clear errors for unknown keys and bad values.

Used by every registry whose entries take a config dataclass (methods, calibration builders)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from ptq3d.errors import ConfigError, unknown_name_error


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
