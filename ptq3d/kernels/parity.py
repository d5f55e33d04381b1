"""Parity between fake-quant and real-integer execution of the same quantized model.

`set_backend` switches every QuantLinear-like layer of a model; `parity_check` runs the model on each
backend over the same samples and reports the task metrics per backend and their differences from the
reference backend (fake), plus the largest output difference.

How to read the differences: each layer of fake and emulated agrees to float32 summation order
(~1e-7 relative), but in a deep quantized network such a difference occasionally moves a later
activation across a rounding boundary (one code step, 1/127 of the token's range at 8 bits), and the
flipped code moves the next layers' inputs far more than the float difference did: a cascade. So two
checks, one per question:

- `layer_parity` (is each kernel right?): every quantized layer is run on both backends on the SAME
  input (the one the reference backend saw), so no cascade can start: the activation codes must be
  equal and the outputs agree to float32 summation order. This is deterministic and strict.
- `parity_check` (how far apart do the model's task metrics end up?): whole-model runs per backend.
  `noise_rel` measures the noise floor of the cascade: the reference backend is also run on inputs
  perturbed by a relative `noise_rel` Gaussian, `noise_draws` times with different draws, and the
  largest metric change is reported next to the backend difference. One draw is not enough: measured on
  the random-init vggt-tiny (RTN w4g64a8, 2 samples, 1e-6 noise), eight draws gave trans_err_deg changes
  from 0.036 to 0.94 deg, and fake vs emulated differed by 0.225 deg (within them), while one seed gave a
  floor of 0.04. That model's camera and register tokens start at 1e-6 (VGGT's init), so the quantized
  branches, not the residual, carry them, and one flipped code cascades (1 -> 5471 code flips over its
  16 layers) while the depth and point outputs stay within 1.2e-7.
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
    noise_draws: int = 1,
) -> dict:
    """Task-metric difference between backends of one quantized model.

    quantized_model: a GeometryModel / QuantizedModel (called as predict(sample.images), or predict(sample)
                     for an images tensor) or any callable(sample) such as an nn.Module, whose
                     quantized layers are QuantLinear-like.
    samples:         iterable of samples (re-iterated per backend; a list is safest).
    metrics_fn:      (output, sample) -> {metric: float}.
    noise_rel:       > 0 also measures the noise floor (see module docstring): the largest change over
                     `noise_draws` perturbations (seeds seed, seed + 1, ...).
    Returns {"metrics": {backend: {metric: mean}}, "diff": {backend: {metric: mean_b - mean_ref}},
             "rel_diff": {backend: {metric: |diff| / max(|mean_ref|, 1e-12)}},
             "max_output_abs_diff": {backend: {tensor: max |out_b - out_ref|}}, "layers": n, "samples": n,
             and with noise_rel > 0: "noise_floor": {metric: max over draws |mean_perturbed - mean_ref|},
             "noise_floor_draws": {metric: [per draw]}, "output_noise_floor": {tensor: max over draws
             max |out_perturbed - out_ref|}, "noise_rel", "noise_draws"}.
    """
    samples = list(samples)
    if reference not in backends:
        backends = (reference, *backends)
    n_layers = len(quant_linears(quantized_model))
    metrics: dict[str, dict[str, float]] = {}
    outputs: dict[str, list[dict[str, torch.Tensor]]] = {}
    if noise_draws < 1:
        from ptq3d.errors import ConfigError

        raise ConfigError(f"parity_check: noise_draws={noise_draws} must be >= 1")
    runs = [(b, b, samples) for b in backends]
    noise_tags = []
    if noise_rel > 0:
        for d in range(noise_draws):
            gen = torch.Generator().manual_seed(seed + d)
            noise_tags.append(f"noise{d}")
            runs.append((noise_tags[-1], reference, [_perturb(s, noise_rel, gen) for s in samples]))
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
    if noise_tags:
        draws = {k: [abs(diff[t][k]) for t in noise_tags] for k in diff[noise_tags[0]]}
        out_floor: dict[str, float] = {}
        for t in noise_tags:
            for k, v in out_diff[t].items():
                out_floor[k] = max(out_floor.get(k, 0.0), v)
        for t in noise_tags:
            diff.pop(t), rel.pop(t), out_diff.pop(t), metrics.pop(t)
        extra = {"noise_floor": {k: max(v) for k, v in draws.items()}, "noise_floor_draws": draws,
                 "output_noise_floor": out_floor, "noise_rel": noise_rel, "noise_draws": noise_draws}  # fmt: skip
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


def layer_parity(
    quantized_model, samples: Iterable, backend: str = "emulated", reference: str = "fake"
) -> dict:
    """Teacher-forced per-layer comparison of two backends (see module docstring).

    Runs the model on `reference` over `samples`, capturing every quantized layer's input; then, per layer
    and captured input x (after the layer's input transform): the activation values of `backend`'s integer
    codes against the reference's `quantize_activation` (bit for bit), and the layer outputs of both
    backends on that same x against the worst-case float32 summation-order bound
    (K + 4) * 2^-24 * (sum_k |x_hat_k| |w_hat_k| + |b|): "max_diff_over_bound" <= 1 is float rounding.
    Returns {"layers": {name: {"calls", "act_mismatches", "act_elements", "max_abs_diff",
    "max_diff_over_bound"}}, "act_mismatches": total, "max_diff_over_bound": max over layers, "backend",
    "reference"}.
    """
    from ptq3d.kernels.dispatch import activation_values

    layers = quant_linears(quantized_model)
    captured: dict[str, list[torch.Tensor]] = {name: [] for name, _ in layers}
    handles = [
        layer.register_forward_pre_hook(lambda m, args, name=name: captured[name].append(args[0].detach()))
        for name, layer in layers
    ]
    try:
        with use_backend(quantized_model, reference), torch.no_grad():
            for s in samples:
                _run(quantized_model, s)
    finally:
        for h in handles:
            h.remove()
    per_layer: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        for name, layer in layers:
            before = layer.backend
            rec = {"calls": len(captured[name]), "act_mismatches": 0, "act_elements": 0, "max_abs_diff": 0.0,
                   "max_diff_over_bound": 0.0}  # fmt: skip
            for x in captured[name]:
                xt = layer.transform_input(x) if hasattr(layer, "transform_input") else x
                x_ref = layer.quantize_activation(xt)
                if layer.act_spec is not None:
                    x_b = activation_values(layer, xt, backend)
                    rec["act_mismatches"] += int((x_b != x_ref).sum())
                    rec["act_elements"] += x_ref.numel()
                _set(layer, reference)
                y_ref = layer(x)
                _set(layer, backend)
                y_b = layer(x)
                _set(layer, before)
                d = (y_b.float() - y_ref.float()).abs()
                w_hat = layer.dequantized_weight().float()
                bound = x_ref.abs().float().reshape(-1, w_hat.shape[1]) @ w_hat.abs().t()
                if getattr(layer, "bias", None) is not None:
                    bound = bound + layer.bias.detach().abs().float()
                # K additions and a few epilogue roundings, each <= 2^-24 of the running magnitude
                bound = bound.reshape(d.shape) * 2.0**-24 * (w_hat.shape[1] + 4) + 1e-30
                rec["max_abs_diff"] = max(rec["max_abs_diff"], float(d.max()))
                rec["max_diff_over_bound"] = max(rec["max_diff_over_bound"], float((d / bound).max()))
            per_layer[name] = rec
    return {
        "backend": backend,
        "reference": reference,
        "layers": per_layer,
        "act_mismatches": sum(r["act_mismatches"] for r in per_layer.values()),
        "max_diff_over_bound": max((r["max_diff_over_bound"] for r in per_layer.values()), default=0.0),
    }
