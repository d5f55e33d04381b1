"""The shared block-wise calibration loop and the QuantContext every method function receives.

QuantContext knows the scope, records statistics, swaps modules (remembering the FP-equivalent weight of each
replaced linear for the per-layer error) and runs the block loop with the method's propagation.

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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ptq3d.errors import ConfigError
from ptq3d.quant.qlinear import QuantLinear
from ptq3d.quant.spec import QuantSpec, Scheme, sqnr_db
from ptq3d.quant.stats import CalibrationStats

if TYPE_CHECKING:
    from ptq3d.calibration.sets import CalibrationSet
    from ptq3d.models.base import BlockContext, BlockInfo, GeometryModel


# --- what a method receives: QuantContext -------------------------------------------------------


def replace_module(root: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Set the submodule at dotted path `name` to `new`; returns the old module."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


def foldable_norm(root: nn.Module, name: str | None, width: int) -> nn.Module | None:
    """The normalisation at dotted path `name` under `root` if a per-channel scale can fold into it: it exists
    and has a 1-D weight of `width` entries (LayerNorm with affine, or RMSNorm); else None (also for name None)."""
    if name is None:
        return None
    try:
        norm = root.get_submodule(name)
    except AttributeError:
        return None
    w = getattr(norm, "weight", None)
    return norm if isinstance(w, torch.Tensor) and w.dim() == 1 and w.numel() == width else None


class QuantContext:
    """Per-run helper for methods.

    model: the GeometryModel being quantized (a private copy). scope: "aggregator" or "all".
    scheme: the resolved scheme (act spec already overridden by config.act_static).
    stats: CalibrationStats to record into. progress: show tqdm bars.
    fp_reference: site -> (W [out, in], b) of the FP-equivalent linear, for the per-layer error.
    """

    def __init__(
        self,
        model: GeometryModel,
        scope: str = "aggregator",
        scheme: Scheme | None = None,
        progress: bool = False,
        method_name: str = "?",
        propagate: str = "quantized",
    ):
        self.model = model
        self.scope = scope
        self.scheme = scheme
        self.progress = progress
        self.method_name = method_name
        self.propagate = propagate
        self.stats = CalibrationStats()
        self.fp_reference: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.keep_reference = False
        self.site_block: dict[str, str] = {}

    @property
    def weight_spec(self) -> QuantSpec:
        return self.scheme.weight

    def scheme_for(self, site: str) -> Scheme:
        """The plain Scheme of linear `site` (full name): the run's scheme with its mixed-precision plan applied
        (the scheme itself when it has no plan)."""
        if self.scheme.plan is None:
            return self.scheme
        block = self.site_block.get(site)
        if block is None:
            block = next(
                (b.name for b in self.model.blocks(self.scope) if site.startswith(b.name + ".")), None
            )
        return self.scheme.for_site(site, block)

    @property
    def act_spec(self) -> QuantSpec | None:
        return self.scheme.act

    def sites(self) -> dict[str, nn.Linear]:
        """Full name -> nn.Linear for the quantization sites in scope (execution order), also recording
        each site's block name."""
        out = {}
        for blk, lins in self.model.iter_block_sites(self.scope):
            for rel, lin in lins.items():
                out[f"{blk.name}.{rel}"] = lin
                self.site_block[f"{blk.name}.{rel}"] = blk.name
        return out

    def replace(
        self,
        site: str,
        new: nn.Module,
        fp_weight: torch.Tensor | None = None,
        fp_bias: torch.Tensor | None = None,
    ) -> None:
        """Swap the module at full name `site` for `new`. fp_weight/fp_bias: the FP linear that `new`
        approximates on its own input (default: the replaced linear's; SmoothQuant passes the smoothed one
        when the scale was folded into the preceding norm). Records the weight SQNR of a QuantLinear."""
        old = replace_module(self.model.module, site, new)
        if isinstance(old, nn.Linear):
            w = (old.weight if fp_weight is None else fp_weight).detach().float()
            b = old.bias if fp_bias is None else fp_bias
            b = None if b is None else b.detach().float()
            if self.keep_reference:  # only inside the block loop, which drops them block by block
                self.fp_reference[site] = (w, b)
            if isinstance(new, QuantLinear):
                wt = new.input_transform.transform_weight(w) if new.input_transform is not None else w
                self.stats.layer(
                    site,
                    in_features=new.in_features,
                    out_features=new.out_features,
                    weight_sqnr_db=sqnr_db(wt, new.dequantized_weight()),
                )

    def timed(self, site: str, key: str = "time_s"):
        """Context manager adding the elapsed seconds to stats.layers[site][key]."""
        ctx = self

        class _T:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                ctx.stats.layer(site, **{key: time.perf_counter() - self.t0})

        return _T()

    def blockwise(
        self,
        calibration: CalibrationSet,
        calibrate_block: Callable[[BlockData], None],
        propagate: str | None = None,
    ) -> list[dict[str, Any]]:
        """Run the shared block loop with this context (propagate defaults to the method's documented one)."""
        return run_blockwise(
            self.model,
            calibration,
            self.scope,
            calibrate_block,
            propagate or self.propagate,
            ctx=self,
            progress=self.progress,
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

    @property
    def scheme(self) -> Scheme:
        """This block's plain Scheme (the run's scheme with the plan's block entry applied). Methods build their
        QuantLinears from it (or from scheme_for(rel) where a plan names single sites) so mixed plans hold."""
        return self.ctx.scheme.for_block(self.block.name)

    def scheme_for(self, rel: str) -> Scheme:
        """The plain Scheme of the linear `rel` in this block (a plan's site entry wins over its block entry)."""
        return self.ctx.scheme.for_site(self.site(rel), self.block.name)

    def module(self, rel: str) -> nn.Module:
        return self.block.module.get_submodule(rel)

    def foldable_norm(self, name: str | None, width: int) -> nn.Module | None:
        """The block's normalisation `name` if a per-channel scale of `width` can fold into it (foldable_norm)."""
        return foldable_norm(self.block.module, name, width)

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

    def input_absmax(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Per-channel max |x| [in] (float32) of each named module's input over all calibration tokens."""
        amax: dict[str, torch.Tensor] = {}

        def observe(rel, x):
            m = x.detach().abs().reshape(-1, x.shape[-1]).amax(dim=0).float()
            amax[rel] = m if rel not in amax else torch.maximum(amax[rel], m)

        self.collect(observe, names)
        return amax

    def replace(self, rel: str, new: nn.Module, fp_weight: torch.Tensor | None = None, fp_bias=None) -> None:
        """Swap the module at `rel` for `new` (see QuantContext.replace)."""
        self.ctx.replace(self.site(rel), new, fp_weight=fp_weight, fp_bias=fp_bias)

    def calibrate_static_acts(
        self,
        names: Sequence[str] | None = None,
        rows: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """Set static per-tensor activation ranges of the block's QuantLinears (in execution order, each
        from its transformed input T(x) with the layers before it already quantized). rows: keeps the rows of T(x)
        that count (e.g. QVGGT drops the special tokens); None = all."""
        qls = self.quant_linears()
        for rel in names if names is not None else list(qls):
            ql = qls[rel]
            if ql.act_scale is None:
                continue
            rng = {"min": torch.tensor(float("inf")), "max": torch.tensor(float("-inf"))}

            def obs(_rel, x, ql=ql, rng=rng):
                t = ql.transform_input(x).float()
                t = t if rows is None else rows(t)
                rng["min"] = torch.minimum(rng["min"], t.min())
                rng["max"] = torch.maximum(rng["max"], t.max())

            self.collect(obs, [rel])
            ql.set_static_range(rng["min"], rng["max"])


def capture_inputs(
    model: GeometryModel, calib: CalibrationSet, scope: str
) -> tuple[list[torch.Tensor], list[BlockContext]]:
    """First-block inputs [1, S, P, C] and contexts, one per calibration sample (images moved to the model's
    device)."""
    xs, cs = [], []
    with torch.no_grad():
        for s in calib.samples:
            x, c = model.capture_block_input(s.as_batch(model.device), scope)
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
