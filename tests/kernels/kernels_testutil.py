"""Helpers for the kernel tests: a minimal QuantLinear stand-in and random quantized layers."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptq3d.kernels.packing import quantize_weight_rtn


@dataclass(frozen=True)
class Spec:
    """Duck-typed QuantSpec (bits, granularity, symmetric, group_size, dynamic)."""

    bits: int
    granularity: str
    symmetric: bool = True
    group_size: int | None = None
    dynamic: bool = True


class StandIn(torch.nn.Module):
    """The attributes ptq3d.kernels.quant_linear_forward reads from a QuantLinear."""

    def __init__(self, weight, wbits, group=None, wsym=True, act=None, bias=True, backend="emulated"):
        super().__init__()
        n, k = weight.shape
        self.in_features, self.out_features = k, n
        gran = "group" if group else "channel"
        self.weight_spec = Spec(wbits, gran, wsym, group, False)
        self.act_spec = act
        q, s, z = quantize_weight_rtn(weight, wbits, group, wsym)
        self.register_buffer("qweight", q)
        self.register_buffer("weight_scale", s)
        self.register_buffer("weight_zero", z)
        self.register_buffer("bias", torch.randn(n) if bias else None)
        self.act_scale = None
        self.act_zero = None
        self.act_clip_ratio = 1.0
        self.backend = backend

    def dequantized_weight(self) -> torch.Tensor:
        n, k = self.qweight.shape
        g = self.weight_scale.shape[1]
        q = self.qweight.float().view(n, g, k // g)
        if self.weight_zero is not None:
            q = q - self.weight_zero[:, :, None]
        return (q * self.weight_scale[:, :, None]).reshape(n, k)

    def forward(self, x):
        from ptq3d.kernels import quant_linear_forward

        return quant_linear_forward(self, x)


def sum_abs_products(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_k |x_mk| |w_nk| [M, N]: the scale of float-rounding differences of a dot product."""
    return x.abs().float().reshape(-1, x.shape[-1]) @ w.abs().float().t()
