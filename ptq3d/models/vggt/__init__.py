"""VGGT (facebookresearch/vggt) in our own code, with the official state_dict key names."""

from ptq3d.models.vggt.adapter import VGGTAdapter
from ptq3d.models.vggt.aggregator import Aggregator
from ptq3d.models.vggt.camera_head import CameraHead
from ptq3d.models.vggt.config import VGGTConfig
from ptq3d.models.vggt.dpt_head import DPTHead
from ptq3d.models.vggt.model import VGGT
from ptq3d.models.vggt.pose import (
    extri_intri_to_pose_encoding,
    pose_encoding_to_extri_intri,
    unproject_depth_to_world,
)

__all__ = [
    "VGGT",
    "Aggregator",
    "CameraHead",
    "DPTHead",
    "VGGTAdapter",
    "VGGTConfig",
    "extri_intri_to_pose_encoding",
    "pose_encoding_to_extri_intri",
    "unproject_depth_to_world",
]
