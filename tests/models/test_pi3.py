"""Pi3 conformance: our Pi3 against the goldens made with the official code (shared/reference/pi3_tiny_*),
the full-size key/shape manifest, and the GeometryModel adapter contract."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from ptq3d.models import load_model
from ptq3d.models.pi3 import PI3_MODELS, Pi3, Pi3Adapter, Pi3Config, invert_rigid
from ptq3d.models.pi3.heads import svd_orthogonalize


def _reference_dir() -> Path:
    env = os.environ.get("PTQ3D_REFERENCE_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "reference"


REF = _reference_dir()
needs_ref = pytest.mark.skipif(not (REF / "pi3_tiny.json").exists(), reason=f"no reference goldens in {REF}")


def _load_tiny(path: Path) -> Pi3:
    """Tiny Pi3 with the reference weights (xz-compressed safetensors), loaded strictly."""
    adapter = load_model("pi3-tiny", weights=path)
    assert isinstance(adapter, Pi3Adapter) and adapter.load_report.loaded == len(adapter.module.state_dict())
    return adapter.module


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.double() - ref.double()).abs().max() / ref.double().abs().max())


def _assert_close(name: str, ours: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-4) -> float:
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    scale = float(ref.abs().max())
    torch.testing.assert_close(ours, ref, rtol=rtol, atol=1e-5 * scale, msg=lambda m: f"{name}: {m}")
    return _rel_err(ours, ref)


@pytest.fixture(scope="module")
def ref_json() -> dict:
    return json.loads((REF / "pi3_tiny.json").read_text())


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(REF / "pi3_tiny_io.safetensors")


@pytest.fixture(scope="module")
def tiny() -> Pi3:
    return _load_tiny(REF / "pi3_tiny_state.safetensors.xz")


@pytest.fixture(scope="module")
def tiny_out(tiny: Pi3, golden) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return tiny(golden["images"])


# --- configuration -------------------------------------------------------------------------------------
def _step(ref_json: dict, n: int) -> dict:
    return next(s for s in ref_json["construction"] if s["step"] == n)


@needs_ref
def test_tiny_config_matches_reference_construction(ref_json):
    cfg = Pi3Config.tiny()
    dec = _step(ref_json, 1)["decoder_block_args(decoder.i)"]
    assert (cfg.dec_embed_dim, cfg.dec_num_heads, cfg.dec_mlp_ratio) == (
        dec["dim"],
        dec["num_heads"],
        dec["mlp_ratio"],
    )
    assert cfg.dec_init_values == dec["init_values"] and cfg.dec_qk_norm == dec["qk_norm"]
    assert cfg.norm_eps == float(re.search(r"eps=([0-9.e-]+)", dec["norm_layer"]).group(1))
    assert cfg.rope_freq == float(re.search(r"freq=([0-9.]+)", dec["rope"]).group(1))
    enc = _step(ref_json, 3)["args(_make_dinov2_model)"]
    assert (cfg.img_size, cfg.patch_size) == (enc["img_size"], enc["patch_size"])
    assert cfg.encoder.num_register_tokens == enc["num_register_tokens"]
    assert cfg.encoder.init_values == enc["init_values"]
    assert cfg.encoder.interpolate_antialias == enc["interpolate_antialias"]
    assert cfg.encoder.interpolate_offset == enc["interpolate_offset"]
    for step, head in ((6, cfg.point_decoder), (10, cfg.camera_decoder)):
        a = _step(ref_json, step)["args"]
        assert (head.dec_embed_dim, head.depth, head.num_heads, head.mlp_ratio, head.out_dim) == (
            a["dec_embed_dim"],
            a["depth"],
            a["dec_num_heads"],
            a["mlp_ratio"],
            a["out_dim"],
        )
        assert a["in_dim"] == 2 * cfg.dec_embed_dim
    assert _step(ref_json, 7)["args"]["dec_embed_dim"] == cfg.point_decoder.out_dim
    assert _step(ref_json, 11)["args"]["dim"] == cfg.camera_decoder.out_dim
    # encoder width / depth and decoder depth: from the state tensors
    st = ref_json["state_tensors"]
    assert cfg.encoder.embed_dim == st["encoder.cls_token"]["shape"][-1]
    assert cfg.encoder.depth == len({k.split(".")[2] for k in st if k.startswith("encoder.blocks.")})
    assert cfg.dec_depth == len({k.split(".")[1] for k in st if k.startswith("decoder.")})
    assert cfg.num_register_tokens == st["register_token"]["shape"][2]


@needs_ref
def test_tiny_state_dict_keys_and_shapes_match_reference(ref_json):
    model = PI3_MODELS["pi3-tiny"][0]()
    # key -> shape (the order inside attention differs: q_norm/k_norm come after proj upstream)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: v["shape"] for k, v in ref_json["state_tensors"].items()}


# --- golden outputs ------------------------------------------------------------------------------------
@needs_ref
@pytest.mark.parametrize("key", ["points", "local_points", "conf", "camera_poses"])
def test_tiny_outputs_match_golden(tiny_out, golden, key):
    _assert_close(key, tiny_out[key], golden[key])


@needs_ref
def test_tiny_intermediates_match_golden(tiny, golden):
    images = golden["images"]
    B, S, _, H, W = images.shape
    with torch.no_grad():
        patch = tiny.encode(images)
        _assert_close("encoder_x_norm_patchtokens", patch, golden["debug.encoder_x_norm_patchtokens"])
        pos = tiny.decoder_pos(B * S, (H, W), images.device)
        assert torch.equal(pos, golden["debug.decoder_pos"])
        hidden = tiny.decode(tiny.decoder_input(patch), pos, B)
    _assert_close("decoder_hidden", hidden, golden["debug.decoder_hidden"])


# --- full size -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_meta() -> Pi3:
    with torch.device("meta"):
        return PI3_MODELS["pi3"][0]()


@needs_ref
def test_full_state_dict_matches_manifest(full_meta):
    manifest = json.loads((REF / "manifest_pi3.json").read_text())
    sd = full_meta.state_dict()
    assert {k: list(v.shape) for k, v in sd.items()} == {e["key"]: e["shape"] for e in manifest["keys"]}
    n_params = sum(p.numel() for p in full_meta.parameters())
    n_buffers = sum(b.numel() for b in full_meta.buffers())
    assert n_params == manifest["num_parameters(nn.Parameter)"] == 958_696_732
    assert n_params + n_buffers == manifest["num_elements_state_dict(params+persistent buffers)"]
    assert len(sd) == manifest["num_tensors"]
    kinds = {e["key"]: e["kind"] for e in manifest["keys"]}
    buffers = {n for n, _ in full_meta.named_buffers()}
    assert buffers == {k for k, v in kinds.items() if v == "buffer"}
    linears = [m for m in full_meta.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == manifest["num_nn_Linear"]
    assert sum(p.numel() for m in linears for p in m.parameters()) == manifest["nn_Linear_params"]


def test_full_quant_sites(full_meta):
    adapter = Pi3Adapter(full_meta)
    cfg = full_meta.config
    sites = adapter.quant_sites("aggregator")
    assert len(sites) == cfg.dec_depth * 4 == 144
    d = cfg.dec_embed_dim
    shapes = {"attn.qkv": (3 * d, d), "attn.proj": (d, d), "mlp.fc1": (4 * d, d), "mlp.fc2": (d, 4 * d)}
    for i in range(cfg.dec_depth):
        for rel, shape in shapes.items():
            assert tuple(sites[f"decoder.{i}.{rel}"].weight.shape) == shape
    assert list(sites)[:4] == [f"decoder.0.{r}" for r in shapes]
    all_sites = adapter.quant_sites("all")
    assert len(all_sites) == 144 + 4 * cfg.encoder.depth
    assert next(iter(all_sites)) == "encoder.blocks.0.attn.qkv"
    blocks = adapter.blocks("aggregator")
    assert [b.attention for b in blocks[:4]] == ["frame", "global", "frame", "global"]
    assert {b.kind for b in blocks} == {"decoder"}
    with pytest.raises(ValueError, match="unknown block scope"):
        adapter.blocks("heads")


# --- adapter -------------------------------------------------------------------------------------------
@needs_ref
@pytest.mark.parametrize("scope", ["aggregator", "all"])
def test_block_chain_reproduces_decoder(tiny, golden, scope):
    adapter = Pi3Adapter(tiny)
    images = golden["images"]
    B, S, _, H, W = images.shape
    with torch.no_grad():
        x, ctx = adapter.capture_block_input(images, scope)
        assert torch.equal(ctx.pos, golden["debug.decoder_pos"])
        outs = []
        for blk in adapter.blocks(scope):
            x = blk.forward(x, ctx)
            assert x.shape[:2] == (B, S)
            if blk.kind == "decoder":
                outs.append(x)
        hidden = adapter.decoder_hidden(outs)
        pos = tiny.decoder_pos(B * S, (H, W), images.device)
        direct = tiny.decode(tiny.decoder_input(tiny.encode(images)), pos, B)
    assert x.shape == (B, S, ctx.tokens_per_frame, tiny.config.dec_embed_dim)
    assert torch.equal(hidden, direct)  # same ops in the same order: bit-exact
    _assert_close("decoder_hidden", hidden, golden["debug.decoder_hidden"])


@needs_ref
def test_predictions_convention(tiny, golden, tiny_out):
    adapter = Pi3Adapter(tiny)
    images = golden["images"]
    B, S, _, H, W = images.shape
    pred = adapter.predict(images)
    assert pred.depth.shape == pred.depth_conf.shape == pred.points_conf.shape == (B, S, H, W)
    assert pred.world_points.shape == (B, S, H, W, 3)
    assert pred.extrinsics.shape == (B, S, 3, 4)
    assert pred.intrinsics is None
    torch.testing.assert_close(pred.depth, tiny_out["local_points"][..., 2])
    torch.testing.assert_close(pred.depth_conf, torch.sigmoid(tiny_out["conf"][..., 0]))
    torch.testing.assert_close(pred.world_points, tiny_out["points"])
    # extrinsics = inverse of the camera-to-world poses
    c2w = golden["camera_poses"].double()
    w2c = torch.cat([pred.extrinsics.double(), c2w[..., 3:, :]], dim=-2)
    eye = torch.eye(4, dtype=torch.float64).expand_as(c2w)
    torch.testing.assert_close(w2c @ c2w, eye, atol=1e-5, rtol=0)
    # world points map to the local point map through the extrinsics
    R, t = pred.extrinsics[..., :3], pred.extrinsics[..., 3]
    local = torch.einsum("bsij,bshwj->bshwi", R, pred.world_points) + t[:, :, None, None]
    torch.testing.assert_close(local, tiny_out["local_points"], atol=1e-4 * float(local.abs().max()), rtol=0)


@needs_ref
def test_replacing_a_linear_changes_predictions(golden):
    model = _load_tiny(REF / "pi3_tiny_state.safetensors.xz")
    adapter = Pi3Adapter(model)
    images = golden["images"]
    before = adapter.predict(images)
    name = "decoder.1.mlp.fc2"
    old = model.get_submodule(name)
    new = nn.Linear(old.in_features, old.out_features)
    with torch.no_grad():
        new.weight.copy_(old.weight * 0.5)
        new.bias.copy_(old.bias)
    model.set_submodule(name, new)
    assert adapter.quant_sites("aggregator")[name] is new
    after = adapter.predict(images)
    assert not torch.allclose(before.depth, after.depth)
    assert not torch.allclose(before.extrinsics, after.extrinsics)


@needs_ref
def test_task_outputs_are_differentiable(tiny, golden, tiny_out):
    adapter = Pi3Adapter(tiny)
    images = golden["images"]
    B, S, _, H, W = images.shape
    out = adapter.task_outputs(images)
    assert out["camera"].shape == (B, S, 12)
    assert out["depth"].shape == (B, S, H, W)
    assert out["points"].shape == (B, S, H, W, 3)
    torch.testing.assert_close(out["camera"], tiny_out["camera_poses"][..., :3, :].reshape(B, S, 12))
    loss = out["camera"].square().sum() + out["depth"].mean() + out["points"].abs().mean()
    weight = tiny.get_submodule("decoder.0.attn.qkv").weight
    (grad,) = torch.autograd.grad(loss, weight)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


# --- pieces --------------------------------------------------------------------------------------------
def test_svd_orthogonalize_gives_nearest_rotation():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(64, 9, generator=g, dtype=torch.float64)
    r = svd_orthogonalize(m)
    eye = torch.eye(3, dtype=torch.float64).expand(64, 3, 3)
    torch.testing.assert_close(r @ r.transpose(-1, -2), eye)
    torch.testing.assert_close(torch.det(r), torch.ones(64, dtype=torch.float64))
    # a rotation (rows already unit length) is its own projection
    torch.testing.assert_close(svd_orthogonalize(r.reshape(64, 9)), r)


def test_invert_rigid_roundtrip():
    g = torch.Generator().manual_seed(1)
    rot = svd_orthogonalize(torch.randn(5, 9, generator=g, dtype=torch.float64))
    c2w = torch.eye(4, dtype=torch.float64).repeat(5, 1, 1)
    c2w[:, :3, :3] = rot
    c2w[:, :3, 3] = torch.randn(5, 3, generator=g, dtype=torch.float64)
    w2c = torch.cat([invert_rigid(c2w), c2w[:, 3:]], dim=-2)
    torch.testing.assert_close(w2c, torch.linalg.inv(c2w))


def test_bad_images_are_rejected():
    torch.manual_seed(0)
    model = Pi3(Pi3Config.tiny()).eval()
    with pytest.raises(ValueError, match=r"\[B, S, 3, H, W\]"):
        model(torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match="multiples of 14"):
        model(torch.rand(1, 2, 3, 28, 30))


def test_random_tiny_runs_and_is_permutation_equivariant():
    """Pi3 has no reference frame: permuting the input frames permutes every output (random weights)."""
    torch.manual_seed(0)
    model = Pi3(Pi3Config.tiny()).eval()
    images = torch.rand(1, 3, 3, 28, 42)
    perm = torch.tensor([2, 0, 1])
    with torch.no_grad():
        a = model(images)
        b = model(images[:, perm])
    for key in ("local_points", "conf", "camera_poses", "points"):
        torch.testing.assert_close(b[key], a[key][:, perm], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_full_random_init_forward_shapes():
    """The full 959M-parameter Pi3 runs end to end on CPU (random init, 2 frames of 28x42)."""
    torch.manual_seed(0)
    adapter = Pi3Adapter(PI3_MODELS["pi3"][0]().eval())
    images = torch.rand(1, 2, 3, 28, 42)
    pred = adapter.predict(images)
    assert pred.depth.shape == (1, 2, 28, 42) and pred.extrinsics.shape == (1, 2, 3, 4)
    assert all(torch.isfinite(t).all() for t in pred.tensors().values())
    x, ctx = adapter.capture_block_input(images, "aggregator")
    assert x.shape == (1, 2, 5 + 2 * 3, 1024) and ctx.pos.shape == (2, 11, 2)


def test_checkpoint_without_constant_buffers_is_completed(tmp_path):
    """Some Pi3 exports lack image_mean / image_std: the loader fills their fixed values and says so."""
    import safetensors.torch

    from ptq3d.models import load_model

    torch.manual_seed(0)
    src = load_model("pi3-tiny")
    state = {
        k: v.contiguous() for k, v in src.module.state_dict().items() if k not in ("image_mean", "image_std")
    }
    path = tmp_path / "pi3_no_norm.safetensors"
    safetensors.torch.save_file(state, str(path))
    model = load_model("pi3-tiny", weights=path)
    assert model.load_report.filled == ["image_mean", "image_std"]
    assert torch.equal(model.module.image_mean, src.module.image_mean)
    assert torch.equal(model.module.image_std, src.module.image_std)
