"""Shared transformer layers: key layout, RoPE properties, DINOv2 position-embedding resizing."""

from __future__ import annotations

import json

import pytest
import torch

from ptq3d.models.layers import (
    Block,
    DinoV2Config,
    DinoVisionTransformer,
    RotaryPositionEmbedding2D,
    grid_positions,
)


def test_block_keys_follow_options():
    plain = set(Block(64, 4, init_values=None, qk_norm=False).state_dict())
    assert not any(k.startswith(("ls1", "ls2", "attn.q_norm", "attn.k_norm")) for k in plain)
    full = set(Block(64, 4, init_values=0.01, qk_norm=True, rope=RotaryPositionEmbedding2D()).state_dict())
    assert full - plain == {
        "ls1.gamma",
        "ls2.gamma",
        "attn.q_norm.weight",
        "attn.q_norm.bias",
        "attn.k_norm.weight",
        "attn.k_norm.bias",
    }
    assert Block(64, 4, init_values=0.01).ls1.gamma.eq(0.01).all()


def test_grid_positions():
    pos = grid_positions(2, 2, 3, num_special=5)
    assert pos.shape == (2, 11, 2) and pos.dtype == torch.long
    assert pos[0, :5].eq(0).all()
    assert pos[0, 5:].tolist() == [[1, 1], [1, 2], [1, 3], [2, 1], [2, 2], [2, 3]]
    assert grid_positions(1, 2, 2)[0].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]


def test_rope_depends_only_on_relative_position():
    """<rope(q, p), rope(k, p')> is a function of p - p' (per axis), the point of rotary embeddings."""
    rope = RotaryPositionEmbedding2D(100.0)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16, generator=g), torch.randn(1, 1, 1, 16, generator=g)

    def score(pq, pk):
        a = rope(q, torch.tensor([[pq]]))
        b = rope(k, torch.tensor([[pk]]))
        return (a * b).sum()

    torch.testing.assert_close(score((3, 5), (1, 2)), score((7, 9), (5, 6)), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(score((3, 5), (1, 2)), score((3, 5), (2, 2)))
    # position (0, 0) is the identity
    torch.testing.assert_close(rope(q, torch.zeros(1, 1, 2, dtype=torch.long)), q)


def test_dino_sizes_match_vggt_manifest(reference_dir):
    manifest = json.loads((reference_dir / "manifest_vggt_1b.json").read_text())
    with torch.device("meta"):
        vit_l = DinoVisionTransformer(DinoV2Config.of_size("large"))
    n = sum(p.numel() for p in vit_l.parameters())
    assert n == manifest["params_per_second_level_component"]["aggregator.patch_embed"]
    with pytest.raises(ValueError, match="unknown DINOv2 size"):
        DinoV2Config.of_size("huge")


@pytest.mark.parametrize("offset,antialias", [(0.0, True), (0.1, False)])
def test_pos_embed_interpolation(offset, antialias):
    vit = DinoVisionTransformer(
        DinoV2Config.of_size(
            "small", depth=1, img_size=56, interpolate_offset=offset, interpolate_antialias=antialias
        )
    )
    native = vit.interpolate_pos_encoding(4, 4, torch.float32)
    assert torch.equal(native, vit.pos_embed)
    other = vit.interpolate_pos_encoding(3, 5, torch.float32)
    assert other.shape == (1, 1 + 15, 384)
    assert torch.equal(other[:, 0], vit.pos_embed[:, 0])  # cls position is not resized
    out = vit(torch.rand(2, 3, 42, 70))
    assert out.shape == (2, 15, 384)


def test_dino_without_mask_token_and_registers():
    vit = DinoVisionTransformer(
        DinoV2Config.of_size("small", depth=1, num_register_tokens=0, mask_token=False)
    )
    keys = set(vit.state_dict())
    assert "mask_token" not in keys and "register_tokens" not in keys
    feats = vit.forward_features(torch.rand(1, 3, 28, 28))
    assert feats["x_norm_patchtokens"].shape == (1, 4, 384) and feats["x_norm_regtokens"].shape == (1, 0, 384)
