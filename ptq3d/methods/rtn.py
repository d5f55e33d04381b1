"""RTN: round-to-nearest weights (optionally with the GPTQ repo's MSE clipping search) and the scheme's
activation quantizer. No calibration unless activations are static (then: block loop, quantized outputs
propagated, static ranges observed in execution order)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from ptq3d.methods.registry import MethodConfig, register_method
from ptq3d.quant.qlinear import QuantLinear
from ptq3d.quant.spec import Scheme
from ptq3d.quant.transforms import InputTransform


@dataclass
class RTNConfig(MethodConfig):
    """mse_clip: per-row clipping search p in {1, 0.99, ..., 0.21} minimising sum |w - q(w)|^2.4."""

    PRESETS: ClassVar[dict[str, dict]] = {"paper": {}}

    mse_clip: bool = False


def rtn_linear(
    linear: nn.Linear,
    scheme: Scheme,
    config: MethodConfig,
    transform: InputTransform | None = None,
    mse_clip: bool | None = None,
) -> QuantLinear:
    """QuantLinear with RTN weights (in the basis of `transform`) and the scheme's activation spec."""
    return QuantLinear.from_linear(
        linear,
        scheme.weight,
        scheme.act,
        transform,
        act_clip_ratio=config.act_clip_ratio,
        sym_rule=config.sym_rule,
        mse_clip=getattr(config, "mse_clip", False) if mse_clip is None else mse_clip,
    )


@register_method("rtn", config=RTNConfig, requires_calibration="static_act", propagate="quantized")
def quantize_rtn(model, calibration, scheme, config: RTNConfig, ctx) -> None:
    """Round-to-nearest weights, scheme activations."""
    if calibration is None:
        for site, lin in ctx.sites().items():
            with ctx.timed(site):
                q = rtn_linear(lin, ctx.scheme_for(site), config)
            ctx.replace(site, q)
        return

    def calibrate_block(bd) -> None:
        for rel, lin in bd.linears().items():
            with ctx.timed(bd.site(rel)):
                q = rtn_linear(lin, bd.scheme_for(rel), config)
            bd.replace(rel, q)
        bd.calibrate_static_acts()

    ctx.blockwise(calibration, calibrate_block)
