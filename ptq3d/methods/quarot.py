"""QuaRot-style rotation, per linear (the construction QuantVGGT uses): every quantized linear gets its
own random Hadamard R = diag(signs) H / sqrt(n) on its input (online, fast transform) and its weight is
pre-rotated, W' = W R, so x W^T = (x R)(W R)^T; outliers are spread over all channels before the
activation quantizer. Weights then by RTN (optionally MSE-clipped) or GPTQ on the rotated inputs.

Sizes: n = m * 2^k; VGGT-1B's 1024 and 4096 are powers of two; the tiny widths 384 = 12 * 32 and
1536 = 12 * 128 use H_12 (Paley) kron H_{2^k} (ptq3d.quant.hadamard).
Not done here (see notes 5.4): QuaRot's global residual rotation with LayerNorm fusion, which VGGT's
LayerNorm bias, LayerScale and the encoder/head bases make awkward. Signs are seeded per site from
`seed` and the site name, so a run is reproducible.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from torch import nn

from ptq3d.errors import ConfigError
from ptq3d.methods.gptq import GPTQConfig, gptq_calibrate_block
from ptq3d.methods.registry import register_method
from ptq3d.methods.rtn import rtn_linear
from ptq3d.quant.transforms import HadamardRotation


@dataclass
class QuaRotConfig(GPTQConfig):
    """weight_method: "gptq" (default, needs calibration) or "rtn". seed: base seed of the random signs.
    The GPTQ fields apply when weight_method is "gptq"; mse_clip applies to both."""

    weight_method: str = "gptq"
    seed: int = 0

    def needs_calibration(self) -> bool:
        """GPTQ weights need calibration inputs whatever the activations (see MethodSpec.needs_calibration)."""
        return self.weight_method == "gptq"


def site_seed(seed: int, site: str) -> int:
    """A stable per-site seed (independent of Python's hash randomisation)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{site}".encode()).digest()[:4], "little")


def rotation_for(seed: int):
    def make(site: str, linear: nn.Linear) -> HadamardRotation:
        return HadamardRotation(linear.in_features, seed=site_seed(seed, site))

    return make


@register_method("quarot", config=QuaRotConfig, requires_calibration="static_act", propagate="quantized")
def quantize_quarot(model, calibration, scheme, config: QuaRotConfig, ctx) -> None:
    """Random Hadamard rotation of each linear's input, then RTN or GPTQ weights."""
    if config.weight_method not in ("rtn", "gptq"):
        raise ConfigError(f"quarot weight_method={config.weight_method!r}: use 'rtn' or 'gptq'")
    make = rotation_for(config.seed)
    if config.weight_method == "gptq":  # calibration is guaranteed: QuaRotConfig.needs_calibration
        ctx.blockwise(calibration, lambda bd: gptq_calibrate_block(bd, scheme, config, make))
        return
    if calibration is None:
        for site, lin in ctx.sites().items():
            with ctx.timed(site):
                q = rtn_linear(lin, scheme, config, make(site, lin))
            ctx.replace(site, q)
        return

    def calibrate_block(bd) -> None:
        for rel, lin in bd.linears().items():
            with ctx.timed(bd.site(rel)):
                q = rtn_linear(lin, scheme, config, make(bd.site(rel), lin))
            bd.replace(rel, q)
        bd.calibrate_static_acts()

    ctx.blockwise(calibration, calibrate_block)
