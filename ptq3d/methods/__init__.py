"""Quantization primitives, the PTQ methods (one file each), the shared block-wise calibration loop and
calibration-set builders. Entry points: quantize_model, save_quantized, load_quantized."""

from ptq3d.methods.api import QuantizedModel, load_quantized, quantize_model, save_quantized
from ptq3d.methods.calibration import CalibrationSet, build_random, run_blockwise
from ptq3d.methods.qlinear import QuantLinear, set_backend
from ptq3d.methods.quant import QuantSpec, Scheme, get_scheme, list_schemes
from ptq3d.methods.registry import (
    MethodConfig,
    MethodSpec,
    get_calibration_builder,
    get_method,
    list_methods,
    register_calibration_builder,
    register_method,
)

__all__ = [
    "CalibrationSet",
    "MethodConfig",
    "MethodSpec",
    "QuantLinear",
    "QuantSpec",
    "QuantizedModel",
    "Scheme",
    "build_random",
    "get_calibration_builder",
    "get_method",
    "get_scheme",
    "list_methods",
    "list_schemes",
    "load_quantized",
    "quantize_model",
    "register_calibration_builder",
    "register_method",
    "run_blockwise",
    "save_quantized",
    "set_backend",
]
