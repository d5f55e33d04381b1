"""Input checks shared by the metric modules: one clear line per problem, naming the input and the value."""

from __future__ import annotations

import numpy as np
import torch

from ptq3d.errors import UserError


class MetricInputError(UserError, ValueError):
    """A metric got inputs it cannot score (wrong shape, NaN pose, empty cloud, ...)."""


def as_numpy(x: np.ndarray | torch.Tensor, dtype=np.float64) -> np.ndarray:
    """Tensor or array -> numpy array of `dtype` (detached, on CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def check_shape(name: str, arr: np.ndarray, tail: tuple[int, ...], min_lead: int = 0) -> None:
    """Raise unless arr.shape ends with `tail` (-1 = any size) and has at least `min_lead` leading items."""
    shape = tuple(arr.shape)
    lead = shape[: len(shape) - len(tail)]
    ok = len(shape) >= len(tail) and all(t in (-1, s) for t, s in zip(tail, shape[len(lead) :], strict=True))
    if not ok:
        want = "[..., " + ", ".join("*" if t == -1 else str(t) for t in tail) + "]"
        raise MetricInputError(f"{name}: expected shape {want}, got {list(shape)}")
    if min_lead and (not lead or lead[0] < min_lead):
        raise MetricInputError(
            f"{name}: need at least {min_lead} items along the first axis, got shape {list(shape)}"
        )


def check_same_shape(name_a: str, a, name_b: str, b) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise MetricInputError(f"shape mismatch: {name_a} {list(a.shape)} vs {name_b} {list(b.shape)}")


def check_finite(name: str, arr: np.ndarray, what: str = "value") -> None:
    """Raise naming the first offending index when arr holds NaN or inf."""
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise MetricInputError(f"{name}: non-finite {what} {arr[idx]} at index {list(idx)}")


def check_nonempty(name: str, points: np.ndarray) -> None:
    if points.shape[0] == 0:
        raise MetricInputError(f"{name}: the point cloud is empty (no valid points)")
