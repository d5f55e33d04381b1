"""2-D rotary position embedding (RoPE) on a patch grid, as used by VGGT and Pi3 (base frequency 100).

The head dimension D is split in two halves: the first half is rotated by the token's row (y) position,
the second by its column (x) position. Each half applies 1-D RoPE with inv_freq_i = base^(-2i/(D/2)),
angles duplicated over the half (cat(a, a)) and rotate_half(u) = cat(-u2, u1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def grid_positions(
    batch: int, grid_h: int, grid_w: int, num_special: int = 0, device: torch.device | str | None = None
) -> torch.Tensor:
    """RoPE positions [batch, num_special + grid_h*grid_w, 2] (long), (row, col) in raster order.

    With special tokens (num_special > 0) the patches get (row+1, col+1) and the special tokens, placed
    first, get (0, 0), so no patch shares a position with them. Without special tokens: (row, col).
    """
    rows = torch.arange(grid_h, device=device)
    cols = torch.arange(grid_w, device=device)
    pos = torch.cartesian_prod(rows, cols)  # [h*w, 2]
    if num_special > 0:
        pos = torch.cat([torch.zeros(num_special, 2, dtype=pos.dtype, device=device), pos + 1], dim=0)
    return pos.unsqueeze(0).expand(batch, -1, -1).clone()


class RotaryPositionEmbedding2D(nn.Module):
    """forward(tokens [B, heads, N, D], positions [B, N, 2] long (y, x)) -> [B, heads, N, D].

    No parameters (nothing in the state_dict); `frequency` is the RoPE base.
    """

    def __init__(self, frequency: float = 100.0):
        super().__init__()
        self.frequency = float(frequency)

    def _cos_sin(
        self, dim: int, max_pos: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin tables [max_pos, dim] for one half of the head dimension."""
        inv_freq = 1.0 / (self.frequency ** (torch.arange(0, dim, 2, device=device).float() / dim))
        angles = torch.outer(torch.arange(max_pos, device=device, dtype=inv_freq.dtype), inv_freq).to(dtype)
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    def _rope_1d(
        self, x: torch.Tensor, pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        # pos [B, N] -> tables [B, 1, N, d], broadcast over heads
        c = F.embedding(pos, cos)[:, None]
        s = F.embedding(pos, sin)[:, None]
        return x * c + self._rotate_half(x) * s

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        half = tokens.shape[-1] // 2
        cos, sin = self._cos_sin(half, int(positions.max()) + 1, tokens.device, tokens.dtype)
        y_part, x_part = tokens.chunk(2, dim=-1)
        y_part = self._rope_1d(y_part, positions[..., 0], cos, sin)
        x_part = self._rope_1d(x_part, positions[..., 1], cos, sin)
        return torch.cat((y_part, x_part), dim=-1)

    def extra_repr(self) -> str:
        return f"frequency={self.frequency:g}"
