"""The PTQ methods, one file each that reads like its paper, and their registry (with third-party plugins).
Entry points: quantize_model, save_quantized, load_quantized. The primitives live in ptq3d.quant, calibration
sets and the shared block loop in ptq3d.calibration; the most used names are re-exported here."""

from ptq3d.calibration.blockwise import run_blockwise
from ptq3d.calibration.builders import get_calibration_builder, register_calibration_builder
from ptq3d.calibration.sets import CalibrationSet, build_random
from ptq3d.methods.api import QuantizedModel, load_quantized, quantize_model, save_quantized
from ptq3d.methods.registry import MethodConfig, MethodSpec, get_method, list_methods, register_method
from ptq3d.quant.qlinear import QuantLinear, set_backend
from ptq3d.quant.spec import QuantSpec, Scheme, get_scheme, list_schemes

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
