"""KITTI depth in the layout MonST3R's `datasets_preprocess/prepare_kitti.py` writes, which the video- and
mono-depth evaluations of MonST3R, CUT3R and Pi3 read (FGQ's KITTI depth table follows them).

Layout under ROOT (the folder holding depth_selection/):
    depth_selection/val_selection_cropped/groundtruth_depth_gathered/<drive>_02/<frame>.png
    depth_selection/val_selection_cropped/image_gathered/<drive>_02/<frame>.png
where <drive> is a KITTI raw drive of the depth-benchmark val split ('2011_09_26_drive_0002_sync'), <frame> its
10-digit frame number, and the script keeps the first 110 ground-truth frames of each drive (left colour camera,
image_02). The images are copied from the raw drive unchanged (not cropped, despite the folder name).

Ground truth: uint16 PNG, depth in metres = value / 256, 0 = no LiDAR point (the devkit's `depth_read`). There are
no camera poses or intrinsics in this layout: extrinsics and intrinsics are NaN (meta has_poses / has_intrinsics
False), so a pose or point-map metric on KITTI fails loudly instead of reading made-up cameras.
The reference copies a depth map even when its image is missing; here a frame missing either file is an error
naming it (InvalidFrame('missing_image') for the image, a counted skip only where the protocol lists it).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ptq3d.datasets.base import SceneSample
from ptq3d.datasets.files import read_png_u16, read_rgb, to_uint8, write_png_u16, write_rgb
from ptq3d.datasets.frames import Frame, InvalidFrame, assemble_scene, check_same_size, read_frames
from ptq3d.datasets.preprocess import Preprocess
from ptq3d.errors import DataError

BASE = Path("depth_selection/val_selection_cropped")
DEPTH_DIR = BASE / "groundtruth_depth_gathered"
IMAGE_DIR = BASE / "image_gathered"
DEPTH_SCALE = 256.0
FRAMES_PER_DRIVE = 110
_FRAME_RE = re.compile(r"^(\d+)\.png$")


def list_drives(root: str | Path) -> list[str]:
    folder = Path(root) / DEPTH_DIR
    if not folder.is_dir():
        raise DataError(f"{folder}: KITTI ground-truth folder not found")
    drives = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not drives:
        raise DataError(f"{folder}: no drive folders")
    return drives


def list_frames(root: str | Path, drive: str) -> list[str]:
    """Frame numbers (file stems) with a depth map or an image, sorted."""
    ids = set()
    for sub in (DEPTH_DIR, IMAGE_DIR):
        folder = Path(root) / sub / drive
        if folder.is_dir():
            ids |= {m.group(1) for p in folder.iterdir() if (m := _FRAME_RE.match(p.name))}
    if not ids:
        raise DataError(f"{Path(root) / DEPTH_DIR / drive}: empty or missing drive folder")
    return sorted(ids)


def read_kitti_frame(root: Path, drive: str, frame: str) -> Frame:
    depth_path = root / DEPTH_DIR / drive / f"{frame}.png"
    image_path = root / IMAGE_DIR / drive / f"{frame}.png"
    raw = read_png_u16(depth_path)
    if not image_path.is_file():
        raise InvalidFrame(f"{image_path}: missing image of a ground-truth depth map", "missing_image")
    image = read_rgb(image_path)
    depth = raw.astype(np.float32) / DEPTH_SCALE
    no_K, no_pose = (
        np.full((3, 3), np.nan),
        np.full((3, 4), np.nan),
    )  # not in this layout: fail loudly if used
    f = Frame(frame, image, np.where(raw > 0, depth, 0.0).astype(np.float32), raw > 0, no_K, no_pose)
    check_same_size(f, "depth map", raw, str(depth_path))
    return f


def load_kitti_drive(
    root: str | Path,
    drive: str,
    frames: list[str] | None = None,
    preprocess: Preprocess | None = None,
    skippable: tuple[str, ...] = (),
) -> SceneSample:
    """Frames of one drive (default all, sorted) as a SceneSample with depth only. meta: dataset 'kitti', scene,
    frame_ids, has_poses False, has_intrinsics False, skipped_frames, num_skipped."""
    root = Path(root)
    ids = list_frames(root, drive) if frames is None else list(frames)
    got, skipped = read_frames(lambda fid: read_kitti_frame(root, drive, fid), ids, skippable)
    meta = {"dataset": "kitti", "scene": drive, "has_poses": False, "has_intrinsics": False,
            "skipped_frames": skipped, "num_skipped": len(skipped)}  # fmt: skip
    return assemble_scene(got, meta, preprocess, with_points=False)


def write_kitti_drive(root: str | Path, drive: str, sample: SceneSample, first_frame: int = 5) -> list[str]:
    """Write a scene as one gathered drive: PNG images, uint16 depth x 256 (0 invalid). Returns the frame ids."""
    root = Path(root)
    ids = []
    for i in range(sample.num_frames):
        fid = f"{first_frame + i:010d}"
        ids.append(fid)
        write_rgb(
            root / IMAGE_DIR / drive / f"{fid}.png", to_uint8(sample.images[i].permute(1, 2, 0).numpy())
        )
        d = np.rint(sample.depth[i].double().numpy() * DEPTH_SCALE)
        ok = sample.valid_mask[i].numpy() & (d > 0) & (d <= 65535)
        write_png_u16(root / DEPTH_DIR / drive / f"{fid}.png", np.where(ok, d, 0).astype(np.uint16))
    return ids
