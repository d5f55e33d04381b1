"""Which task each metric belongs to, each protocol's primary metric per task, and how papers print metrics.

Tasks: camera (pose.*), depth (depth.*), points (points.*), trajectory (traj.*): the task of a metric is read
from its name prefix, so the read side needs no metric registry.

Primary metrics (the one number per task that a leaderboard scores): `primary_metrics(protocol, present)`
takes, per task, the first name of `PRIMARY_PREFERENCE[task]` that the store has for that protocol. The
preference follows the papers' headline numbers: AUC@30 for camera pose (VGGT, QuantVGGT), AbsRel for depth
(Pi3, CUT3R), Overall = (Acc + Comp) / 2 for point maps (VGGT Tables 2-3), else Acc., ATE for trajectories.
`PRIMARY_BY_PROTOCOL` pins a protocol to other choices. A protocol that should name its own primaries would
carry a `primary_metrics: tuple[tuple[str, str], ...]` field in ptq3d.datasets.protocols.Protocol, copied by
the runner into each cell's provenance; `primary_metrics` would read it from there before this table.

Display: `paper_name` gives the papers' column names (AUC@30, RRA@30, AbsRel, delta<1.25, Acc., Comp., N.C.,
ATE, ...) and `decimals` one fixed number of decimals per metric, so a column never mixes 0.0250 and 0.000.
"""

from __future__ import annotations

import re

TASKS: tuple[str, ...] = ("camera", "depth", "points", "trajectory")
TASK_OF_PREFIX = {"pose": "camera", "depth": "depth", "points": "points", "traj": "trajectory"}
TASK_TITLES = {"camera": "Camera pose", "depth": "Depth", "points": "Point map", "trajectory": "Trajectory"}

PRIMARY_PREFERENCE: dict[str, tuple[str, ...]] = {
    "camera": ("pose.auc@30", "pose.auc@30.pooled", "pose.rra@30", "pose.auc@15", "pose.auc@15.pooled"),
    "depth": ("depth.abs_rel", "depth.delta<1.25", "depth.rmse"),
    "points": ("points.chamfer", "points.acc", "points.comp", "points.nc"),
    "trajectory": ("traj.ate", "traj.rpe_trans", "traj.rpe_rot"),
}
# protocol name -> {task: metric}; wins over PRIMARY_PREFERENCE (none needed for the built-in protocols yet)
PRIMARY_BY_PROTOCOL: dict[str, dict[str, str]] = {}

# metrics a paper table shows per task, in the papers' column order (the rest stay in the CSV and HTML)
PAPER_COLUMNS: dict[str, tuple[str, ...]] = {
    "camera": (
        "pose.auc@30",
        "pose.auc@15",
        "pose.auc@5",
        "pose.auc@3",
        "pose.auc@30.pooled",
        "pose.rra@30",
        "pose.rta@30",
        "pose.rra@15",
        "pose.rta@15",
    ),
    "depth": ("depth.abs_rel", "depth.delta<1.25", "depth.sq_rel", "depth.rmse", "depth.log_rmse"),
    "points": (
        "points.acc",
        "points.acc_med",
        "points.comp",
        "points.comp_med",
        "points.nc",
        "points.nc_med",
        "points.chamfer",
    ),
    "trajectory": ("traj.ate", "traj.rpe_trans", "traj.rpe_rot"),
}

_FIXED_NAMES = {
    "depth.abs_rel": "AbsRel",
    "depth.sq_rel": "SqRel",
    "depth.rmse": "RMSE",
    "depth.log_rmse": "log RMSE",
    "points.acc": "Acc.",
    "points.acc_med": "Acc. med.",
    "points.comp": "Comp.",
    "points.comp_med": "Comp. med.",
    "points.nc": "N.C.",
    "points.nc_med": "N.C. med.",
    "points.nc1": "N.C.1",
    "points.nc2": "N.C.2",
    "points.chamfer": "Overall",
    "traj.ate": "ATE",
    "traj.rpe_trans": "RPE-t",
    "traj.rpe_rot": "RPE-r",
    "pose.rot_err_mean": "RRE",
    "pose.trans_err_mean": "RTE",
}
# decimals per unit; a metric's own entry wins
_DECIMALS_BY_UNIT = {"fraction": 3, "ratio": 3, "m": 3, "deg": 2, "log": 3, "count": 0}
_DECIMALS = {"depth.rmse": 3, "traj.rpe_rot": 2}


def task_of(metric: str) -> str | None:
    """'pose.auc@30' -> 'camera'; None for a name without a known task prefix."""
    return TASK_OF_PREFIX.get(metric.split(".", 1)[0])


def primary_metrics(protocol: str, present: set[str] | list[str]) -> dict[str, str]:
    """{task: primary metric} for `protocol`, among the directed metrics `present` for it (tasks without one
    of their preferred metrics are left out: their metrics are shown, not scored)."""
    present = set(present)
    pinned = PRIMARY_BY_PROTOCOL.get(protocol, {})
    out = {}
    for task in TASKS:
        if pinned.get(task) in present:
            out[task] = pinned[task]
            continue
        for name in PRIMARY_PREFERENCE[task]:
            if name in present:
                out[task] = name
                break
    return out


def paper_name(metric: str) -> str:
    """The column name the papers print: 'pose.auc@30' -> 'AUC@30', 'depth.delta<1.25' -> 'delta<1.25'
    (renderers draw the delta), unknown names -> the name without its task prefix."""
    if metric in _FIXED_NAMES:
        return _FIXED_NAMES[metric]
    m = re.fullmatch(r"pose\.(auc|rra|rta)@(\d+)(\.pooled)?", metric)
    if m:
        return f"{m.group(1).upper()}@{m.group(2)}" + (" (pooled)" if m.group(3) else "")
    m = re.fullmatch(r"depth\.delta<(.+)", metric)
    if m:
        return f"delta<{m.group(1)}"
    return metric.split(".", 1)[-1] if task_of(metric) else metric


def decimals(metric: str, unit: str | None = None) -> int:
    """Fixed decimals for every value of `metric` (3 for fractions, ratios and metres; 2 for degrees)."""
    if metric in _DECIMALS:
        return _DECIMALS[metric]
    return _DECIMALS_BY_UNIT.get(unit or "", 3)
