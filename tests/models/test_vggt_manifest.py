"""Full-size VGGT-1B built on the meta device against the official state_dict manifest."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ptq3d.models.registry import get_spec


@pytest.fixture(scope="module")
def manifest(reference_dir) -> dict:
    return json.loads((reference_dir / "manifest_vggt_1b.json").read_text())


@pytest.fixture(scope="module")
def vggt_1b_meta():
    with torch.device("meta"):
        return get_spec("vggt-1b").builder()


def test_state_dict_equals_manifest_except_track_head(manifest, vggt_1b_meta):
    """Keys, order and shapes equal the official VGGT() state_dict. The track head is deliberately not
    implemented, so the ONLY allowed difference is the manifest's track_head.* keys, which must all be absent."""
    ref = [(e["key"], e["shape"]) for e in manifest["keys"]]
    ref_no_track = [(k, s) for k, s in ref if not k.startswith("track_head.")]
    ours = [(k, list(v.shape)) for k, v in vggt_1b_meta.module.state_dict().items()]
    assert len(ref) - len(ref_no_track) > 0  # the manifest does hold a track head
    assert ours == ref_no_track
    assert all(e["dtype"] == "float32" for e in manifest["keys"])


def test_parameter_count(manifest, vggt_1b_meta):
    per = manifest["params_per_top_level_component"]
    total = manifest["num_parameters(nn.Parameter)"]
    assert total == 1_256_537_516
    n = sum(p.numel() for p in vggt_1b_meta.module.parameters())
    assert n == total - per["track_head"]
    for comp in ("aggregator", "camera_head", "point_head", "depth_head"):
        got = sum(p.numel() for p in getattr(vggt_1b_meta.module, comp).parameters())
        assert got == per[comp], comp


def test_non_persistent_buffers(manifest, vggt_1b_meta):
    bufs = dict(vggt_1b_meta.module.named_buffers())
    for b in manifest["non_persistent_buffers(not in state_dict)"]:
        assert list(bufs[b["name"]].shape) == b["shape"]
        assert b["name"] not in vggt_1b_meta.module.state_dict()


def test_blocks_and_quant_sites(vggt_1b_meta):
    m = vggt_1b_meta
    blocks = m.blocks("aggregator")
    assert len(blocks) == 48
    assert [b.name for b in blocks[:3]] == [
        "aggregator.frame_blocks.0",
        "aggregator.global_blocks.0",
        "aggregator.frame_blocks.1",
    ]
    assert [b.attention for b in blocks[:2]] == ["frame", "global"]
    sites = m.quant_sites("aggregator")
    assert len(sites) == 192
    shapes = {
        n.rsplit(".", 2)[-2] + "." + n.rsplit(".", 1)[-1]: tuple(l.weight.shape) for n, l in sites.items()
    }
    assert shapes == {
        "attn.qkv": (3072, 1024),
        "attn.proj": (1024, 1024),
        "mlp.fc1": (4096, 1024),
        "mlp.fc2": (1024, 4096),
    }
    assert all(l.bias is not None for l in sites.values())
    all_blocks = m.blocks("all")
    assert len(all_blocks) == 72 and all_blocks[0].kind == "encoder"
    assert all_blocks[24].name == "aggregator.frame_blocks.0"
    assert len(m.quant_sites("all")) == 288
    linears = sum(isinstance(x, nn.Linear) for x in m.module.modules())
    assert linears == 288 + 20  # aggregator + camera head (the manifest's 387 includes 79 track-head Linears)
