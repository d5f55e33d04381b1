"""COLMAP text models (cameras.txt, images.txt, points3D.txt): reading, writing, camera models.

- cameras.txt: `CAMERA_ID MODEL WIDTH HEIGHT PARAMS...`
- images.txt: two lines per image: `IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME` (world-to-camera, Hamilton
  quaternion scalar first), then `X Y POINT3D_ID` triples (-1 = untriangulated; the line may be empty).
- points3D.txt: `POINT3D_ID X Y Z R G B ERROR (IMAGE_ID POINT2D_IDX)...`
Pixel convention: the centre of the top-left pixel is (0.5, 0.5), as in ptq3d.

Camera models (src/colmap/sensor/models.h): `distort(x, y)` maps normalised pinhole coordinates (X/Z, Y/Z) to the
normalised distorted coordinates that the focal lengths and principal point then scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ptq3d.datasets.files import require_file
from ptq3d.datasets.geometry import quat_wxyz_to_rotmat, rotmat_to_quat_wxyz
from ptq3d.errors import DataError

# model -> parameter names, in file order
CAMERA_MODELS: dict[str, tuple[str, ...]] = {
    "SIMPLE_PINHOLE": ("f", "cx", "cy"),
    "PINHOLE": ("fx", "fy", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
    "OPENCV_FISHEYE": ("fx", "fy", "cx", "cy", "k1", "k2", "k3", "k4"),
    "THIN_PRISM_FISHEYE": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3", "k4", "sx1", "sy1"),
}


@dataclass
class Camera:
    id: int
    model: str
    width: int
    height: int
    params: np.ndarray

    @property
    def p(self) -> dict[str, float]:
        return dict(zip(CAMERA_MODELS[self.model], (float(v) for v in self.params), strict=True))

    @property
    def K(self) -> np.ndarray:
        """The pinhole part [3, 3] (focal lengths and principal point)."""
        p = self.p
        fx, fy = (p["f"], p["f"]) if "f" in p else (p["fx"], p["fy"])
        return np.array([[fx, 0, p["cx"]], [0, fy, p["cy"]], [0, 0, 1.0]])

    @property
    def is_pinhole(self) -> bool:
        return self.model in ("SIMPLE_PINHOLE", "PINHOLE")

    def distort(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised pinhole (x, y) -> normalised distorted coordinates of this model."""
        p = self.p
        if self.is_pinhole:
            return x, y
        if self.model in ("SIMPLE_RADIAL", "RADIAL", "OPENCV"):
            r2 = x * x + y * y
            radial = p.get("k", p.get("k1", 0.0)) * r2 + p.get("k2", 0.0) * r2 * r2
            p1, p2 = p.get("p1", 0.0), p.get("p2", 0.0)
            return (x + x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
                    y + y * radial + 2 * p2 * x * y + p1 * (r2 + 2 * y * y))  # fmt: skip
        # fisheye models: equidistant angle first (theta = atan r, coordinates scaled by theta / r)
        r = np.sqrt(x * x + y * y)
        with np.errstate(invalid="ignore", divide="ignore"):
            s = np.where(r > np.finfo(np.float64).eps, np.arctan(r) / r, 1.0)
        u, v = x * s, y * s
        t2 = u * u + v * v
        radial = p["k1"] * t2 + p["k2"] * t2**2 + p["k3"] * t2**3 + p["k4"] * t2**4
        du, dv = u * radial, v * radial
        if self.model == "THIN_PRISM_FISHEYE":
            du = du + 2 * p["p1"] * u * v + p["p2"] * (t2 + 2 * u * u) + p["sx1"] * t2
            dv = dv + 2 * p["p2"] * u * v + p["p1"] * (t2 + 2 * v * v) + p["sy1"] * t2
        return u + du, v + dv

    def project(self, points_cam: np.ndarray) -> np.ndarray:
        """Camera-frame points [..., 3] -> pixels [..., 2] with this model's distortion."""
        with np.errstate(divide="ignore", invalid="ignore"):
            x, y = points_cam[..., 0] / points_cam[..., 2], points_cam[..., 1] / points_cam[..., 2]
        xd, yd = self.distort(x, y)
        K = self.K
        return np.stack([K[0, 0] * xd + K[0, 2], K[1, 1] * yd + K[1, 2]], axis=-1)


@dataclass
class ColmapImage:
    id: int
    qvec: np.ndarray  # w x y z, world-to-camera
    tvec: np.ndarray
    camera_id: int
    name: str
    xys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    point3d_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def extrinsic(self) -> np.ndarray:
        """OpenCV camera-from-world [3, 4]."""
        return np.concatenate([quat_wxyz_to_rotmat(self.qvec), self.tvec[:, None]], axis=1)


@dataclass
class Point3D:
    id: int
    xyz: np.ndarray
    rgb: np.ndarray
    error: float
    track: list[tuple[int, int]]


@dataclass
class ColmapModel:
    cameras: dict[int, Camera]
    images: dict[int, ColmapImage]
    points: dict[int, Point3D]


def _data_lines(path: Path, keep_empty: bool = False):
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        s = line.strip()
        if s.startswith("#") or (not s and not keep_empty):
            continue
        yield lineno, s


def read_cameras_txt(path: str | Path) -> dict[int, Camera]:
    path = require_file(path, "COLMAP cameras.txt")
    cams = {}
    for lineno, line in _data_lines(path):
        parts = line.split()
        where = f"{path}:{lineno}"
        if len(parts) < 4:
            raise DataError(f"{where}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...', got {line[:60]!r}")
        model = parts[1]
        if model not in CAMERA_MODELS:
            raise DataError(
                f"{where}: unsupported camera model '{model}' (supported: {', '.join(CAMERA_MODELS)})"
            )
        n = len(CAMERA_MODELS[model])
        if len(parts) != 4 + n:
            raise DataError(f"{where}: model {model} takes {n} parameters, got {len(parts) - 4}")
        try:
            cam = Camera(
                int(parts[0]), model, int(parts[2]), int(parts[3]), np.array([float(v) for v in parts[4:]])
            )
        except ValueError:
            raise DataError(f"{where}: not numbers where numbers belong: {line[:60]!r}") from None
        if cam.width <= 0 or cam.height <= 0 or not np.isfinite(cam.params).all():
            raise DataError(f"{where}: invalid size or non-finite parameters")
        cams[cam.id] = cam
    return cams


def read_images_txt(path: str | Path) -> dict[int, ColmapImage]:
    path = require_file(path, "COLMAP images.txt")
    lines = list(_data_lines(path, keep_empty=True))
    # Skip blank lines that are not in a POINTS2D slot: a header line always has >= 10 fields.
    images = {}
    i = 0
    while i < len(lines):
        lineno, line = lines[i]
        if not line:
            i += 1
            continue
        parts = line.split()
        where = f"{path}:{lineno}"
        if len(parts) < 10:
            raise DataError(
                f"{where}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME', got {line[:60]!r}"
            )
        try:
            img = ColmapImage(int(parts[0]), np.array([float(v) for v in parts[1:5]]),
                              np.array([float(v) for v in parts[5:8]]), int(parts[8]), " ".join(parts[9:]))  # fmt: skip
        except ValueError:
            raise DataError(f"{where}: not numbers where numbers belong: {line[:60]!r}") from None
        if (
            not (np.isfinite(img.qvec).all() and np.isfinite(img.tvec).all())
            or np.linalg.norm(img.qvec) < 1e-12
        ):
            raise DataError(f"{where}: pose of image '{img.name}' is not finite or its quaternion is zero")
        pts = lines[i + 1][1].split() if i + 1 < len(lines) else []
        if len(pts) % 3:
            raise DataError(f"{path}:{lines[i + 1][0]}: POINTS2D line must hold (X, Y, POINT3D_ID) triples")
        try:
            arr = np.array([float(v) for v in pts]).reshape(-1, 3)
        except ValueError:
            raise DataError(f"{path}:{lines[i + 1][0]}: POINTS2D line holds non-numbers") from None
        img.xys, img.point3d_ids = arr[:, :2], arr[:, 2].astype(np.int64)
        images[img.id] = img
        i += 2
    return images


def read_points3d_txt(path: str | Path) -> dict[int, Point3D]:
    path = require_file(path, "COLMAP points3D.txt")
    pts = {}
    for lineno, line in _data_lines(path):
        parts = line.split()
        if len(parts) < 8 or (len(parts) - 8) % 2:
            raise DataError(
                f"{path}:{lineno}: expected 'POINT3D_ID X Y Z R G B ERROR (IMAGE_ID POINT2D_IDX)...'"
            )
        try:
            track = [(int(parts[k]), int(parts[k + 1])) for k in range(8, len(parts), 2)]
            p = Point3D(int(parts[0]), np.array([float(v) for v in parts[1:4]]),
                        np.array([int(v) for v in parts[4:7]]), float(parts[7]), track)  # fmt: skip
        except ValueError:
            raise DataError(f"{path}:{lineno}: not numbers where numbers belong: {line[:60]!r}") from None
        pts[p.id] = p
    return pts


def read_colmap_text(model_dir: str | Path, with_points: bool = True) -> ColmapModel:
    """Read a COLMAP text model folder; checks that every image names a known camera."""
    d = Path(model_dir)
    cams = read_cameras_txt(d / "cameras.txt")
    imgs = read_images_txt(d / "images.txt")
    for img in imgs.values():
        if img.camera_id not in cams:
            raise DataError(
                f"{d / 'images.txt'}: image '{img.name}' uses camera {img.camera_id}, not in cameras.txt"
            )
    pts = read_points3d_txt(d / "points3D.txt") if with_points and (d / "points3D.txt").exists() else {}
    return ColmapModel(cams, imgs, pts)


def write_colmap_text(model_dir: str | Path, model: ColmapModel) -> None:
    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Camera list with one line of data per camera:",
        "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
    ]
    lines += [f"{c.id} {c.model} {c.width} {c.height} " + " ".join(repr(float(v)) for v in c.params)
              for c in model.cameras.values()]  # fmt: skip
    (d / "cameras.txt").write_text("\n".join(lines) + "\n")
    lines = ["# Image list with two lines of data per image:",
             "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME", "#   POINTS2D[] as (X, Y, POINT3D_ID)"]  # fmt: skip
    for im in model.images.values():
        vals = " ".join(repr(float(v)) for v in (*im.qvec, *im.tvec))
        lines.append(f"{im.id} {vals} {im.camera_id} {im.name}")
        lines.append(
            " ".join(
                f"{x!r} {y!r} {int(pid)}" for (x, y), pid in zip(im.xys.tolist(), im.point3d_ids, strict=True)
            )
        )
    (d / "images.txt").write_text("\n".join(lines) + "\n")
    lines = ["# 3D point list with one line of data per point:",
             "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)"]  # fmt: skip
    for p in model.points.values():
        track = " ".join(f"{a} {b}" for a, b in p.track)
        lines.append(
            f"{p.id} {' '.join(repr(float(v)) for v in p.xyz)} {' '.join(str(int(v)) for v in p.rgb)} {p.error!r} {track}"
        )
    (d / "points3D.txt").write_text("\n".join(lines) + "\n")


def image_from_extrinsic(image_id: int, camera_id: int, name: str, extrinsic: np.ndarray) -> ColmapImage:
    E = np.asarray(extrinsic, dtype=np.float64)
    return ColmapImage(image_id, rotmat_to_quat_wxyz(E[:, :3]), E[:, 3].copy(), camera_id, name)
