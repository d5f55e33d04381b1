"""Malformed inputs: each gives a DataError naming the file (or, where the protocol allows, a counted skip).
Every case starts from a valid synthetic dataset written in the real format and breaks one thing."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ptq3d.datasets import check_dataset, co3d, eth3d, nrgbd, sevenscenes
from ptq3d.datasets.synthetic import CameraConfig, generate_scene
from ptq3d.errors import DataError

SCENE = generate_scene(21, num_frames=3, height=24, width=32, camera=CameraConfig(fov_deg=(60, 60)))
FOCAL = float(SCENE.intrinsics[0, 0, 0])


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _edit_jgz(path: Path, fn) -> None:
    with gzip.open(path, "rt") as f:
        recs = json.load(f)
    fn(recs)
    with gzip.open(path, "wt") as f:
        json.dump(recs, f)


# ---- writers and loaders per format
def _write(fmt: str, root: Path) -> None:
    if fmt == "co3d":
        co3d.write_co3d_category(root, "cat", {"seq": SCENE})
    elif fmt == "7scenes":
        sevenscenes.write_7scenes_scene(root, "sc", {1: SCENE})
    elif fmt == "nrgbd":
        nrgbd.write_nrgbd_scene(root / "room", SCENE)
    else:
        eth3d.write_eth3d_scene(root / "court", SCENE)


def _load(fmt: str, root: Path, **kw):
    if fmt == "co3d":
        return co3d.load_co3d_sequence(root, "cat", "seq", **kw)
    if fmt == "7scenes":
        return sevenscenes.load_7scenes_sequence(root, "sc", "seq-01", focal=FOCAL, **kw)
    if fmt == "nrgbd":
        return nrgbd.load_nrgbd_scene(root, "room", **kw)
    return eth3d.load_eth3d_scene(root, "court", **kw)


C = "cat/seq"
S7 = "sc/seq-01"


def _co3d_no_viewpoint(r):
    _edit_jgz(r / "cat/frame_annotations.jgz", lambda recs: recs[1].pop("viewpoint"))


def _co3d_bad_format(r):
    _edit_jgz(
        r / "cat/frame_annotations.jgz",
        lambda recs: recs[0]["viewpoint"].update(intrinsics_format="ndc_weird"),
    )


def _co3d_wrong_size(r):
    _edit_jgz(r / "cat/frame_annotations.jgz", lambda recs: recs[2]["image"].update(size=[100, 200]))


def _co3d_bad_R(r):
    _edit_jgz(r / "cat/frame_annotations.jgz", lambda recs: recs[0]["viewpoint"].update(R=[[1, 0], [0, 1]]))


def _replace_png(path: Path, arr) -> None:
    Image.fromarray(arr).save(path, format="PNG")


def _7s_pose(text):
    return lambda r: (r / S7 / "frame-000001.pose.txt").write_text(text)


def _nrgbd_drop_lines(n):
    def fn(r):
        p = r / "room/poses.txt"
        p.write_text("\n".join(p.read_text().splitlines()[:-n]) + "\n")

    return fn


def _edit_text(rel, old_fn):
    def fn(r):
        p = r / rel
        p.write_text(old_fn(p.read_text()))

    return fn


def _cameras_line(line):
    return _edit_text("court/dslr_calibration_jpg/cameras.txt",
                      lambda t: "\n".join(ln for ln in t.splitlines() if ln.startswith("#")) + "\n" + line + "\n")  # fmt: skip


def _images_camera_99(t):
    lines = t.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln and not ln.startswith("#"))
    parts = lines[i].split()
    parts[8] = "99"
    lines[i] = " ".join(parts)
    return "\n".join(lines) + "\n"


def _images_odd_points(t):
    lines = t.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln and not ln.startswith("#"))
    lines[i + 1] = "1.0 2.0"
    return "\n".join(lines) + "\n"


CASES = [
    # id, format, mutate(root), expected message fragment (a regex)
    ("co3d-truncated-depth-png", "co3d", lambda r: _truncate(r / C / "depths/frame000002.jpg.geometric.png"),
     r"frame000002\.jpg\.geometric\.png: corrupt"),
    ("co3d-depth-8bit", "co3d", lambda r: _replace_png(r / C / "depths/frame000001.jpg.geometric.png",
                                                     np.zeros((24, 32), np.uint8)), "expected a 16-bit"),
    ("co3d-missing-viewpoint-key", "co3d", _co3d_no_viewpoint, "frame_annotations.jgz: .*lacks key 'viewpoint'"),
    ("co3d-not-gzip", "co3d", lambda r: (r / "cat/frame_annotations.jgz").write_text("[]"), "not a readable gzip"),
    ("co3d-bad-json", "co3d", lambda r: (r / "cat/sequence_annotations.jgz").write_bytes(gzip.compress(b"[{")),
     "sequence_annotations.jgz: invalid JSON"),
    ("co3d-unknown-intrinsics-format", "co3d", _co3d_bad_format, "unknown CO3D intrinsics_format 'ndc_weird'"),
    ("co3d-image-size-mismatch", "co3d", _co3d_wrong_size, "frame000003.jpg: image is 24x32 .* annotation says 100x200"),
    ("co3d-missing-image", "co3d", lambda r: (r / C / "images/frame000001.jpg").unlink(), "frame000001.jpg: missing"),
    ("co3d-bad-rotation", "co3d", _co3d_bad_R, "viewpoint of sequence 'seq' frame 0"),
    ("co3d-depth-mask-size", "co3d", lambda r: _replace_png(r / C / "depth_masks/frame000001.png",
                                                          np.zeros((5, 5), np.uint8)), "depth mask is 5x5"),
    ("7s-nan-pose", "7scenes", _7s_pose("nan 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n"), "frame-000001.pose.txt: pose contains nan"),
    ("7s-pose-3x4", "7scenes", _7s_pose("1 0 0 0\n0 1 0 0\n0 0 1 0\n"), "expected a 4x4 matrix, got 3x4"),
    ("7s-pose-garbage", "7scenes", _7s_pose("1 0 0 zero\n"), r"frame-000001\.pose\.txt:1: not a row of numbers"),
    ("7s-pose-empty", "7scenes", _7s_pose(""), "frame-000001.pose.txt: empty file"),
    ("7s-depth-wrong-size", "7scenes", lambda r: _replace_png(r / S7 / "frame-000002.depth.proj.png",
                                                            np.ones((10, 10), np.uint16)), "depth map is 10x10"),
    ("7s-truncated-color", "7scenes", lambda r: _truncate(r / S7 / "frame-000000.color.png", 0.3),
     "frame-000000.color.png: corrupt"),
    ("7s-empty-sequence", "7scenes", lambda r: [p.unlink() for p in (r / S7).iterdir()], "empty sequence"),
    ("7s-depth-rgb-png", "7scenes", lambda r: _replace_png(r / S7 / "frame-000000.depth.proj.png",
                                                         np.zeros((24, 32, 3), np.uint8)), "mode 'RGB'"),
    ("nrgbd-missing-focal", "nrgbd", lambda r: (r / "room/focal.txt").unlink(), r"focal\.txt: missing focal\.txt"),
    ("nrgbd-bad-focal", "nrgbd", lambda r: (r / "room/focal.txt").write_text("-3"), "not a positive number"),
    ("nrgbd-pose-rows", "nrgbd", _nrgbd_drop_lines(1), "4 rows of 4 numbers per frame"),
    ("nrgbd-fewer-poses", "nrgbd", _nrgbd_drop_lines(4), "2 poses but images go up to img2.png"),
    ("nrgbd-missing-depth", "nrgbd", lambda r: (r / "room/depth/depth1.png").unlink(), "depth1.png: missing"),
    ("eth3d-bad-camera-line", "eth3d", _cameras_line("1 PINHOLE 32 24 50.0"), r"cameras\.txt:3: model PINHOLE takes 4"),
    ("eth3d-unknown-model", "eth3d", _cameras_line("1 FANCY 32 24 1 2 3"), "unsupported camera model 'FANCY'"),
    ("eth3d-short-camera-line", "eth3d", _cameras_line("1 PINHOLE"), "expected 'CAMERA_ID MODEL"),
    ("eth3d-depth-wrong-size", "eth3d", lambda r: _truncate(r / "court/ground_truth_depth/dslr_images/DSC_0001.JPG"),
     r"DSC_0001\.JPG: 1536 bytes, expected 24x32 float32"),
    ("eth3d-unknown-camera-id", "eth3d", _edit_text("court/dslr_calibration_jpg/images.txt", _images_camera_99),
     "uses camera 99, not in cameras.txt"),
    ("eth3d-odd-points2d", "eth3d", _edit_text("court/dslr_calibration_jpg/images.txt", _images_odd_points),
     "triples"),
    ("eth3d-image-wrong-size", "eth3d", lambda r: Image.new("RGB", (10, 10)).save(
        r / "court/images/dslr_images/DSC_0002.JPG", format="JPEG"), "image is 10x10 but camera 3"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_malformed_input_raises_clear_error(tmp_path, case):
    _, fmt, mutate, match = case
    _write(fmt, tmp_path)
    mutate(tmp_path)
    with pytest.raises(DataError, match=match) as info:
        _load(fmt, tmp_path)
    assert "\n" not in str(info.value)  # one line
    assert str(tmp_path) in str(info.value)  # names the file


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_check_reports_malformed_input(tmp_path, case):
    _, fmt, mutate, match = case
    _write(fmt, tmp_path)
    assert check_dataset(fmt, tmp_path).ok
    mutate(tmp_path)
    report = check_dataset(fmt, tmp_path)
    flagged = report.problems or report.invalid  # a nan pose is reported as an invalid (skippable) frame
    assert flagged and any(str(tmp_path) in line for line in flagged)


def test_nan_pose_is_a_counted_skip_where_allowed(tmp_path):
    nrgbd.write_nrgbd_scene(tmp_path / "room", SCENE, nan_frames=(0,))
    with pytest.warns(UserWarning):
        s = _load("nrgbd", tmp_path)
    assert s.meta["num_skipped"] == 1 and s.num_frames == 2
    report = check_dataset("nrgbd", tmp_path)
    assert report.ok and len(report.invalid) == 1 and report.frames_ok == 2
    with pytest.raises(DataError, match="pose of frame 0 is nan"):
        _load("nrgbd", tmp_path, skippable=())
    with pytest.raises(DataError, match="no frames to load"), pytest.warns(UserWarning):
        _load("nrgbd", tmp_path, frame_ids=[0])


def test_posediffusion_npz_missing_key(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "frame000001.jpg")
    np.savez(tmp_path / "gt_cameras.npz", gtR=np.eye(3)[None], gtT=np.zeros((1, 3)))
    with pytest.raises(DataError, match="gt_cameras.npz: missing array 'gtFL'"):
        co3d.load_co3d_posediffusion_sample(tmp_path)


def test_empty_root_is_reported(tmp_path):
    for fmt in ("co3d", "7scenes", "nrgbd", "eth3d"):
        report = check_dataset(fmt, tmp_path)
        assert not report.ok and "no" in report.problems[0]
