"""Small camera-geometry helpers shared by the loaders, the generator and the preprocessing.

Conventions: OpenCV camera axes (+x right, +y down, +z forward); extrinsics are camera-from-world [3, 4];
intrinsics are pixels with the origin at the top-left image corner and pixel centres at +0.5, so pixel
(row i, column j) is the ray through (j + 0.5, i + 0.5). All functions work in float64 numpy.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from ptq3d.errors import DataError

GL_TO_CV = np.diag([1.0, -1.0, -1.0])  # flips camera y and z: OpenGL (+y up, -z forward) <-> OpenCV


# Largest |R R^T - I| entry and |det R - 1| accepted for a ground-truth rotation. Real 7-Scenes poses reach
# 1.5e-4 and det 0.9998 (measured on /work/shared/datasets/7scenes); 5e-3 leaves a 30x margin and still
# refuses a rotation scaled by 1.01 or sheared by 0.01.
ROTATION_TOL = 5e-3


def check_rotation(R: np.ndarray, source: str, tol: float = ROTATION_TOL) -> None:
    """Raise a one-line DataError naming `source` unless R [3, 3] is a finite proper rotation: orthonormal within
    `tol` (max |R R^T - I|) and det within `tol` of +1 (a reflection or a singular matrix is refused)."""
    R = np.asarray(R, dtype=np.float64)
    if R.shape != (3, 3):
        raise DataError(f"{source}: rotation is {'x'.join(map(str, R.shape))}, expected 3x3")
    if not np.isfinite(R).all():
        raise DataError(f"{source}: rotation contains nan/inf")
    det = float(np.linalg.det(R))
    if abs(det) < 1e-6:
        raise DataError(f"{source}: rotation is singular (det {det:.3g})")
    err = float(np.abs(R @ R.T - np.eye(3)).max())
    if err > tol:
        raise DataError(
            f"{source}: rotation is not orthonormal (max |R R^T - I| = {err:.3g} > {tol:g}; scaled or sheared pose)"
        )
    if abs(det - 1.0) > tol:
        raise DataError(f"{source}: rotation has det {det:.4g}, expected +1 (a reflection)")


def check_pose(m: np.ndarray, source: str, tol: float = ROTATION_TOL) -> None:
    """check_rotation on the 3x3 block of a [3, 4] or [4, 4] pose, plus a finite translation."""
    m = np.asarray(m, dtype=np.float64)
    if not np.isfinite(m[:3, :4]).all():
        raise DataError(f"{source}: pose contains nan/inf")
    check_rotation(m[:3, :3], source, tol)


def invert_pose(m: np.ndarray) -> np.ndarray:
    """Inverse of a rigid or affine pose [..., 3, 4] or [..., 4, 4]; returns [..., 3, 4]."""
    m = np.asarray(m, dtype=np.float64)
    R, t = m[..., :3, :3], m[..., :3, 3]
    Rinv = np.linalg.inv(R)  # exact inverse (7-Scenes rotations are only nearly orthonormal)
    return np.concatenate([Rinv, -(Rinv @ t[..., None])], axis=-1)


def to_4x4(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    out = np.zeros(m.shape[:-2] + (4, 4))
    out[..., :3, :4] = m[..., :3, :4]
    out[..., 3, 3] = 1.0
    return out


def quat_wxyz_to_rotmat(q: np.ndarray) -> np.ndarray:
    """Hamilton quaternion, scalar first (COLMAP) [..., 4] -> rotation [..., 3, 3] (normalised first)."""
    q = np.asarray(q, dtype=np.float64)
    return Rotation.from_quat(np.concatenate([q[..., 1:], q[..., :1]], axis=-1)).as_matrix()


def rotmat_to_quat_wxyz(R: np.ndarray) -> np.ndarray:
    """Rotation [..., 3, 3] -> unit quaternion, scalar first, with w >= 0."""
    q = Rotation.from_matrix(np.asarray(R, dtype=np.float64)).as_quat()  # x y z w
    q = np.concatenate([q[..., 3:], q[..., :3]], axis=-1)
    return np.where(q[..., :1] < 0, -q, q)


def pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates u [H, W] (column + 0.5) and v [H, W] (row + 0.5)."""
    u = np.arange(width, dtype=np.float64) + 0.5
    v = np.arange(height, dtype=np.float64) + 0.5
    return np.meshgrid(u, v, indexing="xy")


def unproject_depth(depth: np.ndarray, K: np.ndarray, extrinsic: np.ndarray) -> np.ndarray:
    """World points [H, W, 3] of z-depth [H, W] seen by a camera (K [3, 3], camera-from-world [3, 4]).
    Pixels with depth 0 give the camera centre; mask them with the valid mask."""
    H, W = depth.shape
    u, v = pixel_grid(H, W)
    K = np.asarray(K, dtype=np.float64)
    x = (u - K[0, 2]) / K[0, 0]  # no skew in any dataset here
    y = (v - K[1, 2]) / K[1, 1]
    cam = np.stack([x * depth, y * depth, depth.astype(np.float64)], axis=-1)
    c2w = invert_pose(extrinsic)
    R = c2w[:, :3]
    # broadcast multiply-adds: numpy's matmul is slow for [..., 3] @ [3, 3]
    return cam[..., :1] * R[:, 0] + cam[..., 1:2] * R[:, 1] + cam[..., 2:3] * R[:, 2] + c2w[:, 3]


def project(points: np.ndarray, K: np.ndarray, extrinsic: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points [..., 3] -> (pixel coordinates [..., 2] in the +0.5 convention, z-depth [...])."""
    E = np.asarray(extrinsic, dtype=np.float64)
    cam = np.asarray(points, dtype=np.float64) @ E[:, :3].T + E[:, 3]
    z = cam[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (cam @ np.asarray(K, dtype=np.float64).T)[..., :2] / z[..., None]
    return uv, z


def look_at(position: np.ndarray, target: np.ndarray, up: np.ndarray, roll_rad: float = 0.0) -> np.ndarray:
    """OpenCV camera-from-world [3, 4] for a camera at `position` looking at `target`; `up` is the world's
    up direction (the camera's -y points along it, up to roll about the viewing axis)."""
    z = target - position
    z = z / np.linalg.norm(z)
    x = np.cross(z, up)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    if roll_rad:
        c, s = np.cos(roll_rad), np.sin(roll_rad)
        x, y = c * x + s * y, -s * x + c * y
    R = np.stack([x, y, z], axis=0)  # rows: camera axes in world coordinates -> world-to-camera rotation
    return np.concatenate([R, -(R @ position)[:, None]], axis=1)


def has_single_centred_focal(K: np.ndarray, height: int, width: int) -> bool:
    """True if intrinsics K [S, 3, 3] share one focal (fx = fy, equal across views) and a centred principal
    point (W/2, H/2): what formats that store a single focal (NRGBD focal.txt, 7-Scenes' fixed camera) can hold."""
    return bool(
        np.allclose(K[:, 0, 0], K[0, 0, 0])
        and np.allclose(K[:, 1, 1], K[:, 0, 0])
        and np.allclose(K[:, :2, 2], [width / 2, height / 2])
    )
