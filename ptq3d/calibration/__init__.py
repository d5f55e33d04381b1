"""Calibration: sets and their builders (random, NFDS, TAPTQ's coarse-to-fine) and the shared block-wise loop
with the QuantContext a method receives. Imports ptq3d.quant, ptq3d.datasets and ptq3d.models, never
ptq3d.methods."""

from ptq3d.calibration.blockwise import BlockData, QuantContext, replace_module, run_blockwise
from ptq3d.calibration.builders import (
    get_calibration_builder,
    list_calibration_builders,
    register_calibration_builder,
)
from ptq3d.calibration.sets import CalibrationSet, build_random, check_pool

__all__ = [
    "BlockData",
    "CalibrationSet",
    "QuantContext",
    "build_random",
    "check_pool",
    "get_calibration_builder",
    "list_calibration_builders",
    "register_calibration_builder",
    "replace_module",
    "run_blockwise",
]
