"""Input transforms a QuantLinear applies to x before activation quantization.

Each transform T is invertible and the layer's weight is stored already multiplied by the matching
inverse, so that T(x) @ W'^T == x @ W^T in exact arithmetic:
- ChannelScale (SmoothQuant online smoothing): T(x) = x / s, W' = W * s (columns).
- HadamardRotation (QuaRot / QuantVGGT per-layer rotation): T(x) = x @ R, W' = W @ R (R orthonormal).
- ColumnPermutation (GPTQ act-order with groups): T(x) = x[..., perm], W' = W[:, perm].
- TransformChain: several, in order.

Every transform serializes as `config()` (JSON: kind and sizes) plus its buffers (state_dict), and
`build_transform(config)` rebuilds an empty one of the right shape for load_state_dict. A new transform kind
(in a method module or a plugin) is an InputTransform subclass with a class attribute `kind`, `config()`,
`transform_weight()` and a classmethod `empty(cfg)`; build_transform finds it by `kind`.
"""

from __future__ import annotations

import torch
from torch import nn

from ptq3d.errors import ConfigError, unknown_name_error
from ptq3d.quant.hadamard import hadamard_transform, kronecker_factor, random_signs


class InputTransform(nn.Module):
    kind: str = "?"

    def config(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def transform_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """W [out, in] -> W' with T(x) @ W'^T == x @ W^T."""
        raise NotImplementedError  # pragma: no cover


class ChannelScale(InputTransform):
    """x [..., n] -> x / scale (scale [n] > 0)."""

    kind = "channel_scale"

    def __init__(self, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.scale.to(x.dtype)

    def transform_weight(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.scale.view(1, -1).to(weight.dtype)

    def config(self) -> dict:
        return {"kind": self.kind, "n": int(self.scale.numel())}

    @classmethod
    def empty(cls, cfg: dict) -> ChannelScale:
        return cls(torch.ones(cfg["n"]))


class HadamardRotation(InputTransform):
    """x [..., n] -> x @ R, R = diag(signs) H_n / sqrt(n) (H_n = H_m kron H_{2^k}, m = `factor`)."""

    kind = "hadamard"

    def __init__(self, n: int, seed: int | None = 0, factor: int | None = None):
        super().__init__()
        self.n = int(n)
        self.factor = kronecker_factor(n) if factor is None else int(factor)
        signs = random_signs(n, seed) if seed is not None else torch.ones(n)
        self.register_buffer("signs", signs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return hadamard_transform(x, self.signs, factor=self.factor)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return hadamard_transform(y, self.signs, inverse=True, factor=self.factor)

    def transform_weight(self, weight: torch.Tensor) -> torch.Tensor:
        # W' = W R: each row of W is rotated like an input vector.
        return hadamard_transform(weight.float(), self.signs, factor=self.factor).to(weight.dtype)

    def config(self) -> dict:
        return {"kind": self.kind, "n": self.n, "factor": self.factor}

    @classmethod
    def empty(cls, cfg: dict) -> HadamardRotation:
        return cls(cfg["n"], seed=None, factor=cfg.get("factor"))


class ColumnPermutation(InputTransform):
    """x [..., n] -> x[..., perm]."""

    kind = "permutation"

    def __init__(self, perm: torch.Tensor):
        super().__init__()
        self.register_buffer("perm", perm.detach().long().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(-1, self.perm)

    def transform_weight(self, weight: torch.Tensor) -> torch.Tensor:
        return weight[:, self.perm]

    def config(self) -> dict:
        return {"kind": self.kind, "n": int(self.perm.numel())}

    @classmethod
    def empty(cls, cfg: dict) -> ColumnPermutation:
        return cls(torch.arange(cfg["n"]))


class TransformChain(InputTransform):
    """Several transforms applied in order (e.g. rotation then smoothing)."""

    kind = "chain"

    def __init__(self, parts: list[InputTransform]):
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for p in self.parts:
            x = p(x)
        return x

    def transform_weight(self, weight: torch.Tensor) -> torch.Tensor:
        for p in self.parts:
            weight = p.transform_weight(weight)
        return weight

    def config(self) -> dict:
        return {"kind": self.kind, "parts": [p.config() for p in self.parts]}

    @classmethod
    def empty(cls, cfg: dict) -> TransformChain:
        parts = [build_transform(p) for p in cfg.get("parts", [])]
        if not parts or any(p is None for p in parts):
            raise ConfigError(f"bad transform chain config {cfg!r}")
        return cls(parts)


def chain(*parts: InputTransform | None) -> InputTransform | None:
    """Compose, dropping Nones and flattening chains; None if nothing is left, the part itself if one."""
    flat: list[InputTransform] = []
    for p in parts:
        if p is None:
            continue
        flat.extend(p.parts if isinstance(p, TransformChain) else [p])
    if not flat:
        return None
    return flat[0] if len(flat) == 1 else TransformChain(flat)


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_subclasses(sub))
    return out


def _find_kind(kind: str) -> type | None:
    for cls in _subclasses(InputTransform):
        if getattr(cls, "kind", None) == kind and hasattr(cls, "empty"):
            return cls
    return None


def build_transform(cfg: dict | None) -> InputTransform | None:
    """An empty transform of the kind and shape `cfg` (from `config()`) describes, buffers to be filled by
    load_state_dict. Kinds: every InputTransform subclass with a `kind` and a classmethod `empty(cfg)`,
    including those of method modules and plugins (ptq3d.methods.api.load_quantized imports them first)."""
    if cfg is None:
        return None
    kind = cfg.get("kind")
    cls = _find_kind(kind)
    if cls is None:
        known = sorted({c.kind for c in _subclasses(InputTransform) if hasattr(c, "empty")})
        raise unknown_name_error("input transform kind", str(kind), known)
    return cls.empty(cfg)
