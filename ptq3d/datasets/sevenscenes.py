"""Microsoft 7-Scenes as distributed, plus the registered depth that the evaluation protocols use.

Layout under ROOT: <scene>/TrainSplit.txt, <scene>/TestSplit.txt (lines 'sequenceN' -> folder 'seq-0N'),
<scene>/seq-XX/frame-XXXXXX.{color.png, depth.png, pose.txt} and, after SimpleRecon's preprocessing,
frame-XXXXXX.depth.proj.png.

- pose.txt: 4x4 camera-to-world in metres (OpenCV axes). The extrinsic is its exact inverse (the stored rotation is
  only nearly orthonormal; the reference loaders use it as is).
- depth.proj.png: uint16 mm registered to the colour camera (f = 525, c = (320, 240) at 640x480), 0 invalid.
  depth.png: raw Kinect depth, uint16 mm, 0 and 65535 invalid, NOT registered to colour (f = 585). With
  depth_source='auto' the registered file is used when present, else the raw one with the colour intrinsics
  (QuantVGGT's choice); meta['depth_source'] records which.
- All eval loaders drop depth > 10 m or < 1e-3 m.
- Intrinsics: fx = fy = `focal` (525), principal point at the image centre (W/2, H/2).
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
from ptq3d.datasets.geometry import check_pose, has_single_centred_focal, invert_pose, to_4x4
from ptq3d.datasets.preprocess import Preprocess
from ptq3d.errors import ConfigError, DataError

SCENES = ("chess", "fire", "heads", "office", "pumpkin", "redkitchen", "stairs")
# The 18 TestSplit sequences (Pi3 seq-id maps; the official TestSplit.txt files).
TEST_SEQUENCES = {
    "chess": ("seq-03", "seq-05"),
    "fire": ("seq-03", "seq-04"),
    "heads": ("seq-01",),
    "office": ("seq-02", "seq-06", "seq-07", "seq-09"),
    "pumpkin": ("seq-01", "seq-07"),
    "redkitchen": ("seq-03", "seq-04", "seq-06", "seq-12", "seq-14"),
    "stairs": ("seq-01", "seq-04"),
}
FOCAL = 525.0
DEPTH_SOURCES = ("auto", "proj", "raw")
_FRAME_RE = re.compile(r"^frame-(\d+)\.(?:pose\.txt|color\.png|color\.jpg|depth\.png|depth\.proj\.png)$")


def read_split(path: str | Path) -> list[str]:
    """TrainSplit.txt / TestSplit.txt -> sequence folder names ('sequence4' -> 'seq-04'); CRLF tolerated."""
    path = require_file(path, "split file")
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        m = re.fullmatch(r"sequence(\d+)", line)
        if not m:
            raise DataError(f"{path}:{lineno}: expected 'sequenceN', got {line[:40]!r}")
        out.append(f"seq-{int(m.group(1)):02d}")
    if not out:
        raise DataError(f"{path}: empty split file (expected lines 'sequenceN')")
    return out


def list_sequences(root: str | Path, split: str = "test", scenes: list[str] | None = None) -> list[str]:
    """'<scene>/seq-XX' ids of a split ('test', 'train' or 'all' folders) for the scenes present under root."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: 7-Scenes root folder not found")
    names = scenes or sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("seq-*")))
    out = []
    for scene in names:
        sdir = root / scene
        if not sdir.is_dir():
            raise DataError(f"{sdir}: 7-Scenes scene folder not found")
        if split == "all":
            seqs = sorted(p.name for p in sdir.glob("seq-*") if p.is_dir())
        elif split in ("test", "train"):
            seqs = read_split(sdir / ("TestSplit.txt" if split == "test" else "TrainSplit.txt"))
        else:
            raise ConfigError(f"7-Scenes split '{split}' is not 'test', 'train' or 'all'")
        out += [f"{scene}/{s}" for s in seqs]
    return out


def list_frames(seq_dir: str | Path) -> list[str]:
    """Sorted frame ids ('000000', ...) of a sequence folder: every id that has any frame file (colour, depth or
    pose), so a frame missing one of its files is listed and its reader names the missing file instead of the
    frame silently dropping out."""
    seq_dir = Path(seq_dir)
    if not seq_dir.is_dir():
        raise DataError(f"{seq_dir}: 7-Scenes sequence folder not found")
    ids = sorted({m.group(1) for p in seq_dir.iterdir() if (m := _FRAME_RE.match(p.name))})
    if not ids:
        raise DataError(f"{seq_dir}: empty sequence (no frame-XXXXXX.color/depth/pose files)")
    return ids


def read_pose(path: Path) -> np.ndarray:
    """camera-to-world 4x4 -> camera-from-world [3, 4]; nan/inf raises InvalidFrame('nan_pose')."""
    c2w = read_matrix_txt(require_file(path, "pose file"), (4, 4))
    if not np.isfinite(c2w).all():
        raise InvalidFrame(f"{path}: pose contains nan/inf", "nan_pose")
    check_pose(c2w, str(path))  # nearly orthonormal as distributed; a scaled or sheared one is refused
    if not np.allclose(c2w[3], [0, 0, 0, 1], atol=1e-6):
        raise DataError(f"{path}: last row is {c2w[3].tolist()}, expected [0, 0, 0, 1]")
    return invert_pose(c2w)


def read_depth_mm(path: Path, min_depth: float, max_depth: float) -> np.ndarray:
    """uint16 millimetres -> float32 metres; 0 and 65535 invalid, outside [min_depth, max_depth] invalid."""
    raw = read_png_u16(path)
    d = raw.astype(np.float32) / 1000.0
    ok = (raw != 0) & (raw != 65535) & (d >= min_depth) & (d <= max_depth)
    return np.where(ok, d, 0.0).astype(np.float32)


def read_7scenes_frame(
    seq_dir: Path,
    frame_id: str,
    focal: float = FOCAL,
    depth_source: str = "auto",
    min_depth=1e-3,
    max_depth=10.0,
) -> tuple[Frame, str]:
    stem = seq_dir / f"frame-{frame_id}"
    color = Path(f"{stem}.color.png")
    if not color.is_file() and Path(f"{stem}.color.jpg").is_file():
        color = Path(f"{stem}.color.jpg")  # kapture's re-encoded sample
    image = read_rgb(color)
    E = read_pose(Path(f"{stem}.pose.txt"))
    proj, raw = Path(f"{stem}.depth.proj.png"), Path(f"{stem}.depth.png")
    if depth_source not in DEPTH_SOURCES:
        raise ConfigError(f"7-Scenes depth_source '{depth_source}' is not one of {', '.join(DEPTH_SOURCES)}")
    use = "proj" if depth_source == "proj" or (depth_source == "auto" and proj.is_file()) else "raw"
    if use == "raw" and not raw.is_file() and depth_source == "auto":
        raise DataError(f"{raw}: missing depth map (neither {proj.name} nor {raw.name} exists)")
    depth = read_depth_mm(proj if use == "proj" else raw, min_depth, max_depth)
    H, W = image.shape[:2]
    K = np.array([[focal, 0, W / 2], [0, focal, H / 2], [0, 0, 1.0]])
    frame = Frame(frame_id, image, depth, depth > 0, K, E)
    check_same_size(frame, "depth map", depth, str(proj if use == "proj" else raw))
    return frame, use


def load_7scenes_sequence(
    root: str | Path,
    scene: str,
    sequence: str,
    frame_ids: list[str] | None = None,
    preprocess: Preprocess | None = None,
    focal: float = FOCAL,
    depth_source: str = "auto",
    skippable: tuple[str, ...] = (),
) -> SceneSample:
    """Frames of <root>/<scene>/<sequence> (default all, sorted) as a SceneSample. meta: dataset '7scenes',
    scene '<scene>/<sequence>', frame_ids, depth_source ('proj'/'raw'), skipped_frames, num_skipped."""
    seq_dir = Path(root) / scene / sequence
    ids = list_frames(seq_dir) if frame_ids is None else list(frame_ids)
    sources = set()

    def reader(fid):
        frame, src = read_7scenes_frame(seq_dir, fid, focal, depth_source)
        sources.add(src)
        return frame

    frames, skipped = read_frames(reader, ids, skippable)
    meta = {
        "dataset": "7scenes",
        "scene": f"{scene}/{sequence}",
        "depth_source": "+".join(sorted(sources)),
        "skipped_frames": skipped,
        "num_skipped": len(skipped),
    }
    return assemble_scene(frames, meta, preprocess)


def _pose_text(c2w: np.ndarray) -> str:
    # The official files: %.7e values preceded by spaces, each followed by a tab, CRLF line ends.
    return "".join("".join(f" {v: .7e}\t" for v in row) + "\r\n" for row in c2w)


def write_7scenes_scene(
    root: str | Path,
    scene: str,
    sequences: dict[int, SceneSample],
    test: list[int] | None = None,
    with_proj: bool = True,
) -> float:
    """Write scenes as 7-Scenes sequences seq-NN of <root>/<scene>: colour PNG, raw depth (mm, 65535 invalid),
    registered depth.proj.png (mm, 0 invalid; same camera here), camera-to-world pose.txt, split files. Returns
    the focal length the loader must be given (the scenes need square pixels and a centred principal point)."""
    sdir = Path(root) / scene
    focal = None
    test = list(sequences) if test is None else test
    for num, sample in sequences.items():
        K = sample.intrinsics.double().numpy()
        H, W = sample.image_size
        if not has_single_centred_focal(K, H, W):
            raise ConfigError(
                "7-Scenes stores no intrinsics: scenes need one focal, fx = fy, centred principal point"
            )
        if focal is not None and not np.isclose(focal, K[0, 0, 0]):
            raise ConfigError("7-Scenes stores no intrinsics: all sequences of a scene need the same focal")
        focal = float(K[0, 0, 0])
        seq_dir = sdir / f"seq-{num:02d}"
        seq_dir.mkdir(parents=True, exist_ok=True)
        for i in range(sample.num_frames):
            stem = seq_dir / f"frame-{i:06d}"
            write_rgb(f"{stem}.color.png", to_uint8(sample.images[i].permute(1, 2, 0).numpy()))
            mm = np.rint(sample.depth[i].double().numpy() * 1000.0)
            valid = sample.valid_mask[i].numpy() & (mm > 0) & (mm < 65535)
            write_png_u16(f"{stem}.depth.png", np.where(valid, mm, 65535).astype(np.uint16))
            if with_proj:
                write_png_u16(f"{stem}.depth.proj.png", np.where(valid, mm, 0).astype(np.uint16))
            c2w = to_4x4(invert_pose(sample.extrinsics[i].double().numpy()))
            Path(f"{stem}.pose.txt").write_bytes(_pose_text(c2w).encode())
    train = [n for n in sequences if n not in test]
    (sdir / "TestSplit.txt").write_bytes("".join(f"sequence{n}\r\n" for n in test).encode())
    if train:  # an empty split file is malformed; a scene without training sequences has none
        (sdir / "TrainSplit.txt").write_bytes("".join(f"sequence{n}\r\n" for n in train).encode())
    return float(focal)
