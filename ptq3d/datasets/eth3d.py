"""ETH3D high-res multi-view training scenes as distributed (the jpg release plus the dslr depth archive).

Per scene folder:
    images/dslr_images/DSC_XXXX.JPG                     6048x4032 distorted images
    dslr_calibration_jpg/{cameras,images,points3D}.txt  COLMAP text model; cameras are THIN_PRISM_FISHEYE
    ground_truth_depth/dslr_images/DSC_XXXX.JPG         raw little-endian float32 [H, W] (despite the
                                                         extension), metres, inf/nan = invalid
(`dslr_calibration_undistorted` with PINHOLE cameras and images/dslr_images_undistorted/ is the undistorted
release; pass calibration='dslr_calibration_undistorted' to use it.)

Distorted cameras are resampled to the pinhole camera made of their own focal lengths and principal point (K
kept, as Pi3's prepare_eth3d.py does): each output pixel's ray is pushed through the full COLMAP model (all
THIN_PRISM_FISHEYE terms, where Pi3 keeps only k1..k4) to find where it lands in the distorted image; the image is
sampled bilinearly there and depth by nearest neighbour. Depth is taken as z-depth, so a depth value is unchanged
along its ray. Pixels whose ray leaves the distorted image are invalid (image 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.ndimage import map_coordinates

from ptq3d.datasets.base import SceneSample
from ptq3d.datasets.colmap import (
    Camera,
    ColmapModel,
    Point3D,
    image_from_extrinsic,
    read_colmap_text,
    write_colmap_text,
)
from ptq3d.datasets.files import read_rgb, require_file, to_uint8, write_rgb
from ptq3d.datasets.frames import Frame, assemble_scene, read_frames
from ptq3d.datasets.geometry import pixel_grid
from ptq3d.datasets.preprocess import Preprocess
from ptq3d.errors import ConfigError, DataError

SCENES = (
    "courtyard", "delivery_area", "electro", "facade", "kicker", "meadow", "office", "pipes", "playground",
    "relief", "relief_2", "terrace", "terrains",
)  # fmt: skip
CALIBRATION = "dslr_calibration_jpg"


def list_scenes(root: str | Path, calibration: str = CALIBRATION) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: ETH3D root folder not found")
    return sorted(p.name for p in root.iterdir() if (p / calibration).is_dir())


def read_raw_depth(path: str | Path, height: int, width: int) -> np.ndarray:
    """Headerless little-endian float32 [height, width] -> float32 metres, non-finite and <= 0 set to 0."""
    path = require_file(path, "ETH3D depth file")
    n = path.stat().st_size
    if n != height * width * 4:
        raise DataError(f"{path}: {n} bytes, expected {height}x{width} float32 = {height * width * 4} bytes")
    d = np.fromfile(path, dtype="<f4").reshape(height, width)
    return np.where(np.isfinite(d) & (d > 0), d, 0.0).astype(np.float32)


def undistort_view(
    camera: Camera, image: np.ndarray, depth: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample a distorted view onto the pinhole camera `camera.K` (same size): image uint8 [H, W, 3] (bilinear),
    depth float32 [H, W] (nearest), inside bool [H, W] (the ray lands inside the distorted image)."""
    if camera.is_pinhole:
        return image, depth, np.ones(depth.shape, bool)
    H, W = depth.shape
    K = camera.K
    u, v = pixel_grid(H, W)
    xd, yd = camera.distort((u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1])
    # distorted pixel coordinates -> array indices (pixel centres at +0.5)
    col, row = K[0, 0] * xd + K[0, 2] - 0.5, K[1, 1] * yd + K[1, 2] - 0.5
    inside = (col >= -0.5) & (col <= W - 0.5) & (row >= -0.5) & (row <= H - 0.5)
    coords = np.stack([row, col])
    img = np.stack(
        [
            map_coordinates(image[..., c].astype(np.float64), coords, order=1, mode="nearest")
            for c in range(3)
        ],
        -1,
    )
    ri = np.clip(np.rint(row), 0, H - 1).astype(np.int64)
    ci = np.clip(np.rint(col), 0, W - 1).astype(np.int64)
    dep = np.where(inside, depth[ri, ci], 0.0).astype(np.float32)
    img = np.where(inside[..., None], np.clip(np.rint(img), 0, 255), 0).astype(np.uint8)
    return img, dep, inside


def read_eth3d_frame(
    sdir: Path,
    model,
    name: str,
    calibration: str = CALIBRATION,
    load_depth: bool = True,
    image_dir: str = "images",
    depth_dir: str = "ground_truth_depth",
) -> Frame:
    """Image `name` of a scene folder given its COLMAP model, resampled to the pinhole camera."""
    im = next((i for i in model.images.values() if i.name == name), None)
    if im is None:
        raise DataError(f"{sdir / calibration / 'images.txt'}: no image named '{name}'")
    cam = model.cameras[im.camera_id]
    image = read_rgb(sdir / image_dir / name)
    if image.shape[:2] != (cam.height, cam.width):
        raise DataError(
            f"{sdir / image_dir / name}: image is {image.shape[1]}x{image.shape[0]} but camera {cam.id} in "
            f"cameras.txt is {cam.width}x{cam.height}"
        )
    if load_depth:
        depth = read_raw_depth(sdir / depth_dir / name, cam.height, cam.width)
    else:
        depth = np.zeros((cam.height, cam.width), np.float32)
    image, depth, _ = undistort_view(cam, image, depth)
    return Frame(name, image, depth, depth > 0, cam.K, im.extrinsic)


def load_eth3d_scene(
    root: str | Path,
    scene: str,
    image_names: list[str] | None = None,
    preprocess: Preprocess | None = None,
    calibration: str = CALIBRATION,
    load_depth: bool = True,
    image_dir: str = "images",
    depth_dir: str = "ground_truth_depth",
) -> SceneSample:
    """Images `image_names` (COLMAP NAMEs, default all, sorted by name) of one scene as a SceneSample.
    meta: dataset 'eth3d', scene, frame_ids (NAMEs), camera_models."""
    sdir = Path(root) / scene
    model = read_colmap_text(sdir / calibration, with_points=False)
    by_name = {im.name: im for im in model.images.values()}
    names = sorted(by_name) if image_names is None else list(image_names)
    for n in names:
        if n not in by_name:
            raise DataError(f"{sdir / calibration / 'images.txt'}: no image named '{n}'")
    if not names:
        raise DataError(f"{sdir / calibration / 'images.txt'}: empty scene (no images)")

    def reader(name: str) -> Frame:
        return read_eth3d_frame(sdir, model, name, calibration, load_depth, image_dir, depth_dir)

    frames, _ = read_frames(reader, names)
    meta = {
        "dataset": "eth3d",
        "scene": scene,
        "calibration": calibration,
        "camera_models": sorted({model.cameras[by_name[n].camera_id].model for n in names}),
        "has_depth": load_depth,
    }
    return assemble_scene(frames, meta, preprocess, with_points=load_depth)


def load_colmap_text_scene(
    model_dir: str | Path, image_dir: str | Path, preprocess: Preprocess | None = None
) -> SceneSample:
    """Any COLMAP text model with its images (no depth): e.g. the maupertuis sample. meta['dataset'] = 'colmap'."""
    model = read_colmap_text(model_dir, with_points=False)
    frames = []
    for im in sorted(model.images.values(), key=lambda i: i.name):
        cam = model.cameras[im.camera_id]
        image = read_rgb(Path(image_dir) / im.name)
        if image.shape[:2] != (cam.height, cam.width):
            raise DataError(
                f"{Path(image_dir) / im.name}: image size differs from camera {cam.id} in cameras.txt"
            )
        image, depth, _ = undistort_view(cam, image, np.zeros(image.shape[:2], np.float32))
        frames.append(Frame(im.name, image, depth, depth > 0, cam.K, im.extrinsic))
    return assemble_scene(
        frames, {"dataset": "colmap", "scene": Path(model_dir).name}, preprocess, with_points=False
    )


def _undistort_normalised(camera: Camera, xd: np.ndarray, yd: np.ndarray, iters: int = 100):
    """Invert camera.distort by fixed-point iteration (enough for the mild distortion the writer uses)."""
    x, y = xd.copy(), yd.copy()
    for _ in range(iters):
        fx, fy = camera.distort(x, y)
        x, y = x - (fx - xd), y - (fy - yd)
    return x, y


def write_eth3d_scene(
    scene_dir: str | Path,
    sample: SceneSample,
    distortion: dict[str, float] | None = None,
    n_points: int = 200,
) -> None:
    """Write a scene in ETH3D's jpg-release layout. Without `distortion` the cameras are PINHOLE; with it (e.g.
    {'k1': 0.02, 'sx1': 1e-3}) they are THIN_PRISM_FISHEYE and the images/depth are resampled into the distorted
    camera (depth nearest, inf where invalid). points3D.txt holds `n_points` valid world points with their tracks."""
    sdir = Path(scene_dir)
    H, W = sample.image_size
    rng = np.random.default_rng(0)
    cams, imgs, pts = {}, {}, {}
    for i in range(sample.num_frames):
        K = sample.intrinsics[i].double().numpy()
        if distortion is None:
            cam = Camera(i + 1, "PINHOLE", W, H, np.array([K[0, 0], K[1, 1], K[0, 2], K[1, 2]]))
        else:
            extra = {k: 0.0 for k in ("k1", "k2", "p1", "p2", "k3", "k4", "sx1", "sy1")}
            unknown = set(distortion) - set(extra)
            if unknown:
                raise ConfigError(f"unknown THIN_PRISM_FISHEYE parameters {sorted(unknown)}")
            extra.update(distortion)
            cam = Camera(
                i + 1,
                "THIN_PRISM_FISHEYE",
                W,
                H,
                np.array([K[0, 0], K[1, 1], K[0, 2], K[1, 2], *extra.values()]),
            )
        cams[cam.id] = cam
        name = f"dslr_images/DSC_{i:04d}.JPG"
        image = to_uint8(sample.images[i].permute(1, 2, 0).numpy())
        depth = np.where(sample.valid_mask[i].numpy(), sample.depth[i].numpy(), np.inf).astype(np.float32)
        if distortion is not None:  # sample the pinhole view where each distorted pixel's ray lands
            u, v = pixel_grid(H, W)
            x, y = _undistort_normalised(cam, (u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1])
            col, row = K[0, 0] * x + K[0, 2] - 0.5, K[1, 1] * y + K[1, 2] - 0.5
            inside = (col >= -0.5) & (col <= W - 0.5) & (row >= -0.5) & (row <= H - 0.5)
            ri, ci = np.clip(np.rint(row), 0, H - 1).astype(int), np.clip(np.rint(col), 0, W - 1).astype(int)
            depth = np.where(inside, depth[ri, ci], np.inf).astype(np.float32)
            image = np.stack([map_coordinates(image[..., c].astype(float), np.stack([row, col]), order=1,
                                              mode="nearest") for c in range(3)], -1)  # fmt: skip
            image = np.where(inside[..., None], np.clip(np.rint(image), 0, 255), 0).astype(np.uint8)
        write_rgb(sdir / "images" / name, image)
        (sdir / "ground_truth_depth" / name).parent.mkdir(parents=True, exist_ok=True)
        depth.astype("<f4").tofile(sdir / "ground_truth_depth" / name)
        imgs[i + 1] = image_from_extrinsic(i + 1, cam.id, name, sample.extrinsics[i].double().numpy())
    if sample.points is not None and n_points:
        valid = sample.valid_mask.numpy()
        idx = np.argwhere(valid)
        pick = idx[rng.choice(len(idx), size=min(n_points, len(idx)), replace=False)]
        for k, (s, r, c) in enumerate(pick):
            xyz = sample.points[s, r, c].double().numpy()
            im = imgs[s + 1]
            E = sample.extrinsics[s].double().numpy()
            xy = cams[im.camera_id].project(
                E[:, :3] @ xyz + E[:, 3]
            )  # the point's pixel in the written camera
            im.xys = np.concatenate([im.xys, xy[None]])
            im.point3d_ids = np.append(im.point3d_ids, k + 1)
            rgb = to_uint8(sample.images[s, :, r, c].numpy())
            pts[k + 1] = Point3D(k + 1, xyz, rgb, 0.0, [(int(s) + 1, len(im.xys) - 1)])
    write_colmap_text(sdir / CALIBRATION, ColmapModel(cams, imgs, pts))
