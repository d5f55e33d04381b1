"""Our VGGT reproduces every output of the official code on the tiny reference model (float32, CPU)."""

from __future__ import annotations

import pytest
import torch

from ptq3d.models import load_model
from ptq3d.models.vggt import VGGTConfig, pose_encoding_to_extri_intri, unproject_depth_to_world


def assert_matches(name: str, ours: torch.Tensor, ref: torch.Tensor) -> float:
    """README tolerance: ~1e-4 relative, atol ~1e-5 * max|ref|. Returns max|diff| / max|ref|."""
    assert tuple(ours.shape) == tuple(ref.shape), f"{name}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    scale = ref.abs().max().item()
    torch.testing.assert_close(ours.float(), ref, rtol=1e-4, atol=1e-5 * scale, msg=lambda m: f"{name}: {m}")
    return (ours - ref).abs().max().item() / scale


@pytest.fixture(scope="module")
def outputs(vggt_tiny, vggt_tiny_io) -> dict[str, torch.Tensor]:
    images = vggt_tiny_io["images"]
    m = vggt_tiny.module
    with torch.no_grad():
        raw = m(images)
        tokens, patch_start_idx = m.aggregator(images)
        dino = m.aggregator.patch_embed(
            ((images - m.aggregator._resnet_mean) / m.aggregator._resnet_std).flatten(0, 1)
        )
    H, W = images.shape[-2:]
    extrinsic, intrinsic = pose_encoding_to_extri_intri(raw["pose_enc"], (H, W))
    out = {
        "pose_enc": raw["pose_enc"],
        "pose_enc_list": torch.stack(raw["pose_enc_list"]),
        "depth": raw["depth"],
        "depth_conf": raw["depth_conf"],
        "world_points": raw["world_points"],
        "world_points_conf": raw["world_points_conf"],
        "extrinsic": extrinsic,
        "intrinsic": intrinsic,
        "unprojected_world_points": unproject_depth_to_world(
            raw["depth"][0, ..., 0], extrinsic[0], intrinsic[0]
        ),
        "patch_start_idx": torch.tensor([patch_start_idx]),
        "debug.dino_x_norm_patchtokens": dino,
    }
    out.update({f"aggregated_tokens.{i}": t for i, t in enumerate(tokens)})
    return out


def test_registered_tiny_is_the_reference_model(vggt_tiny_meta, vggt_tiny_config, reference_dir):
    """`vggt-tiny` (VGGTConfig.tiny()) is the model of the shared reference set and loads its weights."""
    if vggt_tiny_meta["variant"] == "shared":
        assert VGGTConfig.tiny() == vggt_tiny_config
        model = load_model("vggt-tiny", weights=reference_dir / vggt_tiny_meta["files"]["state"]["path"])
        assert model.load_report.loaded == vggt_tiny_meta["files"]["state"]["num_tensors"]
    else:  # a held-out reference set may use other dimensions; the JSON-derived config is what we test
        assert vggt_tiny_config.embed_dim == vggt_tiny_meta["construction"][2]["args"]["embed_dim"]


def test_state_dict_keys_and_shapes_match_reference(vggt_tiny, vggt_tiny_meta):
    ours = {k: list(v.shape) for k, v in vggt_tiny.module.state_dict().items()}
    ref = {k: v["shape"] for k, v in vggt_tiny_meta["state_tensors"].items()}
    assert ours == ref


def test_every_golden_output_is_checked(outputs, vggt_tiny_io):
    assert set(vggt_tiny_io) - {"images"} == set(outputs)


@pytest.mark.parametrize(
    "key",
    [
        "debug.dino_x_norm_patchtokens",
        "aggregated_tokens.0",
        "aggregated_tokens.1",
        "pose_enc",
        "pose_enc_list",
        "depth",
        "depth_conf",
        "world_points",
        "world_points_conf",
        "extrinsic",
        "intrinsic",
        "unprojected_world_points",
    ],
)
def test_golden_output(key, outputs, vggt_tiny_io):
    err = assert_matches(key, outputs[key], vggt_tiny_io[key])
    print(f"{key}: max|diff|/max|ref| = {err:.2e}")


def test_patch_start_idx(outputs, vggt_tiny_io):
    assert outputs["patch_start_idx"].tolist() == vggt_tiny_io["patch_start_idx"].tolist()


def test_predict_matches_goldens(vggt_tiny, vggt_tiny_io):
    """The adapter's Predictions carry the same numbers in the shared layout."""
    pred = vggt_tiny.predict(vggt_tiny_io["images"])
    assert_matches("depth", pred.depth, vggt_tiny_io["depth"][..., 0])
    assert_matches("depth_conf", pred.depth_conf, vggt_tiny_io["depth_conf"])
    assert_matches("world_points", pred.world_points, vggt_tiny_io["world_points"])
    assert_matches("points_conf", pred.points_conf, vggt_tiny_io["world_points_conf"])
    assert_matches("extrinsics", pred.extrinsics, vggt_tiny_io["extrinsic"])
    assert_matches("intrinsics", pred.intrinsics, vggt_tiny_io["intrinsic"])


def test_frame_chunking_is_exact(vggt_tiny, vggt_tiny_io):
    """DPT heads processed in chunks of frames give the same result as all frames at once (up to the
    batch-size-dependent rounding of the convolutions)."""
    m = vggt_tiny.module
    images = vggt_tiny_io["images"]
    with torch.no_grad():
        tokens, psi = m.aggregator(images)
        whole = m.depth_head(tokens, images, psi, frames_chunk_size=None)
        chunked = m.depth_head(tokens, images, psi, frames_chunk_size=2)
    torch.testing.assert_close(chunked[0], whole[0], rtol=1e-5, atol=0)
    torch.testing.assert_close(chunked[1], whole[1], rtol=1e-5, atol=0)
