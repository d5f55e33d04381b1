"""GPTQ against IST-DASLab/gptq goldens (shared/reference/gptq.*): four settings act-order x group size."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ptq3d.methods.gptq import HessianAccumulator, gptq_quantize
from ptq3d.quant.spec import QuantSpec


@pytest.fixture(scope="module")
def golden(reference_dir):
    meta = json.loads((reference_dir / "gptq.json").read_text())
    return meta, load_file(str(reference_dir / "gptq.safetensors"))


def _hessian_like_reference(X: torch.Tensor, n_batches: int) -> torch.Tensor:
    acc = HessianAccumulator(X.shape[1])
    for chunk in X.chunk(n_batches):
        acc.add_batch(chunk.unsqueeze(0))
    return acc.H


def _settings(meta):
    return [(s["name"], bool(s["actorder"]), int(s["groupsize"])) for s in meta["settings(<setting> names)"]]


def test_gptq_matches_reference_all_settings(golden):
    meta, t = golden
    W, X = t["W"].float(), t["X"].float()
    assert meta["quantizer"].startswith("Quantizer().configure(bits=4, perchannel=True, sym=True, mse=False)")
    bits = 4
    n_batches = 16  # add_batch was called 16 times, once per [1,128,512] sequence (gptq.json)
    assert str(n_batches) in meta["calibration"]["feeding"]
    H = _hessian_like_reference(X, n_batches)
    args = meta["fasterquant_args"]
    summary = {}
    for name, actorder, groupsize in _settings(meta):
        spec = (
            QuantSpec(bits, "channel") if groupsize == -1 else QuantSpec(bits, "group", group_size=groupsize)
        )
        res = gptq_quantize(
            W,
            H,
            spec,
            blocksize=args["blocksize"],
            percdamp=args["percdamp"],
            actorder=actorder,
            static_groups=args["static_groups"],
            sym_rule="range",  # the GPTQ repo's symmetric grid: scale = 2 max|w| / 15, zero 8
        )
        ref_codes = t[f"{name}.codes"].long()
        ours = res.codes.long() + 2 ** (bits - 1)  # signed -> the reference's unsigned codes
        mismatch = (ours != ref_codes).float().mean().item()
        rel = ((res.Q - t[f"{name}.Q"]).norm() / t[f"{name}.Q"].norm()).item()
        summary[name] = (mismatch, rel)
        assert mismatch < 0.01, (name, mismatch)
        assert rel < 1e-2, (name, rel)
        # Same operation order as the reference (incremental H over 16 batches): the codes are identical.
        # Group scales come from error-updated weights, whose BLAS summation order depends on the CPU and
        # thread count (measured: 1-ulp scale differences here, none with per-row scales), so the
        # dequantized weight is bit-exact for groupsize -1 and within float32 rounding for 128.
        assert torch.equal(ours, ref_codes), name
        scale_rel = ((res.scale - t[f"{name}.scales"]).abs() / t[f"{name}.scales"]).max().item()
        assert scale_rel < 1e-6, (name, scale_rel)
        if groupsize == -1:
            assert torch.equal(res.Q, t[f"{name}.Q"]), name
            assert torch.equal(res.scale, t[f"{name}.scales"]), name
        else:
            assert rel < 1e-6, (name, rel)
        assert torch.equal(res.g_idx, t[f"{name}.g_idx"])
        if actorder:
            assert torch.equal(res.perm, t[f"{name}.perm"])
        ref_err = next(s for s in meta["settings(<setting> names)"] if s["name"] == name)
        assert res.loss == pytest.approx(ref_err["reference_printed_error(sum Losses)"], rel=1e-5)
    print("gptq golden (code mismatch, rel frob):", summary)


def test_gptq_one_matmul_hessian_within_tolerance(golden):
    """A different (one-matmul) H summation order: the reference's own tolerance probe bounds apply."""
    meta, t = golden
    W, X = t["W"].float(), t["X"].float()
    H = 2 / 16 * X.t().matmul(X)
    for name, actorder, groupsize in _settings(meta):
        spec = QuantSpec(4, "channel") if groupsize == -1 else QuantSpec(4, "group", group_size=groupsize)
        res = gptq_quantize(W, H, spec, actorder=actorder, sym_rule="range")
        mismatch = ((res.codes.long() + 8) != t[f"{name}.codes"].long()).float().mean().item()
        rel = ((res.Q - t[f"{name}.Q"]).norm() / t[f"{name}.Q"].norm()).item()
        assert mismatch < 0.01 and rel < 1e-2, (name, mismatch, rel)


def test_gptq_quantlinear_reproduces_dequantized_weight(golden):
    """The QuantLinear built from a GPTQ result (act-order + groups -> permutation transform) computes
    x @ Q^T for the reference Q."""
    from ptq3d.methods.gptq import GPTQConfig, gptq_linear
    from ptq3d.quant.spec import Scheme

    meta, t = golden
    W, X = t["W"].float(), t["X"].float()
    H = _hessian_like_reference(X, 16)
    lin = torch.nn.Linear(W.shape[1], W.shape[0], bias=False)
    lin.weight.data.copy_(W)
    for name, actorder, groupsize in _settings(meta):
        spec = QuantSpec(4, "channel") if groupsize == -1 else QuantSpec(4, "group", group_size=groupsize)
        cfg = GPTQConfig(actorder=actorder, sym_rule="range")
        ql, _ = gptq_linear(lin, H, Scheme("w4a16", spec, None), cfg)
        x = X[:64]
        torch.testing.assert_close(ql(x), x @ t[f"{name}.Q"].t(), rtol=1e-5, atol=1e-4)
