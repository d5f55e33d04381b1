"""VGGT's camera parameterisation and geometry helpers.

pose_enc [..., 9] = [tx, ty, tz, qx, qy, qz, qw, fov_h, fov_w] ("absT_quaR_FoV"): the quaternion is
scalar-last and need not be unit norm; FoVs in radians. It encodes an OpenCV camera-from-world extrinsic
[R | t] (x right, y down, z forward) and a pinhole intrinsic with principal point at the image centre
(W/2, H/2), in pixels of the network input.
"""

from __future__ import annotations

import torch


def quat_to_mat(quat: torch.Tensor) -> torch.Tensor:
    """quat [..., 4] XYZW (any norm) -> rotation [..., 3, 3]; divides by |q|^2, so q need not be unit."""
    x, y, z, w = quat.unbind(-1)
    two_s = 2.0 / (quat * quat).sum(-1)
    m = torch.stack(
        (
            1 - two_s * (y * y + z * z),
            two_s * (x * y - z * w),
            two_s * (x * z + y * w),
            two_s * (x * y + z * w),
            1 - two_s * (x * x + z * z),
            two_s * (y * z - x * w),
            two_s * (x * z - y * w),
            two_s * (y * z + x * w),
            1 - two_s * (x * x + y * y),
        ),
        -1,
    )
    return m.reshape(quat.shape[:-1] + (3, 3))


def mat_to_quat(rot: torch.Tensor) -> torch.Tensor:
    """rotation [..., 3, 3] -> unit quaternion [..., 4] XYZW with w >= 0.

    Picks, per matrix, the best-conditioned of the four candidate formulas (largest of w, x, y, z).
    """
    m = rot.reshape(-1, 3, 3)
    m00, m11, m22 = m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]
    # 4*q_i^2 for (w, x, y, z)
    q_sq4 = torch.stack(
        (1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22), -1
    )
    r = torch.sqrt(q_sq4.clamp_min(0.0))  # 2*|q_i|
    # candidate (w, x, y, z) rows, each scaled by 4*q_i with q_i the pivot
    cand = torch.stack(
        (
            torch.stack(
                (r[:, 0] ** 2, m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]), -1
            ),
            torch.stack(
                (m[:, 2, 1] - m[:, 1, 2], r[:, 1] ** 2, m[:, 1, 0] + m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0]), -1
            ),
            torch.stack(
                (m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] + m[:, 0, 1], r[:, 2] ** 2, m[:, 1, 2] + m[:, 2, 1]), -1
            ),
            torch.stack(
                (m[:, 1, 0] - m[:, 0, 1], m[:, 2, 0] + m[:, 0, 2], m[:, 2, 1] + m[:, 1, 2], r[:, 3] ** 2), -1
            ),
        ),
        1,
    )  # [N, 4 pivots, 4 comps]
    cand = cand / (2.0 * r.clamp_min(0.1))[..., None]
    best = q_sq4.argmax(-1)
    wxyz = cand[torch.arange(m.shape[0], device=m.device), best]
    wxyz = wxyz / wxyz.norm(dim=-1, keepdim=True)
    wxyz = torch.where(wxyz[:, :1] < 0, -wxyz, wxyz)
    return wxyz[:, [1, 2, 3, 0]].reshape(rot.shape[:-2] + (4,))


def pose_encoding_to_extri_intri(
    pose_enc: torch.Tensor, image_size_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """pose_enc [..., 9] -> (extrinsics [..., 3, 4] OpenCV camera-from-world, intrinsics [..., 3, 3]).

    fy = (H/2)/tan(fov_h/2), fx = (W/2)/tan(fov_w/2), principal point (W/2, H/2).
    """
    H, W = image_size_hw
    R = quat_to_mat(pose_enc[..., 3:7])
    extrinsics = torch.cat([R, pose_enc[..., :3, None]], dim=-1)
    fy = (H / 2.0) / torch.tan(pose_enc[..., 7] / 2.0)
    fx = (W / 2.0) / torch.tan(pose_enc[..., 8] / 2.0)
    intrinsics = torch.zeros(pose_enc.shape[:-1] + (3, 3), dtype=pose_enc.dtype, device=pose_enc.device)
    intrinsics[..., 0, 0] = fx
    intrinsics[..., 1, 1] = fy
    intrinsics[..., 0, 2] = W / 2.0
    intrinsics[..., 1, 2] = H / 2.0
    intrinsics[..., 2, 2] = 1.0
    return extrinsics, intrinsics


def extri_intri_to_pose_encoding(
    extrinsics: torch.Tensor, intrinsics: torch.Tensor, image_size_hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of pose_encoding_to_extri_intri: ([..., 3, 4], [..., 3, 3]) -> pose_enc [..., 9] (unit quaternion,
    w >= 0). fov_h = 2 atan((H/2)/fy), fov_w = 2 atan((W/2)/fx); the principal point is not encoded."""
    H, W = image_size_hw
    quat = mat_to_quat(extrinsics[..., :3, :3])
    fov_h = 2 * torch.atan((H / 2.0) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((W / 2.0) / intrinsics[..., 0, 0])
    return torch.cat([extrinsics[..., :3, 3], quat, fov_h[..., None], fov_w[..., None]], dim=-1)


def closed_form_inverse_se3(extrinsics: torch.Tensor) -> torch.Tensor:
    """[..., 3, 4] (or [..., 4, 4]) rigid transform [R | t] -> its inverse [R^T | -R^T t] as [..., 3, 4]."""
    R = extrinsics[..., :3, :3]
    t = extrinsics[..., :3, 3:]
    Rt = R.transpose(-1, -2)
    return torch.cat([Rt, -Rt @ t], dim=-1)


def unproject_depth_to_world(
    depth: torch.Tensor, extrinsics: torch.Tensor, intrinsics: torch.Tensor
) -> torch.Tensor:
    """depth [..., H, W] (z along the optical axis), extrinsics [..., 3, 4] camera-from-world, intrinsics [..., 3, 3]
    -> world points [..., H, W, 3].

    Pixel (u, v) = (column, row) at integer coordinates (no +0.5), as VGGT's
    `unproject_depth_map_to_point_map`: x_cam = (u - cx) z / fx, y_cam = (v - cy) z / fy.
    """
    H, W = depth.shape[-2:]
    v, u = torch.meshgrid(
        torch.arange(H, dtype=depth.dtype, device=depth.device),
        torch.arange(W, dtype=depth.dtype, device=depth.device),
        indexing="ij",
    )
    K = intrinsics[..., None, None, :, :]
    x = (u - K[..., 0, 2]) * depth / K[..., 0, 0]
    y = (v - K[..., 1, 2]) * depth / K[..., 1, 1]
    cam = torch.stack([x, y, depth], dim=-1)  # [..., H, W, 3]
    c2w = closed_form_inverse_se3(extrinsics)[..., None, None, :, :]
    return (c2w[..., :3] @ cam[..., None])[..., 0] + c2w[..., 3]
