"""save_quantized / load_quantized: bit-exact round trip, manifest, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from toy_model import ToyGeometryModel

from ptq3d.errors import CheckpointError
from ptq3d.methods import load_quantized, quantize_model, save_quantized
from ptq3d.quant.qlinear import QuantLinear

CASES = [
    ("rtn", "w4a8-asym", {}),
    ("smoothquant", "w8a8", {"act_static": True}),
    ("gptq", "w4g32a8", {"actorder": True}),
    ("quarot", "w4a4", {"act_clip_ratio": 0.9}),
]


@pytest.mark.parametrize("method,scheme,cfg", CASES, ids=[c[0] for c in CASES])
def test_round_trip_bit_exact(tmp_path, toy, toy_calib, toy_images, method, scheme, cfg):
    qm = quantize_model(toy, method, scheme, toy_calib, cfg)
    save_quantized(qm, tmp_path / "q")
    assert (tmp_path / "q" / "model.safetensors").is_file()
    doc = json.loads((tmp_path / "q" / "manifest.json").read_text())
    assert doc["method"] == method and doc["calibration_hash"] == toy_calib.hash
    assert doc["stats"]["wall_time_s"] > 0
    fresh = ToyGeometryModel(seed=123)  # different weights: everything must come from the saved state
    back = load_quantized(tmp_path / "q", model=fresh)
    a, b = qm.module.state_dict(), back.module.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    pa, pb = qm.predict(toy_images), back.predict(toy_images)
    for k, v in pa.tensors().items():
        assert torch.equal(v, pb.tensors()[k]), k
    assert back.method == method and back.scheme == qm.scheme and back.config == qm.config
    assert back.calibration_hash == qm.calibration_hash
    assert back.manifest["sites"] == qm.manifest["sites"]
    assert back.stats.layers.keys() == qm.stats.layers.keys()
    assert all(isinstance(m, QuantLinear) for m in back.quant_layers().values())


def test_load_errors(tmp_path, toy, toy_calib):
    with pytest.raises(CheckpointError, match="no manifest.json"):
        load_quantized(tmp_path)
    qm = quantize_model(toy, "rtn", "w8a8")
    d = save_quantized(qm, tmp_path / "q")
    data = bytearray((d / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (d / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256 does not match"):
        load_quantized(d, model=toy)
    save_quantized(qm, d)
    other = ToyGeometryModel(dim=96, heads=4)
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_quantized(d, model=other)
