"""Massive activations on the special tokens: the starting point of `vggt-tiny-synthetic-sinks`.

Large transformers develop a few residual channels with values far above the rest on a few tokens that serve as
attention sinks (massive activations); in VGGT-1B the QuantVGGT and QVGGT papers trace the heavy-tailed
activations to the data-independent camera and register tokens. Here (attention weights not measured): after
each block's LayerNorm such a token's row is dominated by those channels, so the inputs of qkv and fc1 get rows
with one or two huge entries: heavy tails that come from the TOKENS, with ordinary weights (unlike
`outliers.py`, which shrinks weight columns to make outlier channels).

`plant_massive_activations` writes a fixed value +-M into `channels` residual channels of the learned camera and
register tokens (both slots: first frame and the others), so every special token enters the aggregator with
them. It is not function-preserving (LayerNorm divides the rest of the special rows by about M / |rest|), so the
bundled model is then fine-tuned with these entries held fixed (`ptq3d.harness.train_tiny.finetune_sinks`) so
that its predictions recover (how far they did: the model card). The camera head reads the last camera
token through `token_norm`: its gain and bias on the massive channels are set to zero, so the head sees the
informative channels only (fine-tuning may move them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptq3d.models.base import GeometryModel


@dataclass(frozen=True)
class MassiveConfig:
    """channels: residual channels given the massive value; value: its magnitude M (signs alternate + / -), in
    units of the residual stream (the trained model's patch tokens enter the aggregator with entries of RMS about
    1); seed: which channels."""

    channels: int = 2
    value: float = 30.0
    seed: int = 0

    def pick(self, dim: int) -> list[int]:
        """The massive channel indices for a residual width `dim` (sorted)."""
        gen = torch.Generator().manual_seed(self.seed)
        return sorted(int(i) for i in torch.randperm(dim, generator=gen)[: self.channels])

    def values(self) -> torch.Tensor:
        """[channels] the planted values: +M, -M, +M, ..."""
        signs = torch.tensor([(-1.0) ** i for i in range(self.channels)])
        return self.value * signs


def massive_channels(model: GeometryModel, cfg: MassiveConfig) -> list[int]:
    return cfg.pick(model.module.aggregator.camera_token.shape[-1])


@torch.no_grad()
def set_massive_entries(model: GeometryModel | torch.nn.Module, cfg: MassiveConfig) -> list[int]:
    """Write the massive values into the camera and register tokens (both slots) of a VGGT (or its adapter).
    Returns the channel indices. Idempotent: the fine-tuning loop calls it after every optimiser step."""
    vggt = model.module if isinstance(model, GeometryModel) else model
    agg = vggt.aggregator
    chs = cfg.pick(agg.camera_token.shape[-1])
    vals = cfg.values().to(agg.camera_token.dtype)
    for token in (agg.camera_token, agg.register_token):
        token[..., chs] = vals.to(token.device)
    return chs


@torch.no_grad()
def plant_massive_activations(
    model: GeometryModel | torch.nn.Module, cfg: MassiveConfig = MassiveConfig()
) -> dict:
    """Set the massive entries (set_massive_entries) and zero the camera head's token_norm gain and bias on those
    channels (in both halves of its 2C input: frame and global output). Returns {'channels': [...], 'values':
    [...]} for the record."""
    vggt = model.module if isinstance(model, GeometryModel) else model
    chs = set_massive_entries(vggt, cfg)
    C = vggt.aggregator.camera_token.shape[-1]
    norm = vggt.camera_head.token_norm
    both = chs + [C + c for c in chs]
    norm.weight[both] = 0.0
    norm.bias[both] = 0.0
    return {"channels": chs, "values": [float(v) for v in cfg.values()]}
