"""Packed integer weight formats shared by the emulated (torch) and Triton backends.

A quantized linear layer holds integer weight codes q [N, K] (N = out_features, K = in_features) with

    W[n, k] = (q[n, k] - z[n, g]) * s[n, g],      g = k // group_size

Codes are signed: symmetric codes lie in [-2^(b-1), 2^(b-1) - 1]; asymmetric codes are stored minus
2^(b-1) with the zero-point shifted the same way, so both fit the same signed container.

Formats (`PackedWeight.data`):
- bits 5..8: int8 [N, K], one code per byte (6-bit weights run on the 8-bit kernels; the codes are exact).
- bits 2..4: int8 [N, K // 2], two codes per byte along K: byte j of row n holds code k = 2j in the low
  nibble and k = 2j + 1 in the high nibble (two's complement nibbles, unpacked with arithmetic shifts).
Scales are float32 [N, G] (G = 1 for per-channel and per-tensor, K // group_size per group); zero-points
are int8 [N, G] or None (symmetric). Scales stay float32 so the integer paths reproduce the fake path's
scales bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptq3d.errors import ConfigError


@dataclass
class PackedWeight:
    """Integer weights of one linear layer in a kernel-ready format (see module docstring).

    data:  int8 [N, K] (bits > 4) or int8 [N, K // 2] (bits <= 4, two codes per byte)
    scale: float32 [N, G]
    zero:  int8 [N, G] or None
    bits, in_features (K), out_features (N), group_size (K for per-channel / per-tensor).
    """

    data: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    bits: int
    in_features: int
    out_features: int
    group_size: int

    @property
    def packed_int4(self) -> bool:
        return self.bits <= 4

    @property
    def num_groups(self) -> int:
        return self.scale.shape[1]

    def nbytes(self) -> int:
        """Bytes of codes + scales + zero-points as stored."""
        n = self.data.numel() * self.data.element_size() + self.scale.numel() * self.scale.element_size()
        if self.zero is not None:
            n += self.zero.numel() * self.zero.element_size()
        return n

    def codes(self) -> torch.Tensor:
        """Integer codes int8 [N, K] (unpacked for int4)."""
        return unpack_int4(self.data) if self.packed_int4 else self.data

    def dequantize(self) -> torch.Tensor:
        """float32 [N, K] weights (q - z) * s."""
        q = self.codes().to(torch.float32)
        n, k = q.shape
        q = q.view(n, self.num_groups, self.group_size)
        if self.zero is not None:
            q = q - self.zero.to(torch.float32)[:, :, None]
        return (q * self.scale[:, :, None]).reshape(n, k)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """int8 [N, K] codes in [-8, 7] -> int8 [N, K // 2], low nibble = even k, high nibble = odd k."""
    if codes.shape[-1] % 2:
        raise ValueError(f"int4 packing needs an even in_features, got {codes.shape[-1]}")
    if codes.numel() and (int(codes.min()) < -8 or int(codes.max()) > 7):
        raise ValueError(f"int4 packing needs codes in [-8, 7], got [{int(codes.min())}, {int(codes.max())}]")
    c = codes.to(torch.int16)
    lo = c[..., 0::2] & 0xF
    hi = (c[..., 1::2] & 0xF) << 4
    byte = lo | hi  # 0..255
    return torch.where(byte > 127, byte - 256, byte).to(torch.int8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """int8 [N, K // 2] -> int8 [N, K] signed codes (inverse of `pack_int4`)."""
    lo = torch.bitwise_right_shift(torch.bitwise_left_shift(packed, 4), 4)  # sign-extends the low nibble
    hi = torch.bitwise_right_shift(packed, 4)
    return torch.stack([lo, hi], dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def _integral_zero(zero: torch.Tensor, bits: int, where: str) -> torch.Tensor:
    zr = torch.round(zero)
    if not torch.equal(zr, zero.to(zr.dtype)):
        raise ConfigError(
            f"{where}: the integer backends need integer zero-points (weight_zero has fractional values); "
            "use backend 'fake'"
        )
    if zr.numel() and (float(zr.min()) < -128 or float(zr.max()) > 127):
        raise ConfigError(f"{where}: weight_zero outside the int8 range of stored (shifted) zero-points")
    return zr.to(torch.int8)


def pack_weight(
    qweight: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero: torch.Tensor | None,
    bits: int,
    where: str = "layer",
) -> PackedWeight:
    """Pack a layer's integer codes.

    qweight: int [N, K] codes; weight_scale: [1, 1] (tensor), [N, 1] (channel) or [N, K // gs] (group);
    weight_zero: same shape as weight_scale or None. `where` names the layer in error messages.
    """
    if not 2 <= bits <= 8:
        raise ConfigError(f"{where}: the integer backends support 2..8-bit weights, got {bits}")
    if qweight.dim() != 2:
        raise ConfigError(f"{where}: qweight must be [out, in], got shape {tuple(qweight.shape)}")
    n, k = qweight.shape
    scale = weight_scale.detach().to(torch.float32)
    if scale.dim() != 2 or scale.shape[0] not in (1, n) or k % scale.shape[1]:
        raise ConfigError(
            f"{where}: weight_scale shape {tuple(scale.shape)} does not fit weights [{n}, {k}] "
            "(expected [1,1], [out,1] or [out, in//group_size])"
        )
    groups = scale.shape[1]
    if scale.shape[0] == 1 and groups != 1:
        raise ConfigError(f"{where}: weight_scale shape {tuple(scale.shape)} is not per-tensor/channel/group")
    scale = scale.expand(n, groups).contiguous()
    zero = None
    if weight_zero is not None:
        if weight_zero.numel() != 1 and tuple(weight_zero.shape) != tuple(weight_scale.shape):
            raise ConfigError(
                f"{where}: weight_zero shape {tuple(weight_zero.shape)} differs from weight_scale "
                f"{tuple(weight_scale.shape)}"
            )
        zero = _integral_zero(weight_zero.detach().to(torch.float32), bits, where)
        zero = (zero.reshape(1, 1) if zero.numel() == 1 else zero).expand(n, groups).contiguous()
        if not bool(zero.any()):
            zero = None  # all-zero zero-points: the symmetric kernels give the same result
    codes = qweight.detach()
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if codes.numel() and (int(codes.min()) < lo or int(codes.max()) > hi):
        raise ConfigError(
            f"{where}: qweight codes [{int(codes.min())}, {int(codes.max())}] exceed the signed "
            f"{bits}-bit range [{lo}, {hi}]"
        )
    if bits <= 4 and k % 2:
        raise ConfigError(f"{where}: int4 packing needs an even in_features, got {k}")
    codes = codes.to(torch.int8).contiguous()
    data = pack_int4(codes) if bits <= 4 else codes
    return PackedWeight(data, scale, zero, bits, k, n, k // groups)


def quantize_weight_rtn(
    weight: torch.Tensor, bits: int, group_size: int | None = None, symmetric: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Round-to-nearest weight codes for kernel tests and benchmarks (not a PTQ method).

    weight: float [N, K]. Returns (codes int8 [N, K], scale float32 [N, G], zero float32 [N, G] or None)
    in the storage convention of the module docstring.
    """
    n, k = weight.shape
    gs = group_size or k
    w = weight.detach().to(torch.float32).reshape(n, k // gs, gs)
    qmax = 2 ** (bits - 1) - 1
    if symmetric:
        scale = (w.abs().amax(-1) / qmax).clamp_min(1e-8)
        q = torch.clamp(torch.round(w / scale[..., None]), -qmax - 1, qmax)
        zero = None
    else:
        lo, hi = w.amin(-1), w.amax(-1)
        scale = ((hi - lo) / (2**bits - 1)).clamp_min(1e-8)
        zu = torch.round(-lo / scale)  # unsigned zero in [0, 2^b - 1]
        qu = torch.clamp(torch.round(w / scale[..., None]) + zu[..., None], 0, 2**bits - 1)
        q = qu - 2 ** (bits - 1)
        zero = zu - 2 ** (bits - 1)
    return q.reshape(n, k).to(torch.int8), scale, zero
