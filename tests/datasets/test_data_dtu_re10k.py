"""DTU (Spann3R evaluation layout) and RealEstate10K (camera files + extracted frames): round trip through files
written in the real format by the synthetic generator, malformed-file cases with one-line errors, `data check`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ptq3d.datasets import check_dataset, dtu, re10k
from ptq3d.datasets.synthetic import CameraConfig, generate_scene, write_synthetic_dataset
from ptq3d.errors import DataError
from ptq3d.harness.cli import main

SCENE = generate_scene(51, num_frames=3, height=48, width=64, camera=CameraConfig(fov_deg=(60, 60)))


# ---------------------------------------------------------------------------------------------- DTU
@pytest.fixture()
def dtu_root(tmp_path):
    dtu.write_dtu_scan(tmp_path / "scan1", SCENE)
    return tmp_path


def test_dtu_layout_and_camera_file(dtu_root):
    scan = dtu_root / "scan1"
    assert sorted(p.name for p in scan.iterdir()) == ["binary_masks", "cams", "depths", "images", "pair.txt"]
    words = (scan / "cams/00000001_cam.txt").read_text().split()
    assert words[0] == "extrinsic" and words[17] == "intrinsic" and len(words) == 29  # MVSNet layout
    assert np.load(scan / "depths/00000000.npy").dtype == np.float32


def test_dtu_round_trip_in_millimetres(dtu_root):
    mask = np.full((48, 64), 255, np.uint8)
    mask[20:30, 20:30] = 0  # an invalid block in view 0: the 10x10 erosion grows it to rows/cols 16..34
    Image.fromarray(mask).save(dtu_root / "scan1/binary_masks/00000000.png")
    s = dtu.load_dtu_scan(dtu_root, "scan1")
    invalid = np.where(~s.valid_mask[0].numpy().all(axis=1))[0]
    assert (invalid.min(), invalid.max()) == (16, 34)
    assert s.meta["depth_units"] == "mm" and s.meta["frame_ids"] == ["00000000", "00000001", "00000002"]
    np.testing.assert_allclose(s.intrinsics.numpy(), SCENE.intrinsics.numpy(), rtol=1e-6)
    np.testing.assert_allclose(s.extrinsics[:, :, :3].numpy(), SCENE.extrinsics[:, :, :3].numpy(), atol=1e-6)
    np.testing.assert_allclose(
        s.extrinsics[:, :, 3].numpy(), SCENE.extrinsics[:, :, 3].numpy() * 1000, rtol=1e-5
    )
    v = s.valid_mask.numpy()
    orig = SCENE.valid_mask.numpy()
    # the reference erodes the mask with a 10x10 kernel: fewer valid pixels, all of them valid before
    assert v.sum() > 0 and not (v & ~orig).any() and v.sum() < orig.sum()
    np.testing.assert_allclose(s.depth.numpy()[v], SCENE.depth.numpy()[v] * 1000, rtol=1e-6)
    # points are unprojected in the same millimetre world as the cameras
    np.testing.assert_allclose(s.points.numpy()[v], SCENE.points.numpy()[v] * 1000, rtol=1e-3, atol=0.5)


def test_dtu_erosion_matches_kernel_semantics():
    """A 20x20 valid square in a 40x40 mask keeps rows/cols 15..24 after a 10x10 erosion with anchor (5, 5)."""
    from scipy.ndimage import binary_erosion

    m = np.zeros((40, 40), bool)
    m[10:30, 10:30] = True
    e = binary_erosion(m, structure=np.ones((10, 10), bool), border_value=1)
    rows = np.where(e.any(axis=1))[0]
    assert (rows.min(), rows.max()) == (15, 25)  # offsets -5..+4 about the anchor


def _cam(root: Path, view="00000001") -> Path:
    return root / "scan1" / "cams" / f"{view}_cam.txt"


def _scale_extrinsic(path: Path) -> None:
    w = path.read_text().split("\n")
    rows = [np.array(w[i].split(), float) for i in range(1, 4)]
    for i, r in enumerate(rows, 1):
        r[:3] *= 3
        w[i] = " ".join(f"{v:.10g}" for v in r)
    path.write_text("\n".join(w))


def _nan_first(path: Path) -> None:
    lines = path.read_text().split("\n")
    lines[1] = "nan " + lines[1].split(" ", 1)[1]
    path.write_text("\n".join(lines))


DTU_CASES = [
    ("missing-cam", lambda r: _cam(r).unlink(), "00000001_cam.txt: missing camera file"),
    ("missing-depth", lambda r: (r / "scan1/depths/00000002.npy").unlink(), "00000002.npy: missing depth map"),
    ("missing-mask", lambda r: (r / "scan1/binary_masks/00000000.png").unlink(), "00000000.png: missing image"),
    ("cam-words", lambda r: _cam(r).write_text("extrinsic 1 0 0\n"), "not an MVSNet camera file"),
    ("cam-scaled-rotation", lambda r: _scale_extrinsic(_cam(r)), "not orthonormal"),
    ("cam-nan", lambda r: _nan_first(_cam(r)), "pose contains nan"),
    ("depth-garbage", lambda r: (r / "scan1/depths/00000000.npy").write_bytes(b"\x93NUMPY garbage"), "not a readable .npy"),
    ("depth-3d", lambda r: np.save(r / "scan1/depths/00000000.npy", np.zeros((2, 2, 2), np.float32)), "2-D float"),
    ("depth-size", lambda r: np.save(r / "scan1/depths/00000000.npy", np.ones((5, 5), np.float32)), "depth map is 5x5"),
    ("truncated-image", lambda r: (r / "scan1/images/00000001.jpg").write_bytes(
        (r / "scan1/images/00000001.jpg").read_bytes()[:200]), "00000001.jpg: corrupt"),
]  # fmt: skip


@pytest.mark.parametrize("case", DTU_CASES, ids=[c[0] for c in DTU_CASES])
def test_dtu_malformed(dtu_root, capsys, case):
    _, mutate, match = case
    mutate(dtu_root)
    with pytest.raises(DataError, match=match) as exc:
        dtu.load_dtu_scan(dtu_root, "scan1")
    assert "\n" not in str(exc.value) and str(dtu_root) in str(exc.value)
    assert main(["data", "check", "dtu", str(dtu_root)]) == 1
    out = capsys.readouterr()
    assert "PROBLEM" in out.out and "Traceback" not in out.out + out.err


def test_dtu_check_ok_and_synth_cli(tmp_path, capsys):
    assert main(["data", "synth", "dtu", str(tmp_path), "--seeds", "3", "--frames", "2", "--height", "32",
                 "--width", "32"]) == 0  # fmt: skip
    report = check_dataset("dtu", tmp_path)
    assert report.ok and report.scenes == 1 and report.frames_ok == 2


# ---------------------------------------------------------------------------------------------- RealEstate10K
@pytest.fixture()
def re10k_root(tmp_path):
    stamps = re10k.write_re10k_sequence(tmp_path, "test", "abc123", SCENE)
    return tmp_path, stamps


def test_re10k_camera_file_format(re10k_root):
    root, stamps = re10k_root
    lines = (root / "test/abc123.txt").read_text().splitlines()
    assert lines[0].startswith("https://") and len(lines) == 4
    parts = lines[1].split()
    assert len(parts) == 19 and parts[0] == str(stamps[0]) and parts[5:7] == ["0", "0"]
    assert float(parts[3]) == pytest.approx(0.5)  # principal point at the centre, normalised by the width
    assert (root / "frames/test/abc123" / f"{stamps[2]}.png").is_file()


def test_re10k_round_trip(re10k_root):
    root, stamps = re10k_root
    s = re10k.load_re10k_sequence(root, "test", "abc123")
    assert s.meta["frame_ids"] == [str(t) for t in stamps] and not s.valid_mask.any() and s.points is None
    np.testing.assert_allclose(s.intrinsics.numpy(), SCENE.intrinsics.numpy(), rtol=1e-6)
    np.testing.assert_allclose(s.extrinsics.numpy(), SCENE.extrinsics.numpy(), atol=1e-6)
    assert np.abs(s.images.numpy() - SCENE.images.numpy()).max() <= 0.5 / 255 + 1e-6  # PNG, lossless
    assert check_dataset("re10k", root).ok


def test_re10k_missing_frame_is_error_or_counted_skip(re10k_root, capsys):
    root, stamps = re10k_root
    (root / "frames/test/abc123" / f"{stamps[1]}.png").unlink()
    with pytest.raises(DataError, match=f"{stamps[1]}.png: missing frame image"):
        re10k.load_re10k_sequence(root, "test", "abc123")
    with pytest.warns(UserWarning):
        s = re10k.load_re10k_sequence(root, "test", "abc123", skippable=("missing_image",))
    assert s.num_frames == 2 and s.meta["num_skipped"] == 1
    report = check_dataset("re10k", root)
    assert len(report.invalid) == 1 and "missing frame image" in report.invalid[0]


def _edit_line(root: Path, lineno: int, fn) -> None:
    p = root / "test/abc123.txt"
    lines = p.read_text().splitlines()
    lines[lineno] = fn(lines[lineno])
    p.write_text("\n".join(lines) + "\n")


def _scale_r(line: str) -> str:
    parts = line.split()
    for i in (7, 8, 9, 11, 12, 13, 15, 16, 17):
        parts[i] = repr(3 * float(parts[i]))
    return " ".join(parts)


RE10K_CASES = [
    ("short-line", lambda r: _edit_line(r, 1, lambda ln: " ".join(ln.split()[:10])), "expected 19 numbers"),
    ("float-timestamp", lambda r: _edit_line(r, 2, lambda ln: "1.5 " + ln.split(" ", 1)[1]), "not an integer"),
    ("garbage-value", lambda r: _edit_line(r, 1, lambda ln: ln.replace(" 0 0 ", " 0 zero ")), "not numbers"),
    ("scaled-rotation", lambda r: _edit_line(r, 3, _scale_r), "not orthonormal"),
    ("nan-pose", lambda r: _edit_line(r, 1, lambda ln: " ".join(ln.split()[:7] + ["nan"] + ln.split()[8:])), "nan"),
    ("zero-focal", lambda r: _edit_line(r, 1, lambda ln: " ".join(ln.split()[:1] + ["0"] + ln.split()[2:])), "focal"),
    ("no-cameras", lambda r: (r / "test/abc123.txt").write_text("https://x\n"), "no camera lines"),
    ("duplicate", lambda r: _edit_line(r, 2, lambda ln: (r / "test/abc123.txt").read_text().splitlines()[1]), "twice"),
    ("corrupt-frame", lambda r: next((r / "frames/test/abc123").glob("*.png")).write_bytes(b"\x89PNG"), "corrupt"),
]  # fmt: skip


@pytest.mark.parametrize("case", RE10K_CASES, ids=[c[0] for c in RE10K_CASES])
def test_re10k_malformed(re10k_root, capsys, case):
    root, _ = re10k_root
    _, mutate, match = case
    mutate(root)
    with pytest.raises(DataError, match=match) as exc:
        re10k.load_re10k_sequence(root, "test", "abc123")
    assert "\n" not in str(exc.value) and str(root) in str(exc.value)
    assert main(["data", "check", "re10k", str(root)]) == 1
    out = capsys.readouterr()
    assert "PROBLEM" in out.out and "Traceback" not in out.out + out.err


def test_re10k_empty_split_is_error(tmp_path):
    (tmp_path / "test").mkdir()
    with pytest.raises(DataError, match="empty split"):
        re10k.list_sequences(tmp_path, "test")
    assert not check_dataset("re10k", tmp_path).ok


def test_re10k_jpeg_frames_accepted(re10k_root):
    root, stamps = re10k_root
    for t in stamps:
        p = root / "frames/test/abc123" / f"{t}.png"
        Image.open(p).convert("RGB").save(p.with_suffix(".jpg"), quality=95)
        p.unlink()
    assert re10k.load_re10k_sequence(root, "test", "abc123").num_frames == 3


def test_synthetic_writer_covers_new_formats(tmp_path):
    ids = write_synthetic_dataset("re10k", tmp_path / "r", [7], num_frames=2, height=16, width=16)
    assert ids == ["seed_7"] and re10k.list_frames(tmp_path / "r", "test", "seed_7")
    assert write_synthetic_dataset("dtu", tmp_path / "d", [7], num_frames=2, height=16, width=16) == ["scan7"]


# ---------------------------------------------------------------------------------------------- KITTI
@pytest.fixture()
def kitti_root(tmp_path):
    from ptq3d.datasets import kitti

    return tmp_path, kitti.write_kitti_drive(tmp_path, "2011_09_26_drive_0002_sync_02", SCENE)


def test_kitti_round_trip_depth_only(kitti_root):
    from ptq3d.datasets import kitti

    root, ids = kitti_root
    assert (
        ids[0] == "0000000005"
        and (root / kitti.DEPTH_DIR / "2011_09_26_drive_0002_sync_02" / f"{ids[0]}.png").is_file()
    )
    s = kitti.load_kitti_drive(root, "2011_09_26_drive_0002_sync_02")
    assert s.meta["frame_ids"] == ids and s.meta["has_poses"] is False and s.points is None
    v = s.valid_mask.numpy()
    assert (v == SCENE.valid_mask.numpy()).all()
    assert np.abs(s.depth.numpy()[v] - SCENE.depth.numpy()[v]).max() <= 0.5 / 256 + 1e-6  # 1/256 m steps
    assert (
        np.isnan(s.extrinsics.numpy()).all() and np.isnan(s.intrinsics.numpy()).all()
    )  # no cameras: not faked
    assert check_dataset("kitti", root).ok


def test_kitti_malformed(kitti_root, capsys):
    from ptq3d.datasets import kitti

    root, ids = kitti_root
    drive = "2011_09_26_drive_0002_sync_02"
    (root / kitti.IMAGE_DIR / drive / f"{ids[1]}.png").unlink()
    with pytest.raises(DataError, match=f"{ids[1]}.png: missing image of a ground-truth depth map"):
        kitti.load_kitti_drive(root, drive)
    with pytest.warns(UserWarning):
        assert kitti.load_kitti_drive(root, drive, skippable=("missing_image",)).meta["num_skipped"] == 1
    (root / kitti.DEPTH_DIR / drive / f"{ids[2]}.png").write_bytes(b"\x89PNG\r\n")
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(root / kitti.DEPTH_DIR / drive / f"{ids[0]}.png")
    report = check_dataset("kitti", root)
    assert any(f"{ids[2]}.png: corrupt" in p for p in report.problems)
    assert any("expected a 16-bit" in p for p in report.problems) and len(report.invalid) == 1
    assert main(["data", "check", "kitti", str(root)]) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_kitti_protocol(kitti_root):
    import dataclasses

    from ptq3d.datasets.protocols import check_roots, get_protocol, load_protocol_scenes

    root, ids = kitti_root
    p = dataclasses.replace(get_protocol("pi3-kitti-depth"), resolution=56)
    (s,) = load_protocol_scenes(p, root)
    assert s.meta["dataset"] == "kitti" and s.image_size == (42, 56) and s.num_frames == 3
    assert check_roots(p.restrict(["2011_09_26_drive_0002_sync_02"]), root) == []
    assert "drive_0009" in check_roots(p.restrict(["2011_09_26_drive_0009_sync_02"]), root)[0]
