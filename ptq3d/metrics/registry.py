"""Metric registry: every metric is a named MetricSpec saying how to read it and how to aggregate it.

A spec's `fn` maps the result of its task (computed once per scene by `evaluate_scene`) to one float:
task "pose" -> pose.PoseErrors, "depth" -> depth.DepthResult, "points" -> pointmap.PointMapResult,
"trajectory" -> trajectory.TrajectoryResult.

Aggregation over scenes:
- "mean": plain mean of the per-scene values (the point-map protocols).
- "pooled": equals the metric computed over all items (pairs) of all scenes pooled, for metrics that are means
  over items: the per-scene values weighted by the item count in `weight_key` (Pi3's pooled AUC / RRA / RTA).
- "weighted": mean weighted by the per-scene value of `weight_key` (depth: valid pixels, as the reference).
- "sum": counts (pairs, pixels, points).
Grouped protocols (CO3D: scenes grouped by category, `evaluate.scene_groups`): a spec with `grouped=True` is
pooled over the items of each group (weighted by `weight_key`), then the groups are averaged with equal weight,
as VGGT `evaluation/test_co3d.py` and QuantVGGT `run_co3d.py` concatenate the pair errors of a category's
sequences, compute the AUC per category and report the mean over categories (pose.auc@*; RRA / RTA, which
those scripts do not report for CO3D, stay pooled over all pairs). Without groups such a
spec aggregates by its own `aggregation`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ptq3d.errors import UserError, unknown_name_error

Aggregation = Literal["mean", "pooled", "weighted", "sum"]
AGGREGATIONS: tuple[str, ...] = ("mean", "pooled", "weighted", "sum")
TASK_NAMES: tuple[str, ...] = ("pose", "depth", "points", "trajectory")

_BUILTIN_MODULES = ("ptq3d.metrics.builtin",)


@dataclass(frozen=True)
class MetricSpec:
    """name: "task.metric" (e.g. "pose.auc@30"); fn: task result -> float; higher_is_better: None for counts;
    aggregation: see module doc; task: which per-scene computation feeds fn; unit: "deg", "m", "fraction",
    "count", ...; version: bump when the definition changes (cached results are keyed by it);
    weight_key: the count metric that weights "pooled" / "weighted" aggregation (and the pooling within a group);
    grouped: pool within groups, then average groups, when the protocol groups its scenes (module doc)."""

    name: str
    fn: Callable[[Any], float]
    higher_is_better: bool | None
    aggregation: Aggregation
    task: str
    unit: str
    version: int = 1
    weight_key: str | None = None
    description: str = ""
    grouped: bool = False

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise UserError(
                f"metric '{self.name}': unknown aggregation '{self.aggregation}' (known: {AGGREGATIONS})"
            )
        if (self.aggregation in ("pooled", "weighted") or self.grouped) and not self.weight_key:
            why = "grouped aggregation" if self.grouped else f"aggregation '{self.aggregation}'"
            raise UserError(f"metric '{self.name}': {why} needs a weight_key")


_REGISTRY: dict[str, MetricSpec] = {}
_builtins_loaded = False


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for mod in _BUILTIN_MODULES:
            importlib.import_module(mod)


def register_metric(spec: MetricSpec, replace: bool = False) -> MetricSpec:
    """Add a metric; a second spec under the same name is an error unless replace=True."""
    if spec.name in _REGISTRY and not replace:
        raise UserError(f"metric '{spec.name}' is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get_metric(name: str) -> MetricSpec:
    """The spec registered under `name`; unknown names raise UserError with a did-you-mean hint."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise unknown_name_error("metric", name, _REGISTRY) from None


def list_metrics(task: str | None = None) -> list[str]:
    """Registered metric names (optionally of one task), in registration order."""
    _load_builtins()
    return [n for n, s in _REGISTRY.items() if task is None or s.task == task]
