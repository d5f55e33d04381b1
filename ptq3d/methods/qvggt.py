"""QVGGT (Pan, Wang, Wang, CVPR 2026, arXiv 2605.31124; project page ddsacu.github.io/QVGGT; release DDsacu/QVGGT).

What we could read: the abstract, the project page's method overview, and the authors' release, which is
inference only (AWQ-format W4 checkpoints and kernels, no calibration code). The paper's body (equations,
weights, grids) was not in the stored copies available here, so every formula below is our reading of those
three sources. Where a choice was open, it is marked "choice" with the reason.

Three parts, on AWQ's scale search (AWQ, ptq3d.methods.awq, is the method the paper starts from, and the
release runs AWQ's kernels):

1. Selective mixed precision. The sensitivity of block b for task k is
       S[b, k] = mean over calibration scenes of ||y_k(M with only block b quantized) - y_k(M)|| / ||y_k(M)||,
   where y_k are the task outputs (camera, depth, points) of `GeometryModel.task_outputs` and the block is RTN
   at the run's scheme. This is `block_sensitivity` of ptq3d.calibration.sensitivity (gradient estimates
   skipped); the table is kept in stats.extra["qvggt"]["plan"]. `plan_for_budget` then
   moves the most fragile blocks (worst normalised task) to `high_bits` weights while the parameter-weighted
   mean weight bits stay <= the budget. The result is a PrecisionPlan; the block loop builds every layer
   from `bd.scheme_for(rel)`. If the run already has a plan (`scheme.is_mixed`), it is used as given.
   - choice: budget = base bits + `extra_bits` (0.5: W4 -> 4.5 bits, one block in eight at W8). The
     paper's count of fragile blocks is unknown to us.
   - choice: `high_bits` 8. The release leaves the fragile blocks unquantized (FP16): its loader only swaps
     in W4 layers for a listed subset of frame/global blocks. A ptq3d plan stores weights as int8 codes, so
     W8 is the nearest format it can hold.
   - No plan when the base weights already have `high_bits` or more (w8a8), or when the default budget fits
     no block (pi3-tiny: 4 blocks, one at W8 already averages 5 bits); the reason is recorded.
   - The plan reaches the layers through the block loop's scheme (ctx.scheme). quantize_model's manifest
     shows its effect (effective_weight_bits, bits_histogram); the plan itself is in stats.extra["qvggt"].

2. Token filtering with camera information compensation (CIC). Every frame starts with `patch_start_idx`
   special tokens: VGGT has 1 camera token and 4 registers; Pi3 has 5 registers. They carry high-variance,
   data-independent activations (massive channels in VGGT-1B and in vggt-tiny-synthetic-sinks). They are
   dropped from every activation statistic of the calibration:
   - the AWQ statistic mean|x|;
   - the rows of the reconstruction losses (block and layer outputs);
   - the clipping search;
   - static activation ranges.
   Rows are kept when (token index within the frame) >= patch_start_idx; for DINOv2 encoder blocks in scope
   "all", the cls token and the registers are dropped.
   The camera token still runs through the quantized layers at inference. Its lost cue is restored at the
   camera head, where the release keeps its token (`camera_head.cict_token`, with `cict_topk`):
       T_fp, T_q [N, D]: camera tokens at the camera-head input (last aggregator layer, token 0, D = 2C) over
           the N calibration frames, from the FP model and from the quantized one;
       U_K [D, K]: top-K right singular vectors of T_fp - mean(T_fp) (PCA of the FP camera tokens);
       c = U_K U_K^T mean_n(T_fp[n] - T_q[n])   (the CIC token, one global vector [D]);
       the camera head reads t_q + c instead of t_q.
   So c is the least-squares constant correction of the camera token, restricted to the K directions in
   which FP camera tokens vary between views (the geometric cues).
   - It never increases the mean squared camera-token error on the calibration frames.
   - It is exactly 0 when nothing is quantized.
   - It restores exactly a constant shift that lies in that span.
   - choice: K = `cic_topk` = 16 (capped by the rank of the data).
   - Pi3 has no camera token: its camera decoder reads patch tokens, which are calibrated. On Pi3 the 5
     register tokens are filtered and no CIC token is made (recorded in stats.extra["qvggt"]["cic"]).

3. Task-aware scale search. As in AWQ, each group of linears that share one input gets candidates
       s(alpha) = mean_P|x|^alpha / sqrt(max * min),   alpha in {0, 1/n, ..., (n-1)/n}
   (n = `n_grid` = 20; P = the patch-token rows). They are scored as
       J(alpha) = l_rec L_rec / L_rec(a*) + l_head L_head / L_head(a*) + l_geo L_geo / L_geo(a*).
   - L_rec: the relative squared error of the group's output (the block output for qkv / fc1, the layer
     output for proj / fc2), on patch tokens, with W <- Q(W diag(s)) diag(s)^-1.
   - L_head (multi-head supervision): (1/3) sum_k ||y_k - y_k^FP||^2 / ||y_k^FP||^2 over camera, depth and
     points of `model.task_outputs` on `task_scenes` calibration scenes. Earlier blocks are quantized, this
     block has the candidate, later blocks are FP.
   - L_geo (cross-head consistency): ||r - r^FP||^2 / ||points^FP||^2, with the residual between the point
     head and the depth head lifted by the camera head:
         r = points - unproject(depth, extrinsics, intrinsics of the pose encoding)   [B, S, H, W, 3].
     Errors that move depth, points and cameras together leave r unchanged; errors that break their
     agreement do not.
   - a* = argmin L_rec. Each term is divided by its value at a*, so the weights l are unitless; a term that
     is 0 at a* (or non-finite anywhere) is left out.
   - choice: two stages for cost. L_rec is computed for the whole grid (cheap). The full objective is
     computed for the `task_candidates` (4) best by L_rec, which always include a*. With task_candidates =
     n_grid the search is exhaustive.
   - choice: l_rec = l_head = l_geo = 1 (the paper's weights were not available).
   - choice: consistency is measured as a change from FP, not as absolute agreement. The FP heads of a
     trained model agree only approximately (vggt-tiny-synthetic-sinks: ||r|| / ||points|| = 0.09-0.20 on
     the first 4 held-out scenes), and an absolute target would pull the quantized model away from FP,
     towards another geometry.
   - choice: the targets are the FP model's own outputs, so no ground truth is needed.
   - Pi3 builds its points from its poses and local points, so its heads agree by construction: L_geo is
     left out on Pi3.
   - Cost beyond AWQ: 4 groups x task_candidates x task_scenes task forwards per block, plus the
     sensitivity's (blocks + 1) x scenes forwards and two forwards per scene for the CIC token.
   After the search come AWQ's folds (qkv <- norm1, fc1 <- norm2, proj <- v rows, fc2 online), its clipping
   search (on patch rows) and RTN, each linear at its plan's scheme. The next block gets the FP outputs
   (propagate "fp", as AWQ).

Schemes:
- the paper's: W4A16; the release's format is W4 group 128 (w4g128a16).
- the rest the kernels support: w8a16, w8a8, w6a6, w4a8, w4a4 and their -static variants (static ranges on
  patch tokens only).
- Under activation schemes the search is weight-only, as in AWQ, and the QuantLinear quantizes x / s.
Presets: "paper" only. The release has no calibration code to compare against, so there is no "code" preset.
Its known departures are documented above (FP16 fragile blocks; it also quantizes the camera head's trunk,
which is outside scope "aggregator").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ptq3d.calibration.sensitivity import block_sensitivity, plan_for_budget
from ptq3d.calibration.sets import CalibrationSet
from ptq3d.errors import ConfigError
from ptq3d.methods.awq import (
    AWQConfig,
    activation_scales,
    clip_and_round,
    fold_scale,
    scaled_fake_weight,
    search_scale,
)
from ptq3d.methods.registry import register_method
from ptq3d.models.base import TASKS as HEAD_TASKS

CIC_CHILD = "qvggt_cic"


@dataclass
class QVGGTConfig(AWQConfig):
    """QVGGT options. AWQ's fields (n_grid, clip, clip_grid, clip_max_shrink, clip_tokens, search_tokens,
    groups) keep their meaning (ptq3d.methods.awq).

    mixed_precision: make a plan from the measured block sensitivity when the run has none.
    high_bits: weight bits of the fragile blocks. extra_bits: budget = base weight bits + extra_bits
        (budget_bits overrides). sensitivity_task: "worst" (max over normalised tasks) or one task.
    sensitivity_scenes: calibration scenes for the sensitivity (None = all).
    token_filter: drop the special tokens from the activation statistics.
    cic: fit and attach the CIC token (models with a camera token). cic_topk: K of the PCA.
    task_aware: score the best `task_candidates` scales by the task-aware objective on `task_scenes` scenes.
    lambda_rec / lambda_head / lambda_geo: weights of the normalised terms.
    """

    PRESETS: ClassVar[dict[str, dict]] = {"paper": {}}
    CALIBRATION_DEFAULTS: ClassVar[dict[str, dict]] = {"paper": {"builder": "random"}}

    mixed_precision: bool = True
    high_bits: int = 8
    extra_bits: float = 0.5
    budget_bits: float | None = None
    sensitivity_task: str = "worst"
    sensitivity_scenes: int | None = None
    token_filter: bool = True
    cic: bool = True
    cic_topk: int = 16
    task_aware: bool = True
    task_candidates: int = 4
    task_scenes: int = 2
    lambda_rec: float = 1.0
    lambda_head: float = 1.0
    lambda_geo: float = 1.0

    def check(self) -> None:
        if self.n_grid < 1:
            raise ConfigError(f"qvggt n_grid={self.n_grid}: must be >= 1")
        if not 2 <= self.high_bits <= 8:
            raise ConfigError(f"qvggt high_bits={self.high_bits}: must be in 2..8 (int8 codes)")
        if self.sensitivity_task not in ("worst", *HEAD_TASKS):
            raise ConfigError(
                f"qvggt sensitivity_task={self.sensitivity_task!r}: use 'worst' or one of {', '.join(HEAD_TASKS)}"
            )
        for name in ("task_candidates", "task_scenes", "cic_topk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"qvggt {name}={getattr(self, name)}: must be >= 1")
        if min(self.lambda_rec, self.lambda_head, self.lambda_geo) < 0:
            raise ConfigError("qvggt lambda_rec / lambda_head / lambda_geo must be >= 0")


# ==================================================================================================
# 2. Token filtering
# ==================================================================================================


def patch_rows(x: torch.Tensor, tokens_per_frame: int, special: int) -> torch.Tensor:
    """Rows of the patch tokens of a linear's input x [..., N, C] -> [n, C].

    N is a multiple of tokens_per_frame P: frame attention runs [B*S, P, C], global attention [B, S*P, C],
    both frame-major. The first `special` tokens of every frame are dropped (camera + registers)."""
    if x.shape[-2] % tokens_per_frame:
        raise ConfigError(
            f"qvggt token filter: {x.shape[-2]} tokens are not whole frames of {tokens_per_frame}"
        )
    return x.reshape(-1, tokens_per_frame, x.shape[-1])[:, special:].reshape(-1, x.shape[-1])


def token_layout(bd) -> tuple[int, int]:
    """(tokens per frame P, special tokens) of the block's linears, from its output [B, S, P, C] (which has the
    layout of its linears, also for a block that glues the encoder output to the aggregator) and the context:
    aggregator / decoder blocks have patch_start_idx special tokens; DINOv2 encoder blocks have P minus the
    aggregator's patch count (cls + registers). Every calibration scene must give the same layout."""
    layouts = set()
    for o, c in zip(bd.fp_outputs, bd.contexts, strict=True):
        P = o.shape[2]
        special = (
            P - (c.tokens_per_frame - c.patch_start_idx) if bd.block.kind == "encoder" else c.patch_start_idx
        )
        layouts.add((P, special))
    if len(layouts) != 1:
        raise ConfigError(f"qvggt: calibration scenes have different token layouts {sorted(layouts)}")
    return layouts.pop()


def _output_mask(o: torch.Tensor, special: int) -> torch.Tensor:
    """Block output [B, S, P, C] -> its patch tokens (a block's output is in the aggregator layout)."""
    return o[:, :, special:]


# ==================================================================================================
# 3. Task-aware objective
# ==================================================================================================


def head_losses(
    fp: dict[str, torch.Tensor], q: dict[str, torch.Tensor], tasks=HEAD_TASKS
) -> dict[str, float]:
    """Relative squared error ||q_k - fp_k||^2 / ||fp_k||^2 of each task output (task_outputs dicts)."""
    out = {}
    for k in tasks:
        ref = fp[k].double()
        out[k] = float((q[k].double() - ref).pow(2).sum() / ref.pow(2).sum().clamp_min(1e-30))
    return out


def cross_head_residual(outputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """r = points - unproject(depth, camera) [B, S, H, W, 3] in the world frame of the heads, or None where the
    heads agree by construction.

    camera [B, S, 9]: VGGT's pose encoding (extrinsics and intrinsics, `pose_encoding_to_extri_intri`, VGGT's
    integer pixel grid); camera [B, S, 12]: Pi3's camera-to-world, whose points are its poses applied to its
    local points and whose depth is their z, so r = 0 identically: None."""
    cam, depth, points = outputs["camera"], outputs["depth"], outputs["points"]
    if cam.shape[-1] == 12:
        return None
    if cam.shape[-1] != 9:
        raise ConfigError(f"qvggt cross-head term: unknown camera output of width {cam.shape[-1]} (9 or 12)")
    from ptq3d.models.vggt.pose import pose_encoding_to_extri_intri, unproject_depth_to_world

    E, K = pose_encoding_to_extri_intri(cam.double(), tuple(depth.shape[-2:]))
    return points.double() - unproject_depth_to_world(depth.double(), E, K)


def cross_head_loss(fp: dict[str, torch.Tensor], q: dict[str, torch.Tensor]) -> float | None:
    """L_geo = ||r_q - r_fp||^2 / ||points_fp||^2 (module docstring), None where r is undefined (Pi3)."""
    r_fp, r_q = cross_head_residual(fp), cross_head_residual(q)
    if r_fp is None or r_q is None:
        return None
    return float((r_q - r_fp).pow(2).sum() / fp["points"].double().pow(2).sum().clamp_min(1e-30))


def select_candidate(
    rec: list[float],
    head: list[float] | None,
    geo: list[float] | None,
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> tuple[int, list[float]]:
    """argmin J over candidates (module docstring, part 3): each term divided by its value at the candidate of
    least L_rec; a term that is None, 0 there, or non-finite anywhere is left out. Returns (index, J per candidate)."""
    ref = min(range(len(rec)), key=lambda i: rec[i])
    J = [0.0] * len(rec)
    for lam, term in zip(weights, (rec, head, geo), strict=True):
        if term is None or lam == 0:
            continue
        norm = term[ref]
        if not all(math.isfinite(t) for t in term) or norm <= 0:
            continue
        J = [j + lam * t / norm for j, t in zip(J, term, strict=True)]
    best = min(range(len(J)), key=lambda i: (J[i], rec[i]))
    return best, J


class TaskProbe:
    """The FP task outputs of the first `num` calibration scenes and the task-aware terms of the live model."""

    def __init__(self, model, calibration, num: int):
        self.model = model
        self.images = [s.as_batch(model.device) for s in calibration.samples[:num]]
        with torch.no_grad():
            self.fp = [model.task_outputs(im) for im in self.images]
        self.evals = 0

    @torch.no_grad()
    def losses(self) -> tuple[float, float | None]:
        """(L_head, L_geo) of the model as it is now, averaged over the probe scenes."""
        head, geo = [], []
        for im, fp in zip(self.images, self.fp, strict=True):
            q = self.model.task_outputs(im)
            head.append(sum(head_losses(fp, q).values()) / len(HEAD_TASKS))
            geo.append(cross_head_loss(fp, q))
            self.evals += 1
        return sum(head) / len(head), None if None in geo else sum(geo) / len(geo)


# ==================================================================================================
# 2b. Camera information compensation (CIC) token
# ==================================================================================================


class CICToken(nn.Module):
    """The CIC token c [D]: added to the camera token (token 0 of the last aggregator layer) that the camera
    head reads. Attached as child `qvggt_cic` of the camera head with a forward pre-hook (attach_cic); the
    depth / point heads read the aggregator tokens unchanged."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("token", torch.zeros(int(dim)))

    def hook(self, _module: nn.Module, args: tuple) -> tuple:
        tokens = args[0]  # list of [B, S, P, D]
        last = tokens[-1].clone()
        last[:, :, 0] = last[:, :, 0] + self.token.to(last.dtype)
        return (list(tokens[:-1]) + [last], *args[1:])

    def extra_repr(self) -> str:
        return f"dim={self.token.numel()}"


def camera_head_name(model) -> str | None:
    """Module path of the head that reads the camera token ("camera_head" for VGGT), None if the model has no
    camera token (Pi3: its camera decoder reads patch tokens)."""
    agg = getattr(model.module, "aggregator", None)
    if agg is None or not hasattr(agg, "camera_token") or getattr(model.module, "camera_head", None) is None:
        return None
    return "camera_head"


@torch.no_grad()
def camera_tokens(model, head: str, images: list[torch.Tensor]) -> torch.Tensor:
    """The camera tokens the head `head` reads, [N frames, D], over `images` ([1, S, 3, H, W] each)."""
    got: list[torch.Tensor] = []

    def grab(_m, args):
        got.append(args[0][-1][:, :, 0].reshape(-1, args[0][-1].shape[-1]).double())

    h = model.module.get_submodule(head).register_forward_pre_hook(grab)
    try:
        for im in images:
            model.module(im)
    finally:
        h.remove()
    return torch.cat(got)


def fit_cic_token(T_fp: torch.Tensor, T_q: torch.Tensor, topk: int) -> tuple[torch.Tensor, dict[str, float]]:
    """c = U_K U_K^T mean(T_fp - T_q) (module docstring); T_fp, T_q [N, D]. Returns (c [D] float32, info: K,
    explained variance of the K components, mean squared camera-token error before / after)."""
    T_fp, T_q = T_fp.double(), T_q.double()
    centred = T_fp - T_fp.mean(dim=0)
    _, S, Vh = torch.linalg.svd(centred, full_matrices=False)
    rank = int((S.max() * 1e-10 < S).sum()) if S.numel() and S.max() > 0 else 0
    K = min(int(topk), rank)
    delta = (T_fp - T_q).mean(dim=0)
    U = Vh[:K].T  # [D, K]
    c = U @ (U.T @ delta)
    before = float((T_fp - T_q).pow(2).sum(-1).mean())
    after = float((T_fp - T_q - c).pow(2).sum(-1).mean())
    explained = float(S[:K].pow(2).sum() / S.pow(2).sum()) if K else 0.0
    return c.float(), {"topk": K, "explained_variance": explained, "mse_before": before, "mse_after": after}


def attach_cic(head: nn.Module, token: torch.Tensor) -> CICToken:
    """Attach CICToken(token) to `head` (replacing an earlier one)."""
    detach_cic(head)
    comp = CICToken(token.numel())
    comp.token.copy_(token.float())
    head.add_module(CIC_CHILD, comp)
    head.register_forward_pre_hook(comp.hook)
    return comp


def detach_cic(head: nn.Module) -> None:
    for key, fn in list(head._forward_pre_hooks.items()):
        if isinstance(getattr(fn, "__self__", None), CICToken):
            del head._forward_pre_hooks[key]
    if CIC_CHILD in head._modules:
        del head._modules[CIC_CHILD]


def rebuild_qvggt_modules(root: nn.Module, doc: dict[str, Any]) -> int:
    """Re-create the CIC token (zeros, filled by load_state_dict) in a model rebuilt from a save_quantized
    manifest: stats.extra["qvggt"]["cic"] names its head and width. Returns the number of modules attached."""
    cic = doc.get("stats", {}).get("extra", {}).get("qvggt", {}).get("cic", {})
    if not cic.get("applied"):
        return 0
    attach_cic(root.get_submodule(cic["head"]), torch.zeros(int(cic["dim"])))
    return 1


# ==================================================================================================
# 1. Selective mixed precision
# ==================================================================================================


def selective_plan(model, calibration, scheme, config: QVGGTConfig, scope: str):
    """(PrecisionPlan or None, record) for a run without a plan (module docstring, part 1): the measured
    sensitivity (`block_sensitivity`, estimates skipped) and `plan_for_budget`. With the default budget (base +
    extra_bits) a model whose smallest block does not fit gets no plan (recorded); an explicit budget_bits that
    fits no block is an error."""
    base = scheme.weight.bits
    if not config.mixed_precision:
        return None, {"source": "none", "reason": "mixed_precision off"}
    if base >= config.high_bits:
        return None, {"source": "none", "reason": f"base weights W{base} >= high_bits {config.high_bits}"}
    budget = config.budget_bits if config.budget_bits is not None else base + config.extra_bits
    calib = calibration
    if config.sensitivity_scenes is not None:
        calib = CalibrationSet(
            calibration.samples[: config.sensitivity_scenes],
            calibration.builder,
            calibration.seed,
            calibration.meta,
        )
    table = block_sensitivity(model, calib, scheme, scope=scope, estimates=False)
    rec = {
        "source": "qvggt sensitivity",
        "budget_bits": budget,
        "sensitivity": [
            {k: v for k, v in r.items() if k in ("unit", "kind", *HEAD_TASKS)} for r in table.rows
        ],
        "sensitivity_time_s": table.time_s.get("total"),
    }
    try:
        plan = plan_for_budget(
            table, model, scheme, budget, high_bits=config.high_bits, task=config.sensitivity_task,
            name=f"qvggt-{budget:g}b",
        )  # fmt: skip
    except ConfigError as exc:
        if config.budget_bits is not None:
            raise
        return None, {**rec, "source": "none", "reason": str(exc)}
    return plan, rec


# ==================================================================================================
# The block loop
# ==================================================================================================


@torch.no_grad()
def qvggt_calibrate_block(bd, config: QVGGTConfig, ctx, probe: TaskProbe | None, record: dict) -> None:
    """Filtered statistics, two-stage task-aware scale search and folds, clipping search, RTN (module docstring).
    record: the run's stats.extra["qvggt"] (gets the special-token count of the block)."""
    rule = config.sym_rule
    P, special = token_layout(bd) if config.token_filter else (1, 0)
    keep = (
        (lambda x: patch_rows(x, P, special))
        if config.token_filter
        else (lambda x: x.reshape(-1, x.shape[-1]))
    )
    record.setdefault("special_tokens", {})[bd.block.name] = special
    lins = bd.linears()
    folds = {rel: how for rel, how in config.fold_targets().items() if rel in lins}
    feats: dict[str, list[torch.Tensor]] = {rel: [] for rel in lins}
    bd.collect(lambda rel, x: feats[rel].append(keep(x.detach()).float()), list(lins))
    X = {rel: torch.cat(v) for rel, v in feats.items()}
    x_means = {rel: x.abs().mean(dim=0) for rel, x in X.items()}
    X = {rel: x[:: max(1, math.ceil(x.shape[0] / config.search_tokens))] for rel, x in X.items()}
    fp_out = [_output_mask(o, special) for o in bd.fp_outputs]
    fp_energy = sum(float(o.double().pow(2).sum()) for o in fp_out)

    def block_rel_err() -> float:
        outs = [_output_mask(o, special) for o in bd.run()]
        return (
            sum(float((o - f).double().pow(2).sum()) for o, f in zip(outs, fp_out, strict=True)) / fp_energy
        )

    online: dict[str, torch.Tensor] = {}
    for rel, how in folds.items():
        lin, spec = lins[rel], bd.scheme_for(rel).weight
        W = lin.weight.detach().float().clone()
        norm = bd.foldable_norm(how, lin.in_features) if how not in ("v_rows", "online") else None

        def set_candidate(s, lin=lin, W=W, spec=spec):
            lin.weight.copy_(scaled_fake_weight(W, s, spec, rule))

        if norm is not None:  # the block output inspects the group (AWQ's module2inspect)

            def rec_loss(s, lin=lin, W=W, set_candidate=set_candidate):
                set_candidate(s)
                try:
                    return block_rel_err()
                finally:
                    lin.weight.copy_(W)
        else:
            ref = X[rel] @ W.t()
            ref_energy = float(ref.double().pow(2).sum().clamp_min(1e-30))

            def rec_loss(s, W=W, ref=ref, x=X[rel], spec=spec, ref_energy=ref_energy):
                return (
                    float((x @ scaled_fake_weight(W, s, spec, rule).t() - ref).double().pow(2).sum())
                    / ref_energy
                )

        _, alpha_rec, rec = search_scale(x_means[rel], config.n_grid, rec_loss)
        cands = sorted(range(len(rec)), key=lambda i: rec[i])[: config.task_candidates]
        if probe is not None and config.task_aware and len(cands) > 1:
            head, geo = [], []
            for i in cands:
                set_candidate(activation_scales(x_means[rel], i / config.n_grid))
                try:
                    h, g = probe.losses()
                finally:
                    lin.weight.copy_(W)
                head.append(h)
                geo.append(g)
            pick, _ = select_candidate(
                [rec[i] for i in cands],
                head,
                None if None in geo else geo,
                (config.lambda_rec, config.lambda_head, config.lambda_geo),
            )
            alpha = cands[pick] / config.n_grid
        else:
            alpha = alpha_rec
        s = activation_scales(x_means[rel], alpha)
        where = fold_scale(lins, rel, how, norm, s, X, online)
        ctx.stats.layer(
            bd.site(rel),
            qvggt_alpha=alpha,
            qvggt_alpha_rec=alpha_rec,
            qvggt_scaling=where,
            qvggt_rec=min(rec),
        )
    clip_and_round(bd, lins, X, online, config, ctx)
    bd.calibrate_static_acts(rows=keep)


@register_method("qvggt", config=QVGGTConfig, requires_calibration="always", propagate="fp")
def quantize_qvggt(model, calibration, scheme, config: QVGGTConfig, ctx) -> None:
    """QVGGT: selective mixed precision, token filtering with camera compensation, task-aware AWQ scale search."""
    config.check()
    record: dict[str, Any] = {}
    if scheme.is_mixed:
        record["plan"] = {"source": "run", "plan": scheme.plan.to_dict()}
    else:
        plan, rec = selective_plan(model, calibration, scheme, config, ctx.scope)
        if plan is not None:
            ctx.scheme = scheme.with_plan(plan)  # bd.scheme / bd.scheme_for resolve through it
            rec["plan"] = plan.to_dict()
        record["plan"] = rec
    head = camera_head_name(model) if config.cic else None
    images = [s.as_batch(model.device) for s in calibration.samples]
    T_fp = camera_tokens(model, head, images) if head is not None else None
    probe = TaskProbe(model, calibration, config.task_scenes) if config.task_aware else None
    ctx.blockwise(calibration, lambda bd: qvggt_calibrate_block(bd, config, ctx, probe, record))
    record["task_evals"] = 0 if probe is None else probe.evals
    if head is None:
        why = "cic off" if not config.cic else "no camera token (the camera head reads patch tokens)"
        record["cic"] = {"applied": False, "reason": why}
    else:
        token, info = fit_cic_token(T_fp, camera_tokens(model, head, images), config.cic_topk)
        attach_cic(model.module.get_submodule(head), token)
        record["cic"] = {"applied": True, "head": head, "dim": int(token.numel()), **info}
    ctx.stats.extra["qvggt"] = record


quantize_qvggt.rebuild_modules = rebuild_qvggt_modules
