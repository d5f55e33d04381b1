"""Datasets: one loader per dataset in its real on-disk format, the synthetic scene generator, and versioned
evaluation protocols.

Public API:
    SceneSample                                        (base.py)
    Preprocess(mode, size, patch_size)                 (preprocess.py)
    Protocol, get_protocol, list_protocols, register_protocol, load_protocol_scenes, iter_protocol_scenes
    generate_scene, write_synthetic_dataset            (synthetic.py)
    load_co3d_sequence, load_7scenes_sequence, load_nrgbd_scene, load_eth3d_scene, load_dtu_scan,
    load_re10k_sequence, load_kitti_drive, check_dataset, check_roots
"""

from ptq3d.datasets.base import SceneSample
from ptq3d.datasets.check import check_dataset
from ptq3d.datasets.co3d import co3d_viewpoint_to_opencv, load_co3d_posediffusion_sample, load_co3d_sequence
from ptq3d.datasets.dtu import load_dtu_scan
from ptq3d.datasets.eth3d import load_colmap_text_scene, load_eth3d_scene
from ptq3d.datasets.kitti import load_kitti_drive
from ptq3d.datasets.nrgbd import load_nrgbd_scene
from ptq3d.datasets.preprocess import Preprocess
from ptq3d.datasets.protocols import (
    Protocol,
    check_roots,
    get_protocol,
    iter_protocol_scenes,
    list_protocol_scenes,
    list_protocols,
    load_protocol_scenes,
    register_protocol,
)
from ptq3d.datasets.re10k import load_re10k_sequence
from ptq3d.datasets.sevenscenes import load_7scenes_sequence
from ptq3d.datasets.synthetic import CameraConfig, SceneConfig, generate_scene, write_synthetic_dataset

__all__ = [
    "CameraConfig",
    "Preprocess",
    "Protocol",
    "SceneConfig",
    "SceneSample",
    "check_dataset",
    "check_roots",
    "co3d_viewpoint_to_opencv",
    "generate_scene",
    "get_protocol",
    "iter_protocol_scenes",
    "list_protocol_scenes",
    "list_protocols",
    "load_7scenes_sequence",
    "load_co3d_posediffusion_sample",
    "load_co3d_sequence",
    "load_dtu_scan",
    "load_colmap_text_scene",
    "load_eth3d_scene",
    "load_kitti_drive",
    "load_nrgbd_scene",
    "load_protocol_scenes",
    "load_re10k_sequence",
    "register_protocol",
    "write_synthetic_dataset",
]
