"""Protocols: hashing, registry, frame sampling, and loading scenes through a protocol."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from ptq3d.datasets import protocols as P
from ptq3d.datasets.protocols import (
    Protocol,
    get_protocol,
    list_protocols,
    load_protocol_scenes,
    register_protocol,
)
from ptq3d.datasets.synthetic import CameraConfig, write_synthetic_dataset
from ptq3d.errors import ConfigError, DataError, UserError

BASE = Protocol(name="t", version=1, dataset="7scenes", scenes=("a/seq-01",), sampling="stride", stride=2)

# a different valid value for every field
CHANGES = {
    "name": "t2", "version": 2, "dataset": "nrgbd", "scenes": ("a/seq-02",), "split": "train",
    "sampling": "all", "stride": 3, "frames_per_scene": 5, "seed": 1, "seed_scope": "scene", "max_frames": 4,
    "stride_cap_half": True, "min_scene_frames": 2, "max_scenes": 1, "max_scenes_per_group": 3,
    "resolution": 224, "patch_size": 7, "preprocessing": "pad", "skippable": ("nan_pose",),
    "options": (("focal", 500.0),), "description": "x", "source": "y",
}  # fmt: skip


def test_every_field_changes_the_hash():
    assert set(CHANGES) == {f.name for f in dataclasses.fields(Protocol)}
    for name, value in CHANGES.items():
        other = dataclasses.replace(BASE, **{name: value})
        assert other.hash != BASE.hash, name


def test_hash_is_stable_across_processes_and_constructions():
    again = Protocol(name="t", version=1, dataset="7scenes", scenes=["a/seq-01"], sampling="stride", stride=2)
    assert again.hash == BASE.hash and len(BASE.hash) == 64
    code = "from ptq3d.datasets.protocols import get_protocol; print(get_protocol('vggt-co3d').hash)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == get_protocol("vggt-co3d").hash
    # options order does not matter
    a = dataclasses.replace(BASE, options=(("b", 1), ("a", 2)))
    b = dataclasses.replace(BASE, options=(("a", 2), ("b", 1)))
    assert a.hash == b.hash


def test_registry_errors():
    with pytest.raises(UserError, match="did you mean 'vggt-co3d'"):
        get_protocol("vggt-co3")
    p = register_protocol(dataclasses.replace(BASE, name="test-registry-x"))
    assert get_protocol("test-registry-x") is p
    register_protocol(p)  # same content: fine
    with pytest.raises(ConfigError, match="already registered"):
        register_protocol(dataclasses.replace(p, stride=7))
    register_protocol(dataclasses.replace(p, stride=7), overwrite=True)
    assert get_protocol("test-registry-x").stride == 7
    P._REGISTRY.pop("test-registry-x")


def test_invalid_protocols():
    with pytest.raises(UserError, match="unknown dataset"):
        dataclasses.replace(BASE, dataset="scannet")
    with pytest.raises(ConfigError, match="needs frames_per_scene"):
        dataclasses.replace(BASE, sampling="random")
    with pytest.raises(ConfigError, match="stride"):
        dataclasses.replace(BASE, stride=0)


def test_published_protocols():
    names = {p.name for p in list_protocols()}
    assert {"vggt-co3d", "quantvggt-co3d-fast", "quantvggt-7scenes", "pi3-7scenes-sparse", "pi3-7scenes-dense",
            "quantvggt-nrgbd", "pi3-nrgbd-sparse", "pi3-nrgbd-dense", "pi3-eth3d", "synthetic-smoke",
            "synthetic-heldout"} <= names  # fmt: skip
    v = get_protocol("vggt-co3d")
    assert len(v.scenes) == 41 and v.frames_per_scene == 10 and v.seed == 0 and v.min_scene_frames == 50
    assert v.option("min_viewpoint_quality") == 0.5
    assert [get_protocol(n).stride for n in ("quantvggt-7scenes", "pi3-7scenes-sparse", "pi3-7scenes-dense")] == [
        100, 200, 40]  # fmt: skip
    assert len(get_protocol("pi3-7scenes-dense").scenes) == 18
    assert get_protocol("pi3-eth3d").stride == 5 and len(get_protocol("pi3-eth3d").scenes) == 13
    assert "nan_pose" in get_protocol("pi3-nrgbd-dense").skippable


def test_random_sampling_matches_numpy_global_seed():
    p = dataclasses.replace(BASE, sampling="random", frames_per_scene=10, seed=0)
    rng = np.random.RandomState(0)
    got = [P.sample_frames(p, list(range(n)), rng) for n in (60, 80)]
    np.random.seed(0)  # VGGT's test_co3d.py: one global seed, np.random.choice per sequence
    want = [list(np.random.choice(n, 10, replace=False)) for n in (60, 80)]
    assert got == want


def test_stride_sampling():
    p = dataclasses.replace(BASE, stride=100)
    assert P.sample_frames(p, list(range(250)), None) == [0, 100, 200]
    capped = dataclasses.replace(p, stride_cap_half=True)
    assert P.sample_frames(capped, list(range(50)), None) == [0, 25]
    assert P.sample_frames(dataclasses.replace(p, max_frames=2), list(range(250)), None) == [0, 100]


def test_synthetic_smoke_needs_no_root():
    scenes = load_protocol_scenes("synthetic-smoke")
    p = get_protocol("synthetic-smoke")
    assert len(scenes) == p.option("num_scenes")
    s = scenes[0]
    assert s.meta["protocol"] == "synthetic-smoke" and s.meta["protocol_hash"] == p.hash
    assert s.meta["heldout"] is True and s.meta["num_skipped"] == 0
    assert s.image_size == (56, 56) and s.num_frames == p.option("num_frames")
    limited = load_protocol_scenes("synthetic-smoke", limit=1)
    assert len(limited) == 1 and limited[0].meta["protocol_hash"] == p.with_limit(1).hash != p.hash
    assert limited[0].content_hash() == s.content_hash()


def test_protocol_over_written_7scenes(tmp_path):
    kw = dict(num_frames=6, height=30, width=40, camera=CameraConfig(fov_deg=(60, 60)))
    ids = write_synthetic_dataset("7scenes", tmp_path, [1, 2], **kw)
    p = Protocol(name="syn-7s", version=1, dataset="7scenes", scenes="all", sampling="stride", stride=2,
                 resolution=28, patch_size=7, options=(("focal", 40 / 2 / np.tan(np.deg2rad(30))),))  # fmt: skip
    scenes = load_protocol_scenes(p, tmp_path)
    assert [s.meta["scene"] for s in scenes] == ids
    assert scenes[0].meta["frame_ids"] == ["000000", "000002", "000004"]
    assert scenes[0].image_size == (21, 28)  # round(30 * 28 / 40 / 7) * 7 = 21
    with pytest.raises(ConfigError, match="needs a data root"):
        load_protocol_scenes(p)


def test_protocol_nrgbd_skips_and_counts(tmp_path, scene):
    from ptq3d.datasets import nrgbd

    nrgbd.write_nrgbd_scene(tmp_path / "r", scene, nan_frames=(2,))
    p = dataclasses.replace(get_protocol("pi3-nrgbd-dense"), scenes=("r",), stride=1, resolution=56)
    with pytest.warns(UserWarning, match="skipping frame 2"):
        (s,) = load_protocol_scenes(p, tmp_path)
    assert s.meta["num_skipped"] == 1 and s.meta["frame_ids"] == ["0", "1", "3"]
    strict = dataclasses.replace(p, skippable=())
    with pytest.raises(DataError, match="nan"):
        load_protocol_scenes(strict, tmp_path)


def test_protocol_co3d_random_frames(co3d_root):
    p = Protocol(name="syn-co3d", version=1, dataset="co3d", scenes=("synthetic",), sampling="random",
                 frames_per_scene=2, seed=0, resolution=28)  # fmt: skip
    scenes = load_protocol_scenes(p, co3d_root)
    rng = np.random.RandomState(0)
    want = [[str(i) for i in rng.choice(4, 2, replace=False)] for _ in range(2)]
    assert [s.meta["frame_ids"] for s in scenes] == want
    assert [s.meta["scene"] for s in scenes] == ["synthetic/seq_a", "synthetic/seq_b"]
    with pytest.raises(DataError, match="CO3D category folder not found"):
        load_protocol_scenes(dataclasses.replace(p, scenes=("apple",)), co3d_root)


def test_missing_scene_is_named(tmp_path):
    with pytest.raises(DataError, match="pumpkin"):
        load_protocol_scenes(dataclasses.replace(BASE, scenes=("pumpkin/seq-01",)), tmp_path)


def test_synthetic_generator_options_reach_the_generator():
    base = dataclasses.replace(get_protocol("synthetic-smoke"), name="t-cam", options=(
        ("num_scenes", 1), ("num_frames", 3), ("height", 28), ("width", 28)))  # fmt: skip
    wide = dataclasses.replace(base, options=base.options + (("camera_config", (("azimuth_span_deg", 170.0),)),
                                                              ("scene_config", (("open_sides", ["ceiling"]),))))  # fmt: skip
    (a,) = load_protocol_scenes(base)
    (b,) = load_protocol_scenes(wide)
    assert (
        a.meta["camera_config"]["azimuth_span_deg"] == 90.0
        and b.meta["camera_config"]["azimuth_span_deg"] == 170.0
    )
    assert b.meta["scene_config"]["open_sides"] == ("ceiling",)
    with pytest.raises(ConfigError, match="bad CameraConfig"):
        load_protocol_scenes(dataclasses.replace(base, options=(("camera_config", (("zoom", 2),)),)))
