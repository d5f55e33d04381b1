"""Neural RGB-D synthetic scenes (dazinovic/neural-rgbd-surface-reconstruction) as distributed.

Per scene folder: images/img{i}.png, depth/depth{i}.png (uint16 mm, 0 invalid), focal.txt (one float, pixels),
poses.txt (4 rows per frame, camera-to-world in OpenGL axes; frames without a pose hold 'nan').

- Extrinsic: flip pose columns 1 and 2 (OpenGL -> OpenCV camera axes), then invert.
- Intrinsics: fx = fy = focal.txt, principal point at the image centre (320, 240 at 640x480; the eval loaders
  hard-code 554.2562584220408 = 320 / tan 30 deg, which is what focal.txt holds).
- Depth / 1000; depth > 10 m or < 1e-3 m is dropped (Spann3R / Pi3 eval loaders).
- A frame whose pose has nan raises InvalidFrame('nan_pose'); protocols list it as skippable.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ptq3d.datasets.base import SceneSample
from ptq3d.datasets.files import (
    read_matrix_txt,
    read_png_u16,
    read_rgb,
    require_file,
    to_uint8,
    write_png_u16,
    write_rgb,
)
from ptq3d.datasets.frames import Frame, InvalidFrame, assemble_scene, check_same_size, read_frames
from ptq3d.datasets.geometry import GL_TO_CV, check_pose, has_single_centred_focal, invert_pose, to_4x4
from ptq3d.datasets.preprocess import Preprocess
from ptq3d.errors import ConfigError, DataError

SCENES = (
    "breakfast_room", "complete_kitchen", "green_room", "grey_white_room", "kitchen", "morning_apartment",
    "staircase", "thin_geometry", "whiteroom",
)  # fmt: skip
FOCAL = 554.2562584220408
_IMG_RE = re.compile(r"^img(\d+)\.png$")
_DEPTH_RE = re.compile(r"^depth(\d+)\.png$")


def list_scenes(root: str | Path) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: NRGBD root folder not found")
    return sorted(p.name for p in root.iterdir() if (p / "poses.txt").is_file() or (p / "images").is_dir())


def list_frames(scene_dir: str | Path, num_poses: int = 0) -> list[int]:
    """Frame indices with an image or a depth map, plus 0..num_poses-1 (poses.txt has one pose per frame): a
    frame missing its image or depth is listed, and reading it names the missing file."""
    img_dir = Path(scene_dir) / "images"
    if not img_dir.is_dir():
        raise DataError(f"{img_dir}: NRGBD images folder not found")
    ids = {int(m.group(1)) for p in img_dir.iterdir() if (m := _IMG_RE.match(p.name))}
    if not ids:
        raise DataError(f"{img_dir}: empty scene (no img<i>.png files)")
    depth_dir = Path(scene_dir) / "depth"
    if depth_dir.is_dir():
        ids |= {int(m.group(1)) for p in depth_dir.iterdir() if (m := _DEPTH_RE.match(p.name))}
    return sorted(ids | set(range(num_poses)))


def read_focal(scene_dir: Path) -> float:
    path = require_file(scene_dir / "focal.txt", "focal.txt (focal length in pixels)")
    try:
        f = float(path.read_text().split()[0])
    except (ValueError, IndexError):
        raise DataError(f"{path}: expected one number (the focal length in pixels)") from None
    if not (np.isfinite(f) and f > 0):
        raise DataError(f"{path}: focal length {f} is not a positive number")
    return f


def read_poses(scene_dir: Path, name: str = "poses.txt") -> np.ndarray:
    """[N, 4, 4] camera-to-world, OpenGL axes, nan rows kept."""
    path = scene_dir / name
    arr = read_matrix_txt(path)
    if arr.shape[1] != 4 or arr.shape[0] % 4:
        raise DataError(
            f"{path}: expected 4 rows of 4 numbers per frame, got a {arr.shape[0]}x{arr.shape[1]} table"
        )
    return arr.reshape(-1, 4, 4)


def read_nrgbd_frame(
    sdir: Path,
    i: int,
    poses: np.ndarray,
    focal: float,
    depth_dir: str = "depth",
    min_depth=1e-3,
    max_depth=10.0,
) -> Frame:
    """Frame i of a scene folder, given its poses [N, 4, 4] (OpenGL camera-to-world) and focal length."""
    if not 0 <= i < len(poses):
        raise DataError(f"{sdir / 'poses.txt'}: no pose for frame {i}")
    c2w_gl = poses[i]
    if not np.isfinite(c2w_gl).all():
        raise InvalidFrame(f"{sdir / 'poses.txt'}: pose of frame {i} is nan", "nan_pose")
    check_pose(c2w_gl, f"{sdir / 'poses.txt'}: frame {i}")
    c2w = c2w_gl.copy()
    c2w[:3, :3] = c2w[:3, :3] @ GL_TO_CV  # flip camera y and z columns
    image = read_rgb(sdir / "images" / f"img{i}.png")
    dpath = sdir / depth_dir / f"depth{i}.png"
    raw = read_png_u16(dpath)
    d = raw.astype(np.float32) / 1000.0
    ok = (raw > 0) & (d >= min_depth) & (d <= max_depth)
    H, W = image.shape[:2]
    K = np.array([[focal, 0, W / 2], [0, focal, H / 2], [0, 0, 1.0]])
    frame = Frame(str(i), image, np.where(ok, d, 0.0).astype(np.float32), ok, K, invert_pose(c2w))
    check_same_size(frame, "depth map", raw, str(dpath))
    return frame


def load_nrgbd_scene(
    root: str | Path,
    scene: str,
    frame_ids: list[int] | None = None,
    preprocess: Preprocess | None = None,
    skippable: tuple[str, ...] = ("nan_pose",),
    depth_dir: str = "depth",
    min_depth: float = 1e-3,
    max_depth: float = 10.0,
) -> SceneSample:
    """Frames of <root>/<scene> (default all, by image index) as a SceneSample. meta: dataset 'nrgbd', scene,
    frame_ids, skipped_frames, num_skipped, focal."""
    sdir = Path(root) / scene
    if not sdir.is_dir():
        raise DataError(f"{sdir}: NRGBD scene folder not found")
    focal = read_focal(sdir)
    poses = read_poses(sdir)
    all_ids = list_frames(sdir, len(poses))
    if len(poses) < max(all_ids) + 1:
        raise DataError(f"{sdir / 'poses.txt'}: {len(poses)} poses but images go up to img{max(all_ids)}.png")
    ids = all_ids if frame_ids is None else list(frame_ids)

    def reader(i: int) -> Frame:
        return read_nrgbd_frame(sdir, i, poses, focal, depth_dir, min_depth, max_depth)

    frames, skipped = read_frames(reader, ids, skippable)
    meta = {
        "dataset": "nrgbd",
        "scene": scene,
        "skipped_frames": skipped,
        "num_skipped": len(skipped),
        "focal": focal,
    }
    return assemble_scene(frames, meta, preprocess)


def write_nrgbd_scene(scene_dir: str | Path, sample: SceneSample, nan_frames: tuple[int, ...] = ()) -> None:
    """Write a scene in NRGBD's layout: images/img{i}.png, depth/depth{i}.png (mm, 0 invalid), focal.txt,
    poses.txt (OpenGL camera-to-world; frames in `nan_frames` get nan poses, as invalid frames do)."""
    sdir = Path(scene_dir)
    K = sample.intrinsics.double().numpy()
    H, W = sample.image_size
    if not has_single_centred_focal(K, H, W):
        raise ConfigError(
            "NRGBD stores one focal: scenes need fx = fy equal across views and a centred principal point"
        )
    (sdir / "images").mkdir(parents=True, exist_ok=True)
    (sdir / "focal.txt").write_text(f"{float(K[0, 0, 0])!r}\n")
    rows = []
    for i in range(sample.num_frames):
        write_rgb(sdir / "images" / f"img{i}.png", to_uint8(sample.images[i].permute(1, 2, 0).numpy()))
        mm = np.rint(sample.depth[i].double().numpy() * 1000.0)
        ok = sample.valid_mask[i].numpy() & (mm > 0) & (mm < 65535)
        write_png_u16(sdir / "depth" / f"depth{i}.png", np.where(ok, mm, 0).astype(np.uint16))
        c2w = to_4x4(invert_pose(sample.extrinsics[i].double().numpy()))
        c2w[:3, :3] = c2w[:3, :3] @ GL_TO_CV
        if i in nan_frames:
            c2w[:] = np.nan
        rows += [" ".join(f"{v:.10f}" if np.isfinite(v) else "nan" for v in r) for r in c2w]
    (sdir / "poses.txt").write_text("\n".join(rows) + "\n")
