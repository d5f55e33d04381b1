"""Ground truth is validated where it is read (issue 20.4): each test is the exact trigger the issue reports, on a
dataset written in its real format, checked both through the loader (one-line DataError naming the file) and
through `ptq3d data check` (a reported problem, never a traceback)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ptq3d.datasets import check_dataset, co3d, nrgbd, sevenscenes
from ptq3d.datasets.geometry import check_rotation
from ptq3d.datasets.synthetic import CameraConfig, generate_scene
from ptq3d.errors import DataError
from ptq3d.harness.cli import main
from tests.datasets.datasets_paths import SAMPLES

SCENE = generate_scene(31, num_frames=3, height=24, width=32, camera=CameraConfig(fov_deg=(60, 60)))
FOCAL = float(SCENE.intrinsics[0, 0, 0])
S7 = "sc/seq-01"


def _one_line_naming(exc: pytest.ExceptionInfo, path) -> None:
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


def _check_cli(capsys, fmt: str, root: Path) -> str:
    code = main(["data", "check", fmt, str(root)])
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    assert code == 1, out.out
    return out.out


def _seven(root: Path) -> Path:
    sevenscenes.write_7scenes_scene(root, "sc", {1: SCENE}, test=[1])
    return root / S7


def _load7(root: Path):
    return sevenscenes.load_7scenes_sequence(root, "sc", "seq-01", focal=FOCAL)


def _edit_pose(path: Path, fn) -> None:
    m = np.loadtxt(path)
    path.write_text("\n".join(" ".join(f"{v:.9e}" for v in row) for row in fn(m)) + "\n")


@pytest.mark.parametrize(
    "name, transform, match",
    [
        ("scaled-x3", lambda m: np.vstack([np.hstack([3 * m[:3, :3], m[:3, 3:]]), m[3:]]), "not orthonormal"),
        (
            "sheared",
            lambda m: np.vstack(
                [np.hstack([m[:3, :3] @ np.array([[1, 0.2, 0], [0, 1, 0], [0, 0, 1]]), m[:3, 3:]]), m[3:]]
            ),
            "not orthonormal",
        ),  # fmt: skip
        ("reflected", lambda m: np.vstack([np.hstack([-m[:3, :3], m[:3, 3:]]), m[3:]]), "det -1"),
        ("singular", lambda m: np.vstack([np.hstack([np.zeros((3, 3)), m[:3, 3:]]), m[3:]]), "singular"),
        ("bad-last-row", lambda m: np.vstack([m[:3], [[0, 0, 1, 1]]]), "expected \\[0, 0, 0, 1\\]"),
    ],
)
def test_7scenes_bad_rotation_is_refused(tmp_path, capsys, name, transform, match):
    pose = _seven(tmp_path) / "frame-000001.pose.txt"
    _edit_pose(pose, transform)
    with pytest.raises(DataError, match=match) as exc:
        _load7(tmp_path)
    _one_line_naming(exc, pose)
    assert str(pose) in _check_cli(capsys, "7scenes", tmp_path)


def test_7scenes_missing_pose_is_an_error_not_a_dropped_frame(tmp_path, capsys):
    seq = _seven(tmp_path)
    assert _load7(tmp_path).num_frames == 3
    (seq / "frame-000001.pose.txt").unlink()
    assert sevenscenes.list_frames(seq) == [
        "000000",
        "000001",
        "000002",
    ]  # still listed: colour and depth exist
    with pytest.raises(DataError, match="frame-000001.pose.txt: missing pose file") as exc:
        _load7(tmp_path)
    _one_line_naming(exc, seq)
    out = _check_cli(capsys, "7scenes", tmp_path)
    assert "frame-000001.pose.txt: missing pose file" in out and "1 problems" in out


@pytest.mark.parametrize("missing", ["color.png", "depth.png"])
def test_7scenes_missing_image_or_depth_is_named(tmp_path, capsys, missing):
    seq = _seven(tmp_path)
    for p in seq.glob(f"frame-000002.{missing.split('.')[0]}*"):
        p.unlink()
    with pytest.raises(DataError, match="frame-000002") as exc:
        _load7(tmp_path)
    _one_line_naming(exc, seq)
    assert "frame-000002" in _check_cli(capsys, "7scenes", tmp_path)


def test_7scenes_empty_test_split_is_an_error(tmp_path, capsys):
    _seven(tmp_path)
    (tmp_path / "sc/TestSplit.txt").write_bytes(b"\r\n")
    with pytest.raises(DataError, match="TestSplit.txt: empty split file"):
        sevenscenes.list_sequences(tmp_path, "test")
    assert "TestSplit.txt: empty split file" in _check_cli(capsys, "7scenes", tmp_path)


def test_real_7scenes_poses_pass_the_rotation_check():
    # the distributed poses are only nearly orthonormal (|RR^T - I| up to 1.5e-4): the tolerance must accept them
    poses = sorted((SAMPLES / "7scenes/stairs").glob("seq-*/frame-*.pose.txt"))
    assert len(poses) == 9
    for p in poses:
        check_rotation(np.loadtxt(p)[:3, :3], str(p))


def test_nrgbd_singular_pose_is_one_line(tmp_path, capsys):
    nrgbd.write_nrgbd_scene(tmp_path / "room", SCENE)
    path = tmp_path / "room/poses.txt"
    rows = path.read_text().splitlines()
    rows[4:7] = ["0 0 0 1.5", "0 0 0 2", "0 0 0 3"]  # frame 1: zero rotation block, finite
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match="frame 1: rotation is singular") as exc:
        nrgbd.load_nrgbd_scene(tmp_path, "room")
    _one_line_naming(exc, path)
    assert "rotation is singular" in _check_cli(capsys, "nrgbd", tmp_path)


def _edit_jgz(path: Path, fn) -> None:
    with gzip.open(path, "rt") as f:
        recs = json.load(f)
    fn(recs)
    with gzip.open(path, "wt") as f:
        json.dump(recs, f)


@pytest.mark.parametrize("value", ["1", 1.5, None, True])
def test_co3d_non_integer_frame_number(tmp_path, capsys, value):
    co3d.write_co3d_category(tmp_path, "cat", {"seq": SCENE})
    fa = tmp_path / "cat/frame_annotations.jgz"
    _edit_jgz(fa, lambda recs: recs[1].update(frame_number=value))
    with pytest.raises(DataError, match="frame_number of sequence 'seq' .* is not an integer") as exc:
        co3d.load_co3d_sequence(tmp_path, "cat", "seq")
    _one_line_naming(exc, fa)
    assert "is not an integer" in _check_cli(capsys, "co3d", tmp_path)


def test_co3d_non_integer_frame_number_in_set_list(tmp_path, capsys):
    co3d.write_co3d_category(tmp_path, "cat", {"seq": SCENE})
    sl = tmp_path / "cat/set_lists/set_lists_fewview_dev.json"
    data = json.loads(sl.read_text())
    data["test"][0][1] = "zero"
    sl.write_text(json.dumps(data))
    with pytest.raises(DataError, match="is not an integer"):
        co3d.Co3dCategory(tmp_path, "cat").split_frames("fewview_dev", "test")
    assert "'zero' is not an integer" in _check_cli(capsys, "co3d", tmp_path)


def test_co3d_empty_test_list_is_an_error(tmp_path, capsys):
    from ptq3d.datasets.protocols import Protocol, load_protocol_scenes

    co3d.write_co3d_category(tmp_path, "cat", {"seq": SCENE})
    sl = tmp_path / "cat/set_lists/set_lists_fewview_dev.json"
    sl.write_text(json.dumps({"train": [], "val": [], "test": []}))
    p = Protocol(
        name="t", version=1, dataset="co3d", scenes=("cat",), options=(("min_viewpoint_quality", None),)
    )
    with pytest.raises(DataError, match="split 'test' is empty") as exc:
        load_protocol_scenes(p, tmp_path)
    _one_line_naming(exc, sl)
    assert "split 'test' is empty" in _check_cli(capsys, "co3d", tmp_path)


def test_co3d_scaled_rotation_is_refused(tmp_path, capsys):
    co3d.write_co3d_category(tmp_path, "cat", {"seq": SCENE})
    fa = tmp_path / "cat/frame_annotations.jgz"
    _edit_jgz(
        fa, lambda recs: recs[2]["viewpoint"].update(R=(3 * np.asarray(recs[2]["viewpoint"]["R"])).tolist())
    )
    with pytest.raises(DataError, match="sequence 'seq' frame 2: rotation is not orthonormal"):
        co3d.load_co3d_sequence(tmp_path, "cat", "seq")
    assert "not orthonormal" in _check_cli(capsys, "co3d", tmp_path)


@pytest.mark.parametrize("pixels, kind", [(64 * 64, "error"), (40 * 40, "warning")])
def test_decompression_bomb_png_is_one_line(tmp_path, capsys, monkeypatch, pixels, kind):
    # PIL raises above 2x MAX_IMAGE_PIXELS and warns between 1x and 2x; a small limit triggers both paths
    seq = _seven(tmp_path)
    side = int(np.sqrt(pixels))
    Image.new("RGB", (side, side)).save(seq / "frame-000000.color.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DataError, match="decompression bomb") as exc:
        _load7(tmp_path)
    _one_line_naming(exc, seq / "frame-000000.color.png")
    assert "decompression bomb" in _check_cli(capsys, "7scenes", tmp_path)


def test_check_reports_an_unforeseen_exception_as_one_line(tmp_path, capsys, monkeypatch):
    _seven(tmp_path)

    def broken(seq_dir, fid, *a, **k):
        raise KeyError("no such field\nsecond line")

    monkeypatch.setattr(sevenscenes, "read_7scenes_frame", broken)
    report = check_dataset("7scenes", tmp_path)
    assert len(report.problems) == 3 and all(
        "\n" not in p and "unreadable (KeyError" in p for p in report.problems
    )
    assert f"{tmp_path / S7} 000000" in report.problems[0]
    assert "unreadable (KeyError" in _check_cli(capsys, "7scenes", tmp_path)
