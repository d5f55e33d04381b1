"""CO3D v2 as distributed (facebookresearch/co3d): per-category gzip JSON annotations, set lists, JPEG images,
float16-in-PNG depth, depth masks and foreground masks.

Layout under ROOT:
    <category>/frame_annotations.jgz      list of FrameAnnotation records
    <category>/sequence_annotations.jgz   list of SequenceAnnotation records
    <category>/set_lists/set_lists_<subset>.json   {"train"|"val"|"test": [[sequence, frame_number, image_path]]}
    <category>/<sequence>/images/frameXXXXXX.jpg, depths/frameXXXXXX.jpg.geometric.png,
    depth_masks/frameXXXXXX.png, masks/frameXXXXXX.png   (paths in the annotations are relative to ROOT)

Viewpoints are PyTorch3D cameras (row vectors X_cam = X_world R + T, camera +x left, +y up) with NDC intrinsics
in `intrinsics_format` 'ndc_isotropic' (v2) or 'ndc_norm_image_bounds' (legacy, the default when absent);
`co3d_viewpoint_to_opencv` turns them into OpenCV camera-from-world [R|t] and pixel K (pixel centres at +0.5),
as PyTorch3D's `opencv_from_cameras_projection` on implicitron's camera does.
Depth: the uint16 payload of the PNG reinterpreted as float16, times `depth.scale_adjustment`; pixels whose depth
mask is <= 128 are invalid (VGGT's training loader), as are non-finite and non-positive values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ptq3d.datasets.base import SceneSample
from ptq3d.datasets.files import (
    read_jgz,
    read_json,
    read_png_u8,
    read_png_u16,
    read_rgb,
    require_file,
    to_uint8,
    write_jgz,
    write_png_u8,
    write_png_u16,
    write_rgb,
)
from ptq3d.datasets.frames import Frame, assemble_scene, check_same_size
from ptq3d.datasets.geometry import check_rotation
from ptq3d.datasets.preprocess import Preprocess
from ptq3d.errors import DataError

INTRINSICS_FORMATS = ("ndc_isotropic", "ndc_norm_image_bounds")
_FLIP_XY = np.array([-1.0, -1.0, 1.0])

# The 41 categories of VGGT's evaluation/test_co3d.py (CO3D's "seen" categories; the 10 held-out ones are
# ball, book, couch, frisbee, hotdog, kite, remote, sandwich, skateboard, suitcase).
SEEN_CATEGORIES = (
    "apple", "backpack", "banana", "baseballbat", "baseballglove", "bench", "bicycle", "bottle", "bowl",
    "broccoli", "cake", "car", "carrot", "cellphone", "chair", "cup", "donut", "hairdryer", "handbag", "hydrant",
    "keyboard", "laptop", "microwave", "motorcycle", "mouse", "orange", "parkingmeter", "pizza", "plant",
    "stopsign", "teddybear", "toaster", "toilet", "toybus", "toyplane", "toytrain", "toytruck", "tv",
    "umbrella", "vase", "wineglass",
)  # fmt: skip

UNSEEN_CATEGORIES = (
    "ball", "book", "couch", "frisbee", "hotdog", "kite", "remote", "sandwich", "skateboard", "suitcase",
)  # fmt: skip
ALL_CATEGORIES = tuple(sorted(SEEN_CATEGORIES + UNSEEN_CATEGORIES))  # the 51 of Pi3's / FGQ's CO3D protocol


# ---------------------------------------------------------------------------------------------- viewpoints
def _ndc_scale(image_size_hw: np.ndarray, intrinsics_format: str) -> np.ndarray:
    """Pixels per NDC unit along (x, y) for [..., 2] image sizes (H, W)."""
    hw = np.asarray(image_size_hw, dtype=np.float64)
    half_wh = hw[..., ::-1] / 2.0
    if intrinsics_format == "ndc_isotropic":  # the shorter side spans [-1, 1] on both axes
        return np.repeat(half_wh.min(axis=-1, keepdims=True), 2, axis=-1)
    if intrinsics_format == "ndc_norm_image_bounds":  # each side spans [-1, 1]
        return half_wh
    raise DataError(
        f"unknown CO3D intrinsics_format '{intrinsics_format}' (known: {', '.join(INTRINSICS_FORMATS)})"
    )


def co3d_viewpoint_to_opencv(
    R: np.ndarray,
    T: np.ndarray,
    focal_length: np.ndarray,
    principal_point: np.ndarray,
    image_size_hw: np.ndarray,
    intrinsics_format: str = "ndc_isotropic",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch3D viewpoint -> (R_cv [..., 3, 3], t_cv [..., 3], K [..., 3, 3]), float64.
    R_cv = diag(-1, -1, 1) R^T, t_cv = diag(-1, -1, 1) T; fx = f_x s_x, cx = W/2 - p_x s_x (same for y) with s the
    pixels per NDC unit of the format. Inputs broadcast over leading dimensions."""
    R = np.asarray(R, dtype=np.float64)
    T = np.asarray(T, dtype=np.float64)
    f = np.asarray(focal_length, dtype=np.float64)
    p = np.asarray(principal_point, dtype=np.float64)
    hw = np.asarray(image_size_hw, dtype=np.float64)
    scale = _ndc_scale(hw, intrinsics_format)
    R_cv = _FLIP_XY[:, None] * np.swapaxes(R, -1, -2)
    t_cv = _FLIP_XY * T
    fpx = f * scale
    cpx = hw[..., ::-1] / 2.0 - p * scale
    shape = np.broadcast_shapes(fpx.shape, cpx.shape)[:-1]
    K = np.zeros(shape + (3, 3))
    K[..., 0, 0], K[..., 1, 1] = fpx[..., 0], fpx[..., 1]
    K[..., 0, 2], K[..., 1, 2] = cpx[..., 0], cpx[..., 1]
    K[..., 2, 2] = 1.0
    return R_cv, t_cv, K


def co3d_isotropic_ndc(
    focal_length: np.ndarray, principal_point: np.ndarray, image_size_hw: np.ndarray, intrinsics_format: str
) -> tuple[np.ndarray, np.ndarray]:
    """Focal length and principal point in PyTorch3D's isotropic NDC (what implicitron puts in its cameras)."""
    hw = np.asarray(image_size_hw, dtype=np.float64)
    ratio = _ndc_scale(hw, intrinsics_format) / _ndc_scale(hw, "ndc_isotropic")
    return np.asarray(focal_length) * ratio, np.asarray(principal_point) * ratio


def opencv_to_co3d_viewpoint(
    R_cv: np.ndarray, t_cv: np.ndarray, K: np.ndarray, image_size_hw, intrinsics_format: str = "ndc_isotropic"
) -> dict[str, Any]:
    """Inverse of `co3d_viewpoint_to_opencv` for one camera, as a CO3D `viewpoint` record."""
    hw = np.asarray(image_size_hw, dtype=np.float64)
    scale = _ndc_scale(hw, intrinsics_format)
    R = (_FLIP_XY[:, None] * np.asarray(R_cv, dtype=np.float64)).T
    T = _FLIP_XY * np.asarray(t_cv, dtype=np.float64)
    f = np.array([K[0, 0], K[1, 1]]) / scale
    p = (hw[::-1] / 2.0 - np.array([K[0, 2], K[1, 2]])) / scale
    return {
        "R": R.tolist(),
        "T": T.tolist(),
        "focal_length": f.tolist(),
        "principal_point": p.tolist(),
        "intrinsics_format": intrinsics_format,
    }


# ---------------------------------------------------------------------------------------------- depth
def decode_co3d_depth(png_u16: np.ndarray, scale_adjustment: float) -> np.ndarray:
    """uint16 [H, W] PNG payload -> float32 metres: the bits are float16 (co3d/challenge/io.py::load_depth)."""
    d = np.ascontiguousarray(png_u16, dtype=np.uint16).view(np.float16).astype(np.float32) * np.float32(
        scale_adjustment
    )
    return np.where(np.isfinite(d) & (d > 0), d, 0.0).astype(np.float32)


def encode_co3d_depth(depth: np.ndarray, scale_adjustment: float) -> np.ndarray:
    """float metres [H, W] -> uint16 PNG payload (float16 bits of depth / scale_adjustment)."""
    return (np.asarray(depth, dtype=np.float64) / scale_adjustment).astype(np.float16).view(np.uint16)


# ---------------------------------------------------------------------------------------------- annotations
def _get(record: dict, path: str, source: Path) -> Any:
    cur: Any = record
    for key in path.split("."):
        if not isinstance(cur, dict) or key not in cur:
            name = record.get("sequence_name", "?") if isinstance(record, dict) else "?"
            raise DataError(f"{source}: record of sequence '{name}' lacks key '{path}'")
        cur = cur[key]
    return cur


def _as_int(value: Any, what: str, source: Path) -> int:
    """An integer field (JSON int; bools and fractional or text numbers are refused, never truncated)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{source}: {what} {value!r} is not an integer")
    return value


class Co3dCategory:
    """The annotations of one category folder, read once: frames per sequence (sorted by frame_number),
    sequence records, set lists."""

    def __init__(self, root: str | Path, category: str):
        self.root = Path(root)
        self.category = category
        self.dir = self.root / category
        if not self.dir.is_dir():
            raise DataError(f"{self.dir}: CO3D category folder not found")
        fa_path = self.dir / "frame_annotations.jgz"
        sa_path = self.dir / "sequence_annotations.jgz"
        frames = read_jgz(fa_path)
        seqs = read_jgz(sa_path)
        if not isinstance(frames, list) or not isinstance(seqs, list):
            raise DataError(
                f"{fa_path if not isinstance(frames, list) else sa_path}: expected a JSON list of records"
            )
        self.frames: dict[str, dict[int, dict]] = {}
        for rec in frames:
            name = str(_get(rec, "sequence_name", fa_path))
            number = _as_int(
                _get(rec, "frame_number", fa_path), f"frame_number of sequence '{name}'", fa_path
            )
            if number in self.frames.get(name, {}):
                raise DataError(f"{fa_path}: sequence '{name}' has two records for frame_number {number}")
            self.frames.setdefault(name, {})[number] = rec
        self.sequences: dict[str, dict] = {_get(r, "sequence_name", sa_path): r for r in seqs}
        self._fa_path, self._sa_path = fa_path, sa_path

    def set_list(self, subset: str) -> dict[str, list]:
        path = self.dir / "set_lists" / f"set_lists_{subset}.json"
        data = read_json(path)
        if not isinstance(data, dict):
            raise DataError(f"{path}: expected an object with 'train'/'val'/'test' lists")
        return data

    def split_frames(self, subset: str, split: str) -> dict[str, list[int]]:
        """{sequence: frame numbers} named in set list `subset`, split `split`, in set-list order."""
        data = self.set_list(subset)
        path = self.dir / "set_lists" / f"set_lists_{subset}.json"
        if split not in data:
            raise DataError(f"{path}: no split '{split}' (has {', '.join(sorted(data))})")
        if not isinstance(data[split], list):
            raise DataError(
                f"{path}: split '{split}' is not a list of [sequence, frame_number, path] entries"
            )
        if not data[split]:
            raise DataError(f"{path}: split '{split}' is empty")
        out: dict[str, list[int]] = {}
        for entry in data[split]:
            if not isinstance(entry, list | tuple) or len(entry) < 2:
                raise DataError(f"{path}: set-list entry {entry!r:.80} is not [sequence, frame_number, path]")
            number = _as_int(entry[1], f"split '{split}' frame_number of sequence '{entry[0]}'", path)
            out.setdefault(str(entry[0]), []).append(number)
        return out

    def viewpoint_quality(self, sequence: str) -> float:
        if sequence not in self.sequences:
            raise DataError(f"{self._sa_path}: no record for sequence '{sequence}'")
        score = self.sequences[sequence].get("viewpoint_quality_score")
        return float("nan") if score is None else float(score)

    def frame_record(self, sequence: str, frame_number: int) -> dict:
        try:
            return self.frames[sequence][frame_number]
        except KeyError:
            raise DataError(
                f"{self._fa_path}: no frame {frame_number} of sequence '{sequence}' in the frame annotations"
            ) from None

    def select_sequences(
        self,
        subset: str = "fewview_dev",
        split: str = "test",
        min_viewpoint_quality: float | None = 0.5,
        min_frames: int = 0,
        max_translation_sum: float | None = None,
    ) -> dict[str, list[int]]:
        """Sequences of a split passing VGGT/RelPose++'s filters (viewpoint_quality_score > threshold, at least
        `min_frames` frames, no frame with sum|T| > max_translation_sum) -> their frame numbers."""
        out = {}
        for seq, numbers in self.split_frames(subset, split).items():
            if min_viewpoint_quality is not None and not self.viewpoint_quality(seq) > min_viewpoint_quality:
                continue
            if len(numbers) < min_frames:
                continue
            if max_translation_sum is not None:
                Ts = [np.abs(np.asarray(_get(self.frame_record(seq, n), "viewpoint.T", self._fa_path))).sum()
                      for n in numbers]  # fmt: skip
                if max(Ts) > max_translation_sum:
                    continue
            out[seq] = numbers
        return out


def list_categories(root: str | Path) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: CO3D root folder not found")
    return sorted(p.name for p in root.iterdir() if (p / "frame_annotations.jgz").is_file())


def read_co3d_frame(root: Path, record: dict, source: Path, load_depth: bool = True) -> Frame:
    """Decode one FrameAnnotation record into a Frame (OpenCV pose, pixel K, metric depth, validity)."""
    seq = record.get("sequence_name", "?")
    number = record.get("frame_number", "?")
    image_path = root / _get(record, "image.path", source)
    size_hw = _get(record, "image.size", source)
    if not (
        isinstance(size_hw, list)
        and len(size_hw) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size_hw)
    ):
        raise DataError(
            f"{source}: sequence '{seq}' frame {number}: image.size {size_hw!r:.60} is not [H, W]"
        )
    vp = _get(record, "viewpoint", source)
    for key in ("R", "T", "focal_length"):
        _get(record, f"viewpoint.{key}", source)
    fmt = vp.get("intrinsics_format", "ndc_norm_image_bounds")  # absent in v1-style records
    pp = vp.get("principal_point", [0.0, 0.0])
    try:
        R_cv, t_cv, K = co3d_viewpoint_to_opencv(vp["R"], vp["T"], vp["focal_length"], pp, size_hw, fmt)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{source}: malformed viewpoint of sequence '{seq}' frame {number} ({exc})") from None
    except DataError as exc:
        raise DataError(f"{source}: sequence '{seq}' frame {number}: {exc}") from None
    if (
        R_cv.shape != (3, 3)
        or t_cv.shape != (3,)
        or not (np.isfinite(R_cv).all() and np.isfinite(t_cv).all())
    ):
        raise DataError(
            f"{source}: viewpoint of sequence '{seq}' frame {number} is not a finite 3x3 R and 3-vector T"
        )
    check_rotation(R_cv, f"{source}: viewpoint of sequence '{seq}' frame {number}")
    if not (np.isfinite(K).all() and K[0, 0] > 0 and K[1, 1] > 0):
        raise DataError(f"{source}: sequence '{seq}' frame {number}: focal length is not positive and finite")
    image = read_rgb(image_path)
    if tuple(image.shape[:2]) != tuple(int(s) for s in size_hw):
        raise DataError(
            f"{image_path}: image is {image.shape[0]}x{image.shape[1]} (H x W) but the annotation says "
            f"{size_hw[0]}x{size_hw[1]}"
        )
    frame = Frame(
        frame_id=str(number),
        image=image,
        depth=np.zeros(image.shape[:2], np.float32),
        valid=np.zeros(image.shape[:2], bool),
        K=K,
        extrinsic=np.concatenate([R_cv, t_cv[:, None]], axis=1),
    )
    if load_depth:
        depth_path = root / _get(record, "depth.path", source)
        scale = float(_get(record, "depth.scale_adjustment", source))
        depth = decode_co3d_depth(read_png_u16(depth_path), scale)
        check_same_size(frame, "depth map", depth, str(depth_path))
        valid = depth > 0
        mask_rel = record["depth"].get("mask_path")
        if mask_rel:
            dmask = read_png_u8(root / mask_rel)
            check_same_size(frame, "depth mask", dmask, str(root / mask_rel))
            valid &= dmask > 128
        frame.depth = np.where(valid, depth, 0.0).astype(np.float32)
        frame.valid = valid
    return frame


def load_co3d_sequence(
    root: str | Path,
    category: str,
    sequence: str,
    frame_numbers: list[int] | None = None,
    preprocess: Preprocess | None = None,
    load_depth: bool = True,
    index: Co3dCategory | None = None,
) -> SceneSample:
    """Frames `frame_numbers` (in that order; default all, sorted) of one sequence as a SceneSample.
    meta: dataset 'co3d', scene '<category>/<sequence>', category, sequence, frame_ids (frame numbers as str),
    viewpoint_quality_score, intrinsics_format."""
    cat = index or Co3dCategory(root, category)
    if sequence not in cat.frames:
        raise DataError(f"{cat._fa_path}: no frames of sequence '{sequence}'")
    numbers = sorted(cat.frames[sequence]) if frame_numbers is None else list(frame_numbers)
    records = [cat.frame_record(sequence, n) for n in numbers]
    frames = [read_co3d_frame(Path(root), r, cat._fa_path, load_depth) for r in records]
    meta = {
        "dataset": "co3d",
        "scene": f"{category}/{sequence}",
        "category": category,
        "sequence": sequence,
        "viewpoint_quality_score": cat.viewpoint_quality(sequence) if sequence in cat.sequences else None,
        "intrinsics_format": records[0]["viewpoint"].get("intrinsics_format", "ndc_norm_image_bounds"),
        "has_depth": load_depth,
    }
    return assemble_scene(frames, meta, preprocess, with_points=load_depth)


def load_co3d_posediffusion_sample(folder: str | Path, preprocess: Preprocess | None = None) -> SceneSample:
    """The PoseDiffusion CO3D sample: JPEGs plus gt_cameras.npz (gtR [N,3,3], gtT [N,3], gtFL [N,2]; rows in sorted
    file-name order; PyTorch3D convention, isotropic NDC focal, principal point 0). No depth: depth is 0 and the
    valid mask all False."""
    folder = Path(folder)
    npz_path = require_file(folder / "gt_cameras.npz", "camera file")
    try:
        cams = np.load(npz_path)
        for key in ("gtR", "gtT", "gtFL"):
            if key not in cams.files:
                raise DataError(f"{npz_path}: missing array '{key}' (has {', '.join(cams.files)})")
        R, T, FL = cams["gtR"], cams["gtT"], cams["gtFL"]
    except (OSError, ValueError) as exc:
        raise DataError(f"{npz_path}: unreadable npz ({exc})") from None
    names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(names) != len(R) or len(T) != len(R) or len(FL) != len(R):
        raise DataError(f"{npz_path}: {len(R)} cameras for {len(names)} images in {folder}")
    frames = []
    for i, name in enumerate(names):
        image = read_rgb(folder / name)
        R_cv, t_cv, K = co3d_viewpoint_to_opencv(
            R[i], T[i], FL[i], np.zeros(2), image.shape[:2], "ndc_isotropic"
        )
        check_rotation(R_cv, f"{npz_path}: gtR[{i}]")
        frames.append(
            Frame(name, image, np.zeros(image.shape[:2], np.float32), np.zeros(image.shape[:2], bool), K,
                  np.concatenate([R_cv, t_cv[:, None]], axis=1))
        )  # fmt: skip
    meta = {
        "dataset": "co3d",
        "scene": folder.name,
        "has_depth": False,
        "source": "posediffusion gt_cameras.npz",
    }
    return assemble_scene(frames, meta, preprocess, with_points=False)


# ---------------------------------------------------------------------------------------------- writing
def write_co3d_category(
    root: str | Path,
    category: str,
    sequences: dict[str, SceneSample],
    subset: str = "fewview_dev",
    test_sequences: list[str] | None = None,
    viewpoint_quality: dict[str, float] | None = None,
    intrinsics_format: str = "ndc_isotropic",
    scale_adjustment: float = 1.0,
) -> None:
    """Write scenes as one CO3D v2 category (images as JPEG, depth float16-in-PNG / scale_adjustment, depth masks
    from the valid mask, foreground masks from meta['foreground'] if present). File names use frame_number + 1
    (CO3D's suffix is not the frame number). All sequences go to the test split of `subset` unless
    `test_sequences` is given (the rest go to train)."""
    root = Path(root)
    frame_recs: list[dict] = []
    seq_recs: list[dict] = []
    splits: dict[str, list] = {"train": [], "val": [], "test": []}
    test = set(sequences if test_sequences is None else test_sequences)
    for seq, scene in sequences.items():
        H, W = scene.image_size
        fg = scene.meta.get("foreground")
        quality = (viewpoint_quality or {}).get(seq, 1.0)
        seq_recs.append(
            {
                "sequence_name": seq,
                "category": category,
                "video": {"path": f"{category}/{seq}/video.mp4", "length": scene.num_frames},
                "point_cloud": None,
                "viewpoint_quality_score": quality,
            }
        )
        for i in range(scene.num_frames):
            stem = f"frame{i + 1:06d}"
            rel = f"{category}/{seq}"
            img_rel, depth_rel = f"{rel}/images/{stem}.jpg", f"{rel}/depths/{stem}.jpg.geometric.png"
            dmask_rel, mask_rel = f"{rel}/depth_masks/{stem}.png", f"{rel}/masks/{stem}.png"
            image = to_uint8(scene.images[i].permute(1, 2, 0).numpy())
            write_rgb(root / img_rel, image)
            valid = scene.valid_mask[i].numpy()
            depth = np.where(valid, scene.depth[i].numpy(), 0.0)
            write_png_u16(root / depth_rel, encode_co3d_depth(depth, scale_adjustment))
            write_png_u8(root / dmask_rel, valid.astype(np.uint8) * 255)
            fgm = fg[i].numpy() if fg is not None else np.ones((H, W), bool)
            write_png_u8(root / mask_rel, fgm.astype(np.uint8) * 255)
            E = scene.extrinsics[i].double().numpy()
            vp = opencv_to_co3d_viewpoint(E[:, :3], E[:, 3], scene.intrinsics[i].double().numpy(), (H, W),
                                          intrinsics_format)  # fmt: skip
            frame_recs.append(
                {
                    "sequence_name": seq,
                    "frame_number": i,
                    "frame_timestamp": i / 30.0,
                    "image": {"path": img_rel, "size": [H, W]},
                    "depth": {
                        "path": depth_rel,
                        "scale_adjustment": scale_adjustment,
                        "mask_path": dmask_rel,
                    },
                    "mask": {"path": mask_rel, "mass": float(fgm.sum())},
                    "viewpoint": vp,
                    "meta": {"frame_type": "test_unseen" if seq in test else "train_known"},
                }
            )
            splits["test" if seq in test else "train"].append([seq, i, img_rel])
    write_jgz(root / category / "frame_annotations.jgz", frame_recs)
    write_jgz(root / category / "sequence_annotations.jgz", seq_recs)
    set_list_path = root / category / "set_lists" / f"set_lists_{subset}.json"
    set_list_path.parent.mkdir(parents=True, exist_ok=True)
    set_list_path.write_text(json.dumps(splits))
