"""TAPTQ's interval search (PTQ4ViT base): grid objectives, the ternary and exhaustive solvers, the twin-uniform
post-GELU quantizer and the per-linear alternating weight/activation search. The method is in
ptq3d.methods.taptq, whose docstring states the equations and the reconstruction decisions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ptq3d.errors import ConfigError
from ptq3d.quant.qlinear import QuantLinear
from ptq3d.quant.spec import QuantSpec, dequantize, fake_quantize, quantize

SOLVERS = ("ternary", "exhaustive")
TERNARY_VARIANTS = ("textbook", "code")
METRICS = ("hessian", "mse")

# ==================================================================================================
# 1. Interval solvers over a candidate grid
# ==================================================================================================


class GridObjective:
    """Memoised, counted objective over a candidate grid for `num_blocks` independent interval blocks.

    fn(idx [num_blocks] long) -> err [num_blocks] evaluates every block at its own candidate index in one
    call (PTQ4ViT batches the row blocks of a weight the same way); one call = one objective evaluation.
    Values are cached per (block, index); a call is made only when some block's value is missing.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], num_blocks: int, num_candidates: int):
        self.fn = fn
        self.num_blocks = num_blocks
        self.num_candidates = num_candidates
        self.cache = torch.full((num_blocks, num_candidates), float("nan"), dtype=torch.float64)
        self.evals = 0
        self._rows = torch.arange(num_blocks)

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        idx = idx.long().clamp(0, self.num_candidates - 1)
        vals = self.cache[self._rows, idx]
        if torch.isnan(vals).any():
            res = self.fn(idx).detach().double().reshape(self.num_blocks)
            self.evals += 1
            self.cache[self._rows, idx] = res
            vals = res
        return vals


def exhaustive_search(obj: GridObjective) -> torch.Tensor:
    """Reference solver: evaluate every candidate; per block the first index of the minimum. -> idx [nb]."""
    for k in range(obj.num_candidates):
        obj(torch.full((obj.num_blocks,), k, dtype=torch.long))
    return torch.argmin(obj.cache, dim=1)


def ternary_search(obj: GridObjective, variant: str = "textbook", refine: int = 0) -> torch.Tensor:
    """Ternary search for the minimum of an (assumed unimodal) objective on the index grid, per block.

    textbook: m1 = l + (r-l)//3, m2 = r - (r-l)//3; f(m1) < f(m2) -> r = m2 - 1; f(m1) > f(m2) -> l = m1 + 1;
        ties -> [m1, m2]; stop at r - l <= 2 and take the best of the <= 3 remaining candidates; then, with
        refine > 0, the best within +-refine of it (a local scan: the quantization-error curves are unimodal
        only at large scale, with rounding ripples near the optimum). 101 candidates: 8 iterations x 2 + <= 3
        (+ <= 2 refine, many cached) evaluations.
    code (bolli03/TAPTQ `_search_best_a_interval`): m1 = (2l+r)//3, m2 = (l+2r)//3; compare the mean of f at the
        1/3 and 2/3 points inside [l, m1] with the same inside [m2, r]; the smaller error side keeps its end
        (left worse -> l = m1, else r = m2); answer (l + r)//2.
    Returns idx [num_blocks].
    """
    nb, n = obj.num_blocks, obj.num_candidates
    lo = torch.zeros(nb, dtype=torch.long)
    hi = torch.full((nb,), n - 1, dtype=torch.long)
    if variant == "textbook":
        while bool(((hi - lo) > 2).any()):
            active = (hi - lo) > 2
            third = (hi - lo) // 3
            m1, m2 = lo + third, hi - third
            f1, f2 = obj(m1), obj(m2)
            new_lo = torch.where(f1 > f2, m1 + 1, torch.where(f1 < f2, lo, m1))
            new_hi = torch.where(f1 < f2, m2 - 1, torch.where(f1 > f2, hi, m2))
            lo = torch.where(active, new_lo, lo)
            hi = torch.where(active, new_hi, hi)
        cands = torch.stack([torch.minimum(lo + j, hi) for j in range(3)], dim=1)  # [nb, 3]
        vals = torch.stack([obj(cands[:, j]) for j in range(3)], dim=1)
        best = cands[torch.arange(nb), torch.argmin(vals, dim=1)]
        if refine > 0:
            offs = list(range(-refine, refine + 1))
            cands = torch.stack([(best + o).clamp(0, n - 1) for o in offs], dim=1)
            vals = torch.stack([obj(cands[:, j]) for j in range(len(offs))], dim=1)
            best = cands[torch.arange(nb), torch.argmin(vals, dim=1)]
        return best
    if variant == "code":
        while bool(((hi - lo) > 2).any()):
            active = (hi - lo) > 2
            m1, m2 = (2 * lo + hi) // 3, (lo + 2 * hi) // 3
            left = (obj((2 * lo + m1) // 3) + obj((lo + 2 * m1) // 3)) / 2
            right = (obj((2 * m2 + hi) // 3) + obj((m2 + 2 * hi) // 3)) / 2
            lo = torch.where(active & (left > right), m1, lo)
            hi = torch.where(active & ~(left > right), m2, hi)
        return (lo + hi) // 2
    raise ConfigError(f"taptq ternary_variant '{variant}': expected one of {', '.join(TERNARY_VARIANTS)}")


def solve(obj: GridObjective, solver: str, variant: str = "textbook", refine: int = 0) -> torch.Tensor:
    """Run `solver` ("ternary" | "exhaustive") on obj. -> best index per block [num_blocks]."""
    if solver == "exhaustive":
        return exhaustive_search(obj)
    if solver == "ternary":
        return ternary_search(obj, variant, refine)
    raise ConfigError(f"taptq solver '{solver}': expected one of {', '.join(SOLVERS)}")


# ==================================================================================================
# 2. Quantizers and the per-linear interval search
# ==================================================================================================


def twin_fake_quantize(
    x: torch.Tensor, pos_scale: torch.Tensor, neg_scale: torch.Tensor, bits: int
) -> torch.Tensor:
    """PTQ4ViT twin-uniform post-GELU quantizer: x >= 0 on [0, (2^(b-1)-1) pos_scale], x < 0 on
    [-2^(b-1) neg_scale, 0] (the sign selects the range, so the code still fits b signed bits). Same shape."""
    qmax = 2 ** (bits - 1)
    xf = x.float()
    pos_scale, neg_scale = pos_scale.reshape(()), neg_scale.reshape(())
    high = torch.clamp(torch.round(xf / pos_scale), 0, qmax - 1) * pos_scale
    low = torch.clamp(torch.round(xf / neg_scale), -qmax, 0) * neg_scale
    return (high + low).to(x.dtype)


class TwinQuantLinear(QuantLinear):
    """QuantLinear whose static activation quantizer is the twin-uniform post-GELU one (for mlp.fc2).

    act_scale [1, 1]: positive interval (searched). act_neg_scale [1, 1]: negative interval (fixed).
    Runs on every backend: ptq3d.kernels reads `act_neg_scale` and uses its twin-uniform integer kernels.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.act_spec is None or self.act_spec.dynamic or self.act_spec.granularity != "tensor":
            raise ConfigError("TwinQuantLinear needs a static per-tensor activation spec")
        self.register_buffer("act_neg_scale", torch.ones(1, 1))

    def quantize_activation(self, x: torch.Tensor) -> torch.Tensor:
        return twin_fake_quantize(x, self.act_scale, self.act_neg_scale, self.act_spec.bits)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "act_quantizer": "twin_posgelu"}


@dataclass
class LinearSearchResult:
    """Intervals found for one linear. w_scale [out, 1] per row (tied within a row block) or [1, 1];
    a_scale: activation interval (positive interval for twin) or None; evaluation counts and objectives."""

    w_scale: torch.Tensor
    a_scale: float | None
    w_alpha: list[float]
    a_alpha: float | None
    w_evals: int
    a_evals: int
    objective: float
    objective_init: float
    gaps: dict[str, float] = field(default_factory=dict)


class IntervalSearch:
    """PTQ4ViT-style alternating interval search for one linear (see module docstring, part 2).

    X [n, in]: FP inputs (token subsample); W [out, in]; b [out] or None; G2 [n, out] squared output gradients
    (None = plain MSE); row_blocks: weight row blocks (1 = per tensor, out = per channel);
    act: "static" | "twin" | "dynamic" | None; act_spec: the activation QuantSpec (static: per tensor);
    a_max: max |x| (twin: max x) over ALL calibration tokens, for Delta0.
    """

    def __init__(
        self,
        X: torch.Tensor,
        W: torch.Tensor,
        b: torch.Tensor | None,
        G2: torch.Tensor | None,
        w_bits: int,
        row_blocks: int,
        act: str | None,
        act_spec: QuantSpec | None,
        a_max: float,
        alphas: torch.Tensor,
        twin_neg: float = 0.16997,
        refine: int = 0,
    ):
        out = W.shape[0]
        if out % row_blocks:
            raise ConfigError(f"taptq: {row_blocks} weight row blocks do not divide {out} output channels")
        self.X, self.W, self.b, self.G2 = X.float(), W.float(), None if b is None else b.float(), G2
        self.nb = row_blocks
        self.refine = refine
        self.alphas = alphas.double()
        self.w_spec = QuantSpec(w_bits, "channel")
        self.act, self.act_spec = act, act_spec
        self.O = torch.nn.functional.linear(self.X, self.W, self.b)
        half = 2 ** (w_bits - 1) - 0.5
        wmax = self.W.abs().reshape(row_blocks, -1).amax(dim=1).double()
        self.w_base = torch.where(wmax > 0, wmax / half, torch.ones_like(wmax))
        if act in ("static", "twin"):
            ahalf = 2 ** (act_spec.bits - 1) - 0.5
            self.a_base = a_max / ahalf if a_max > 0 else 1.0
        self.neg_scale = torch.tensor([[twin_neg / 2 ** (act_spec.bits - 1)]]) if act == "twin" else None

    # quantizers -----------------------------------------------------------------------------------
    def row_scale(self, delta: torch.Tensor) -> torch.Tensor:
        """Per-block intervals [nb] -> per-row scale [out, 1] float32."""
        return delta.float().repeat_interleave(self.W.shape[0] // self.nb).reshape(-1, 1)

    def quant_w(self, delta: torch.Tensor) -> torch.Tensor:
        s = self.row_scale(delta)
        return dequantize(quantize(self.W, s, None, self.w_spec), s, None)

    def quant_x(self, a_delta: float | None) -> torch.Tensor:
        if self.act is None:
            return self.X
        if self.act == "dynamic":
            return fake_quantize(self.X, self.act_spec)
        s = torch.tensor([[a_delta]], dtype=torch.float32)
        if self.act == "twin":
            return twin_fake_quantize(self.X, s, self.neg_scale, self.act_spec.bits)
        return fake_quantize(self.X, self.act_spec, scale=s)

    def block_err(self, Xq: torch.Tensor, Wq: torch.Tensor) -> torch.Tensor:
        """err per weight row block [nb] (mean over tokens and the block's output columns)."""
        E = (self.O - torch.nn.functional.linear(Xq, Wq, self.b)).pow_(2)
        if self.G2 is not None:
            E.mul_(self.G2)
        return E.mean(dim=0).double().reshape(self.nb, -1).mean(dim=1)

    # search -----------------------------------------------------------------------------------
    def _solve(
        self, fn, nb: int, solver: str, variant: str, check: bool
    ) -> tuple[torch.Tensor, int, float | None]:
        """(best index [nb], evaluations, gap) for one search; gap = err(found) / err(exhaustive optimum) - 1
        of the layer objective (mean over blocks) when `check` (the check's evaluations are not counted)."""
        obj = GridObjective(fn, nb, len(self.alphas))
        idx = solve(obj, solver, variant, self.refine)
        gap = None
        if check:
            ref = GridObjective(fn, nb, len(self.alphas))
            best = exhaustive_search(ref)
            rows = torch.arange(nb)
            found, opt = float(ref.cache[rows, idx].mean()), float(ref.cache[rows, best].mean())
            gap = found / opt - 1 if opt > 0 else (0.0 if found == 0 else math.inf)
        return idx, obj.evals, gap

    def run(
        self, w_solver: str, a_solver: str, rounds: int, variant: str, check: bool = False
    ) -> LinearSearchResult:
        w_delta = self.w_base.clone()
        searched_a = self.act in ("static", "twin")
        a_delta = self.a_base if searched_a else None
        init = float(self.block_err(self.quant_x(a_delta), self.quant_w(w_delta)).mean())
        w_idx = a_idx = None
        w_evals = a_evals = 0
        gaps: dict[str, float] = {}
        for _ in range(rounds):
            Xq = self.quant_x(a_delta)
            w_idx, n, gap = self._solve(
                lambda idx, Xq=Xq: self.block_err(Xq, self.quant_w(self.alphas[idx] * self.w_base)),
                self.nb,
                w_solver,
                variant,
                check,
            )
            w_evals += n
            if gap is not None:
                gaps["w_gap"] = max(gaps.get("w_gap", -math.inf), gap)
            w_delta = self.alphas[w_idx] * self.w_base
            if searched_a:
                Wq = self.quant_w(w_delta)
                a_idx, n, gap = self._solve(
                    lambda idx, Wq=Wq: self.block_err(
                        self.quant_x(float(self.alphas[idx[0]] * self.a_base)), Wq
                    ).mean(),
                    1,
                    a_solver,
                    variant,
                    check,
                )
                a_evals += n
                if gap is not None:
                    gaps["a_gap"] = max(gaps.get("a_gap", -math.inf), gap)
                a_delta = float(self.alphas[a_idx[0]] * self.a_base)
        final = float(self.block_err(self.quant_x(a_delta), self.quant_w(w_delta)).mean())
        return LinearSearchResult(
            w_scale=self.row_scale(w_delta),
            a_scale=a_delta,
            w_alpha=[float(a) for a in self.alphas[w_idx]] if w_idx is not None else [],
            a_alpha=float(self.alphas[a_idx[0]]) if a_idx is not None else None,
            w_evals=w_evals,
            a_evals=a_evals,
            objective=final,
            objective_init=init,
            gaps=gaps,
        )
