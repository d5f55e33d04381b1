"""QDrop (Wei et al., ICLR 2022): BRECQ's block reconstruction with activation quantization randomly dropped
(reference wimh966/QDrop).

The pieces are BRECQ's (ptq3d.methods.brecq: AdaRound rounding, the beta-annealed regulariser, the block loss,
LSQ-style activation steps, the FP target stream). What QDrop changes:
- weights and activation steps are reconstructed jointly in one pass (BRECQ: weights first, then steps);
- during that pass each element of every quantized activation keeps its FP value with probability
  `drop_prob` (0.5, the paper's and the reference's default) and is fake-quantized otherwise, and the block
  input mixes the quantized model's input with the FP model's input at the same element-wise rate;
- the final model quantizes every activation (no dropping at inference).
The reference's `drop_prob` names the probability of KEEPING the quantized value; at 0.5 both readings agree,
here it is the probability of dropping quantization, as in the paper's text.
Weight-only schemes (a16) have no activation quantization to drop: QDrop is then exactly BRECQ's weight pass.
The reference reconstructs with the plain MSE (no Fisher), 20000 iterations per block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ptq3d.errors import ConfigError
from ptq3d.methods.brecq import BRECQConfig, run_reconstruction
from ptq3d.methods.registry import register_method


@dataclass
class QDropConfig(BRECQConfig):
    """BRECQConfig plus drop_prob: the element-wise probability that an activation's quantization is dropped
    during reconstruction (0 = BRECQ's joint reconstruction without dropping)."""

    PRESETS: ClassVar[dict[str, dict]] = {"paper": {}}  # paper and wimh966/QDrop agree
    CALIBRATION_DEFAULTS: ClassVar[dict[str, dict]] = {"paper": {"builder": "random"}}

    fisher: bool = False
    drop_prob: float = 0.5

    def check(self) -> None:
        super().check()
        if not 0.0 <= self.drop_prob <= 1.0:
            raise ConfigError(f"qdrop drop_prob={self.drop_prob}: a probability in [0, 1]")


@register_method("qdrop", config=QDropConfig, requires_calibration="always", propagate="quantized")
def quantize_qdrop(model, calibration, scheme, config: QDropConfig, ctx) -> None:
    """QDrop: BRECQ reconstruction with element-wise random dropping of activation quantization (p = 0.5)."""
    run_reconstruction(model, calibration, scheme, config, ctx, joint=True, drop_prob=config.drop_prob)
