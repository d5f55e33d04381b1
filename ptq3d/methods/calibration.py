"""Calibration sets and the shared block-wise calibration loop.

run_blockwise (every calibrating method uses it):
1. capture the input [1, S, P, C] of the first block in scope for every calibration sample (one sample
   = one scene of S frames, run as B = 1, so a global block always sees all frames of its scene);
2. for each block in execution order: compute the FP block outputs on the current inputs, let the method
   calibrate the block (`calibrate_block(BlockData)`: collect statistics with hooks, swap in QuantLinears),
   then run the quantized block once to record per-layer and per-block errors, and hand the next block
   either the FP outputs (propagate="fp") or the quantized outputs (propagate="quantized").
Per-layer error: each QuantLinear's output vs the FP-equivalent linear on the same input (isolated error of
that layer, activation quantization included). Per-block error: block output vs FP block output on the
same block input, and the same for the block's residual update (output - input).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ptq3d.datasets.base import SceneSample
from ptq3d.errors import ConfigError
from ptq3d.methods.qlinear import QuantLinear
from ptq3d.methods.quant import sqnr_db
from ptq3d.methods.registry import register_calibration_builder

if TYPE_CHECKING:
    from ptq3d.methods.context import QuantContext
    from ptq3d.models.base import BlockContext, BlockInfo, GeometryModel


@dataclass
class CalibrationSet:
    """Scene samples used to calibrate, with how they were chosen. hash: SHA-256 (16 hex) over the builder,
    seed and the ordered sample content hashes (SceneSample.content_hash)."""

    samples: list[SceneSample]
    builder: str = "random"
    seed: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.samples = list(self.samples)
        if not self.samples:
            raise ConfigError(
                f"calibration set (builder '{self.builder}', seed {self.seed}) is empty: give at least one scene"
            )
        for i, s in enumerate(self.samples):
            if not isinstance(s, SceneSample):
                raise ConfigError(f"calibration sample {i} is a {type(s).__name__}, expected SceneSample")
            if s.images.dim() != 4 or s.images.shape[1] != 3:
                raise ConfigError(
                    f"calibration sample {i}: images shape {tuple(s.images.shape)}, expected [S,3,H,W]"
                )

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def hash(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps({"builder": self.builder, "seed": self.seed}, sort_keys=True).encode())
        for s in self.samples:
            h.update(s.content_hash().encode())
        return h.hexdigest()[:16]

    @property
    def num_frames(self) -> int:
        return sum(s.num_frames for s in self.samples)

    def describe(self) -> dict[str, Any]:
        return {
            "builder": self.builder,
            "seed": self.seed,
            "num_samples": len(self.samples),
            "num_frames": self.num_frames,
            "hash": self.hash,
            "scenes": [s.meta.get("scene") for s in self.samples],
            "meta": self.meta,
        }


def check_pool(pool: Sequence[SceneSample], n: int) -> None:
    """The checks every calibration builder makes: a non-empty pool and 0 < n <= len(pool)."""
    if not pool:
        raise ConfigError("calibration pool is empty: nothing to draw calibration scenes from")
    if not isinstance(n, int) or n <= 0:
        raise ConfigError(f"calibration size must be a positive integer, got {n!r}")
    if n > len(pool):
        raise ConfigError(f"calibration size {n} exceeds the pool of {len(pool)} scenes")


@register_calibration_builder("random")
def build_random(
    pool: Sequence[SceneSample], n: int, seed: int = 0, model: Any = None, **meta: Any
) -> CalibrationSet:
    """n scenes drawn uniformly without replacement from `pool` (numpy default_rng(seed)), in pool order.
    model is accepted (every builder is called with the FP model) and not used."""
    pool = list(pool)
    check_pool(pool, n)
    idx = np.sort(np.random.default_rng(seed).choice(len(pool), size=n, replace=False))
    return CalibrationSet(
        [pool[i] for i in idx], builder="random", seed=seed, meta={"pool_size": len(pool), **meta}
    )


# --- the block loop --------------------------------------------------------------------------------


class _StopForward(Exception):
    """Raised by a hook to end a block forward early once the wanted layer has been seen."""


@dataclass
class BlockData:
    """One block during calibration.

    inputs / fp_outputs: per calibration sample, [1, S, P, C] (the block's own tokens layout is handled by
    block.forward). contexts: the matching BlockContext per sample.
    """

    block: BlockInfo
    index: int
    inputs: list[torch.Tensor]
    contexts: list[BlockContext]
    fp_outputs: list[torch.Tensor]
    ctx: QuantContext

    def linears(self) -> dict[str, nn.Linear]:
        """Not-yet-quantized nn.Linear modules in the block by relative name, in registration order (which
        is execution order for the VGGT/Pi3 blocks: attn.qkv, attn.proj, mlp.fc1, mlp.fc2)."""
        return {n: m for n, m in self.block.module.named_modules() if isinstance(m, nn.Linear)}

    def quant_linears(self) -> dict[str, QuantLinear]:
        return {n: m for n, m in self.block.module.named_modules() if isinstance(m, QuantLinear)}

    def site(self, rel: str) -> str:
        return f"{self.block.name}.{rel}"

    def module(self, rel: str) -> nn.Module:
        return self.block.module.get_submodule(rel)

    @torch.no_grad()
    def run(self, inputs: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Block outputs for every sample (inputs default to the block's current inputs)."""
        xs = self.inputs if inputs is None else inputs
        return [self.block.forward(x, c) for x, c in zip(xs, self.contexts, strict=True)]

    @torch.no_grad()
    def collect(self, fn: Callable[[str, torch.Tensor], None], names: Sequence[str]) -> None:
        """Run every sample through the block and call fn(rel_name, x) with the input x [..., in] of each
        module in `names`; the forward stops after the last of them has been reached."""
        names = list(names)
        last = names[-1] if names else None
        seen: set[str] = set()
        handles = []

        def make_hook(rel):
            def hook(_mod, args):
                fn(rel, args[0])
                seen.add(rel)
                if rel == last and seen >= set(names):
                    raise _StopForward

            return hook

        for rel in names:
            handles.append(self.module(rel).register_forward_pre_hook(make_hook(rel)))
        try:
            for x, c in zip(self.inputs, self.contexts, strict=True):
                seen.clear()
                with contextlib.suppress(_StopForward):
                    self.block.forward(x, c)
        finally:
            for h in handles:
                h.remove()

    def replace(self, rel: str, new: nn.Module, fp_weight: torch.Tensor | None = None, fp_bias=None) -> None:
        """Swap the module at `rel` for `new` (see QuantContext.replace)."""
        self.ctx.replace(self.site(rel), new, fp_weight=fp_weight, fp_bias=fp_bias)

    def calibrate_static_acts(self, names: Sequence[str] | None = None) -> None:
        """Set static per-tensor activation ranges of the block's QuantLinears (in execution order, each
        from its transformed input T(x) with the layers before it already quantized)."""
        qls = self.quant_linears()
        for rel in names if names is not None else list(qls):
            ql = qls[rel]
            if ql.act_scale is None:
                continue
            rng = {"min": torch.tensor(float("inf")), "max": torch.tensor(float("-inf"))}

            def obs(_rel, x, ql=ql, rng=rng):
                t = ql.transform_input(x).float()
                rng["min"] = torch.minimum(rng["min"], t.min())
                rng["max"] = torch.maximum(rng["max"], t.max())

            self.collect(obs, [rel])
            ql.set_static_range(rng["min"], rng["max"])


def capture_inputs(
    model: GeometryModel, calib: CalibrationSet, scope: str
) -> tuple[list[torch.Tensor], list[BlockContext]]:
    """First-block inputs [1, S, P, C] and contexts, one per calibration sample."""
    xs, cs = [], []
    with torch.no_grad():
        for s in calib.samples:
            x, c = model.capture_block_input(s.images.unsqueeze(0).float(), scope)
            xs.append(x)
            cs.append(c)
    return xs, cs


def _layer_error_hooks(bd: BlockData, acc: dict[str, list[float]]) -> list:
    handles = []
    for rel, ql in bd.quant_linears().items():
        site = bd.site(rel)
        ref = bd.ctx.fp_reference.get(site)
        if ref is None:
            continue

        def hook(_m, args, out, ref=ref, site=site):
            y = F.linear(args[0].float(), ref[0], ref[1]).double()
            a = acc.setdefault(site, [0.0, 0.0])
            a[0] += y.pow(2).sum().item()
            a[1] += (y - out.double()).pow(2).sum().item()

        handles.append(ql.register_forward_hook(hook))
    return handles


def _db(signal: float, noise: float) -> float:
    import math

    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def run_blockwise(
    model: GeometryModel,
    calib: CalibrationSet,
    scope: str,
    calibrate_block: Callable[[BlockData], None],
    propagate: Literal["fp", "quantized"],
    ctx: QuantContext | None = None,
    progress: bool | None = None,
) -> list[dict[str, Any]]:
    """The shared block-wise loop (module docstring). Returns per-block records (also added to ctx.stats):
    name, kind, attention, sqnr_db (block output vs FP block output, same input), delta_sqnr_db (the same on
    output - input, i.e. the residual update; None if the block changes the token layout), rel_mse, time_s."""
    from ptq3d.methods.context import QuantContext

    if propagate not in ("fp", "quantized"):
        raise ConfigError(f"propagate must be 'fp' or 'quantized', got {propagate!r}")
    if calib is None or len(calib) == 0:
        raise ConfigError("block-wise calibration needs a non-empty calibration set")
    if ctx is None:
        ctx = QuantContext(model, scope=scope, progress=bool(progress))
    show = ctx.progress if progress is None else progress
    blocks = model.blocks(scope)
    if not blocks:
        raise ConfigError(f"model '{model.name}' has no blocks in scope '{scope}'")
    inputs, contexts = capture_inputs(model, calib, scope)
    ctx.keep_reference = True  # FP-equivalent weights for the per-layer error, dropped block by block
    try:
        return _calibrate_blocks(blocks, inputs, contexts, calibrate_block, propagate, ctx, show)
    finally:
        ctx.keep_reference = False
        ctx.fp_reference.clear()


def _calibrate_blocks(
    blocks, inputs, contexts, calibrate_block, propagate, ctx, show
) -> list[dict[str, Any]]:
    """The per-block body of run_blockwise (see there)."""
    from tqdm.auto import tqdm

    records = []
    bar = tqdm(blocks, desc=f"calibrate ({ctx.method_name})", disable=not show, leave=False)
    for i, blk in enumerate(bar):
        bar.set_postfix_str(blk.name)
        t0 = time.perf_counter()
        with torch.no_grad():
            fp_out = [blk.forward(x, c) for x, c in zip(inputs, contexts, strict=True)]
        bd = BlockData(blk, i, inputs, contexts, fp_out, ctx)
        calibrate_block(bd)
        acc: dict[str, list[float]] = {}
        handles = _layer_error_hooks(bd, acc)
        try:
            q_out = bd.run()
        finally:
            for h in handles:
                h.remove()
        for site, (sig, noise) in acc.items():
            ctx.stats.layer(site, sqnr_db=_db(sig, noise), rel_mse=noise / sig if sig > 0 else float("nan"))
        fo, qo = torch.cat([o.flatten() for o in fp_out]), torch.cat([o.flatten() for o in q_out])
        same_layout = all(o.shape == x.shape for o, x in zip(fp_out, inputs, strict=True))
        xi = torch.cat([x.flatten() for x in inputs]) if same_layout else None
        rec = {
            "name": blk.name,
            "kind": blk.kind,
            "attention": blk.attention,
            "sqnr_db": sqnr_db(fo, qo),
            # the block's own contribution (output - input): residual streams hide small blocks otherwise
            "delta_sqnr_db": sqnr_db(fo - xi, qo - xi) if xi is not None else None,
            "rel_mse": float(
                ((fo - qo).double().pow(2).sum() / fo.double().pow(2).sum().clamp_min(1e-30)).item()
            ),
            "time_s": time.perf_counter() - t0,
        }
        records.append(rec)
        ctx.stats.blocks.append(rec)
        inputs = fp_out if propagate == "fp" else q_out
        for k in list(ctx.fp_reference):
            if k.startswith(blk.name + "."):
                del ctx.fp_reference[k]
    return records


def random_pool(
    n: int, num_frames: int = 4, height: int = 112, width: int = 112, first_seed: int = 0
) -> list[SceneSample]:
    """n scenes of uniform random images (seed first_seed + i; geometry fields empty, meta dataset 'random')."""
    out = []
    for i in range(n):
        seed = first_seed + i
        g = torch.Generator().manual_seed(seed)
        out.append(
            SceneSample(
                images=torch.rand(num_frames, 3, height, width, generator=g),
                depth=torch.zeros(num_frames, height, width),
                valid_mask=torch.zeros(num_frames, height, width, dtype=torch.bool),
                intrinsics=torch.eye(3).expand(num_frames, 3, 3).clone(),
                extrinsics=torch.eye(3, 4).expand(num_frames, 3, 4).clone(),
                meta={"dataset": "random", "scene": f"random-{seed}", "frame_ids": list(range(num_frames))},
            )
        )
    return out


def synthetic_pool(
    n: int, num_frames: int = 4, height: int = 112, width: int = 112, first_seed: int = 0, scene_config=None
) -> list[SceneSample]:
    """n calibration candidate scenes from ptq3d.datasets.synthetic.generate_scene with seeds first_seed + i
    (training seeds; held-out evaluation seeds are refused), with the generator's SceneConfig `scene_config`
    (None: its default). Falls back to random_pool if the generator is unavailable."""
    try:
        from ptq3d.datasets.synthetic import SceneConfig, generate_scene, is_heldout_seed
    except ImportError:
        return random_pool(n, num_frames, height, width, first_seed)
    out = []
    for i in range(n):
        seed = first_seed + i
        if is_heldout_seed(seed):
            raise ConfigError(f"calibration seed {seed} is a held-out evaluation seed; use a training seed")
        out.append(generate_scene(seed, num_frames, height, width, scene=scene_config or SceneConfig()))
    return out
