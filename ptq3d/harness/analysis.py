"""Activation statistics of a GeometryModel: how heavy-tailed the inputs of the quantized linears are, per block,
and what the special (camera / register) tokens do. This is the property the PTQ papers on VGGT build on
(outlier channels and tokens that make per-tensor / per-token low-bit activations lossy).

Per quant site (the input of qkv / proj / fc1 / fc2 of every block in scope), over all captured tokens:
- kurtosis: Pearson kurtosis E[(x - mu)^4] / sigma^4 of all input values (a Gaussian gives 3);
- channel_max_median: max over channels of max|x_c| divided by the median over channels of max|x_c| (outlier
  channels: what per-token activation quantization suffers from);
- token_max_median: the same over tokens, max|x_t| (outlier tokens: what per-tensor quantization suffers from);
- special_patch_norm: mean L2 norm of the special tokens' rows divided by that of the patch tokens' rows, and
  special_patch_absmax: max|x| over special tokens / max|x| over patch tokens.
Per block (the residual stream entering it): camera_norm / register_norm / patch_norm (mean L2 norms) and the
channel max/median of the stream.

Token layout: every block runs on rows that are whole frames of P tokens (frame blocks [B*S, P, C], global
blocks [B, S*P, C], DINOv2 blocks [B*S, 1 + R + h*w, C]), so position t mod P is the token's index in its
frame; positions < patch_start_idx are special (aggregator: 0 = camera, 1..R = registers; DINOv2: 0 = cls,
1..R = registers).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ptq3d.models.base import GeometryModel, QuantScope


@dataclass
class SiteStats:
    """Statistics of the input of one quantized linear (see module docstring)."""

    site: str
    block: str
    layer: str
    kurtosis: float
    channel_max_median: float
    token_max_median: float
    special_patch_norm: float
    special_patch_absmax: float
    absmax: float


@dataclass
class BlockStats:
    """The residual stream entering one block: mean token L2 norms (camera_norm is token 0, i.e. cls in DINOv2
    blocks) and the channel max/median of max|x|."""

    block: str
    kind: str
    camera_norm: float
    register_norm: float
    patch_norm: float
    channel_max_median: float
    absmax: float


class _Accumulator:
    """Streaming moments and maxima of [rows, P, C] tensors (float64)."""

    def __init__(self, special: int):
        self.special = special
        self.n = 0
        self.s1 = self.s2 = self.s3 = self.s4 = 0.0
        self.chan_absmax: torch.Tensor | None = None
        self.token_absmax: list[torch.Tensor] = []
        self.norm_sum = torch.zeros(0)
        self.norm_count = 0
        self.special_absmax = 0.0
        self.patch_absmax = 0.0

    def add(self, x: torch.Tensor, P: int) -> None:
        x = x.detach().double().reshape(-1, P, x.shape[-1])
        self.n += x.numel()
        self.s1 += float(x.sum())
        x2 = x * x
        self.s2 += float(x2.sum())
        self.s3 += float((x2 * x).sum())
        self.s4 += float((x2 * x2).sum())
        a = x.abs()
        cm = a.amax((0, 1))
        self.chan_absmax = cm if self.chan_absmax is None else torch.maximum(self.chan_absmax, cm)
        self.token_absmax.append(a.amax(-1).flatten())
        norms = x.norm(dim=-1).sum(0)  # [P]
        self.norm_sum = norms if self.norm_count == 0 else self.norm_sum + norms
        self.norm_count += x.shape[0]
        k = self.special
        if k:
            self.special_absmax = max(self.special_absmax, float(a[:, :k].max()))
        self.patch_absmax = max(self.patch_absmax, float(a[:, k:].max()))

    def kurtosis(self) -> float:
        n = self.n
        mu = self.s1 / n
        var = self.s2 / n - mu * mu
        m4 = self.s4 / n - 4 * mu * self.s3 / n + 6 * mu * mu * self.s2 / n - 3 * mu**4
        return float(m4 / var**2) if var > 0 else float("nan")

    def norms(self) -> np.ndarray:
        return (self.norm_sum / max(self.norm_count, 1)).numpy()


def _ratio_max_median(v: torch.Tensor) -> float:
    med = float(v.median())
    return float(v.max()) / med if med > 0 else float("inf")


@torch.no_grad()
def activation_statistics(
    model: GeometryModel, images: Iterable[torch.Tensor], scope: QuantScope = "aggregator"
) -> tuple[list[SiteStats], list[BlockStats]]:
    """Run `model.predict` on each images tensor [B, S, 3, H, W] and collect the statistics of every quant site
    in `scope` and of every block's input stream. Returns (site stats in execution order, block stats)."""
    pairs = list(model.iter_block_sites(scope))
    blocks = [blk for blk, _ in pairs]
    sites = {blk.name: lins for blk, lins in pairs}
    site_acc: dict[str, _Accumulator] = {}
    block_acc: dict[str, _Accumulator] = {}
    state: dict[str, int] = {"active": 0}
    hooks = []

    def site_hook(name: str):
        def hook(_mod, args):
            if not state["active"]:
                return
            acc = site_acc.setdefault(name, _Accumulator(state["special"]))
            acc.add(args[0], state["P"])

        return hook

    def block_hook(name: str, kind: str):
        def hook(_mod, args):
            if not state["active"]:
                return
            if kind == "encoder":  # rows are whole frames of the encoder's own layout (cls + registers first)
                state["P"] = args[0].shape[1]
                state["special"] = state["P"] - state["patches"]
            else:
                state["P"], state["special"] = state["agg_P"], state["agg_special"]
            acc = block_acc.setdefault(name, _Accumulator(state["special"]))
            acc.add(args[0], state["P"])

        return hook

    try:
        for blk in blocks:
            hooks.append(blk.module.register_forward_pre_hook(block_hook(blk.name, blk.kind)))
            for rel, lin in sites[blk.name].items():
                hooks.append(lin.register_forward_pre_hook(site_hook(f"{blk.name}.{rel}")))
        for imgs in images:
            state["active"] = 0  # only for the token layout; the statistics come from the full pass below
            _, ctx = model.capture_block_input(imgs, "aggregator")
            state["active"] = 1
            state["agg_P"], state["agg_special"] = ctx.tokens_per_frame, ctx.patch_start_idx
            state["patches"] = ctx.tokens_per_frame - ctx.patch_start_idx
            model.predict(imgs)
    finally:
        for h in hooks:
            h.remove()
    site_rows = []
    for blk in blocks:
        for rel in sites[blk.name]:
            name = f"{blk.name}.{rel}"
            acc = site_acc[name]
            tok = torch.cat(acc.token_absmax)
            site_rows.append(
                SiteStats(
                    site=name,
                    block=blk.name,
                    layer=rel.split(".")[-1],
                    kurtosis=acc.kurtosis(),
                    channel_max_median=_ratio_max_median(acc.chan_absmax),
                    token_max_median=_ratio_max_median(tok),
                    special_patch_norm=float(
                        acc.norms()[: acc.special].mean() / acc.norms()[acc.special :].mean()
                    ),
                    special_patch_absmax=acc.special_absmax / acc.patch_absmax,
                    absmax=float(acc.chan_absmax.max()),
                )
            )
    block_rows = []
    for blk in blocks:
        acc = block_acc[blk.name]
        norms = acc.norms()
        k = acc.special
        block_rows.append(
            BlockStats(
                block=blk.name,
                kind=blk.kind,
                camera_norm=float(norms[0]),
                register_norm=float(norms[1:k].mean()) if k > 1 else float("nan"),
                patch_norm=float(norms[k:].mean()),
                channel_max_median=_ratio_max_median(acc.chan_absmax),
                absmax=float(acc.chan_absmax.max()),
            )
        )
    return site_rows, block_rows


def summarize_sites(rows: list[SiteStats]) -> dict[str, dict[str, float]]:
    """Per layer type (qkv / proj / fc1 / fc2): median and max over blocks of each statistic."""
    out: dict[str, dict[str, float]] = {}
    for layer in dict.fromkeys(r.layer for r in rows):
        sel = [r for r in rows if r.layer == layer]
        d: dict[str, float] = {}
        for key in ("kurtosis", "channel_max_median", "token_max_median", "special_patch_norm"):
            v = np.array([getattr(r, key) for r in sel])
            d[f"{key}_median"], d[f"{key}_max"] = float(np.median(v)), float(v.max())
        out[layer] = d
    return out


def markdown_tables(site_rows: list[SiteStats], block_rows: list[BlockStats]) -> str:
    """The per-site and per-block statistics as two Markdown tables (for reports and the model card)."""
    lines = [
        "| block | layer | kurtosis | max/median channel | max/median token | special/patch norm |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in site_rows:
        lines.append(
            f"| {r.block.removeprefix('aggregator.')} | {r.layer} | {r.kurtosis:.1f} | {r.channel_max_median:.1f} "
            f"| {r.token_max_median:.1f} | {r.special_patch_norm:.2f} |"
        )
    lines += [
        "",
        "| block input | camera-token norm | register-token norm | patch-token norm | max/median channel |",
        "|---|---:|---:|---:|---:|",
    ]
    for b in block_rows:
        lines.append(
            f"| {b.block.removeprefix('aggregator.')} | {b.camera_norm:.2f} | {b.register_norm:.2f} "
            f"| {b.patch_norm:.2f} | {b.channel_max_median:.1f} |"
        )
    return "\n".join(lines)


def as_records(rows: Iterable[SiteStats | BlockStats]) -> list[dict]:
    return [asdict(r) for r in rows]
