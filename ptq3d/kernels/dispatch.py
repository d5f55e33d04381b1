"""`quant_linear_forward`: run a quantized linear layer on the `emulated` or `triton` backend.

The layer (ptq3d.quant.qlinear.QuantLinear, or anything with the same attributes) supplies integer
weight codes and scales; this module packs them once (cached on the layer, repacked when the codes or
scales change), quantizes the activations, and calls the backend's GEMM.

Supported combinations (anything else raises ConfigError naming the layer and the setting):
- weights: 2..8 bits, symmetric or asymmetric with integer zero-points, per-tensor / channel / group
  (group_size dividing in_features; even in_features for <= 4 bits);
- activations: None (weight-only: W4A16 / W8A16 kernel), or symmetric 2..8-bit either per-token dynamic
  ("token"), per-tensor dynamic ("tensor"), or static with one calibrated `act_scale` (used as is; the
  clip ratio is already in it), or twin-uniform (a layer with an `act_neg_scale` buffer, e.g. TAPTQ's
  TwinQuantLinear: static `act_scale` for x >= 0 and `act_neg_scale` for x < 0, one signed code per
  element; `emulated.quantize_twin` / `gemm_int_twin`). Asymmetric or dynamic per-group activations have
  no integer kernel here; run those layers on backend "fake".

Tolerance fake vs emulated: both backends compute the same activation codes (the formula of
`ptq3d.kernels.emulated.quantize_per_token`), so the only difference is float32 summation order:
fake sums the K products of dequantized values in float, emulated sums the integer products exactly
and rounds once per group. Per output, |fake - emulated| <= ~K * 2^-24 * sum_k |x_k w_k|, i.e. a
relative error of order 1e-6..1e-5 for K <= 4096 (tests use rtol 1e-4 on the layer output, scaled by
sum |x||w|). Rare activation code flips (a value exactly at a rounding boundary computed with a
different division) would add one quantization step for that token; the fake path avoids them by
using the same formula. For fp16/bf16 activations the fake path also rounds the dequantized operands
and the matmul to that dtype while the integer path accumulates exactly and rounds once, so expect
differences of the activation dtype's precision (~1e-3 fp16, ~1e-2 bf16 relative).
"""

from __future__ import annotations

import torch

from ptq3d.errors import ConfigError
from ptq3d.kernels import emulated
from ptq3d.kernels.packing import PackedWeight, pack_weight

_CACHE_ATTR = "_ptq3d_packed"


def _name(layer) -> str:
    name = getattr(layer, "_ptq3d_name", None)  # set by ptq3d.kernels.memory.quant_linears
    return name or f"{type(layer).__name__}({layer.in_features}->{layer.out_features})"


def _version_key(layer) -> tuple:
    key = []
    for attr in ("qweight", "weight_scale", "weight_zero"):
        t = getattr(layer, attr, None)
        key.append(None if t is None else (t.data_ptr(), t._version, tuple(t.shape), str(t.device)))
    return tuple(key)


def packed_weight(layer) -> PackedWeight:
    """The layer's `PackedWeight`, packed on first use and cached (non-persistent) on the layer."""
    key = _version_key(layer)
    cached = getattr(layer, _CACHE_ATTR, None)
    if cached is not None and cached[0] == key:
        return cached[1]
    spec = layer.weight_spec
    packed = pack_weight(
        layer.qweight, layer.weight_scale, getattr(layer, "weight_zero", None), int(spec.bits), _name(layer)
    )
    # object.__setattr__ keeps it out of nn.Module's buffers/state_dict.
    object.__setattr__(layer, _CACHE_ATTR, (key, packed))
    return packed


def _clip_ratio(layer) -> float:
    c = getattr(layer, "act_clip_ratio", None)
    if c is None:
        return 1.0
    return float(c.item()) if isinstance(c, torch.Tensor) else float(c)


def quantize_activations(layer, x2d: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Activation codes int8 [M, K] and scales float32 [M] (or [1]) for `layer.act_spec`."""
    spec = layer.act_spec
    bits = int(spec.bits)
    where = _name(layer)
    if not spec.symmetric:
        raise ConfigError(
            f"{where}: backend '{backend}' has no kernel for asymmetric activations "
            f"(act_spec.symmetric=False); run this layer on backend 'fake'"
        )
    if not 2 <= bits <= 8:
        raise ConfigError(f"{where}: backend '{backend}' supports 2..8-bit activations, got {bits}")
    act_scale = getattr(layer, "act_scale", None)
    static = not getattr(spec, "dynamic", True)
    if static or spec.granularity == "tensor":
        act_zero = getattr(layer, "act_zero", None)
        if act_zero is not None and bool(torch.as_tensor(act_zero).ne(0).any()):
            raise ConfigError(f"{where}: backend '{backend}' needs zero activation zero-points")
        if static:  # one calibrated scale, used as is (the fake path does the same for any granularity)
            if act_scale is None or torch.as_tensor(act_scale).numel() != 1:
                raise ConfigError(f"{where}: static activations need a one-element act_scale")
            scale = torch.as_tensor(act_scale, dtype=torch.float32, device=x2d.device).reshape(())
        else:  # dynamic per-tensor
            amax = x2d.detach().to(torch.float32).abs().amax()
            scale = emulated.dynamic_scale(amax, bits, _clip_ratio(layer))
        if backend == "triton":
            from ptq3d.kernels import triton_act_quant

            q = triton_act_quant.quantize_static(x2d, scale, bits)
        else:
            q = emulated.quantize_static(x2d, scale, bits)
        return q, scale.reshape(1)
    if spec.granularity == "token":
        if backend == "triton":
            from ptq3d.kernels import triton_act_quant

            return triton_act_quant.quantize_per_token(x2d, bits, _clip_ratio(layer))
        return emulated.quantize_per_token(x2d, bits, _clip_ratio(layer))
    raise ConfigError(
        f"{where}: backend '{backend}' supports per-token or per-tensor activation quantization, "
        f"got granularity '{spec.granularity}'"
    )


def twin_scales(layer) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(positive, negative) one-element float32 scales of a twin-uniform activation quantizer, or None when
    the layer's quantizer is uniform (no `act_neg_scale`)."""
    neg = getattr(layer, "act_neg_scale", None)
    if neg is None:
        return None
    where = _name(layer)
    spec = layer.act_spec
    if spec is None or getattr(spec, "dynamic", True) or not spec.symmetric or not 2 <= int(spec.bits) <= 8:
        raise ConfigError(
            f"{where}: a twin-uniform activation quantizer needs a static symmetric 2..8-bit act_spec, "
            f"got {spec}"
        )
    pos = getattr(layer, "act_scale", None)
    for name, t in (("act_scale", pos), ("act_neg_scale", neg)):
        if t is None or torch.as_tensor(t).numel() != 1:
            raise ConfigError(f"{where}: twin-uniform activations need a one-element {name}")
        if not bool(torch.as_tensor(t).gt(0).all()):
            raise ConfigError(f"{where}: twin-uniform {name} must be positive, got {float(t)}")
    return pos.detach().to(torch.float32).reshape(()), neg.detach().to(torch.float32).reshape(())


def activation_values(layer, x: torch.Tensor, backend: str = "emulated") -> torch.Tensor:
    """The float values of the integer activation codes `backend` computes for `x` (already transformed,
    [..., in_features]), in x.dtype: codes * scale (uniform) or twin_dequantize (twin). Equal, bit for bit, to
    the fake path's `layer.quantize_activation(x)` when both quantize alike (ptq3d.kernels.parity checks it)."""
    k = layer.in_features
    x2d = x.reshape(-1, k)
    if layer.act_spec is None:
        return x
    if (twin := twin_scales(layer)) is not None:
        pos, neg = (t.to(x2d.device) for t in twin)
        if backend == "triton":
            from ptq3d.kernels import triton_act_quant

            q = triton_act_quant.quantize_twin(x2d, pos, neg, int(layer.act_spec.bits))
        else:
            q = emulated.quantize_twin(x2d, pos, neg, int(layer.act_spec.bits))
        v = emulated.twin_dequantize(q, pos, neg)
    else:
        q, s = quantize_activations(layer, x2d, backend)
        v = q.to(torch.float32) * s.reshape(-1, 1)
    return v.to(x.dtype).reshape(x.shape)


def _check_triton_device(x: torch.Tensor, where: str) -> None:
    from ptq3d.kernels._triton_env import INTERPRET  # turns the interpreter on where there is no CUDA

    if x.device.type != "cuda" and not INTERPRET:
        raise ConfigError(
            f"{where}: backend 'triton' needs a CUDA device, got {x.device} "
            "(set TRITON_INTERPRET=1 to run the kernels in the slow CPU interpreter)"
        )


def quant_linear_forward(layer, x: torch.Tensor) -> torch.Tensor:
    """Real-integer forward of a quantized linear layer.

    layer: QuantLinear-like (qweight, weight_scale, weight_zero, weight_spec, act_spec, act_scale,
           act_zero, act_clip_ratio, bias, backend in {"emulated", "triton"}).
    x:     float [..., in_features], already passed through the layer's input_transform.
    Returns float [..., out_features] in x.dtype.
    """
    backend = layer.backend
    where = _name(layer)
    if backend not in ("emulated", "triton"):
        raise ConfigError(f"{where}: quant_linear_forward runs backends 'emulated'/'triton', got '{backend}'")
    k = layer.in_features
    if x.shape[-1] != k:
        raise ConfigError(f"{where}: input has {x.shape[-1]} features, layer expects {k}")
    if backend == "triton":
        _check_triton_device(x, where)
    lead = x.shape[:-1]
    x2d = x.reshape(-1, k)
    w = packed_weight(layer)
    bias = getattr(layer, "bias", None)
    if layer.act_spec is None:
        if backend == "triton":
            from ptq3d.kernels import triton_gemm

            y = triton_gemm.w4a16_gemm(x2d, w, bias)
        else:
            y = emulated.w4a16_gemm(x2d, w, bias)
    elif (twin := twin_scales(layer)) is not None:
        pos, neg = (t.to(x2d.device) for t in twin)
        bits = int(layer.act_spec.bits)
        if backend == "triton":
            from ptq3d.kernels import triton_act_quant, triton_gemm

            xq = triton_act_quant.quantize_twin(x2d, pos, neg, bits)
            y = triton_gemm.gemm_int_twin(xq, pos, neg, w, bias, out_dtype=x.dtype)
        else:
            xq = emulated.quantize_twin(x2d, pos, neg, bits)
            y = emulated.gemm_int_twin(xq, pos, neg, w, bias, out_dtype=x.dtype)
    else:
        xq, xs = quantize_activations(layer, x2d, backend)
        if backend == "triton":
            from ptq3d.kernels import triton_gemm

            y = triton_gemm.gemm_int(xq, xs, w, bias, out_dtype=x.dtype)
        else:
            y = emulated.gemm_int(xq, xs, w, bias, out_dtype=x.dtype)
    return y.reshape(*lead, layer.out_features)
