"""VGGTAdapter: block-wise execution reproduces the aggregator, edits to the module tree take effect,
task outputs are differentiable, and the camera/geometry conventions hold."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ptq3d.models.vggt import (
    extri_intri_to_pose_encoding,
    pose_encoding_to_extri_intri,
    unproject_depth_to_world,
)


@pytest.fixture(scope="module")
def images(vggt_tiny_io) -> torch.Tensor:
    return vggt_tiny_io["images"]


@pytest.mark.parametrize("scope", ["aggregator", "all"])
def test_block_chain_reproduces_aggregator_exactly(vggt_tiny, vggt_tiny_config, images, scope):
    with torch.no_grad():
        ref = vggt_tiny.aggregated_tokens(images)
        x, ctx = vggt_tiny.capture_block_input(images, scope)
        blocks = vggt_tiny.blocks(scope)
        C = ref[0].shape[-1] // 2
        outs = {}
        for blk in blocks:
            x = blk.forward(x, ctx)
            outs[blk.name] = x
    B, S, _, H, W = images.shape
    psi = vggt_tiny_config.patch_start_idx
    assert (ctx.batch, ctx.frames, ctx.tokens_per_frame, ctx.patch_start_idx) == (B, S, ref[0].shape[2], psi)
    assert ctx.pos.shape == (B * S, ctx.tokens_per_frame, 2)
    n_enc = sum(b.kind == "encoder" for b in blocks)
    assert n_enc == (vggt_tiny_config.dino.depth if scope == "all" else 0)
    for i, r in enumerate(ref):
        assert torch.equal(outs[f"aggregator.frame_blocks.{i}"], r[..., :C])
        assert torch.equal(outs[f"aggregator.global_blocks.{i}"], r[..., C:])


def test_encoder_blocks_carry_dino_tokens(vggt_tiny, vggt_tiny_config, images):
    x, _ = vggt_tiny.capture_block_input(images, "all")
    B, S, _, H, W = images.shape
    d, p = vggt_tiny_config.dino, vggt_tiny_config.patch_size
    assert x.shape == (B, S, 1 + d.num_register_tokens + (H // p) * (W // p), d.embed_dim)


def test_quant_sites_tiny(vggt_tiny, vggt_tiny_config):
    sites = vggt_tiny.quant_sites("aggregator")
    assert len(sites) == 2 * vggt_tiny_config.depth * 4
    assert list(sites)[:4] == [
        "aggregator.frame_blocks.0.attn.qkv",
        "aggregator.frame_blocks.0.attn.proj",
        "aggregator.frame_blocks.0.mlp.fc1",
        "aggregator.frame_blocks.0.mlp.fc2",
    ]
    assert len(vggt_tiny.quant_sites("all")) == 4 * (2 * vggt_tiny_config.depth + vggt_tiny_config.dino.depth)
    with pytest.raises(ValueError, match="unknown block scope"):
        vggt_tiny.blocks("heads")


class _Scaled(nn.Module):
    """Stand-in for a quantized layer: wraps a Linear and perturbs its output."""

    def __init__(self, inner: nn.Linear):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) * 1.05


def test_replacing_a_linear_changes_predictions_and_blocks(fresh_vggt_tiny, images):
    model = fresh_vggt_tiny
    before = model.predict(images)
    x, ctx = model.capture_block_input(images)
    blk = model.blocks()[-2]  # the last frame block
    with torch.no_grad():
        y_before = blk.forward(x, ctx)
    name = f"{blk.name}.attn.qkv"
    model.module.set_submodule(name, _Scaled(model.module.get_submodule(name)))
    after = model.predict(images)
    assert not torch.allclose(before.depth, after.depth, rtol=1e-4, atol=0)
    with torch.no_grad():
        y_after = blk.forward(x, ctx)  # the BlockInfo made before the edit sees it too
    assert not torch.allclose(y_before, y_after)
    # the replaced site is no longer an nn.Linear; its inner Linear is
    assert f"{name}.inner" in model.quant_sites()


def test_task_outputs_are_differentiable(vggt_tiny, images):
    out = vggt_tiny.task_outputs(images[:, :2])
    B, S, _, H, W = images[:, :2].shape
    assert out["camera"].shape == (B, S, 9)
    assert out["depth"].shape == (B, S, H, W)
    assert out["points"].shape == (B, S, H, W, 3)
    w = vggt_tiny.module.aggregator.global_blocks[0].attn.qkv.weight
    loss = out["camera"].square().sum() + out["depth"].mean() + out["points"].abs().mean()
    (grad,) = torch.autograd.grad(loss, [w])
    assert grad.abs().sum() > 0


def test_predict_from_tokens_equals_predict(vggt_tiny, images):
    with torch.no_grad():
        tokens = vggt_tiny.aggregated_tokens(images)
        a = vggt_tiny.predict_from_tokens(tokens, images)
    b = vggt_tiny.predict(images)
    for k, v in a.tensors().items():
        assert torch.equal(v, b.tensors()[k]), k


def test_predictions_layout(vggt_tiny, images):
    p = vggt_tiny.predict(images)
    B, S, _, H, W = images.shape
    assert p.depth.shape == p.depth_conf.shape == p.points_conf.shape == (B, S, H, W)
    assert p.world_points.shape == (B, S, H, W, 3)
    assert p.extrinsics.shape == (B, S, 3, 4) and p.intrinsics.shape == (B, S, 3, 3)
    assert (p.depth > 0).all() and (p.depth_conf >= 1).all()
    R = p.extrinsics[..., :3]
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3).expand_as(R), atol=1e-5, rtol=0)


def test_non_multiple_of_patch_size_is_rejected(vggt_tiny):
    with pytest.raises(ValueError, match="multiple of the patch size"):
        vggt_tiny.predict(torch.rand(1, 2, 3, 112, 100))


def test_other_resolution_and_one_frame(vggt_tiny, vggt_tiny_config):
    """Non-square grid (pos-embed interpolation) and S = 1 run, and the block chain still matches."""
    images = torch.rand(1, 1, 3, 70, 98)
    p = vggt_tiny.predict(images)
    assert p.depth.shape == (1, 1, 70, 98)
    with torch.no_grad():
        ref = vggt_tiny.aggregated_tokens(images)
        x, ctx = vggt_tiny.capture_block_input(images, "all")
        for blk in vggt_tiny.blocks("all"):
            x = blk.forward(x, ctx)
    assert torch.equal(x, ref[-1][..., vggt_tiny_config.embed_dim :])


def test_pose_encoding_roundtrip():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 5, 4, generator=g)
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[..., 3:] < 0, -q, q)
    enc = torch.cat([torch.randn(2, 5, 3, generator=g), q, 0.5 + torch.rand(2, 5, 2, generator=g)], dim=-1)
    ext, K = pose_encoding_to_extri_intri(enc, (60, 80))
    back = extri_intri_to_pose_encoding(ext, K, (60, 80))
    torch.testing.assert_close(back, enc, atol=1e-5, rtol=1e-5)
    assert torch.allclose(K[..., 0, 2], torch.tensor(40.0)) and torch.allclose(
        K[..., 1, 2], torch.tensor(30.0)
    )


def test_mat_to_quat_all_pivots():
    """Rotations of 180 degrees about each axis (w = 0) and the identity."""
    from ptq3d.models.vggt.pose import mat_to_quat, quat_to_mat

    R = torch.stack(
        [
            torch.eye(3),
            torch.diag(torch.tensor([1.0, -1, -1])),
            torch.diag(torch.tensor([-1.0, 1, -1])),
            torch.diag(torch.tensor([-1.0, -1, 1])),
        ]
    )
    torch.testing.assert_close(quat_to_mat(mat_to_quat(R)), R, atol=1e-6, rtol=0)


def test_unprojection_reprojects_to_pixels():
    g = torch.Generator().manual_seed(1)
    from ptq3d.models.vggt.pose import quat_to_mat

    R = quat_to_mat(torch.randn(2, 4, generator=g))
    ext = torch.cat([R, torch.randn(2, 3, 1, generator=g)], dim=-1)
    K = torch.tensor([[50.0, 0, 20], [0, 55, 15], [0, 0, 1]]).expand(2, 3, 3)
    depth = 1 + torch.rand(2, 30, 40, generator=g)
    pts = unproject_depth_to_world(depth, ext, K)
    cam = (ext[:, None, None, :, :3] @ pts[..., None])[..., 0] + ext[:, None, None, :, 3]
    torch.testing.assert_close(cam[..., 2], depth, atol=1e-5, rtol=1e-5)
    uv = (K[:, None, None] @ cam[..., None])[..., 0]
    u = uv[..., 0] / uv[..., 2]
    torch.testing.assert_close(u[0, 3], torch.arange(40.0), atol=1e-3, rtol=0)
