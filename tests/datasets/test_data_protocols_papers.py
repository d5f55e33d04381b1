"""The papers' protocols (issue 18.2) on scenes written in each dataset's real format, scene restriction
(`Protocol.restrict`) and the data-root check `ptq3d validate` calls (`check_roots`)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from ptq3d.datasets import co3d
from ptq3d.datasets.protocols import check_roots, get_protocol, list_protocol_scenes, load_protocol_scenes
from ptq3d.datasets.synthetic import CameraConfig, generate_scene, write_synthetic_dataset
from ptq3d.errors import ConfigError, DataError

CAM = CameraConfig(fov_deg=(60, 60))
SMALL = dict(resolution=56, patch_size=14)


def _scene(seed, n=6):
    return generate_scene(seed, num_frames=n, height=24, width=32, camera=CAM)


# ---------------------------------------------------------------------------------------------- restrict
def test_restrict_keeps_known_scenes_and_changes_the_hash():
    p = get_protocol("pi3-7scenes-sparse")
    r = p.restrict(["stairs/seq-01"])
    assert r.scenes == ("stairs/seq-01",) and r.hash != p.hash and r.stride == p.stride
    assert (
        get_protocol("vggt-co3d")
        .restrict(["apple", "teddybear/110_13051_23361"])
        .scenes[1]
        .startswith("teddy")
    )


def test_restrict_names_unknown_scenes():
    with pytest.raises(
        ConfigError, match=r"unknown scenes 'stairs/seq-02', 'kitchen' \(its scenes: chess/seq-03"
    ):
        get_protocol("pi3-7scenes-sparse").restrict(["stairs/seq-01", "stairs/seq-02", "kitchen"])
    with pytest.raises(ConfigError, match="non-empty list"):
        get_protocol("pi3-7scenes-sparse").restrict([])
    with pytest.raises(ConfigError, match="unknown scenes 'ball'"):
        get_protocol("vggt-co3d").restrict(["ball"])  # an unseen category is not in the 41


def test_restricted_protocol_runs_on_a_partial_copy(tmp_path):
    from ptq3d.datasets import sevenscenes

    sevenscenes.write_7scenes_scene(tmp_path, "stairs", {1: _scene(1), 4: _scene(2)}, test=[1, 4])
    p = dataclasses.replace(get_protocol("pi3-7scenes-sparse"), stride=2, options=(("focal", 0.0),), **SMALL)
    with pytest.raises(DataError, match="chess/seq-03: 7-Scenes sequence folder not found"):
        load_protocol_scenes(p, tmp_path)  # the full protocol needs all 18 sequences
    focal = float(_scene(1).intrinsics[0, 0, 0])
    p = dataclasses.replace(p, options=(("focal", focal),)).restrict(["stairs/seq-04"])
    (s,) = load_protocol_scenes(p, tmp_path)
    assert s.meta["scene"] == "stairs/seq-04" and s.meta["frame_ids"] == ["000000", "000002", "000004"]


# ---------------------------------------------------------------------------------------------- check_roots
def test_check_roots(tmp_path):
    p = get_protocol("pi3-7scenes-sparse")
    assert check_roots(get_protocol("synthetic-smoke")) == []
    assert check_roots(p) == ["protocol 'pi3-7scenes-sparse' (7scenes): no data root given"]
    assert check_roots(p, tmp_path / "nope") == [f"{tmp_path / 'nope'}: 7scenes root for protocol "
                                                 f"'pi3-7scenes-sparse' does not exist"]  # fmt: skip
    (tmp_path / "file").write_text("x")
    assert "is not a folder" in check_roots(p, tmp_path / "file")[0]
    (tmp_path / "stairs/seq-01").mkdir(parents=True)
    lines = check_roots(p.restrict(["stairs/seq-01", "stairs/seq-04"]), tmp_path)
    assert lines == [
        f"{tmp_path / 'stairs/seq-04'}: scene 'stairs/seq-04' of protocol 'pi3-7scenes-sparse' not found"
    ]
    assert all("\n" not in ln for ln in check_roots(p, tmp_path))
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked"
        locked.mkdir(mode=0)
        assert "not readable" in check_roots(p, locked)[0]
        locked.chmod(0o700)


def test_check_roots_re10k(tmp_path):
    write_synthetic_dataset("re10k", tmp_path, [3], num_frames=2, height=16, width=16, camera=CAM)
    p = get_protocol("fgq-re10k")
    assert check_roots(p.restrict(["seed_3"]), tmp_path) == []
    assert (
        "seed_4.txt: camera file of scene 'seed_4' not found"
        in check_roots(p.restrict(["seed_4"]), tmp_path)[0]
    )


# ---------------------------------------------------------------------------------------------- CO3D
@pytest.fixture(scope="module")
def co3d_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("co3d")
    for cat, seeds in (("apple", (11, 12, 13)), ("ball", (14, 15))):
        scenes = {f"s{s}": _scene(s) for s in seeds}
        co3d.write_co3d_category(root, cat, scenes, test_sequences=[f"s{seeds[0]}"])
    return root


def test_vggt_co3d_20_frames(co3d_root):
    p = dataclasses.replace(get_protocol("vggt-co3d-20"), scenes=("apple",), min_scene_frames=0,
                            frames_per_scene=20, **SMALL)  # fmt: skip
    assert get_protocol("vggt-co3d-20").frames_per_scene == 20
    (s,) = load_protocol_scenes(p, co3d_root)
    assert s.num_frames == 6  # fewer frames than asked: all of them, in a random order
    assert sorted(s.meta["frame_ids"]) == [str(i) for i in range(6)]


def test_fgq_co3d_protocol_fields():
    p = get_protocol("fgq-co3d")
    assert len(p.scenes) == 51 and set(co3d.SEEN_CATEGORIES) < set(p.scenes) and "ball" in p.scenes
    assert (p.seed, p.frames_per_scene, p.sampling, p.preprocessing) == (42, 10, "random", "crop")


def test_quantvggt_calibration_presets(co3d_root):
    paper, code = get_protocol("quantvggt-calib-co3d"), get_protocol("quantvggt-calib-co3d-code")
    assert (paper.split, code.split, paper.preprocessing) == ("train", "test", "pad")
    kw = dict(
        scenes=("apple", "ball"), min_scene_frames=0, max_scenes_per_group=1, frames_per_scene=3, **SMALL
    )
    scenes = load_protocol_scenes(dataclasses.replace(paper, **kw), co3d_root)
    train = {"apple/s12", "apple/s13", "ball/s15"}
    assert len(scenes) == 2 and {s.meta["scene"] for s in scenes} <= train
    assert all(s.image_size == (56, 56) and s.num_frames == 3 for s in scenes)  # pad to a square
    assert not scenes[0].valid_mask[0, 0].any()  # the padded rows are invalid
    picked = [s.meta["scene"] for s in load_protocol_scenes(dataclasses.replace(code, **kw), co3d_root)]
    assert picked == ["apple/s11", "ball/s14"]  # the code preset reads the test sequences


def test_fgq_calibration_draws_clips_and_squashes(co3d_root):
    p = dataclasses.replace(get_protocol("fgq-calib-co3d"), scenes=("apple", "ball"),
                            options=(("min_viewpoint_quality", None), ("draw_clips", 3)), **SMALL)  # fmt: skip
    scenes = load_protocol_scenes(p, co3d_root)
    ids = [s.meta["scene"] for s in scenes]
    assert len(ids) == 3 and len(set(ids)) == 3 and set(ids) <= {"apple/s12", "apple/s13", "ball/s15"}
    assert ids == [s for s, _ in list_protocol_scenes(p, co3d_root)]  # deterministic (seed 42)
    for s in scenes:
        assert s.image_size == (56, 56) and s.num_frames == 4
        K = s.intrinsics[0].numpy()
        assert K[0, 0] / K[1, 1] == pytest.approx((56 / 32) / (56 / 24), rel=1e-6)  # aspect ratio not kept
    with pytest.raises(DataError, match="draws 9 clips but only 3 sequences qualify"):
        list_protocol_scenes(dataclasses.replace(p, options=(("draw_clips", 9),)), co3d_root)


# ---------------------------------------------------------------------------------------------- DTU, Re10K
def test_dtu_protocols(tmp_path):
    write_synthetic_dataset("dtu", tmp_path, [5, 6], num_frames=11, height=24, width=32, camera=CAM)
    assert len(get_protocol("pi3-dtu").scenes) == 22 and get_protocol("pi3-dtu").stride == 5
    assert get_protocol("taptq-calib-dtu").scenes[:2] == ("scan5", "scan6")
    p = dataclasses.replace(get_protocol("taptq-calib-dtu"), **SMALL).restrict(["scan5", "scan6"])
    scenes = load_protocol_scenes(p, tmp_path)
    assert [s.meta["frame_ids"] for s in scenes] == [["00000000", "00000005", "00000010"]] * 2
    assert scenes[0].meta["depth_units"] == "mm" and scenes[0].image_size == (42, 56)
    with pytest.raises(DataError, match="scan7: DTU scan folder not found"):
        load_protocol_scenes(dataclasses.replace(p, scenes=("scan7",)), tmp_path)


def test_fgq_re10k_protocol(tmp_path):
    write_synthetic_dataset("re10k", tmp_path, [8, 9], num_frames=12, height=24, width=32, camera=CAM)
    p = dataclasses.replace(get_protocol("fgq-re10k"), **SMALL)
    scenes = load_protocol_scenes(p, tmp_path)
    assert [s.meta["scene"] for s in scenes] == ["seed_8", "seed_9"]
    assert all(s.num_frames == 10 and s.meta["dataset"] == "re10k" for s in scenes)
    rng = np.random.RandomState(42)
    first = [list(range(12))[i] for i in rng.choice(12, 10, replace=False)]
    stamps = [int(t) for t in scenes[0].meta["frame_ids"]]
    all_stamps = sorted(int(p.stem) for p in (tmp_path / "frames/test/seed_8").glob("*.png"))
    assert stamps == [all_stamps[i] for i in first]  # numpy seed 42, drawn in order
    # a missing frame image is a counted skip in this protocol (seed_9 alone draws the same indices as seed_8 did)
    (tmp_path / "frames/test/seed_9" / f"{all_stamps[first[0]]}.png").unlink()
    with pytest.warns(UserWarning, match="missing frame image"):
        (s9,) = load_protocol_scenes(p.restrict(["seed_9"]), tmp_path)
    assert s9.meta["num_skipped"] == 1 and s9.num_frames == 9
    assert str(all_stamps[first[0]]) not in s9.meta["frame_ids"]
