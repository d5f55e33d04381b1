"""Real quantized inference: packed integer weights, the `emulated` torch backend and Triton kernels.

- `packing`:          int8 / int4 (two per byte) weight formats with per-channel or per-group scales.
- `emulated`:         integer-exact torch references (the `emulated` backend; `torch._int_mm` on CPU).
- `triton_gemm`, `triton_act_quant`, `triton_hadamard`: the Triton kernels (imported lazily; on a
                      machine without CUDA they run in the interpreter).
- `dispatch`:         `quant_linear_forward(layer, x)`, called by QuantLinear on non-fake backends.
- `memory`:           `model_bytes(module)`: packed weight bytes vs FP16.
- `parity`:           switch a model's backend; `parity_check` of task metrics fake vs real-integer.
- `bench`:            kernel and model latency/memory benchmarks (`ptq3d bench kernels`).
"""

from ptq3d.kernels.dispatch import packed_weight, quant_linear_forward
from ptq3d.kernels.memory import ModelBytes, model_bytes
from ptq3d.kernels.packing import PackedWeight, pack_int4, pack_weight, unpack_int4
from ptq3d.kernels.parity import parity_check, set_backend

__all__ = [
    "ModelBytes",
    "PackedWeight",
    "model_bytes",
    "pack_int4",
    "pack_weight",
    "packed_weight",
    "parity_check",
    "quant_linear_forward",
    "set_backend",
    "unpack_int4",
]
