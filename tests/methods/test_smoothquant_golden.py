"""SmoothQuant against mit-han-lab/smoothquant goldens (shared/reference/smoothquant.*)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from ptq3d.methods.smoothquant import smooth_norm_linears, smoothing_scales


@pytest.fixture(scope="module")
def golden(reference_dir):
    meta = json.loads((reference_dir / "smoothquant.json").read_text())
    return meta, load_file(str(reference_dir / "smoothquant.safetensors"))


def _modules(t):
    n = t["ln.weight"].numel()
    ln = nn.LayerNorm(n)
    ln.weight.data.copy_(t["ln.weight"])
    ln.bias.data.copy_(t["ln.bias"])
    fcs = []
    for k in ("fc1", "fc2"):
        w = t[f"{k}.weight"]
        fc = nn.Linear(w.shape[1], w.shape[0])
        fc.weight.data.copy_(w)
        fc.bias.data.copy_(t[f"{k}.bias"])
        fcs.append(fc)
    return ln, fcs


def test_act_scales_are_layernorm_output_absmax(golden):
    _, t = golden
    ln, _ = _modules(t)
    with torch.no_grad():
        act = ln(t["X"]).abs().amax(dim=0)
    torch.testing.assert_close(act, t["act_scales"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha_key", ["0.5", "0.85"])
def test_smoothing_matches_reference(golden, alpha_key):
    meta, t = golden
    alpha = float(alpha_key)
    assert any(r["alpha"] == alpha for r in meta["results"])
    ln, (fc1, fc2) = _modules(t)
    s = smoothing_scales(t["act_scales"], [fc1.weight.data, fc2.weight.data], alpha)
    torch.testing.assert_close(s, t[f"alpha{alpha_key}.scales"], rtol=1e-5, atol=0)
    with torch.no_grad():
        y_before = torch.cat([fc1(ln(t["X"])), fc2(ln(t["X"]))], dim=1)
    s2 = smooth_norm_linears(ln, [fc1, fc2], t["act_scales"], alpha)
    torch.testing.assert_close(s2, s, rtol=0, atol=0)
    for got, key in [
        (ln.weight, "ln.weight"),
        (ln.bias, "ln.bias"),
        (fc1.weight, "fc1.weight"),
        (fc2.weight, "fc2.weight"),
    ]:
        ref = t[f"alpha{alpha_key}.{key}"]
        err = ((got.data - ref).abs().max() / ref.abs().max()).item()
        assert err < 1e-5, (key, err)
    # biases unchanged, outputs unchanged up to float32 rounding
    torch.testing.assert_close(fc1.bias.data, t["fc1.bias"], rtol=0, atol=0)
    with torch.no_grad():
        y_after = torch.cat([fc1(ln(t["X"])), fc2(ln(t["X"]))], dim=1)
    assert ((y_after - y_before).abs().max() / y_before.abs().max()).item() < 1e-5
    # the outlier ratio drops as the reference reports
    res = next(r for r in meta["results"] if r["alpha"] == alpha)
    with torch.no_grad():
        a = ln(t["X"]).abs().amax(dim=0)
    ratio = (a.max() / a.median()).item()
    assert ratio == pytest.approx(res["act_absmax_ratio_max/median_after"], rel=1e-3)
