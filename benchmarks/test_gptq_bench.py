"""GPTQ timing on a VGGT-1B-sized layer (not part of the default test run).

    .venv/bin/python -m pytest benchmarks/test_gptq_bench.py --benchmark-only -s

Layer: W [4096, 1024] (VGGT-1B mlp.fc1: 1024 -> 4096), 2048 calibration tokens, 4-bit per-channel weights.
Compared: our GPTQ (ptq3d.methods.gptq.gptq_quantize: lazy batches of 128 columns), a straightforward
reference-style loop written here (every column updates all remaining columns at once, no lazy batching),
and plain RTN. One torch thread on CPU by default (PTQ3D_BENCH_THREADS overrides), as in the kernel
benchmarks: on a shared machine a second OpenMP thread makes small ops wait.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from ptq3d.methods.gptq import HessianAccumulator, gptq_quantize
from ptq3d.quant.spec import QuantSpec, compute_qparams, dequantize, fake_quantize, quantize

ROWS, COLS, TOKENS = 4096, 1024, 2048
SPEC = QuantSpec(4, "channel")


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    if not torch.cuda.is_available():
        torch.set_num_threads(int(os.environ.get("PTQ3D_BENCH_THREADS", "1")))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def layer():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(ROWS, COLS, generator=g) / COLS**0.5
    X = torch.randn(TOKENS, COLS, generator=g)
    X[:, :8] *= 20  # a few outlier channels, as in transformer activations
    acc = HessianAccumulator(COLS)
    for chunk in X.chunk(16):  # 16 sequences of 128 tokens
        acc.add_batch(chunk.unsqueeze(0))
    return W, acc.H


@torch.no_grad()
def gptq_straightforward(
    W: torch.Tensor, H: torch.Tensor, spec: QuantSpec, percdamp: float = 0.01
) -> torch.Tensor:
    """Reference-style GPTQ without lazy batching: per column, quantize, then subtract the scaled error
    from ALL remaining columns (rank-1 update of W[:, i:]). Same math as the lazy version."""
    W = W.clone()
    H = H.clone()
    scale, zero = compute_qparams(W, spec)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0])
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    for i in range(W.shape[1]):
        w = W[:, i]
        q = dequantize(quantize(w.unsqueeze(1), scale, zero, spec), scale, zero).flatten()
        Q[:, i] = q
        err = (w - q) / Hinv[i, i]
        W[:, i:] -= err.unsqueeze(1).matmul(Hinv[i, i:].unsqueeze(0))
    return Q


def _rel_out_err(W, Q, H):
    E = Q - W
    return (((E @ H) * E).sum() / ((W @ H) * W).sum()).item()


def test_bench_gptq_ours(benchmark, layer):
    W, H = layer
    res = benchmark.pedantic(lambda: gptq_quantize(W, H, SPEC), rounds=3, iterations=1)
    benchmark.extra_info["rel_output_error"] = _rel_out_err(W, res.Q, H)


def test_bench_gptq_straightforward(benchmark, layer):
    W, H = layer
    Q = benchmark.pedantic(lambda: gptq_straightforward(W, H, SPEC), rounds=1, iterations=1)
    benchmark.extra_info["rel_output_error"] = _rel_out_err(W, Q, H)


def test_bench_rtn(benchmark, layer):
    W, H = layer
    Q = benchmark.pedantic(lambda: fake_quantize(W, SPEC), rounds=5, iterations=1)
    benchmark.extra_info["rel_output_error"] = _rel_out_err(W, Q, H)


def test_gptq_vs_straightforward_ratio(layer):
    """Same result (up to float rounding), and the lazy-batch version is faster (ratio, same run)."""
    W, H = layer
    t0 = time.perf_counter()
    ours = gptq_quantize(W, H, SPEC)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    plain = gptq_straightforward(W, H, SPEC)
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    rtn = fake_quantize(W, SPEC)
    t_rtn = time.perf_counter() - t0
    mismatch = (plain != ours.Q).float().mean().item()
    e_ours, e_ref, e_rtn = (_rel_out_err(W, q, H) for q in (ours.Q, plain, rtn))
    print(
        f"\nGPTQ {ROWS}x{COLS}, {TOKENS} tokens, {torch.get_num_threads()} thread(s): ours {t_ours:.2f} s, "
        f"straightforward {t_ref:.2f} s (x{t_ref / t_ours:.1f}), RTN {t_rtn * 1e3:.1f} ms; "
        f"rel. output error ours {e_ours:.4f} / straightforward {e_ref:.4f} / RTN {e_rtn:.4f}; "
        f"Q mismatch {mismatch:.2e}"
    )
    assert mismatch < 0.01
    assert e_ours < e_rtn
    assert t_ours < t_ref
