"""Weight memory of a quantized model: packed integer weights + scales vs the same weights in FP16.

Weight bytes and peak activation memory are different things (notes/performance.md: report them
separately); this module counts only stored weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ptq3d.kernels.dispatch import packed_weight


def is_quant_linear(module: nn.Module) -> bool:
    """A QuantLinear-like layer: has integer codes, a weight spec and a backend."""
    return all(hasattr(module, a) for a in ("qweight", "weight_scale", "weight_spec", "backend"))


def quant_linears(model) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every QuantLinear-like module in an nn.Module or an object wrapping one."""
    root = model
    for attr in ("model", "module"):
        if not isinstance(root, nn.Module) and hasattr(root, attr):
            root = getattr(root, attr)
    if not isinstance(root, nn.Module):
        raise TypeError(f"expected an nn.Module or an object with .model/.module, got {type(model).__name__}")
    out = [(n, m) for n, m in root.named_modules() if is_quant_linear(m)]
    for n, m in out:
        object.__setattr__(m, "_ptq3d_name", n)  # names the layer in kernel error messages
    return out


@dataclass
class ModelBytes:
    """Bytes of stored weights.

    quant_sites:        number of quantized linear layers
    quant_packed_bytes: their packed codes + scales + zero-points (as the kernels read them)
    quant_fp16_bytes:   the same weight matrices in FP16 (2 * in * out each)
    other_fp16_bytes:   everything else (biases, non-quantized parameters and buffers) at FP16
                        (integer buffers at their own size)
    """

    quant_sites: int
    quant_packed_bytes: int
    quant_fp16_bytes: int
    other_fp16_bytes: int

    @property
    def quant_ratio(self) -> float:
        """Packed / FP16 bytes of the quantized sites."""
        return self.quant_packed_bytes / max(self.quant_fp16_bytes, 1)

    @property
    def model_bytes_quantized(self) -> int:
        return self.quant_packed_bytes + self.other_fp16_bytes

    @property
    def model_bytes_fp16(self) -> int:
        return self.quant_fp16_bytes + self.other_fp16_bytes

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(
            quant_ratio=self.quant_ratio,
            model_bytes_quantized=self.model_bytes_quantized,
            model_bytes_fp16=self.model_bytes_fp16,
        )
        return d


def _fp16_bytes(t: torch.Tensor) -> int:
    return t.numel() * (2 if t.is_floating_point() else t.element_size())


def model_bytes(module) -> ModelBytes:
    """Count packed weights + scales of the quantized linears vs FP16, and the rest of the model at FP16.

    Only a quantized layer's packed form and bias are counted: its integer codes are what a deployed
    model stores, so any float copy the layer keeps for the fake backend is not.
    """
    sites = quant_linears(module)
    counted: set[int] = set()
    packed = fp16 = other = 0
    for _, layer in sites:
        w = packed_weight(layer)
        packed += w.nbytes()
        fp16 += 2 * w.in_features * w.out_features
        for t in list(layer.parameters(recurse=True)) + list(layer.buffers(recurse=True)):
            counted.add(id(t))
        if getattr(layer, "bias", None) is not None:
            other += _fp16_bytes(layer.bias)
    root = module
    for attr in ("model", "module"):
        if not isinstance(root, nn.Module) and hasattr(root, attr):
            root = getattr(root, attr)
    for t in list(root.parameters()) + list(root.buffers()):
        if id(t) not in counted:
            counted.add(id(t))
            other += _fp16_bytes(t)
    return ModelBytes(len(sites), packed, fp16, other)
