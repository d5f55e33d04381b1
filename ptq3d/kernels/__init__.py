"""Real quantized inference: packed integer weights, the `emulated` torch backend and Triton kernels.

- `packing`:          int8 / int4 (two per byte) weight formats with per-channel or per-group scales.
- `emulated`:         integer-exact torch references (the `emulated` backend; `torch._int_mm` on CPU).
- `triton_gemm`, `triton_act_quant`, `triton_hadamard`: the Triton kernels (imported lazily; on a
                      machine without CUDA they run in the interpreter).
- `dispatch`:         `quant_linear_forward(layer, x)`, called by QuantLinear on non-fake backends.
- `memory`:           `model_bytes(module)`: packed weight bytes vs FP16.
- `parity`:           switch a model's backend; `layer_parity` (teacher-forced, per layer: same codes, outputs
                      to float rounding) and `parity_check` (task metrics vs a multi-draw noise floor).
- `timing`:           `time_callable` -> `TimingStats` (median / min / max, load average, allocator), `time_pair`,
                      `backend_label`, `retain_freed_memory` (glibc: keep freed buffers for reuse).
- `bench`:            kernel and model latency/memory benchmarks (`ptq3d bench kernels`).
"""

from ptq3d.kernels.dispatch import packed_weight, quant_linear_forward
from ptq3d.kernels.memory import ModelBytes, model_bytes
from ptq3d.kernels.packing import PackedWeight, pack_int4, pack_weight, unpack_int4
from ptq3d.kernels.parity import layer_parity, parity_check, set_backend
from ptq3d.kernels.timing import TimingStats, backend_label, retain_freed_memory, time_callable, time_pair

__all__ = [
    "ModelBytes",
    "PackedWeight",
    "TimingStats",
    "backend_label",
    "layer_parity",
    "model_bytes",
    "pack_int4",
    "pack_weight",
    "packed_weight",
    "parity_check",
    "quant_linear_forward",
    "retain_freed_memory",
    "set_backend",
    "time_callable",
    "time_pair",
    "unpack_int4",
]
