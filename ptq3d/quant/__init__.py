"""Quantization primitives: specs and schemes, QuantLinear and its backends, input transforms (scales,
rotations, Hadamard) and calibration statistics. Imports nothing above it (kernels and models only)."""

from ptq3d.quant.qlinear import QuantLinear, set_backend
from ptq3d.quant.spec import QuantSpec, Scheme, get_scheme, list_schemes

__all__ = ["QuantLinear", "QuantSpec", "Scheme", "get_scheme", "list_schemes", "set_backend"]
