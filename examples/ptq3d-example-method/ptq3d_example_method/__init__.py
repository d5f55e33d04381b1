"""rtn-pclip: round-to-nearest weights after a per-row percentile clip, the scheme's activation quantizer.

W [out, in] is clipped row by row to +-q_r, q_r = the `percentile`-th percentile of |W[r, :]|, then quantized
with the scheme's weight spec (absmax of the clipped row); so a few outlier weights no longer set the step of
a whole row. percentile = 100 is plain RTN. Calibration is needed only for static activation scales.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ptq3d.errors import ConfigError
from ptq3d.methods.registry import MethodConfig, register_method
from ptq3d.quant.qlinear import QuantLinear


@dataclass
class PercentileClipConfig(MethodConfig):
    """percentile: per-row clip of |w|, in (50, 100]."""

    PRESETS: ClassVar[dict[str, dict]] = {"paper": {}}

    percentile: float = 99.9

    def __post_init__(self):
        if not 50 < self.percentile <= 100:
            raise ConfigError(f"rtn-pclip: percentile={self.percentile} must lie in (50, 100]")


def clip_rows(weight: torch.Tensor, percentile: float) -> torch.Tensor:
    """weight [out, in] clipped to +-(the percentile of |w| in each row)."""
    bound = torch.quantile(weight.abs().float(), percentile / 100.0, dim=1, keepdim=True)
    return torch.maximum(torch.minimum(weight, bound), -bound)


def pclip_linear(linear, scheme, config: PercentileClipConfig) -> QuantLinear:
    w = clip_rows(linear.weight.detach().float(), config.percentile)
    return QuantLinear.from_linear(
        linear,
        scheme.weight,
        scheme.act,
        weight=w,
        act_clip_ratio=config.act_clip_ratio,
        sym_rule=config.sym_rule,
    )


@register_method("rtn-pclip", config=PercentileClipConfig, requires_calibration="static_act", version="1")
def quantize_rtn_pclip(model, calibration, scheme, config: PercentileClipConfig, ctx) -> None:
    """RTN after a per-row percentile weight clip (example third-party method)."""
    if calibration is None:
        for site, lin in ctx.sites().items():
            with ctx.timed(site):
                q = pclip_linear(lin, scheme, config)
            ctx.replace(site, q)
        return

    def calibrate_block(bd) -> None:
        for rel, lin in bd.linears().items():
            with ctx.timed(bd.site(rel)):
                q = pclip_linear(lin, scheme, config)
            bd.replace(rel, q)
        bd.calibrate_static_acts()

    ctx.blockwise(calibration, calibrate_block)
