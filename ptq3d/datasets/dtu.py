"""DTU MVS scans in the evaluation layout of Spann3R (`spann3r/datasets/dtu.py`, `docs/data_preprocess.md`), which
Pi3's, CUT3R's, FGQ's (recons_eval) and TAPTQ's point-map evaluations read.

Layout under ROOT, one folder per scan ('scan1', ...):
    <scan>/images/XXXXXXXX.jpg          8-digit view index, 49 views per scan
    <scan>/depths/XXXXXXXX.npy          float32 z-depth in MILLIMETRES, NaN where unknown (read as 0)
    <scan>/binary_masks/XXXXXXXX.png    8-bit object mask (255 = object)
    <scan>/cams/XXXXXXXX_cam.txt        MVSNet camera file (below)
    <scan>/pair.txt                     MVSNet view pairs (not needed by the stride protocols; not read)

MVSNet camera file: the word 'extrinsic', a 4x4 world-to-camera matrix (OpenCV axes, mm), the word 'intrinsic',
a 3x3 pixel K, then 'depth_min depth_interval [num_depth [depth_max]]'. The reference reads the numbers by
position (29 to 31 whitespace-separated words); so does this loader, and it refuses any other count.

Depth validity as the reference: NaN -> 0, the mask is thresholded at 0.5 (of 255), resized to the depth size with
nearest sampling (OpenCV INTER_NEAREST: source index floor(i * old / new)) and eroded with a 10x10 kernel (OpenCV's
anchor, borders not eroded); depth outside the eroded mask is invalid. Units stay millimetres, as the papers'
DTU numbers are (ICP threshold 100 for DTU is in mm); meta['depth_units'] = 'mm' says so.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from scipy.ndimage import binary_erosion

from ptq3d.datasets.base import SceneSample
from ptq3d.datasets.files import read_png_u8, read_rgb, require_file, to_uint8, write_png_u8, write_rgb
from ptq3d.datasets.frames import Frame, assemble_scene, check_same_size
from ptq3d.datasets.geometry import check_pose
from ptq3d.datasets.preprocess import Preprocess
from ptq3d.errors import DataError

# The 22 evaluation scans of the MVSNet/DUSt3R DTU test split (Pi3 configs: 22 scans, stride 5 -> 10 frames).
TEST_SCANS = tuple(f"scan{i}" for i in (1, 4, 9, 10, 11, 12, 13, 15, 23, 24, 29, 32, 33, 34, 48, 49, 62, 75, 77,
                                        110, 114, 118))  # fmt: skip
# TAPTQ's final calibration set DTU_train_8 (notes/methods.md section 4.2 (e)): 8 training scans, kf 5.
TAPTQ_CALIB_SCANS = tuple(f"scan{i}" for i in (5, 6, 7, 8, 18, 22, 56, 123))
MASK_EROSION = 10
_VIEW_RE = re.compile(r"^(\d{8})(?:\.jpg|\.npy|\.png|_cam\.txt)$")


def list_scans(root: str | Path) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: DTU root folder not found")
    return sorted(p.name for p in root.iterdir() if (p / "cams").is_dir() or (p / "images").is_dir())


def list_frames(scan_dir: str | Path) -> list[str]:
    """Sorted 8-digit view ids with any file (image, depth, mask or camera): a view missing one of its files is
    listed, and reading it names the missing file."""
    scan_dir = Path(scan_dir)
    if not scan_dir.is_dir():
        raise DataError(f"{scan_dir}: DTU scan folder not found")
    ids = set()
    for sub in ("images", "depths", "binary_masks", "cams"):
        if (scan_dir / sub).is_dir():
            ids |= {m.group(1) for p in (scan_dir / sub).iterdir() if (m := _VIEW_RE.match(p.name))}
    if not ids:
        raise DataError(f"{scan_dir}: empty scan (no images/XXXXXXXX.jpg or cams/XXXXXXXX_cam.txt files)")
    return sorted(ids)


def read_cam_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """MVSNet camera file -> (K [3, 3] pixels, world-to-camera [4, 4]) as float64; one-line DataError otherwise."""
    path = require_file(path, "camera file")
    words = path.read_text(encoding="utf-8", errors="replace").split()
    if len(words) not in (29, 30, 31) or words[0] != "extrinsic" or words[17] != "intrinsic":
        raise DataError(
            f"{path}: not an MVSNet camera file ('extrinsic' + 16 numbers, 'intrinsic' + 9 numbers, 2-4 depth "
            f"range numbers; got {len(words)} words)"
        )
    try:
        E = np.array([float(w) for w in words[1:17]]).reshape(4, 4)
        K = np.array([float(w) for w in words[18:27]]).reshape(3, 3)
        [float(w) for w in words[27:]]
    except ValueError:
        raise DataError(f"{path}: not numbers where numbers belong") from None
    if not (np.isfinite(K).all() and K[0, 0] > 0 and K[1, 1] > 0):
        raise DataError(f"{path}: intrinsic focal lengths are not positive and finite")
    check_pose(E, str(path))
    if not np.allclose(E[3], [0, 0, 0, 1], atol=1e-6):
        raise DataError(f"{path}: extrinsic last row is {E[3].tolist()}, expected [0, 0, 0, 1]")
    return K, E


def _nearest_floor(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    rows = np.minimum((np.arange(h) * (arr.shape[0] / h)).astype(np.int64), arr.shape[0] - 1)
    cols = np.minimum((np.arange(w) * (arr.shape[1] / w)).astype(np.int64), arr.shape[1] - 1)
    return arr[rows][:, cols]


def read_depth_npy(path: str | Path) -> np.ndarray:
    path = require_file(path, "depth map")
    try:
        d = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(
            f"{path}: not a readable .npy array ({str(exc).splitlines()[0] if str(exc) else exc!r})"
        ) from None
    if d.ndim != 2 or not np.issubdtype(d.dtype, np.floating):
        raise DataError(f"{path}: expected a 2-D float depth map, got {d.dtype} {list(d.shape)}")
    d = np.nan_to_num(d.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return np.where(d > 0, d, 0.0).astype(np.float32)


def read_dtu_frame(scan_dir: Path, view: str) -> Frame:
    image = read_rgb(scan_dir / "images" / f"{view}.jpg")
    K, w2c = read_cam_file(scan_dir / "cams" / f"{view}_cam.txt")
    depth = read_depth_npy(scan_dir / "depths" / f"{view}.npy")
    mask_path = scan_dir / "binary_masks" / f"{view}.png"
    mask = read_png_u8(mask_path) / 255.0 > 0.5
    mask = _nearest_floor(mask, *depth.shape)
    mask = binary_erosion(mask, structure=np.ones((MASK_EROSION, MASK_EROSION), bool), border_value=1)
    valid = mask & (depth > 0)
    frame = Frame(view, image, np.where(valid, depth, 0.0).astype(np.float32), valid, K, w2c[:3, :4])
    check_same_size(frame, "depth map", depth, str(scan_dir / "depths" / f"{view}.npy"))
    return frame


def load_dtu_scan(
    root: str | Path, scan: str, views: list[str] | None = None, preprocess: Preprocess | None = None
) -> SceneSample:
    """Views of <root>/<scan> (default all, sorted) as a SceneSample in millimetres. meta: dataset 'dtu', scene,
    frame_ids, depth_units 'mm'."""
    scan_dir = Path(root) / scan
    ids = list_frames(scan_dir) if views is None else list(views)
    frames = [read_dtu_frame(scan_dir, v) for v in ids]
    return assemble_scene(frames, {"dataset": "dtu", "scene": scan, "depth_units": "mm"}, preprocess)


def _cam_text(K: np.ndarray, w2c: np.ndarray, depth_min: float, interval: float) -> str:
    rows = ["extrinsic", *(" ".join(f"{v:.10g}" for v in r) for r in w2c), "", "intrinsic",
            *(" ".join(f"{v:.10g}" for v in r) for r in K), "", f"{depth_min:.6g} {interval:.6g}"]  # fmt: skip
    return "\n".join(rows) + "\n"


def write_dtu_scan(scan_dir: str | Path, sample: SceneSample, units_per_metre: float = 1000.0) -> None:
    """Write a scene in the DTU evaluation layout, in millimetres (metres x `units_per_metre`): JPEG images,
    .npy depth with NaN where invalid, binary masks (255 = valid depth), MVSNet camera files, a pair.txt."""
    d = Path(scan_dir)
    n = sample.num_frames
    for i in range(n):
        view = f"{i:08d}"
        write_rgb(d / "images" / f"{view}.jpg", to_uint8(sample.images[i].permute(1, 2, 0).numpy()))
        valid = sample.valid_mask[i].numpy()
        depth = np.where(valid, sample.depth[i].double().numpy() * units_per_metre, np.nan).astype(np.float32)
        (d / "depths").mkdir(parents=True, exist_ok=True)
        np.save(d / "depths" / f"{view}.npy", depth)
        write_png_u8(d / "binary_masks" / f"{view}.png", valid.astype(np.uint8) * 255)
        w2c = np.eye(4)
        w2c[:3, :4] = sample.extrinsics[i].double().numpy()
        w2c[:3, 3] *= units_per_metre
        (d / "cams").mkdir(parents=True, exist_ok=True)
        dmin = float(np.nanmin(depth)) if valid.any() else 425.0
        (d / "cams" / f"{view}_cam.txt").write_text(
            _cam_text(sample.intrinsics[i].double().numpy(), w2c, dmin, 2.5)
        )
    pairs = [str(n)]
    for i in range(n):
        others = [j for j in range(n) if j != i][:10]
        pairs += [str(i), f"{len(others)} " + " ".join(f"{j} {100.0 - k:.1f}" for k, j in enumerate(others))]
    (d / "pair.txt").write_text("\n".join(pairs) + "\n")
