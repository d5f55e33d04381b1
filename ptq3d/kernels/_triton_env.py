"""Import Triton for ptq3d's kernels and pick interpreter or compiled mode.

Triton decides at decoration time (`@triton.jit`) whether a kernel is compiled for the GPU or run by the
interpreter (TRITON_INTERPRET=1). On a machine without CUDA only the interpreter works, so we turn it on
before any kernel is defined: the `triton` backend then runs on CPU tensors, slowly, for correctness.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
FLT_MIN = float(torch.finfo(torch.float32).tiny)


@triton.jit
def round_half_even(v):
    """Round float32 to the nearest integer, ties to even (torch.round's rule), as float32.

    Written with floor and exact comparisons so no fast-math rewrite or rounding-mode knob can change it.
    """
    r = tl.floor(v)
    d = v - r  # exact for |v| < 2^23
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    up = (d > 0.5) | ((d == 0.5) & odd)
    return tl.where(up, r + 1.0, r)


__all__ = ["FLT_MIN", "INTERPRET", "round_half_even", "tl", "triton"]
