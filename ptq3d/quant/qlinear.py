"""QuantLinear: the one quantized layer every method produces.

y = Q_a(T(x)) @ deq(qweight)^T + bias, where T is the optional input transform (rotation, smoothing,
permutation; the stored weight already includes T's inverse) and Q_a the activation quantizer.

Stored state (buffers; names are a contract with ptq3d.kernels):
- qweight      [out, in] int8 signed codes in [-2^(b-1), 2^(b-1)-1] (int16 if weight bits > 8).
               Asymmetric specs store the unsigned code minus 2^(b-1) and weight_zero minus 2^(b-1), so
               deq = weight_scale * (qweight - weight_zero) holds for both (see ptq3d.quant.spec).
- weight_scale float32 [out, 1] (channel) / [out, in // group_size] (group) / [1, 1] (tensor).
- weight_zero  float32, same shape, or None (symmetric).
- bias         float32 [out] or None.
- act_scale / act_zero: float32 [1, 1] for static per-tensor activations; None when dynamic or FP.
- act_neg_scale (subclasses only, e.g. TAPTQ's TwinQuantLinear): float32 [1, 1], the negative-range scale
  of a twin-uniform activation quantizer (act_scale is then the positive range's); ptq3d.kernels runs
  such a layer with its twin-uniform integer kernels.
Plain attributes: in_features, out_features, weight_spec, act_spec (None = FP activations),
act_clip_ratio (dynamic activation range multiplier), backend ("fake" | "emulated" | "triton").
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ptq3d.errors import ConfigError, unknown_name_error
from ptq3d.quant.spec import (
    QuantSpec,
    SymRule,
    compute_qparams,
    dequantize,
    fake_quantize,
    mse_clip_qparams,
    qparams_from_range,
    quantize,
)
from ptq3d.quant.transforms import InputTransform

BACKENDS: tuple[str, ...] = ("fake", "emulated", "triton")


def _code_dtype(bits: int) -> torch.dtype:
    return torch.int8 if bits <= 8 else torch.int16


def _qparam_shape(spec: QuantSpec, out_features: int, in_features: int) -> tuple[int, int]:
    if spec.granularity == "tensor":
        return (1, 1)
    if spec.granularity == "group":
        spec.check_width(in_features, "the weight")
        return (out_features, in_features // spec.group_size)
    return (out_features, 1)


class QuantLinear(nn.Module):
    """Quantized drop-in for nn.Linear (see module docstring for the stored state)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        weight_spec: QuantSpec,
        act_spec: QuantSpec | None = None,
        bias: bool = True,
        input_transform: nn.Module | None = None,
        act_clip_ratio: float = 1.0,
        backend: str = "fake",
    ):
        super().__init__()
        if weight_spec.granularity == "token":
            raise ConfigError("weight granularity 'token' is not valid (use tensor, channel or group)")
        if act_spec is not None and act_spec.granularity == "channel":
            raise ConfigError(
                "activation granularity 'channel' is not supported (use token, tensor or group)"
            )
        if act_spec is not None and act_spec.granularity == "group":
            act_spec.check_width(in_features, "the activations")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.weight_spec = weight_spec
        self.act_spec = act_spec
        self.act_clip_ratio = float(act_clip_ratio)
        self.input_transform = input_transform
        shape = _qparam_shape(weight_spec, out_features, in_features)
        self.register_buffer(
            "qweight", torch.zeros(out_features, in_features, dtype=_code_dtype(weight_spec.bits))
        )
        self.register_buffer("weight_scale", torch.ones(shape))
        self.register_buffer("weight_zero", None if weight_spec.symmetric else torch.zeros(shape))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        static = act_spec is not None and not act_spec.dynamic
        self.register_buffer("act_scale", torch.ones(1, 1) if static else None)
        self.register_buffer("act_zero", torch.zeros(1, 1) if static and not act_spec.symmetric else None)
        self.backend = "fake"
        self.set_backend(backend)

    # --- construction --------------------------------------------------------------------------
    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        weight_spec: QuantSpec,
        act_spec: QuantSpec | None = None,
        input_transform: InputTransform | None = None,
        *,
        weight: torch.Tensor | None = None,
        act_clip_ratio: float = 1.0,
        sym_rule: SymRule = "absmax",
        mse_clip: bool = False,
        backend: str = "fake",
    ) -> QuantLinear:
        """Round-to-nearest quantization of `linear`. The weight is first transformed by
        input_transform.transform_weight (unless `weight` [out, in], already transformed, is given).
        mse_clip: per-row clipping search (GPTQ repo's mse=True)."""
        q = cls(
            linear.in_features,
            linear.out_features,
            weight_spec,
            act_spec,
            bias=linear.bias is not None,
            input_transform=input_transform,
            act_clip_ratio=act_clip_ratio,
            backend=backend,
        )
        if weight is None:
            weight = linear.weight.detach().float()
            if input_transform is not None:
                weight = input_transform.transform_weight(weight)
        weight = weight.detach().float()
        if mse_clip:
            scale, zero = mse_clip_qparams(weight, weight_spec, sym_rule=sym_rule)
        else:
            scale, zero = compute_qparams(weight, weight_spec, sym_rule=sym_rule)
        q.set_weight(quantize(weight, scale, zero, weight_spec), scale, zero)
        if linear.bias is not None:
            q.bias.copy_(linear.bias.detach().float())
        return q

    def set_weight(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None) -> None:
        """Store integer codes [out, in] (any dtype holding integers in the spec's range) and qparams."""
        spec = self.weight_spec
        if codes.shape != (self.out_features, self.in_features):
            raise ConfigError(f"codes shape {tuple(codes.shape)} != {(self.out_features, self.in_features)}")
        if scale.shape != self.weight_scale.shape:
            raise ConfigError(f"weight_scale shape {tuple(scale.shape)} != {tuple(self.weight_scale.shape)}")
        if codes.min() < spec.qmin or codes.max() > spec.qmax:
            raise ConfigError(f"weight codes outside [{spec.qmin}, {spec.qmax}]")
        self.qweight.copy_(codes.round().to(self.qweight.dtype))
        self.weight_scale.copy_(scale.float())
        if self.weight_zero is not None:
            if zero is None:
                raise ConfigError("asymmetric weight spec needs a zero point")
            self.weight_zero.copy_(zero.float())

    def set_static_range(self, xmin: torch.Tensor | float, xmax: torch.Tensor | float) -> None:
        """Calibrate static per-tensor activation qparams from an observed range of T(x)."""
        if self.act_scale is None:
            raise ConfigError("set_static_range: this layer has no static activation quantizer")
        xmin = torch.as_tensor(xmin, dtype=torch.float32).reshape(1, 1) * self.act_clip_ratio
        xmax = torch.as_tensor(xmax, dtype=torch.float32).reshape(1, 1) * self.act_clip_ratio
        scale, zero = qparams_from_range(xmin, xmax, self.act_spec)
        self.act_scale.copy_(scale)
        if self.act_zero is not None:
            self.act_zero.copy_(zero)

    # --- math ----------------------------------------------------------------------------------
    def dequantized_weight(self) -> torch.Tensor:
        """[out, in] float32: weight_scale * (qweight - weight_zero) (in the transformed input basis)."""
        return dequantize(self.qweight, self.weight_scale, self.weight_zero)

    def transform_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.input_transform(x) if self.input_transform is not None else x

    def quantize_activation(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize already transformed activations [..., in] per act_spec (identity if FP)."""
        spec = self.act_spec
        if spec is None:
            return x
        if spec.dynamic:
            return fake_quantize(x, spec, clip_ratio=self.act_clip_ratio)
        return fake_quantize(x, spec, scale=self.act_scale, zero=self.act_zero)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "fake" and torch.is_autocast_enabled(x.device.type):
            # bf16 autocast (eval precision "bf16-autocast"): transform and quantize in float32, as the papers'
            # fake quantizers do, then hand the matmul back to autocast, which returns its dtype
            with torch.autocast(x.device.type, enabled=False):
                xq = self.quantize_activation(self.transform_input(x.float()))
                w = self.dequantized_weight()
            return F.linear(xq, w, self.bias)
        x = self.transform_input(x)
        if self.backend == "fake":
            x = self.quantize_activation(x)
            w = self.dequantized_weight().to(x.dtype)
            b = None if self.bias is None else self.bias.to(x.dtype)
            return F.linear(x, w, b)
        try:
            from ptq3d.kernels import quant_linear_forward
        except ImportError as exc:
            raise RuntimeError(
                f"QuantLinear backend '{self.backend}' needs ptq3d.kernels.quant_linear_forward, "
                f"which is not available ({exc}); use backend 'fake'"
            ) from exc
        return quant_linear_forward(self, x)

    # --- misc ----------------------------------------------------------------------------------
    def set_backend(self, backend: str) -> None:
        if backend not in BACKENDS:
            raise unknown_name_error("backend", str(backend), BACKENDS)
        self.backend = backend

    def config(self) -> dict[str, Any]:
        """JSON description to rebuild an empty layer of this shape (see `QuantLinear.from_config`)."""
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "weight_spec": self.weight_spec.to_dict(),
            "act_spec": None if self.act_spec is None else self.act_spec.to_dict(),
            "bias": self.bias is not None,
            "act_clip_ratio": self.act_clip_ratio,
            "input_transform": None if self.input_transform is None else self.input_transform.config(),
        }

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> QuantLinear:
        from ptq3d.quant.transforms import build_transform

        act = cfg.get("act_spec")
        return cls(
            cfg["in_features"],
            cfg["out_features"],
            QuantSpec.from_dict(cfg["weight_spec"]),
            None if act is None else QuantSpec.from_dict(act),
            bias=cfg["bias"],
            input_transform=build_transform(cfg.get("input_transform")),
            act_clip_ratio=cfg.get("act_clip_ratio", 1.0),
        )

    def extra_repr(self) -> str:
        a = "fp" if self.act_spec is None else self.act_spec.describe()
        t = "none" if self.input_transform is None else type(self.input_transform).__name__
        return (
            f"in={self.in_features}, out={self.out_features}, w={self.weight_spec.describe()}, a={a}, "
            f"transform={t}, backend={self.backend}"
        )


def set_backend(target: Any, backend: str) -> int:
    """Switch every QuantLinear under `target` (nn.Module, GeometryModel or QuantizedModel) to `backend`.
    Returns the number of layers switched."""
    if backend not in BACKENDS:
        raise unknown_name_error("backend", str(backend), BACKENDS)
    module = target if isinstance(target, nn.Module) else getattr(target, "module", None)
    if not isinstance(module, nn.Module):
        raise ConfigError(f"set_backend: cannot find modules in {type(target).__name__}")
    n = 0
    for m in module.modules():
        if isinstance(m, QuantLinear):
            m.set_backend(backend)
            n += 1
    return n
