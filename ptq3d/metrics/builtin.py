"""The built-in metric specs (pose, depth, points, trajectory); imported lazily by the registry."""

from __future__ import annotations

from ptq3d.metrics.pose import AUC_THRESHOLDS
from ptq3d.metrics.registry import MetricSpec, register_metric


def _register_pose() -> None:
    w = "pose.n_pairs"
    for thr in AUC_THRESHOLDS:
        register_metric(
            MetricSpec(
                f"pose.auc@{thr}",
                lambda e, t=thr: e.auc(t),
                True,
                "mean",
                "pose",
                "fraction",
                weight_key=w,
                grouped=True,
                description=f"AUC@{thr} of max(RRE, RTE): the mean over scenes, or on a grouped protocol (CO3D) "
                "over the pooled pairs of each category, then the mean over categories (VGGT test_co3d.py)",
            )
        )
        register_metric(
            MetricSpec(
                f"pose.auc@{thr}.pooled",
                lambda e, t=thr: e.auc(t),
                True,
                "pooled",
                "pose",
                "fraction",
                weight_key=w,
                description=f"AUC@{thr} over all pairs of all scenes (Pi3 style)",
            )
        )
    for thr in AUC_THRESHOLDS:
        register_metric(
            MetricSpec(
                f"pose.rra@{thr}",
                lambda e, t=thr: e.rra(t),
                True,
                "pooled",
                "pose",
                "fraction",
                weight_key=w,
                description=f"fraction of pairs with rotation error < {thr} deg",
            )
        )
        register_metric(
            MetricSpec(
                f"pose.rta@{thr}",
                lambda e, t=thr: e.rta(t),
                True,
                "pooled",
                "pose",
                "fraction",
                weight_key=w,
                description=f"fraction of pairs with translation angle error < {thr} deg",
            )
        )
    register_metric(
        MetricSpec(
            "pose.rot_err_mean",
            lambda e: float(e.rot_err_deg.mean()),
            False,
            "pooled",
            "pose",
            "deg",
            weight_key=w,
            description="mean relative rotation error",
        )
    )
    register_metric(
        MetricSpec(
            "pose.trans_err_mean",
            lambda e: float(e.trans_err_deg.mean()),
            False,
            "pooled",
            "pose",
            "deg",
            weight_key=w,
            description="mean relative translation angle error",
        )
    )
    register_metric(
        MetricSpec(
            w, lambda e: float(e.num_pairs), None, "sum", "pose", "count", description="number of frame pairs"
        )
    )


_DEPTH = (
    # key, higher_is_better, unit
    ("abs_rel", False, "ratio"),
    ("sq_rel", False, "m"),
    ("rmse", False, "m"),
    ("log_rmse", False, "log"),
    ("delta<1", True, "fraction"),
    ("delta<1.25", True, "fraction"),
    ("delta<1.25^2", True, "fraction"),
    ("delta<1.25^3", True, "fraction"),
)


def _register_depth() -> None:
    # one family per alignment: the policy's (all frames at once) and monocular (every frame aligned on its own,
    # policy.mono_depth, Pi3 / CUT3R monodepth); frames weighted by valid pixels
    families = (
        ("depth", "depth", "after the policy's alignment", "scored depth pixels"),
        ("depth.mono", "depth_mono", "after a per-frame alignment (Pi3 / CUT3R monodepth)", "scored monocular depth pixels"),
    )  # fmt: skip
    for prefix, task, how, count in families:
        w = f"{prefix}.valid_pixels"
        for key, hib, unit in _DEPTH:
            register_metric(
                MetricSpec(
                    f"{prefix}.{key}",
                    lambda r, k=key: r.metrics[k],
                    hib,
                    "weighted",
                    task,
                    unit,
                    weight_key=w,
                    description=f"depth_evaluation '{key}' {how}",
                )
            )
        register_metric(
            MetricSpec(w, lambda r: r.metrics["valid_pixels"], None, "sum", task, "count", description=count)
        )


_POINTS = (
    ("acc", False, "m", "mean distance from each predicted point to the nearest GT point"),
    ("acc_med", False, "m", "median of the same"),
    ("comp", False, "m", "mean distance from each GT point to the nearest predicted point"),
    ("comp_med", False, "m", "median of the same"),
    ("chamfer", False, "m", "(acc + comp) / 2, VGGT's Overall"),
    ("nc", True, "fraction", "normal consistency (nc1 + nc2) / 2"),
    ("nc_med", True, "fraction", "(nc1_med + nc2_med) / 2"),
    ("nc1", True, "fraction", "mean |n_gt . n_pred| over predicted points"),
    ("nc1_med", True, "fraction", "median of the same"),
    ("nc2", True, "fraction", "mean |n_gt . n_pred| over GT points"),
    ("nc2_med", True, "fraction", "median of the same"),
    (
        "precision",
        True,
        "fraction",
        "fraction of predicted points within policy.fscore_threshold of a GT point",
    ),
    ("recall", True, "fraction", "fraction of GT points within policy.fscore_threshold of a predicted point"),
    ("fscore", True, "fraction", "2 precision recall / (precision + recall)"),
)


def _register_points() -> None:
    for key, hib, unit, desc in _POINTS:
        register_metric(
            MetricSpec(
                f"points.{key}",
                lambda r, k=key: getattr(r.metrics, k),
                hib,
                "mean",
                "points",
                unit,
                description=desc,
            )
        )
    register_metric(
        MetricSpec(
            "points.n_points",
            lambda r: float(r.pred_points.shape[0]),
            None,
            "sum",
            "points",
            "count",
            description="scored points (after crop / subsampling)",
        )
    )


def _register_trajectory() -> None:
    for key, attr, unit, desc in (
        ("ate", "ate", "m", "ATE: RMSE of positions after Sim(3) Umeyama (evo APE)"),
        ("rpe_trans", "rpe_trans", "m", "RPE translation RMSE, delta 1 frame (evo)"),
        ("rpe_rot", "rpe_rot_deg", "deg", "RPE rotation RMSE, delta 1 frame (evo)"),
    ):
        register_metric(
            MetricSpec(
                f"traj.{key}",
                lambda r, a=attr: getattr(r, a),
                False,
                "mean",
                "trajectory",
                unit,
                description=desc,
            )
        )


_register_pose()
_register_depth()
_register_points()
_register_trajectory()
