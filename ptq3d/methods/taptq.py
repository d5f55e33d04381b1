"""TAPTQ: Tail-Aware Post-Training Quantization for 3D geometry models (Pan et al., arXiv 2602.01741).

Three parts (paper abstract; the details follow the author repository bolli03/TAPTQ, see
shared/notes/methods.md section 4):

1. Calibration set: progressive coarse-to-fine construction (ptq3d.calibration.taptq_builder, builder "taptq").
2. Interval search (PTQ4ViT base). Per linear, symmetric uniform quantizers with interval Delta = alpha * Delta0,
   Delta0 = max|.| / (2^(b-1) - 0.5), alpha on the grid linspace(eq_alpha, eq_beta, eq_n + 1). The objective of a
   layer is its (gradient-weighted) output error

       err(Delta) = mean[(g * (O - O_hat(Delta)))^2]      (metric "hessian"; g = 1 for metric "mse")

   with O = X W^T + b the FP output on FP inputs X (every other module FP: the repo's sequential=False), and
   g = dL/dO the gradient of a task loss of the FP model. err is minimised over the candidate grid by
   ternary search (O(log N) evaluations) or, as the reference solver, exhaustively (N evaluations).
   Weight and activation intervals alternate for `search_rounds` rounds (weights first, each with the other's
   current interval). Every objective evaluation is counted (stats `w_evals`, `a_evals`).
3. TRE-guided module-wise compensation (QwT-style). For every attention / MLP sub-module in execution order,
   on the quantized-and-compensated trajectory: y = FP unit output, y_hat = quantized unit output (unit =
   LayerScale o sub-module o norm), TRE = sum_topK (y - y_hat)^2 / (sum_topK y^2 + eps) over the K = max(1,
   floor(rho * numel)) largest |y|. Where TRE >= tau and R^2 > 0, [W; b] = argmin ||[x, 1][W; b] - (y - y_hat)||^2
   (closed form, normal equations) is reduced to rank r by SVD (A = U_r sqrt(S_r), B = sqrt(S_r) V_r^T) and
   added to the unit: out = unit(x) + x A B + b.

Formats: weights per tensor (attn.qkv: one interval each for q, k, v) or per output channel; activations
static per tensor; fc2's post-GELU input uses PTQ4ViT's twin-uniform quantizer (searched positive interval,
fixed negative interval 0.16997 / 2^(b-1)), `TwinQuantLinear`.

Presets (`preset=`): "paper" (default: the defaults below, ternary search as the paper states, plain output
error) and "code" (bolli03/TAPTQ: gradient-weighted objective with the point-map loss on GT
(`metric="hessian"`, `hessian_loss="points"`), exhaustive weight search, the repo's ternary variant for
activations). Both quantize scope "all" (the 24 DINOv2 blocks too: 288 linears on VGGT-1B) and calibrate on the
"taptq" builder's 8 scenes x 10 frames (CALIBRATION_DEFAULTS; the harness applies them).

Per-tensor weights on outlier rows (measured on `vggt-tiny-synthetic-outliers`, synthetic-heldout-112 first 4
scenes, 2 random calibration scenes, CPU, threads 1): TAPTQ w4a8 keeps pose AUC@30 0.106 of FP 0.245; with
`weight_granularity="channel"` 0.245. Dynamic per-token activations (0.104), no twin quantizer (0.106), no
compensation (0.108) and exhaustive solvers (0.106) change nothing. The model's injected outlier channels make a
few v rows of attn.qkv 26-65x the median row; one interval for the whole v block rounds 98.8 % of its weights to
0 at W4 (RTN with per-tensor weights: pose AUC 0.007). On `vggt-tiny-synthetic` (no outliers) TAPTQ w4a8 keeps
0.244. This is the format on this model, not a defect of the search, so there is no code change for it.

Reconstruction decisions (where the paper text is not available or paper and code differ):
- Task loss for the Hessian metric: the repo uses VGGT's point-map training loss against GT DTU point maps. We
  use a model-agnostic GT depth loss (least-squares scale-aligned L1 on valid GT pixels, normalised by mean GT
  depth), because VGGT and Pi3 both output per-frame depth while their point maps live in different frames.
  It needs GT depth in the calibration scenes (metric "mse" does not).
- One gradient pass per calibration scene captures dL/dO of every site at once (the repo backpropagates per
  module); identical gradients, more memory. Tokens are subsampled to `max_tokens` per layer (the repo's docs
  cite a 4096-token budget); the static activation range Delta0 still uses the max over all tokens.
- Objective: the issue and paper describe the output error as "optionally gradient-weighted"; the default is the
  plain output error (metric "mse"), with PTQ4ViT's gradient weighting as metric "hessian". Measured on the
  bundled trained tiny VGGT (w4a8, scope all, 40 layers): with "mse" the ternary search lands within 1 % of the
  exhaustive optimum on 40/40 layers with 0.19x the evaluations; the gradient-weighted objective is multi-modal
  on some layers (35/40 within 1 %, max gap 48 %), so there the exhaustive solver is the safe choice.
- Solvers: textbook ternary search on the candidate index with memoised evaluations, followed by a +-6 local
  scan (`ternary_refine`; the error curves ripple near the optimum) (default for weights and
  activations, as the paper states); `ternary_variant="code"` reproduces the repo's averaged-probe variant
  (about 4 evaluations per iteration). The repo keeps the exhaustive search for weights: w_solver="exhaustive".
- Compensation input: the sub-module's input (the normalised tokens norm(x), i.e. "the module input"), not the
  pre-norm residual x the repo regresses on. The fit is done in the unit's output space (after LayerScale),
  where TRE is measured, and stored divided by gamma so it can run as a forward hook on the sub-module.
- The compensation is stored as a `LowRankCompensation` child named `taptq_comp` of the sub-module
  (e.g. `...blocks.3.attn.taptq_comp`) plus a forward hook, so the site names of the QuantLinears do not
  change. `rebuild_taptq_modules` re-creates both on load (needs a core hook, see its docstring).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ptq3d.calibration.blockwise import BlockData, replace_module
from ptq3d.errors import ConfigError
from ptq3d.methods.registry import MethodConfig, register_method
from ptq3d.methods.taptq_compensation import (
    LeastSquaresFit,
    LowRankCompensation,
    attach_compensation,
    low_rank_factors,
    rebuild_taptq_modules,
    tail_relative_error,
)
from ptq3d.methods.taptq_search import (
    METRICS,
    SOLVERS,
    TERNARY_VARIANTS,
    IntervalSearch,
    LinearSearchResult,
    TwinQuantLinear,
)
from ptq3d.quant.qlinear import QuantLinear
from ptq3d.quant.spec import QuantSpec, quantize

# ==================================================================================================
# The method
# ==================================================================================================


@dataclass
class TAPTQConfig(MethodConfig):
    """TAPTQ options (defaults: paper / bolli03/TAPTQ; see the module docstring).

    act_static: static per-tensor activations (TAPTQ's format; False keeps the scheme's dynamic quantizer and
        searches weights only).
    weight_granularity: "tensor" (qkv_splits row blocks for `qkv_name`, one interval each for q, k, v) or
        "channel" (one interval per output channel). The scheme contributes only the bit widths.
    twin_sites: linears (relative names in a block) whose input gets the twin-uniform post-GELU quantizer;
        twin_neg_range: the fixed negative range (GELU minimum), interval twin_neg_range / 2^(b-1).
    metric: "mse" (default: the plain output error) or "hessian" (g = dL/dO of the FP model's GT task loss,
        PTQ4ViT's / the repo's gradient weighting; needs GT depth in the calibration scenes).
    hessian_loss: the task loss of "hessian": "depth" (scale-aligned L1 on GT depth, model-agnostic) or
        "points" (the repo's: scale-aligned point-map error against the GT point map, VGGT's frame).
    eq_alpha, eq_beta, eq_n: candidate grid alpha = linspace(eq_alpha, eq_beta, eq_n + 1) times Delta0.
    w_solver, a_solver: "ternary" or "exhaustive"; ternary_variant: "textbook" or "code" (repo's variant);
        ternary_refine: local scan radius after the textbook ternary search (0 = none).
    search_rounds: alternating weight/activation rounds. check_solver: also run the exhaustive search on every
        objective and record the relative gap of the found interval (stats w_gap / a_gap; not counted in
        w_evals / a_evals; for solver studies). max_tokens: token subsample per layer for the search.
    compensation: TRE-gated low-rank compensation; rho (tail fraction), tau (TRE gate), rank (r), ridge
        (relative damping of the normal equations); comp_units: sub-module -> its LayerScale (relative names).
    seed: token subsampling seed.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {},
        "code": {
            "metric": "hessian",
            "hessian_loss": "points",
            "w_solver": "exhaustive",
            "a_solver": "ternary",
            "ternary_variant": "code",
            "ternary_refine": 0,
        },
    }
    CALIBRATION_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"builder": "taptq", "num_scenes": 8, "frames": 10, "scope": "all"},
        "code": {"builder": "taptq", "num_scenes": 8, "frames": 10, "scope": "all"},
    }

    act_static: bool = True
    weight_granularity: str = "tensor"
    qkv_name: str = "attn.qkv"
    qkv_splits: int = 3
    twin_sites: tuple[str, ...] = ("mlp.fc2",)
    twin_neg_range: float = 0.16997
    metric: str = "mse"
    hessian_loss: str = "depth"
    eq_alpha: float = 0.01
    eq_beta: float = 2.0
    eq_n: int = 100
    w_solver: str = "ternary"
    a_solver: str = "ternary"
    ternary_variant: str = "textbook"
    ternary_refine: int = 6
    search_rounds: int = 2
    check_solver: bool = False
    max_tokens: int = 4096
    compensation: bool = True
    rho: float = 0.01
    tau: float = 0.007
    rank: int = 16
    ridge: float = 1e-6
    comp_units: dict[str, str] = field(default_factory=lambda: {"attn": "ls1", "mlp": "ls2"})
    seed: int = 0

    def validate(self) -> None:
        checks = [
            (self.weight_granularity in ("tensor", "channel"), "weight_granularity", "tensor or channel"),
            (self.metric in METRICS, "metric", " or ".join(METRICS)),
            (self.hessian_loss in ("depth", "points"), "hessian_loss", "depth or points"),
            (self.w_solver in SOLVERS, "w_solver", " or ".join(SOLVERS)),
            (self.a_solver in SOLVERS, "a_solver", " or ".join(SOLVERS)),
            (self.ternary_variant in TERNARY_VARIANTS, "ternary_variant", " or ".join(TERNARY_VARIANTS)),
            (0 < self.eq_alpha < self.eq_beta, "eq_alpha/eq_beta", "0 < eq_alpha < eq_beta"),
            (self.eq_n >= 2, "eq_n", ">= 2"),
            (self.search_rounds >= 1, "search_rounds", ">= 1"),
            (self.ternary_refine >= 0, "ternary_refine", ">= 0"),
            (self.max_tokens >= 1, "max_tokens", ">= 1"),
            (0 < self.rho <= 1, "rho", "in (0, 1]"),
            (self.rank >= 1, "rank", ">= 1"),
            (self.qkv_splits >= 1, "qkv_splits", ">= 1"),
        ]
        for ok, key, want in checks:
            if not ok:
                raise ConfigError(
                    f"taptq config '{key}' = {getattr(self, key.split('/')[0])!r}: must be {want}"
                )

    def alphas(self) -> torch.Tensor:
        return torch.linspace(self.eq_alpha, self.eq_beta, self.eq_n + 1, dtype=torch.float64)


def gt_depth_loss(depth: torch.Tensor, sample) -> torch.Tensor:
    """Scale-aligned L1 depth loss of predicted depth [1, S, H, W] against sample.depth [S, H, W] on valid
    pixels: s = <d, t> / <d, d> (detached least-squares scale), L = mean|s d - t| / mean t."""
    gt = sample.depth.float()
    valid = sample.valid_mask & (gt > 0)
    name = sample.meta.get("scene", "?")
    if depth.shape[1:] != gt.shape:
        raise ConfigError(
            f"taptq metric 'hessian': predicted depth {tuple(depth.shape[1:])} != GT depth {tuple(gt.shape)} (scene {name})"
        )
    if not bool(valid.any()):
        raise ConfigError(
            f"taptq metric 'hessian' needs GT depth, but calibration scene '{name}' has no valid depth pixel "
            "(use metric=mse or calibrate on scenes with depth)"
        )
    d, t = depth[0][valid], gt[valid]
    s = (d.detach() * t).sum() / d.detach().pow(2).sum().clamp_min(1e-12)
    return (s * d - t).abs().mean() / t.mean()


class _TokenSampler:
    """Fixed token subsample per (calibration sample, token count): about max_tokens / num_samples rows each."""

    def __init__(self, max_tokens: int, num_samples: int, seed: int):
        self.per_sample = max(1, math.ceil(max_tokens / max(num_samples, 1)))
        self.seed = seed
        self._cache: dict[tuple[int, int], torch.Tensor | None] = {}

    def __call__(self, i: int, n: int) -> torch.Tensor | None:
        key = (i, n)
        if key not in self._cache:
            if n <= self.per_sample:
                self._cache[key] = None
            else:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
                self._cache[key] = torch.randperm(n, generator=g)[: self.per_sample].sort().values
        return self._cache[key]

    def take(self, i: int, t: torch.Tensor) -> torch.Tensor:
        t2 = t.detach().reshape(-1, t.shape[-1])
        idx = self(i, t2.shape[0])
        return t2 if idx is None else t2[idx]


def gt_points_loss(points: torch.Tensor, sample) -> torch.Tensor:
    """The repo's objective: point-map error of predicted world points [1, S, H, W, 3] against the GT point map
    in VGGT's convention (first camera's frame, lengths over the mean distance of the valid points to it;
    ptq3d.methods.fgq.normalised_gt), least-squares scale-aligned (detached s = <p, t> / <p, p>), mean
    Euclidean distance over valid pixels. Assumes the model's points live in the first camera's frame (VGGT)."""
    from ptq3d.methods.fgq import normalised_gt

    gt = normalised_gt(sample, tuple(points.shape[2:4]))
    valid = gt["valid"].to(points.device)
    p, t = points[0][valid], gt["points"].to(points.device, points.dtype)[valid]
    s = (p.detach() * t).sum() / p.detach().pow(2).sum().clamp_min(1e-12)
    return (s * p - t).norm(dim=-1).mean()


def task_loss(outputs: dict[str, torch.Tensor], sample, which: str) -> torch.Tensor:
    """The FP model's GT task loss whose gradient weights the "hessian" metric: "depth" | "points"."""
    if which == "points":
        return gt_points_loss(outputs["points"], sample)
    return gt_depth_loss(outputs["depth"], sample)


def capture_output_grads(
    model, calibration, sites: dict[str, nn.Linear], sampler: _TokenSampler, loss: str = "depth"
) -> dict[str, torch.Tensor]:
    """dL/dO for every site's output [tokens, out] (token subsample, samples concatenated), L = the FP model's
    GT task loss (`task_loss`: "depth" or "points"); one forward/backward per calibration scene."""
    buf: dict[str, list[torch.Tensor]] = {}
    grads: dict[str, list[torch.Tensor]] = {s: [] for s in sites}

    def make_hook(site):
        def fwd_hook(_m, _a, out):
            if out.requires_grad:
                out.register_hook(lambda g: buf[site].append(g.detach()))

        return fwd_hook

    handles = [lin.register_forward_hook(make_hook(s)) for s, lin in sites.items()]
    params = [p for p in model.module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        for i, s in enumerate(calibration.samples):
            buf.clear()
            buf.update({site: [] for site in sites})
            images = s.as_batch(model.device).requires_grad_(True)
            with torch.enable_grad():
                task_loss(model.task_outputs(images), s, loss).backward()
            for site in sites:
                if len(buf[site]) != 1:
                    raise ConfigError(
                        f"taptq: site {site} ran {len(buf[site])} times in one forward (expected 1)"
                    )
                grads[site].append(sampler.take(i, buf[site][0]))
    finally:
        for h in handles:
            h.remove()
        for p in params:
            p.requires_grad_(True)
    return {k: torch.cat(v) for k, v in grads.items()}


class _StopForward(Exception):
    pass


def _capture_calls(bd: BlockData, rel: str) -> list[tuple[tuple, dict]]:
    """(args, kwargs) of sub-module `rel` for every sample, running the block (as it is now) on bd.inputs."""
    calls: list[tuple[tuple, dict]] = []

    def pre(_m, args, kwargs):
        calls.append((args, kwargs))
        raise _StopForward

    h = bd.module(rel).register_forward_pre_hook(pre, with_kwargs=True)
    try:
        with torch.no_grad():
            for x, c in zip(bd.inputs, bd.contexts, strict=True):
                with contextlib.suppress(_StopForward):
                    bd.block.forward(x, c)
    finally:
        h.remove()
    if len(calls) != len(bd.inputs):
        raise ConfigError(f"taptq: sub-module {bd.site(rel)} was not reached in the block forward")
    return calls


class _FPLinears:
    """Context manager swapping the FP nn.Linears back in place of the QuantLinears under `prefix`."""

    def __init__(self, block: nn.Module, fp: dict[str, nn.Linear], prefix: str):
        self.block = block
        self.items = {r: m for r, m in fp.items() if r.startswith(prefix + ".")}
        self.saved: dict[str, nn.Module] = {}

    def __enter__(self):
        for rel, lin in self.items.items():
            self.saved[rel] = replace_module(self.block, rel, lin)

    def __exit__(self, *exc):
        for rel, q in self.saved.items():
            replace_module(self.block, rel, q)


class TAPTQ:
    """State of one TAPTQ run over the block loop (FP trajectory, gradients, per-block compensation records)."""

    def __init__(self, model, calibration, scheme, config: TAPTQConfig, ctx):
        self.model, self.calibration, self.scheme, self.cfg, self.ctx = (
            model,
            calibration,
            scheme,
            config,
            ctx,
        )
        self.alphas = config.alphas()
        self.sampler = _TokenSampler(config.max_tokens, len(calibration), config.seed)
        self.fp_inputs: list[torch.Tensor] | None = None
        self.grads: dict[str, torch.Tensor] = {}
        self.comp_records: dict[str, dict[str, Any]] = {}
        if not scheme.weight.symmetric:
            raise ConfigError(
                f"taptq: scheme '{scheme.name}' has asymmetric weights; TAPTQ's quantizers are symmetric"
            )
        act = scheme.act
        if act is None:
            self.act_mode = None
        elif act.dynamic:
            self.act_mode = "dynamic"
        elif act.granularity == "tensor" and act.symmetric:
            self.act_mode = "static"
        else:
            raise ConfigError(
                f"taptq: activation spec {act.describe()} unsupported (static per-tensor symmetric or dynamic)"
            )

    # ---------------------------------------------------------------------------------------------
    def run(self) -> None:
        if self.cfg.metric == "hessian":
            t0 = time.perf_counter()
            self.grads = capture_output_grads(
                self.model, self.calibration, self.ctx.sites(), self.sampler, self.cfg.hessian_loss
            )
            self.grad_time_s = time.perf_counter() - t0
        self.ctx.blockwise(self.calibration, self.calibrate_block, propagate="quantized")
        for rec in self.ctx.stats.blocks:
            extra = self.comp_records.get(rec["name"])
            if extra:
                rec.update(extra)

    def calibrate_block(self, bd: BlockData) -> None:
        fp_in = bd.inputs if self.fp_inputs is None else self.fp_inputs
        fp_bd = BlockData(bd.block, bd.index, fp_in, bd.contexts, [], bd.ctx)
        lins = bd.linears()
        data = self._collect(fp_bd, lins)
        self.fp_inputs = fp_bd.run()  # FP trajectory: every module FP (the repo's sequential=False)
        for rel, lin in lins.items():
            site = bd.site(rel)
            with self.ctx.timed(site):
                ql, res = self.quantize_linear(site, rel, lin, data[rel])
            bd.replace(rel, ql)
            self.ctx.stats.layer(
                site,
                w_alpha=res.w_alpha[0] if len(res.w_alpha) == 1 else res.w_alpha,
                a_alpha=res.a_alpha,
                w_evals=res.w_evals,
                a_evals=res.a_evals,
                objective=res.objective,
                objective_init=res.objective_init,
                **res.gaps,
                act_quantizer="twin_posgelu"
                if isinstance(ql, TwinQuantLinear)
                else ("fp" if ql.act_spec is None else ql.act_spec.describe()),
            )
        if self.cfg.compensation:
            self.compensate_block(bd, lins)

    def _collect(self, fp_bd: BlockData, lins: dict[str, nn.Linear]) -> dict[str, dict[str, Any]]:
        data = {rel: {"x": [], "amax": 0.0, "pmax": 0.0, "i": 0} for rel in lins}

        def obs(rel, x):
            d = data[rel]
            d["x"].append(self.sampler.take(d["i"], x).float())
            d["amax"] = max(d["amax"], float(x.detach().abs().max()))
            d["pmax"] = max(d["pmax"], float(x.detach().max()))
            d["i"] += 1

        fp_bd.collect(obs, list(lins))
        return data

    def quantize_linear(
        self, site: str, rel: str, lin: nn.Linear, d: dict[str, Any]
    ) -> tuple[QuantLinear, LinearSearchResult]:
        cfg, scheme = self.cfg, self.ctx.scheme_for(site)  # the unit's bits under a mixed-precision plan
        X = torch.cat(d["x"])
        W = lin.weight.detach().float()
        if cfg.weight_granularity == "channel":
            nb = W.shape[0]
        else:
            nb = cfg.qkv_splits if rel == cfg.qkv_name else 1
        act = self.act_mode
        twin = act == "static" and rel in cfg.twin_sites
        if twin:
            act = "twin"
        G2 = None
        if cfg.metric == "hessian":
            g = self.grads[site]
            if g.shape != (X.shape[0], W.shape[0]):
                raise ConfigError(
                    f"taptq: gradient of {site} {tuple(g.shape)} does not match its inputs {tuple(X.shape)}"
                )
            G2 = g.float().pow(2)
        search = IntervalSearch(
            X,
            W,
            None if lin.bias is None else lin.bias.detach(),
            G2,
            scheme.weight.bits,
            nb,
            act,
            scheme.act,
            d["pmax"] if twin else d["amax"],
            self.alphas,
            cfg.twin_neg_range,
            cfg.ternary_refine,
        )
        res = search.run(cfg.w_solver, cfg.a_solver, cfg.search_rounds, cfg.ternary_variant, cfg.check_solver)
        per_tensor = nb == 1
        wspec = QuantSpec(scheme.weight.bits, "tensor" if per_tensor else "channel")
        cls = TwinQuantLinear if twin else QuantLinear
        ql = cls(lin.in_features, lin.out_features, wspec, scheme.act, bias=lin.bias is not None)
        scale = res.w_scale[:1] if per_tensor else res.w_scale
        ql.set_weight(quantize(W, scale, None, wspec), scale, None)
        if lin.bias is not None:
            ql.bias.copy_(lin.bias.detach().float())
        if res.a_scale is not None:
            ql.act_scale.fill_(res.a_scale)
        if twin:
            ql.act_neg_scale.copy_(search.neg_scale)
        return ql, res

    # ---------------------------------------------------------------------------------------------
    def compensate_block(self, bd: BlockData, fp_lins: dict[str, nn.Linear]) -> None:
        cfg = self.cfg
        rec: dict[str, Any] = {"taptq_comp": {}}
        for unit, ls_name in cfg.comp_units.items():
            try:
                sub = bd.module(unit)
            except AttributeError:
                continue
            ls = bd.module(ls_name) if _has(bd.block.module, ls_name) else nn.Identity()
            calls = _capture_calls(bd, unit)
            with torch.no_grad():
                y_q = [ls(sub(*a, **k)) for a, k in calls]
                with _FPLinears(bd.block.module, fp_lins, unit):
                    y_fp = [ls(sub(*a, **k)) for a, k in calls]
            yf, yq = torch.cat([y.flatten() for y in y_fp]), torch.cat([y.flatten() for y in y_q])
            tre = tail_relative_error(yf, yq, cfg.rho)
            fit = LeastSquaresFit(calls[0][0][0].shape[-1], y_fp[0].shape[-1])
            for (a, _k), f, q in zip(calls, y_fp, y_q, strict=True):
                fit.add(a[0], f - q)
            W, b, r2 = fit.solve(cfg.ridge)
            on = tre >= cfg.tau and r2 > 0
            tre_after = tre
            if on:
                A, B = low_rank_factors(W, cfg.rank)
                gamma = _gamma(ls, B.shape[1])
                inv = torch.where(gamma.abs() > 1e-12, 1.0 / gamma, torch.zeros_like(gamma))
                comp = LowRankCompensation.from_factors(A, B * inv, b * inv)
                attach_compensation(sub, comp)
                rec["taptq_comp"][bd.site(unit)] = comp.config()
                with torch.no_grad():
                    y_c = [ls(sub(*a, **k)) for a, k in calls]
                tre_after = tail_relative_error(yf, torch.cat([y.flatten() for y in y_c]), cfg.rho)
            rec[f"{unit}_tre"] = tre
            rec[f"{unit}_tre_after"] = tre_after
            rec[f"{unit}_r2"] = r2
            rec[f"{unit}_comp_rank"] = min(cfg.rank, *W.shape) if on else 0
        self.comp_records[bd.block.name] = rec


def _has(root: nn.Module, rel: str) -> bool:
    try:
        root.get_submodule(rel)
        return True
    except AttributeError:
        return False


def _gamma(ls: nn.Module, width: int) -> torch.Tensor:
    """LayerScale gamma [width] float64 (ones for Identity)."""
    if isinstance(ls, nn.Identity):
        return torch.ones(width, dtype=torch.float64)
    g = getattr(ls, "gamma", None)
    if not isinstance(g, torch.Tensor) or g.numel() != width:
        raise ConfigError(f"taptq compensation: cannot invert the unit's output scale {type(ls).__name__}")
    return g.detach().double().reshape(-1)


@register_method("taptq", config=TAPTQConfig, requires_calibration="always", propagate="quantized")
def quantize_taptq(model, calibration, scheme, config: TAPTQConfig, ctx) -> None:
    """TAPTQ: PTQ4ViT interval search by ternary search + TRE-gated low-rank compensation."""
    config.validate()
    TAPTQ(model, calibration, scheme, config, ctx).run()


quantize_taptq.rebuild_modules = rebuild_taptq_modules


def search_counts(stats, sites: Sequence[str] | None = None) -> dict[str, int]:
    """Total objective evaluations of a run: {"w_evals", "a_evals", "evals"} over `sites` (default all)."""
    layers = stats.layers if sites is None else {s: stats.layers[s] for s in sites}
    w = sum(int(r.get("w_evals", 0)) for r in layers.values())
    a = sum(int(r.get("a_evals", 0)) for r in layers.values())
    return {"w_evals": w, "a_evals": a, "evals": w + a}


import ptq3d.calibration.taptq_builder  # noqa: E402,F401  (registers the "taptq" calibration builder)
