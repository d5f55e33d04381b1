"""Parity between fake-quant and real-integer execution of the same quantized model.

`set_backend` switches every QuantLinear-like layer of a model; `parity_check` runs the model on each
backend over the same samples and reports the task metrics per backend and their differences from the
reference backend (fake), plus the largest output difference.

How to read the differences: each layer of fake and emulated agrees to float32 summation order
(~1e-7 relative), but in a deep quantized network such a difference occasionally moves a later
activation across a rounding boundary, and a sensitive head (e.g. a camera head of an untrained model)
can amplify that. `noise_rel` measures this noise floor: the reference backend is also run on inputs
perturbed by a relative `noise_rel` Gaussian, and its metric change is reported next to the
backend difference. A backend difference within a small multiple of the noise floor is float noise,
not a kernel error.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from ptq3d.kernels.memory import quant_linears

BACKENDS = ("fake", "emulated", "triton")


def set_backend(model, backend: str) -> int:
    """Set `backend` on every quantized linear of `model`; returns how many layers were switched."""
    if backend not in BACKENDS:
        from ptq3d.errors import unknown_name_error

        raise unknown_name_error("backend", backend, BACKENDS)
    layers = quant_linears(model)
    for _, layer in layers:
        _set(layer, backend)
    return len(layers)


def _set(layer, backend: str) -> None:
    if hasattr(layer, "set_backend"):
        layer.set_backend(backend)
    else:
        layer.backend = backend


@contextlib.contextmanager
def use_backend(model, backend: str) -> Iterator[None]:
    """Temporarily run `model` on `backend`, restoring each layer's previous backend afterwards."""
    layers = quant_linears(model)
    before = [layer.backend for _, layer in layers]
    set_backend(model, backend)
    try:
        yield
    finally:
        for (_, layer), b in zip(layers, before, strict=True):
            _set(layer, b)


def _run(model, sample) -> Any:
    if hasattr(model, "predict"):  # GeometryModel / QuantizedModel: a sample with .images, or images
        return model.predict(sample.images if hasattr(sample, "images") else sample)
    return model(sample)


def _perturb(sample, rel: float, gen: torch.Generator):
    """The sample with its float input (a tensor, or `.images`) scaled by (1 + rel * N(0, 1))."""

    def noisy(t: torch.Tensor) -> torch.Tensor:
        n = torch.randn(t.shape, generator=gen, dtype=torch.float32).to(device=t.device, dtype=t.dtype)
        return t * (1 + rel * n)

    if isinstance(sample, torch.Tensor):
        return noisy(sample)
    if hasattr(sample, "images"):
        out = copy.copy(sample)
        out.images = noisy(sample.images)
        return out
    raise TypeError(f"parity_check(noise_rel=...): cannot perturb a {type(sample).__name__}")


def _tensors(out) -> dict[str, torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return {"output": out}
    if hasattr(out, "tensors"):
        return out.tensors()
    if isinstance(out, dict):
        return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
    return {}


def _max_abs_diff(ref: list[dict], other: list[dict]) -> dict[str, float]:
    od: dict[str, float] = {}
    for o_ref, o_b in zip(ref, other, strict=True):
        for k, t in o_ref.items():
            if k in o_b and o_b[k].shape == t.shape:
                d = (o_b[k] - t).abs().nan_to_num(nan=math.inf)
                od[k] = max(od.get(k, 0.0), float(d.max()) if d.numel() else 0.0)
    return od


def parity_check(
    quantized_model,
    samples: Iterable,
    metrics_fn: Callable[[Any, Any], dict[str, float]],
    backends: tuple[str, ...] = ("fake", "emulated"),
    reference: str = "fake",
    noise_rel: float = 0.0,
    seed: int = 0,
) -> dict:
    """Task-metric difference between backends of one quantized model.

    quantized_model: a GeometryModel / QuantizedModel (called as predict(sample.images), or predict(sample)
                     for an images tensor) or any callable(sample) such as an nn.Module, whose
                     quantized layers are QuantLinear-like.
    samples:         iterable of samples (re-iterated per backend; a list is safest).
    metrics_fn:      (output, sample) -> {metric: float}.
    noise_rel:       > 0 also measures the noise floor (see module docstring), seeded by `seed`.
    Returns {"metrics": {backend: {metric: mean}}, "diff": {backend: {metric: mean_b - mean_ref}},
             "rel_diff": {backend: {metric: |diff| / max(|mean_ref|, 1e-12)}},
             "max_output_abs_diff": {backend: {tensor: max |out_b - out_ref|}}, "layers": n, "samples": n,
             and with noise_rel > 0: "noise_floor": {metric: |mean_perturbed - mean_ref|},
             "output_noise_floor": {tensor: max |out_perturbed - out_ref|}}.
    """
    samples = list(samples)
    if reference not in backends:
        backends = (reference, *backends)
    n_layers = len(quant_linears(quantized_model))
    metrics: dict[str, dict[str, float]] = {}
    outputs: dict[str, list[dict[str, torch.Tensor]]] = {}
    runs = [(b, b, samples) for b in backends]
    if noise_rel > 0:
        gen = torch.Generator().manual_seed(seed)
        runs.append(("noise", reference, [_perturb(s, noise_rel, gen) for s in samples]))
    for tag, b, inputs in runs:
        sums: dict[str, float] = {}
        outs = []
        with use_backend(quantized_model, b), torch.no_grad():
            for s, s_in in zip(samples, inputs, strict=True):
                out = _run(quantized_model, s_in)
                for k, v in metrics_fn(out, s).items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                outs.append({k: v.detach().float().cpu() for k, v in _tensors(out).items()})
        metrics[tag] = {k: v / max(len(samples), 1) for k, v in sums.items()}
        outputs[tag] = outs
    ref = metrics[reference]
    diff, rel, out_diff = {}, {}, {}
    for b in [r[0] for r in runs]:
        if b == reference:
            continue
        diff[b] = {k: metrics[b][k] - ref[k] for k in ref if k in metrics[b]}
        rel[b] = {k: abs(d) / max(abs(ref[k]), 1e-12) for k, d in diff[b].items()}
        out_diff[b] = _max_abs_diff(outputs[reference], outputs[b])
    extra = {}
    if noise_rel > 0:
        extra = {"noise_floor": {k: abs(v) for k, v in diff.pop("noise").items()},
                 "output_noise_floor": out_diff.pop("noise"), "noise_rel": noise_rel}  # fmt: skip
        rel.pop("noise")
        metrics.pop("noise")
    return {
        **extra,
        "reference": reference,
        "metrics": metrics,
        "diff": diff,
        "rel_diff": rel,
        "max_output_abs_diff": out_diff,
        "layers": n_layers,
        "samples": len(samples),
    }
