"""Uniform quantization primitives: specs, schemes, qparams, quantize / dequantize / fake-quantize.

Conventions
- Every tensor is seen as a 2-D matrix [rows, cols]: a weight W [out, in] (rows = output channels) or
  activations [tokens, C] (rows = tokens, `x.reshape(-1, C)`).
- Granularity picks what shares one (scale, zero): "tensor" = all; "channel" (weights) and "token"
  (activations) = one row; "group" = `group_size` consecutive columns of one row.
  Scale/zero shapes: tensor [1, 1], channel/token [rows, 1], group [rows, cols // group_size].
- Codes are always SIGNED integers in [-2^(b-1), 2^(b-1) - 1] (they fit int8 for b <= 8), for both
  symmetric and asymmetric specs: x_hat = scale * (code - zero).
  * symmetric: zero = 0.
  * asymmetric: the textbook unsigned code u in [0, 2^b - 1] with zero point z = round(-min / scale) is
    stored as code = u - 2^(b-1) and zero = z - 2^(b-1), so scale * (code - zero) = scale * (u - z).
- Symmetric scale rule (`sym_rule`):
  * "absmax" (default; QuaRot, SmoothQuant, QuantVGGT): scale = max|x| / (2^(b-1) - 1).
  * "range" (IST-DASLab/gptq `Quantizer(sym=True)`): scale = 2 max|x| / (2^b - 1), zero point 2^(b-1)
    in unsigned terms; the top code 2^(b-1) is clamped away, so the grid is still [-2^(b-1), 2^(b-1) - 1].
- Asymmetric ranges always include 0 (min <= 0 <= max), as in the GPTQ quantizer.
- Rounding is torch.round (round half to even), like the reference implementations.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace
from typing import Literal

import torch

from ptq3d.errors import ConfigError, unknown_name_error
from ptq3d.quant.plan import PrecisionPlan, parse_entry

Granularity = Literal["tensor", "channel", "group", "token"]
SymRule = Literal["absmax", "range"]
GRANULARITIES: tuple[str, ...] = ("tensor", "channel", "group", "token")
SYM_RULES: tuple[str, ...] = ("absmax", "range")


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized.

    bits: 2..16. granularity: tensor / channel / group / token (see module doc).
    symmetric: zero point 0 (else min/max affine). group_size: columns per group (granularity "group").
    dynamic: activations only; qparams computed per forward (else static, calibrated once).
    """

    bits: int
    granularity: Granularity
    symmetric: bool = True
    group_size: int | None = None
    dynamic: bool = False

    def __post_init__(self):
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 16:
            raise ConfigError(f"QuantSpec bits={self.bits!r}: must be an integer in 2..16")
        if self.granularity not in GRANULARITIES:
            raise unknown_name_error("granularity", str(self.granularity), GRANULARITIES)
        if self.granularity == "group":
            if not isinstance(self.group_size, int) or self.group_size <= 0:
                raise ConfigError(
                    f"QuantSpec granularity 'group' needs a positive group_size, got {self.group_size!r}"
                )
        elif self.group_size is not None:
            raise ConfigError(
                f"QuantSpec group_size={self.group_size} is only valid with granularity 'group'"
            )

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1))

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def check_width(self, cols: int, what: str = "tensor") -> None:
        """Raise ConfigError if this spec cannot quantize a matrix with `cols` columns."""
        if self.granularity == "group" and cols % self.group_size != 0:
            raise ConfigError(
                f"group size {self.group_size} does not divide the width {cols} of {what} "
                f"(choose a group size that divides {cols})"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> QuantSpec:
        return cls(**d)

    def describe(self) -> str:
        s = f"{self.bits}b {self.granularity}"
        if self.granularity == "group":
            s += f"{self.group_size}"
        s += " sym" if self.symmetric else " asym"
        if self.dynamic:
            s += " dynamic"
        return s


@dataclass(frozen=True)
class Scheme:
    """A named weight spec + activation spec (None = activations stay floating point), optionally with a
    mixed-precision plan (ptq3d.quant.plan.PrecisionPlan) that changes bits per block or per site.

    With a plan, `weight` / `act` are the base formats; a method asks `for_block(block)` or
    `for_site(site, block)` for the plain Scheme of one unit (BlockData.scheme does this in the block loop).
    """

    name: str
    weight: QuantSpec
    act: QuantSpec | None
    plan: PrecisionPlan | None = None

    @property
    def is_mixed(self) -> bool:
        return self.plan is not None

    @property
    def base_name(self) -> str:
        return self.name.split("+", 1)[0]

    def with_plan(self, plan: PrecisionPlan | None) -> Scheme:
        """This scheme's formats with `plan` on top, named "<base>+<plan name>" (None: the plain base scheme)."""
        base = self.base_name
        if plan is None:
            return Scheme(base, self.weight, self.act)
        return Scheme(f"{base}+{plan.name}", self.weight, self.act, plan)

    def for_site(self, site: str | None, block: str | None = None) -> Scheme:
        """The plain Scheme of one linear (`site`, full name) in `block`: the plan's bits, the base's formats."""
        entry = None if self.plan is None else self.plan.entry_for(site, block)
        if entry is None:
            return self if self.plan is None else Scheme(self.base_name, self.weight, self.act)
        wb, ab = parse_entry(entry, f"plan '{self.plan.name}'")
        weight = replace(self.weight, bits=wb)
        if ab is None:
            act = self.act
        elif ab >= 16:
            act = None
        elif self.act is None:
            act = _act_spec(ab, symmetric=self.weight.symmetric)
        else:
            act = replace(self.act, bits=ab)
        return Scheme(f"{self.base_name}@{entry}", weight, act)

    def for_block(self, block: str | None) -> Scheme:
        """The plain Scheme of `block` (its block entry; site entries need for_site)."""
        return self.for_site(None, block)

    def to_dict(self) -> dict:
        d = {
            "name": self.name,
            "weight": self.weight.to_dict(),
            "act": None if self.act is None else self.act.to_dict(),
        }
        if self.plan is not None:
            d["plan"] = self.plan.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Scheme:
        act = d.get("act")
        plan = d.get("plan")
        return cls(
            d["name"],
            QuantSpec.from_dict(d["weight"]),
            None if act is None else QuantSpec.from_dict(act),
            None if plan is None else PrecisionPlan.from_dict(plan),
        )

    def with_static_act(self) -> Scheme:
        """The same scheme with static per-tensor activations (e.g. TAPTQ-style), if it quantizes them."""
        if self.act is None:
            return self
        act = QuantSpec(self.act.bits, "tensor", self.act.symmetric, None, dynamic=False)
        suffix = self.name[len(self.base_name) :]
        return Scheme(self.base_name + "-static" + suffix, self.weight, act, self.plan)


def _weight_spec(bits: int, group: int | None = None, symmetric: bool = True) -> QuantSpec:
    if group is None:
        return QuantSpec(bits, "channel", symmetric)
    return QuantSpec(bits, "group", symmetric, group_size=group)


def _act_spec(bits: int, static: bool = False, symmetric: bool = True) -> QuantSpec | None:
    if bits >= 16:
        return None
    if static:
        return QuantSpec(bits, "tensor", symmetric, dynamic=False)
    return QuantSpec(bits, "token", symmetric, dynamic=True)


_NAMED = ("w8a8", "w6a6", "w4a8", "w4a4", "w4a16", "w8a16")
# w<bits>[g<group>]a<bits>[-static][-asym]: e.g. w4g128a16, w8a8-static, w4a8-asym
_SCHEME_RE = re.compile(r"^w(\d+)(?:g(\d+))?a(\d+)((?:-static|-asym)*)$")


def get_scheme(name: str) -> Scheme:
    """Scheme by name. Named: w8a8, w6a6, w4a8, w4a4, w4a16, w8a16. Also parsed: `w<b>[g<G>]a<b>[-static][-asym]`
    (g<G>: per-group weights; -static: static per-tensor activations; -asym: asymmetric weights and
    activations). Defaults: weights per-channel symmetric; activations per-token dynamic symmetric;
    a16 = activations stay FP."""
    if isinstance(name, Scheme):
        return name
    m = _SCHEME_RE.match(str(name).strip().lower())
    if not m:
        raise unknown_name_error("scheme", str(name), _NAMED)
    wb, g, ab, mods = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
    if not 2 <= wb <= 8:
        raise ConfigError(f"scheme '{name}': weight bits {wb} not in 2..8 (codes are stored as int8)")
    if not 2 <= ab <= 16:
        raise ConfigError(f"scheme '{name}': activation bits {ab} not in 2..16")
    sym = "-asym" not in mods
    return Scheme(
        str(name).strip().lower(),
        _weight_spec(wb, int(g) if g else None, sym),
        _act_spec(ab, static="-static" in mods, symmetric=sym),
    )


def list_schemes() -> list[str]:
    """The named schemes (the parser accepts more, see get_scheme)."""
    return list(_NAMED)


# --- quantizer math ----------------------------------------------------------------------------------


def _as_2d(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x


def _expand(p: torch.Tensor, cols: int) -> torch.Tensor:
    """Broadcast a [rows, n_groups] qparam over [rows, cols] (groups are consecutive columns)."""
    if p.shape[-1] in (1, cols):
        return p
    return p.repeat_interleave(cols // p.shape[-1], dim=-1)


def _reduce_minmax(x2: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(row|group|tensor) min and max of a [rows, cols] matrix -> shapes of the qparams."""
    rows, cols = x2.shape
    if spec.granularity == "tensor":
        return x2.min().reshape(1, 1), x2.max().reshape(1, 1)
    if spec.granularity in ("channel", "token"):
        return x2.amin(dim=1, keepdim=True), x2.amax(dim=1, keepdim=True)
    spec.check_width(cols)
    g = x2.reshape(rows, cols // spec.group_size, spec.group_size)
    return g.amin(dim=2), g.amax(dim=2)


def qparams_from_range(
    xmin: torch.Tensor, xmax: torch.Tensor, spec: QuantSpec, sym_rule: SymRule = "absmax"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(scale, zero) from a range. The range is widened to include 0; an empty range (0, 0) gets scale 1
    (its codes are then all 0, like the GPTQ quantizer's [-1, 1] fallback up to the scale value)."""
    xmin = torch.clamp(xmin, max=0).float()
    xmax = torch.clamp(xmax, min=0).float()
    if spec.symmetric:
        amax = torch.maximum(xmin.abs(), xmax)
        if sym_rule == "absmax":
            scale = amax / spec.qmax
        elif sym_rule == "range":
            scale = (amax + amax) / (2**spec.bits - 1)
        else:
            raise unknown_name_error("symmetric scale rule", str(sym_rule), SYM_RULES)
        scale = torch.where(amax == 0, torch.ones_like(scale), scale)
        return scale, None
    scale = (xmax - xmin) / (2**spec.bits - 1)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero = torch.round(-xmin / scale) + spec.qmin  # unsigned zero point shifted into the signed code range
    return scale, zero


def compute_qparams(
    x: torch.Tensor,
    spec: QuantSpec,
    clip_ratio: float = 1.0,
    sym_rule: SymRule = "absmax",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """scale [.., 1|n_groups] float32 and zero (same shape, or None if symmetric) for x viewed as
    [rows, cols] (weights [out, in]; activations [..., C] -> [tokens, C]). clip_ratio shrinks the range."""
    x2 = _as_2d(x.detach()).float()
    xmin, xmax = _reduce_minmax(x2, spec)
    return qparams_from_range(xmin * clip_ratio, xmax * clip_ratio, spec, sym_rule)


def quantize(
    x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, spec: QuantSpec
) -> torch.Tensor:
    """Integer codes (float tensor holding integers, shape of x) in [qmin, qmax]: clamp(round(x/scale) + zero).
    scale/zero are [rows, 1|n_groups|cols] or [1, 1] for x viewed as [rows, cols]."""
    shape = x.shape
    x2 = _as_2d(x).float()
    cols = x2.shape[1]
    q = torch.round(x2 / _expand(scale, cols))
    if zero is not None:
        q = q + _expand(zero, cols)
    return torch.clamp(q, spec.qmin, spec.qmax).reshape(shape)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None) -> torch.Tensor:
    """scale * (codes - zero) in float32; codes [.., cols] (any integer or float dtype)."""
    shape = codes.shape
    c2 = _as_2d(codes).float()
    cols = c2.shape[1]
    if zero is not None:
        c2 = c2 - _expand(zero, cols)
    return (_expand(scale, cols) * c2).reshape(shape)


def fake_quantize(
    x: torch.Tensor,
    spec: QuantSpec,
    scale: torch.Tensor | None = None,
    zero: torch.Tensor | None = None,
    clip_ratio: float = 1.0,
    sym_rule: SymRule = "absmax",
) -> torch.Tensor:
    """Quantize then dequantize x (same shape and dtype). With scale (and zero) given they are used
    (static quantization); otherwise the qparams are computed from x itself (dynamic / weights)."""
    if scale is None:
        scale, zero = compute_qparams(x, spec, clip_ratio, sym_rule)
    codes = quantize(x, scale, zero, spec)
    return dequantize(codes, scale, zero).to(x.dtype)


def mse_clip_qparams(
    x: torch.Tensor,
    spec: QuantSpec,
    grid: int = 100,
    maxshrink: float = 0.8,
    norm: float = 2.4,
    sym_rule: SymRule = "absmax",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Clipping search of the GPTQ repo's `Quantizer(mse=True)`: for p in 1, 1-1/grid, ... down to
    1-maxshrink, quantize on [p*min, p*max] and keep, per row (or group / tensor), the p with the least
    sum |x - x_hat|^norm. Returns (scale, zero) like compute_qparams."""
    x2 = _as_2d(x.detach()).float()
    rows, cols = x2.shape
    xmin, xmax = _reduce_minmax(x2, spec)
    best_err = torch.full_like(xmin, float("inf"))
    best_scale, best_zero = qparams_from_range(xmin, xmax, spec, sym_rule)
    for i in range(int(maxshrink * grid)):
        p = 1 - i / grid
        scale, zero = qparams_from_range(p * xmin, p * xmax, spec, sym_rule)
        err = (dequantize(quantize(x2, scale, zero, spec), scale, zero) - x2).abs_().pow_(norm)
        if spec.granularity == "tensor":
            err = err.sum().reshape(1, 1)
        elif spec.granularity == "group":
            err = err.reshape(rows, cols // spec.group_size, spec.group_size).sum(dim=2)
        else:
            err = err.sum(dim=1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
        if zero is not None:
            best_zero = torch.where(better, zero, best_zero)
    return best_scale, best_zero


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 10 log10(||ref||^2 / ||ref - approx||^2) in dB (inf if equal)."""
    ref = reference.detach().double()
    noise = (ref - approx.detach().double()).pow(2).sum().item()
    signal = ref.pow(2).sum().item()
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10 * math.log10(signal / noise)


def spec_replace(spec: QuantSpec, **kw) -> QuantSpec:
    return replace(spec, **kw)
