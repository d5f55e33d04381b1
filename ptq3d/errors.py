"""Exceptions that mean "the user gave us something wrong" (exit code 2, one-line message)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input from the user: a file, a name, a value. The message names it and says what is wrong."""


class CheckpointError(UserError):
    """A checkpoint file cannot be loaded into the model (missing/unexpected/mis-shaped keys, bad file)."""


class DataError(UserError):
    """A dataset file is missing, corrupt or inconsistent."""


class ConfigError(UserError):
    """A run configuration or method configuration is invalid."""


class MethodError(RuntimeError):
    """A method produced something other than what was asked (e.g. it ignored a mixed-precision plan): a bug in
    the method, reported instead of a result that would silently be wrong."""


def unknown_name_error(kind: str, name: str, known: Iterable[str]) -> UserError:
    """'unknown method 'gtpq'; did you mean 'gptq'? (known: ...)'."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return UserError(f"unknown {kind} '{name}'{hint} (known: {', '.join(known) or 'none'})")
