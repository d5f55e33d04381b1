"""VGGT's camera head (`vggt/heads/camera_head.py`): iterative pose-encoding refinement with adaLN."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ptq3d.models.layers import Block, Mlp

POSE_DIM = 9  # absT_quaR_FoV


def activate_pose(pred: torch.Tensor) -> torch.Tensor:
    """Raw pose encoding [..., 9] -> translation linear, quaternion linear (unnormalised), FoV ReLU."""
    return torch.cat([pred[..., :3], pred[..., 3:7], F.relu(pred[..., 7:])], dim=-1)


class CameraHead(nn.Module):
    """Camera tokens of the last aggregator layer -> pose encodings.

    forward(tokens_list: list of [B, S, P, dim_in], num_iterations) -> list of num_iterations [B, S, 9].
    Each iteration: adaLN-modulate the normalised camera tokens by the embedded current estimate
    (learned `empty_pose_tokens` at first, the detached estimate afterwards), run the trunk blocks (attention
    across the S frames), and add pose_branch(trunk_norm(.)) to the estimate.
    """

    def __init__(
        self,
        dim_in: int = 2048,
        trunk_depth: int = 4,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        init_values: float = 0.01,
    ):
        super().__init__()
        self.trunk = nn.Sequential(
            *[
                Block(dim_in, num_heads, mlp_ratio=mlp_ratio, init_values=init_values)
                for _ in range(trunk_depth)
            ]
        )
        self.token_norm = nn.LayerNorm(dim_in)
        self.trunk_norm = nn.LayerNorm(dim_in)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, POSE_DIM))
        self.embed_pose = nn.Linear(POSE_DIM, dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in))
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim_in, hidden_features=dim_in // 2, out_features=POSE_DIM)

    def forward(self, tokens_list: list[torch.Tensor], num_iterations: int = 4) -> list[torch.Tensor]:
        pose_tokens = self.token_norm(tokens_list[-1][:, :, 0])  # camera token [B, S, dim_in]
        B, S, _ = pose_tokens.shape
        pred = None
        outputs = []
        for _ in range(num_iterations):
            if pred is None:
                module_input = self.embed_pose(self.empty_pose_tokens.expand(B, S, -1))
            else:
                pred = pred.detach()  # as upstream: no gradient through the previous estimate
                module_input = self.embed_pose(pred)
            shift, scale, gate = self.poseLN_modulation(module_input).chunk(3, dim=-1)
            x = gate * (self.adaln_norm(pose_tokens) * (1 + scale) + shift) + pose_tokens
            x = self.trunk(x)
            delta = self.pose_branch(self.trunk_norm(x))
            pred = delta if pred is None else pred + delta
            outputs.append(activate_pose(pred))
        return outputs
