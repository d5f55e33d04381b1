"""The "fp" pseudo-method: no quantization (the harness's FP baseline goes through the same path)."""

from __future__ import annotations

from ptq3d.methods.registry import MethodConfig, register_method


@register_method("fp", config=MethodConfig, requires_calibration="never", propagate="fp")
def quantize_fp(model, calibration, scheme, config, ctx) -> None:
    """Leave every layer in floating point."""
    return None
