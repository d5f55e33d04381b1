"""QuantContext: what a method function receives besides model/calibration/scheme/config.

It knows the scope, records statistics, swaps modules (remembering the FP-equivalent weight of each
replaced linear for the per-layer error) and runs the shared block loop with the method's propagation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ptq3d.methods.qlinear import QuantLinear
from ptq3d.methods.quant import QuantSpec, Scheme, sqnr_db
from ptq3d.methods.stats import CalibrationStats

if TYPE_CHECKING:
    from ptq3d.methods.calibration import BlockData, CalibrationSet
    from ptq3d.models.base import GeometryModel


def replace_module(root: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Set the submodule at dotted path `name` to `new`; returns the old module."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


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
        from ptq3d.methods.calibration import run_blockwise

        return run_blockwise(
            self.model,
            calibration,
            self.scope,
            calibrate_block,
            propagate or self.propagate,
            ctx=self,
            progress=self.progress,
        )
