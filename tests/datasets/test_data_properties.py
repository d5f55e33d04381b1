"""Property-based: generated mutations of datasets written in their real formats (deleted files, truncated files,
garbage bytes, nan or scaled poses, empty lists) go through the loaders and `ptq3d data check`. Each must end in
success or a one-line ptq3d UserError, never a traceback; `data check` must agree with the loader; and for every
mutation except truncation, a load that succeeds must give the same numbers as before (no silent change).

Truncation is exempt from the last property: cutting a one-number text file (NRGBD focal.txt '55.42...' ->
'55.4') leaves a valid, different number that only a checksum manifest could detect."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ptq3d.datasets import check_dataset, co3d, dtu, eth3d, kitti, nrgbd, re10k, sevenscenes
from ptq3d.datasets.synthetic import CameraConfig, generate_scene
from ptq3d.errors import UserError
from ptq3d.harness.cli import main

SCENE = generate_scene(41, num_frames=2, height=16, width=16, camera=CameraConfig(fov_deg=(60, 60)))
FOCAL = float(SCENE.intrinsics[0, 0, 0])
FORMATS = ("co3d", "7scenes", "nrgbd", "eth3d", "dtu", "re10k", "kitti")
MUTATIONS = ("delete", "truncate", "garbage", "nan_pose", "scale_pose", "empty")


def _write(fmt: str, root: Path) -> None:
    if fmt == "co3d":
        co3d.write_co3d_category(root, "cat", {"seq": SCENE})
    elif fmt == "7scenes":
        sevenscenes.write_7scenes_scene(root, "sc", {1: SCENE})
    elif fmt == "nrgbd":
        nrgbd.write_nrgbd_scene(root / "room", SCENE)
    elif fmt == "dtu":
        dtu.write_dtu_scan(root / "scan1", SCENE)
    elif fmt == "re10k":
        re10k.write_re10k_sequence(root, "test", "seq", SCENE)
    elif fmt == "kitti":
        kitti.write_kitti_drive(root, "drive_02", SCENE)
    else:
        eth3d.write_eth3d_scene(root / "court", SCENE)


def _load(fmt: str, root: Path):
    if fmt == "co3d":
        return co3d.load_co3d_sequence(root, "cat", "seq")
    if fmt == "7scenes":
        return sevenscenes.load_7scenes_sequence(root, "sc", "seq-01", focal=FOCAL)
    if fmt == "nrgbd":
        return nrgbd.load_nrgbd_scene(root, "room", skippable=())
    if fmt == "dtu":
        return dtu.load_dtu_scan(root, "scan1")
    if fmt == "re10k":
        return re10k.load_re10k_sequence(root, "test", "seq")
    if fmt == "kitti":
        return kitti.load_kitti_drive(root, "drive_02")
    return eth3d.load_eth3d_scene(root, "court")


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    out = {}
    for fmt in FORMATS:
        root = tmp_path_factory.mktemp(f"tpl-{fmt}")
        _write(fmt, root)
        files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
        out[fmt] = (root, files, _load(fmt, root).content_hash())
    return out


def _pose_files(fmt: str, files: list[Path]) -> list[Path]:
    names = {"co3d": "frame_annotations.jgz", "7scenes": ".pose.txt", "nrgbd": "poses.txt", "eth3d": "images.txt",
             "dtu": "_cam.txt", "re10k": "seq.txt", "kitti": "no poses"}  # fmt: skip
    return [f for f in files if str(f).endswith(names[fmt])]


def _mutate_pose(fmt: str, path: Path, how: str, frame: int) -> None:
    """Write a nan (how='nan_pose') or x3-scaled rotation (how='scale_pose') into one pose, in the file's format."""
    if fmt == "co3d":
        import gzip
        import json

        recs = json.loads(gzip.decompress(path.read_bytes()))
        R = np.asarray(recs[frame % len(recs)]["viewpoint"]["R"])
        recs[frame % len(recs)]["viewpoint"]["R"] = (R * 3 if how == "scale_pose" else R * np.nan).tolist()
        path.write_bytes(gzip.compress(json.dumps(recs).encode()))
    elif fmt == "eth3d":  # quaternions are normalised by definition: scaling one is no error, nan is
        lines = path.read_text().splitlines()
        data = [i for i, ln in enumerate(lines) if ln and not ln.startswith("#")][::2]
        parts = lines[data[frame % len(data)]].split()
        parts[1] = "nan" if how == "nan_pose" else parts[1]
        lines[data[frame % len(data)]] = " ".join(parts)
        path.write_text("\n".join(lines) + "\n")
    elif fmt == "dtu":
        lines = path.read_text().split("\n")
        row = [float(v) for v in lines[1].split()]
        row[0] = row[0] * 3 if how == "scale_pose" else float("nan")
        lines[1:4] = [" ".join(repr(v * (3 if how == "scale_pose" and k < 3 else 1)) for k, v in enumerate(
            [float(x) for x in ln.split()])) for ln in lines[1:4]]  # fmt: skip
        if how == "nan_pose":
            lines[1] = "nan " + lines[1].split(" ", 1)[1]
        path.write_text("\n".join(lines))
    elif fmt == "re10k":
        lines = path.read_text().splitlines()
        k = 1 + frame % (len(lines) - 1)
        parts = lines[k].split()
        for i in (7, 8, 9):
            parts[i] = repr(float(parts[i]) * 3) if how == "scale_pose" else "nan"
        lines[k] = " ".join(parts)
        path.write_text("\n".join(lines) + "\n")
    else:
        m = np.loadtxt(path).reshape(-1, 4, 4)
        k = frame % len(m)
        m[k, :3, :3] = m[k, :3, :3] * (3 if how == "scale_pose" else np.nan)
        path.write_text("\n".join(" ".join(f"{v:.9e}" for v in row) for row in m.reshape(-1, 4)) + "\n")


@settings(max_examples=90, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fmt=st.sampled_from(FORMATS),
    how=st.sampled_from(MUTATIONS),
    pick=st.integers(0, 10_000),
    keep=st.floats(0.0, 0.9),
    junk=st.binary(min_size=0, max_size=64),
)
def test_mutated_dataset_gives_one_line_error_or_same_numbers(
    templates, tmp_path_factory, capsys, fmt, how, pick, keep, junk
):
    template, files, original = templates[fmt]
    root = tmp_path_factory.mktemp("mut")
    shutil.copytree(template, root, dirs_exist_ok=True)
    if how in ("nan_pose", "scale_pose"):
        assume(fmt != "kitti")  # KITTI's layout has no poses
        target = _pose_files(fmt, files)[pick % len(_pose_files(fmt, files))]
        _mutate_pose(fmt, root / target, how, pick)
    else:
        target = files[pick % len(files)]
        path = root / target
        if how == "delete":
            path.unlink()
        elif how == "truncate":
            data = path.read_bytes()
            path.write_bytes(data[: int(len(data) * keep)])
        elif how == "garbage":
            path.write_bytes(junk)
        else:  # empty
            path.write_bytes(b"")

    loaded, error = None, None
    try:
        loaded = _load(fmt, root)
    except UserError as exc:
        error = str(exc)
        assert error and "\n" not in error, error
    if loaded is not None and how != "truncate":
        assert loaded.content_hash() == original, f"{how} of {target} changed the numbers silently"

    report = check_dataset(fmt, root)  # never raises
    assert all("\n" not in line for line in report.problems + report.invalid)
    if error is not None:
        assert not report.ok or report.invalid, f"loader failed ({error}) but data check found nothing"
    code = main(["data", "check", fmt, str(root)])
    out = capsys.readouterr()
    assert code in (0, 1) and "Traceback" not in out.out + out.err
    shutil.rmtree(root)
