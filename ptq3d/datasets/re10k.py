"""RealEstate10K camera files as distributed (google.github.io/realestate10k) plus the frames a user extracts from
the videos, in the layout PoseDiffusion's `datasets/re10k.py` reads. Pose only: there is no ground-truth depth.

Layout under ROOT:
    <split>/<sequence>.txt                 one camera file per sequence (split 'train' or 'test')
    frames/<split>/<sequence>/<T>.png      the frame at timestamp T (integer microseconds); .jpg accepted

Camera file: line 1 is the YouTube URL; every further line is one frame,
    timestamp fx fy cx cy k1 k2 r11 r12 r13 t1 r21 r22 r23 t2 r31 r32 r33 t3
with the intrinsics normalised by the image width (fx, cx) and height (fy, cy), two unused zeros, and the
world-to-camera pose [R | t] row-major in OpenCV axes (PoseDiffusion converts it "from COLMAP to PT3D"). K in
pixels is (fx W, fy H, cx W, cy H) for the W x H frame actually read; with pixel centres at +0.5, cx = 0.5 is the
image centre. Translations have an arbitrary scale per sequence (SfM), so only directions are meaningful.

The reference skips frames whose image is missing ("this image is missing"); here a missing image raises
InvalidFrame('missing_image'), a counted skip only where the protocol lists it as skippable.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ptq3d.datasets.base import SceneSample
from ptq3d.datasets.files import read_rgb, require_file, to_uint8, write_rgb
from ptq3d.datasets.frames import Frame, InvalidFrame, assemble_scene, read_frames
from ptq3d.datasets.geometry import check_pose
from ptq3d.datasets.preprocess import Preprocess
from ptq3d.errors import DataError

_SEQ_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def metadata_path(root: str | Path, split: str, sequence: str) -> Path:
    return Path(root) / split / f"{sequence}.txt"


def list_sequences(root: str | Path, split: str = "test") -> list[str]:
    folder = Path(root) / split
    if not folder.is_dir():
        raise DataError(f"{folder}: RealEstate10K split folder not found")
    seqs = sorted(p.stem for p in folder.glob("*.txt"))
    if not seqs:
        raise DataError(f"{folder}: empty split (no <sequence>.txt camera files)")
    return seqs


def read_cameras(path: str | Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Camera file -> {timestamp: (normalised intrinsics [4] = fx fy cx cy, world-to-camera [3, 4])}, in file
    order. One-line DataError naming the file and line for anything malformed."""
    path = require_file(path, "camera file")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for lineno, line in enumerate(lines[1:], 2):
        parts = line.split()
        if not parts:
            continue
        where = f"{path}:{lineno}"
        if len(parts) != 19:
            raise DataError(
                f"{where}: expected 19 numbers (timestamp, 4 intrinsics, 2 zeros, 3x4 pose), got {len(parts)}"
            )
        if not parts[0].isdigit():
            raise DataError(f"{where}: timestamp {parts[0][:30]!r} is not an integer (microseconds)")
        try:
            vals = np.array([float(v) for v in parts[1:]])
        except ValueError:
            raise DataError(f"{where}: not numbers where numbers belong") from None
        intr, pose = vals[:4], vals[6:].reshape(3, 4)
        if not (np.isfinite(intr).all() and intr[0] > 0 and intr[1] > 0):
            raise DataError(f"{where}: normalised focal lengths are not positive and finite")
        check_pose(pose, where)
        ts = int(parts[0])
        if ts in out:
            raise DataError(f"{where}: timestamp {ts} appears twice")
        out[ts] = (intr, pose)
    if not out:
        raise DataError(f"{path}: no camera lines after the URL line")
    return out


def list_frames(root: str | Path, split: str, sequence: str) -> list[int]:
    """Timestamps of a sequence in file order (the camera file defines the frames)."""
    return list(read_cameras(metadata_path(root, split, sequence)))


def _frame_path(root: Path, split: str, sequence: str, ts: int) -> Path:
    base = root / "frames" / split / sequence / f"{ts}"
    png = base.with_suffix(".png")
    return png if png.is_file() or not base.with_suffix(".jpg").is_file() else base.with_suffix(".jpg")


def load_re10k_sequence(
    root: str | Path,
    split: str,
    sequence: str,
    timestamps: list[int] | None = None,
    preprocess: Preprocess | None = None,
    skippable: tuple[str, ...] = (),
) -> SceneSample:
    """Frames `timestamps` (default all, file order) as a SceneSample with poses and intrinsics and no depth
    (depth 0, valid_mask False). meta: dataset 're10k', scene, split, frame_ids, skipped_frames, num_skipped."""
    root = Path(root)
    if not _SEQ_RE.match(sequence):
        raise DataError(f"RealEstate10K sequence id {sequence!r} is not a file name")
    cams = read_cameras(metadata_path(root, split, sequence))
    ids = list(cams) if timestamps is None else [int(t) for t in timestamps]

    def reader(ts: int) -> Frame:
        if ts not in cams:
            raise DataError(f"{metadata_path(root, split, sequence)}: no camera for timestamp {ts}")
        path = _frame_path(root, split, sequence, ts)
        if not path.is_file():
            raise InvalidFrame(f"{path}: missing frame image", "missing_image")
        image = read_rgb(path)
        H, W = image.shape[:2]
        fx, fy, cx, cy = cams[ts][0]
        K = np.array([[fx * W, 0, cx * W], [0, fy * H, cy * H], [0, 0, 1.0]])
        zeros = np.zeros((H, W), np.float32)
        return Frame(str(ts), image, zeros, zeros > 0, K, cams[ts][1])

    frames, skipped = read_frames(reader, ids, skippable)
    meta = {"dataset": "re10k", "scene": sequence, "split": split, "has_depth": False,
            "skipped_frames": skipped, "num_skipped": len(skipped)}  # fmt: skip
    return assemble_scene(frames, meta, preprocess, with_points=False)


def write_re10k_sequence(
    root: str | Path, split: str, sequence: str, sample: SceneSample, first_timestamp: int = 33_366_667
) -> list[int]:
    """Write a scene as a RealEstate10K camera file plus PNG frames; timestamps step by 1/30 s in microseconds.
    Returns the timestamps."""
    root = Path(root)
    H, W = sample.image_size
    lines = [f"https://www.youtube.com/watch?v={sequence}"]
    stamps = []
    for i in range(sample.num_frames):
        ts = first_timestamp + round(i * 1e6 / 30)
        stamps.append(ts)
        K = sample.intrinsics[i].double().numpy()
        intr = [K[0, 0] / W, K[1, 1] / H, K[0, 2] / W, K[1, 2] / H]
        pose = sample.extrinsics[i].double().numpy().reshape(-1)
        lines.append(
            " ".join([str(ts), *(f"{v:.12g}" for v in intr), "0", "0", *(f"{v:.12g}" for v in pose)])
        )
        write_rgb(
            root / "frames" / split / sequence / f"{ts}.png",
            to_uint8(sample.images[i].permute(1, 2, 0).numpy()),
        )
    path = metadata_path(root, split, sequence)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return stamps
