"""Checkpoint loading: formats, strict key/shape checking, refusal of pickled code, corrupt files."""

from __future__ import annotations

import logging
import lzma
import os

import pytest
import torch
from safetensors.torch import save_file

from ptq3d.errors import CheckpointError, UserError
from ptq3d.models import load_model, read_state_dict, register_model
from ptq3d.models.registry import get_spec
from ptq3d.models.vggt import VGGT, VGGTAdapter, VGGTConfig


@pytest.fixture(scope="module")
def tiny_state(vggt_tiny) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in vggt_tiny.module.state_dict().items()}


def _same_weights(a, b) -> bool:
    sa, sb = a.module.state_dict(), b.module.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_roundtrip_formats(tmp_path, tiny_state, vggt_tiny, vggt_tiny_meta, suffix):
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(tiny_state, str(path))
    else:
        torch.save(tiny_state, path)
    model = load_model(VGGTConfig.from_reference_json(vggt_tiny_meta), weights=path)
    assert model.load_report.loaded == len(tiny_state) and model.load_report.ignored == []
    assert _same_weights(model, vggt_tiny)
    assert not model.module.training
    # non-persistent normalisation buffers are refilled after the meta-device build
    torch.testing.assert_close(
        model.module.aggregator._resnet_mean.flatten(), torch.tensor([0.485, 0.456, 0.406]), rtol=0, atol=0
    )


def test_nested_state_dict_and_bf16_cast(tmp_path, tiny_state, vggt_tiny_config):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {k: v.to(torch.bfloat16) for k, v in tiny_state.items()}, "epoch": 3}, path)
    model = load_model(vggt_tiny_config, weights=path)
    assert len(model.load_report.cast) == len(tiny_state)
    assert next(model.module.parameters()).dtype == torch.float32


def test_track_head_keys_are_reported_not_dropped(tmp_path, tiny_state, vggt_tiny_config, caplog):
    state = dict(tiny_state)
    state["track_head.tracker.fmap_norm.weight"] = torch.ones(4)
    state["track_head.feature_extractor.norm.bias"] = torch.zeros(4)
    path = tmp_path / "with_track.safetensors"
    save_file(state, str(path))
    with caplog.at_level(logging.WARNING, logger="ptq3d.models.loading"):
        model = load_model(vggt_tiny_config, weights=path)
    assert model.load_report.ignored == sorted(k for k in state if k.startswith("track_head."))
    assert "ignored 2 checkpoint keys" in caplog.text and "track_head" in caplog.text


def test_missing_unexpected_misshaped_keys_listed(tmp_path, tiny_state, vggt_tiny_config):
    state = dict(tiny_state)
    del state["aggregator.camera_token"]
    state["aggregator.bogus"] = torch.zeros(1)
    state["camera_head.embed_pose.weight"] = torch.zeros(5, 5)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as exc:
        load_model(vggt_tiny_config, weights=path)
    msg = str(exc.value)
    assert str(path) in msg
    assert "1 missing: aggregator.camera_token" in msg
    assert "1 unexpected: aggregator.bogus" in msg
    width = 2 * vggt_tiny_config.embed_dim
    assert f"1 mis-shaped: camera_head.embed_pose.weight (checkpoint [5, 5], model [{width}, 9])" in msg
    assert isinstance(exc.value, UserError)


def test_long_key_lists_are_truncated(tmp_path, tiny_state, vggt_tiny_config):
    state = {k: v for k, v in tiny_state.items() if not k.startswith("aggregator.frame_blocks")}
    path = tmp_path / "nofb.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=r"missing: .*\.\.\. and \d+ more") as exc:
        load_model(vggt_tiny_config, weights=path)
    assert len(str(exc.value)) < 2000


def test_wrong_model_for_checkpoint(reference_dir, vggt_tiny_meta):
    """The tiny checkpoint does not fit VGGT-1B: shapes and missing blocks are reported, nothing is loaded."""
    with pytest.raises(CheckpointError, match="mis-shaped"):
        load_model("vggt-1b", weights=reference_dir / vggt_tiny_meta["files"]["state"]["path"])


@pytest.mark.parametrize("name", ["w.safetensors", "w.pt", "w.safetensors.xz"])
def test_truncated_file(tmp_path, reference_dir, vggt_tiny_meta, name):
    state = {"a": torch.randn(64, 64), "b": torch.randn(300)}
    full = tmp_path / ("full" + name[1:])
    if name.endswith(".safetensors"):
        save_file(state, str(full))
    elif name.endswith(".pt"):
        torch.save(state, full)
    else:  # the reference file itself, cut short
        full = reference_dir / vggt_tiny_meta["files"]["state"]["path"]
    data = full.read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=str(cut).replace(".", r"\.")):
        read_state_dict(cut)


def test_corrupt_xz(tmp_path):
    path = tmp_path / "junk.safetensors.xz"
    path.write_bytes(lzma.compress(b"not a safetensors file at all"))
    with pytest.raises(CheckpointError, match=r"junk\.safetensors\.xz"):
        read_state_dict(path)


class _Payload:
    """Unpickling this would run a shell command (creates a marker file)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"x": torch.zeros(1), "payload": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pt: refused to unpickle"):
        read_state_dict(path)
    assert not marker.exists()


def test_unexpected_extension_and_missing_file(tmp_path):
    bad = tmp_path / "weights.ckpt"
    bad.write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"weights\.ckpt: unsupported checkpoint format"):
        read_state_dict(bad)
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "absent.safetensors")


def test_non_tensor_content(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="not a state_dict"):
        read_state_dict(path)


def test_unknown_model_name():
    with pytest.raises(UserError, match="unknown model 'vggt-1c'; did you mean"):
        load_model("vggt-1c")


def test_register_model_hook(tmp_path, tiny_state, vggt_tiny_config):
    path = tmp_path / "bundled.safetensors"
    save_file(tiny_state, str(path))
    name = "vggt-tiny-test-bundled"
    register_model(
        name,
        lambda: VGGTAdapter(VGGT(vggt_tiny_config), name=name),
        family="vggt",
        description="test entry",
        default_weights=path,
    )
    model = load_model(name)  # default weights used
    assert model.name == name and model.load_report.path == str(path)
    with pytest.raises(ValueError, match="already registered"):
        register_model(name, get_spec(name).builder)
    register_model(name, get_spec(name).builder, overwrite=True)


def test_load_from_config_random_init(vggt_tiny_meta, vggt_tiny_config):
    model = load_model(vggt_tiny_config)
    assert model.load_report is None and not model.module.training
    assert sum(p.numel() for p in model.module.parameters()) == vggt_tiny_meta["files"]["state"]["num_params"]


# ---- non-finite checkpoints (issue 20.4): refused at load with the tensor names; an explicit flag loads them
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_checkpoint_is_refused_with_names(tmp_path, tiny_state, vggt_tiny_config, bad):
    state = {k: v.clone() for k, v in tiny_state.items()}
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 3)
    state[name].view(-1)[2] = bad
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as exc:
        load_model(vggt_tiny_config, weights=path)
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg and name in msg and "NaN/Inf" in msg
    assert ("1 nan" if bad != bad else "1 inf") in msg


def test_allow_nonfinite_loads_and_reports(tmp_path, tiny_state, vggt_tiny_config):
    state = {k: v.clone() for k, v in tiny_state.items()}
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 3)
    state[name].view(-1)[0] = float("nan")
    path = tmp_path / "w.pt"
    torch.save(state, path)
    model = load_model(vggt_tiny_config, weights=path, allow_nonfinite=True)
    assert model.load_report.nonfinite == [f"{name} (1 nan, 0 inf)"]
    assert torch.isnan(model.module.state_dict()[name]).sum() == 1


def test_finite_checkpoint_reports_no_nonfinite(tmp_path, tiny_state, vggt_tiny_config):
    path = tmp_path / "w.safetensors"
    save_file(tiny_state, str(path))
    assert load_model(vggt_tiny_config, weights=path).load_report.nonfinite == []


def test_apply_state_dict_refuses_nonfinite(tiny_state, vggt_tiny_config):
    from ptq3d.models.loading import apply_state_dict

    model = load_model(vggt_tiny_config)
    state = {k: v.clone() for k, v in tiny_state.items()}
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name].view(-1)[0] = float("inf")
    before = model.module.state_dict()[name].clone()
    with pytest.raises(CheckpointError, match="1 inf"):
        apply_state_dict(model.module, state, "mem")
    assert torch.equal(model.module.state_dict()[name], before)  # nothing half-loaded


def _nan_checkpoint(tmp_path):
    state = {k: v.clone() for k, v in load_model("vggt-tiny-synthetic").module.state_dict().items()}
    name = next(k for k in state if k.startswith("aggregator.frame_blocks.0.") and k.endswith("fc1.weight"))
    state[name][0, 0] = float("nan")
    weights = tmp_path / "nan.safetensors"
    save_file(state, str(weights))
    args = ["quantize", "--model", "vggt-tiny-synthetic", "--weights", str(weights), "--method", "rtn",
            "--scheme", "w8a8", "--calib", "none", "--no-progress"]  # fmt: skip
    return name, args


def test_quantize_cli_refuses_nonfinite_weights(tmp_path, capsys):
    from ptq3d.harness.cli import main

    name, args = _nan_checkpoint(tmp_path)
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and name in err and "Traceback" not in err
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_quantize_cli_never_writes_nonfinite_model(tmp_path, capsys):
    from ptq3d.harness.cli import main

    name, args = _nan_checkpoint(tmp_path)
    # the expert flag loads the weights, but a quantized model holding NaN is still never written
    assert main([*args, "--allow-nonfinite", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "not written" in err[-1] and name.rsplit(".", 1)[0] in err[-1] and "Traceback" not in "".join(err)
    assert not (tmp_path / "b").exists()
