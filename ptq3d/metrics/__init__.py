"""Pose, point-map, depth and trajectory metrics, with the alignment policy as an explicit argument.

Public API:
    evaluate_scene(pred, sample, metrics=None, alignment=AlignmentPolicy()) -> {name: value}
    aggregate(per_scene, specs=None, groups=None) -> {name: (value, stderr)}; scene_groups(samples) (CO3D categories)
    AlignmentPolicy, AlignmentPolicy.preset(name)
    MetricSpec, register_metric, get_metric, list_metrics
    relative_pose_errors, evaluate_point_maps, cloud_metrics, depth_metrics, trajectory_metrics
"""

from ptq3d.metrics.depth import DepthResult, depth_metrics, depth_metrics_per_frame
from ptq3d.metrics.evaluate import aggregate, evaluate_scene, register_task, scene_groups, unproject_depth
from ptq3d.metrics.pointmap import PointCloudMetrics, PointMapResult, cloud_metrics, evaluate_point_maps
from ptq3d.metrics.policy import PRESETS, AlignmentPolicy
from ptq3d.metrics.pose import PoseErrors, relative_pose_errors
from ptq3d.metrics.registry import MetricSpec, get_metric, list_metrics, register_metric
from ptq3d.metrics.trajectory import TrajectoryResult, trajectory_metrics
from ptq3d.metrics.validation import MetricInputError

__all__ = [
    "PRESETS",
    "AlignmentPolicy",
    "DepthResult",
    "MetricInputError",
    "MetricSpec",
    "PointCloudMetrics",
    "PointMapResult",
    "PoseErrors",
    "TrajectoryResult",
    "aggregate",
    "cloud_metrics",
    "depth_metrics",
    "depth_metrics_per_frame",
    "evaluate_point_maps",
    "evaluate_scene",
    "get_metric",
    "list_metrics",
    "register_metric",
    "register_task",
    "relative_pose_errors",
    "scene_groups",
    "trajectory_metrics",
    "unproject_depth",
]
