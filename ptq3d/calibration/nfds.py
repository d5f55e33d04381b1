"""Noise-Filtered Diverse Sampling (NFDS; QuantVGGT, Feng et al., arXiv 2509.21302, §3.3): a calibration-set
builder, registered as "nfds".

From a candidate pool of scenes (each [S, 3, H, W]) and the FP model:
1. Deep-layer statistics. The pool runs through the blocks in scope; for each deep block j (the last
   `deep_fraction` of the frame/global pairs, at least one pair; VGGT-1B: blocks 20..23 of both kinds, the
   code's hooks) the input tokens (the residual stream entering norm1) give a mean m_ij and variance s_ij.
2. Noise filter.
   - "zscore" (paper): score_i = sum_j ((m_ij - mu_j) / (sigma_j + eps))^2 + sum_j ((s_ij - nu_j) / (tau_j + eps))^2
     over the pool; keep score_i <= T, T the (1 - p) quantile (p = `drop_fraction` = 0.2).
   - "iqr" (authors' code, make_calibation.py): a sample is dropped if any m_ij or standard deviation
     sqrt(s_ij) (the code's statistic; the fences are not invariant under the square root) lies outside
     [Q1 - k IQR, Q3 + k IQR] (k = 1.5) of its group (meta[`group_key`], e.g. the CO3D category; groups of
     fewer than 4 are not filtered). The code computes this but clusters all samples anyway (notes §2.10
     item 1); here the filter is applied.
   - "none": no filtering (the "clustered only" ablation).
3. Frame-aware feature of each kept scene from the last aggregator output A [S, P, D] (VGGT: the last
   frame block's output concatenated with the last global block's, as the model's heads read it):
   - "frame_cosine" (paper): c_t = cos(vec(A_0), vec(A_t)), t = 1..S-1;
   - "token_cosine" (code): c_t = mean over tokens p of cos(A_0p, A_tp) (the code also average-pools
     channels and patch tokens by 2 to save memory; we do not).
4. K-means (K = 8; code 5) on {c_i} with k-means++ seeding and `kmeans_restarts` restarts
   (scipy.cluster.vq.kmeans2, lowest inertia kept), then picking: clusters take turns (largest first), each
   turn one scene drawn uniformly from the cluster's remaining members, until n scenes (paper: "uniform
   sampling within each cluster", 40 scenes; code: 4 random per cluster, random top-up to 20).

The returned CalibrationSet keeps the chosen scenes in pool order; its meta records, per pool scene, the
deep statistics, the score and why it was dropped, the cluster of every kept scene, and which were picked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ptq3d.calibration.builders import register_calibration_builder
from ptq3d.calibration.sets import CalibrationSet, check_pool
from ptq3d.datasets.base import SceneSample
from ptq3d.errors import ConfigError, unknown_name_error
from ptq3d.typed_config import make_config

FILTERS = ("zscore", "iqr", "none")
FEATURES = ("frame_cosine", "token_cosine")


@dataclass
class NFDSConfig:
    """NFDS options (module docstring). Paper defaults; the authors' code values in brackets.

    filter: zscore (paper) | iqr [code, here applied] | none. drop_fraction: p of the z-score rule.
    iqr_k: the IQR fence factor [1.5]. group_key: SceneSample.meta key grouping the IQR rule (CO3D
        category) [category]; groups smaller than `iqr_min_group` are kept whole [4].
    num_clusters: K (paper 8) [5]. kmeans_restarts: k-means++ restarts [sklearn n_init = 50].
    kmeans_iters: Lloyd iterations per restart.
    deep_fraction: share of block pairs counted as deep (VGGT-1B: 4 / 24).
    stat_frames: "all" (paper: statistics of the whole sample) | "first" [code: frame blocks use the first
        frame only].
    feature: frame_cosine (paper) | token_cosine [code].
    eps: added to the standard deviations of the z-score.
    """

    filter: str = "zscore"
    drop_fraction: float = 0.2
    iqr_k: float = 1.5
    group_key: str = "category"
    iqr_min_group: int = 4
    num_clusters: int = 8
    kmeans_restarts: int = 10
    kmeans_iters: int = 50
    deep_fraction: float = 1 / 6
    stat_frames: str = "all"
    feature: str = "frame_cosine"
    eps: float = 1e-6

    def check(self) -> None:
        if self.filter not in FILTERS:
            raise unknown_name_error("NFDS filter", str(self.filter), FILTERS)
        if self.feature not in FEATURES:
            raise unknown_name_error("NFDS feature", str(self.feature), FEATURES)
        if self.stat_frames not in ("all", "first"):
            raise ConfigError(f"nfds stat_frames={self.stat_frames!r}: use 'all' or 'first'")
        if not 0.0 <= self.drop_fraction < 1.0:
            raise ConfigError(f"nfds drop_fraction={self.drop_fraction}: must be in [0, 1)")
        if self.num_clusters < 1:
            raise ConfigError(f"nfds num_clusters={self.num_clusters}: must be >= 1")
        if not 0.0 < self.deep_fraction <= 1.0:
            raise ConfigError(f"nfds deep_fraction={self.deep_fraction}: must be in (0, 1]")
        if self.kmeans_restarts < 1 or self.kmeans_iters < 1:
            raise ConfigError("nfds kmeans_restarts and kmeans_iters must be >= 1")


# --- 1. deep-layer statistics and the frame-aware feature ------------------------------------------------


def deep_blocks(model: Any, scope: str, deep_fraction: float) -> list[str]:
    """Names of the deep blocks: the last ceil(deep_fraction x pairs) (>= 1) pairs of the blocks in scope
    (a pair = a frame block and the global block after it; blocks of other kinds count one each)."""
    names = [b.name for b in model.blocks(scope) if b.kind != "encoder"]
    pairs = max(1, len(names) // 2)
    keep = max(1, int(np.ceil(deep_fraction * pairs - 1e-9)))
    return names[-2 * keep :] if len(names) >= 2 else names


@torch.no_grad()
def scene_statistics(
    model: Any, sample: SceneSample, scope: str, deep: Sequence[str], config: NFDSConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(means [L], variances [L], feature [S-1]) of one scene: the deep blocks' input token statistics and
    the frame-to-first-frame cosine similarities of the last aggregator output."""
    x, ctx = model.capture_block_input(sample.images.unsqueeze(0).float(), scope)
    blocks = model.blocks(scope)
    means, variances = [], []
    prev_out = None
    for b in blocks:
        if b.name in deep:
            xs = x[:, :1] if config.stat_frames == "first" and b.attention == "frame" else x
            xs = xs.double()
            means.append(xs.mean().item())
            variances.append(xs.var(unbiased=False).item())
        prev_out, x = x, b.forward(x, ctx)
    last = x[0]  # [S, P, C]
    if len(blocks) >= 2 and blocks[-1].kind == "global" and blocks[-2].kind == "frame":
        last = torch.cat([prev_out[0], x[0]], dim=-1)  # VGGT's aggregator output: frame || global
    return np.array(means), np.array(variances), frame_similarity(last, config.feature)


def frame_similarity(a: torch.Tensor, feature: str = "frame_cosine") -> np.ndarray:
    """a [S, P, D] -> [S-1] similarities of frames 1..S-1 to frame 0 (see module docstring)."""
    a = a.double()
    if feature == "frame_cosine":
        flat = a.reshape(a.shape[0], -1)
        return torch.nn.functional.cosine_similarity(flat[1:], flat[:1], dim=-1).numpy()
    return torch.nn.functional.cosine_similarity(a[1:], a[:1], dim=-1).mean(dim=-1).numpy()


# --- 2. noise filter ------------------------------------------------------------------------------------


def zscore_filter(
    means: np.ndarray, variances: np.ndarray, drop_fraction: float, eps: float = 1e-6
) -> tuple[np.ndarray, np.ndarray, float]:
    """(keep mask [N], score [N], threshold T). means/variances [N, L]. Paper's rule (module docstring)."""
    zm = (means - means.mean(0)) / (means.std(0) + eps)
    zv = (variances - variances.mean(0)) / (variances.std(0) + eps)
    score = (zm**2).sum(1) + (zv**2).sum(1)
    if drop_fraction <= 0:
        return np.ones(len(score), dtype=bool), score, float("inf")
    thr = float(np.quantile(score, 1 - drop_fraction))
    return score <= thr, score, thr


def iqr_filter(
    means: np.ndarray, variances: np.ndarray, groups: Sequence[Any], k: float = 1.5, min_group: int = 4
) -> tuple[np.ndarray, list[list[str]]]:
    """(keep mask [N], reasons per sample). A sample is dropped if any deep-layer mean or standard deviation
    (sqrt of `variances`, as the authors' code) lies outside [Q1 - k IQR, Q3 + k IQR] of its group (groups
    smaller than min_group are not filtered)."""
    n = len(means)
    stds = np.sqrt(np.maximum(np.asarray(variances, dtype=np.float64), 0.0))
    reasons: list[list[str]] = [[] for _ in range(n)]
    groups = list(groups)
    for g in dict.fromkeys(groups):
        idx = np.array([i for i in range(n) if groups[i] == g])
        if len(idx) < min_group:
            continue
        for what, vals in (("mean", means[idx]), ("std", stds[idx])):
            q1, q3 = np.percentile(vals, [25, 75], axis=0)
            lo, hi = q1 - k * (q3 - q1), q3 + k * (q3 - q1)
            for row, i in enumerate(idx):
                for j in np.nonzero((vals[row] < lo) | (vals[row] > hi))[0]:
                    side = "below" if vals[row, j] < lo[j] else "above"
                    reasons[i].append(
                        f"deep layer {j} {what} {vals[row, j]:.4g} {side} [{lo[j]:.4g}, {hi[j]:.4g}]"
                    )
    return np.array([not r for r in reasons], dtype=bool), reasons


# --- 3. clustering and picking ----------------------------------------------------------------------------


def kmeans(
    features: np.ndarray, k: int, seed: int, restarts: int = 10, iters: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """(centroids [K, d], labels [N]) with K = min(k, distinct rows): scipy kmeans2 (k-means++), `restarts`
    seeded restarts, lowest inertia kept; labels renumbered 0..K-1 by first appearance."""
    from scipy.cluster.vq import ClusterError, kmeans2

    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    k = int(min(k, len(np.unique(x, axis=0))))
    if k <= 1:
        return x.mean(0, keepdims=True), np.zeros(len(x), dtype=int)
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(restarts):
        try:
            cent, lab = kmeans2(x, k, iter=iters, minit="++", missing="raise", rng=rng)
        except ClusterError:  # an emptied cluster: try another seeding
            continue
        inertia = float(((x - cent[lab]) ** 2).sum())
        if best is None or inertia < best[0]:
            best = (inertia, cent, lab)
    if best is None:
        raise ConfigError(
            f"nfds: k-means with K={k} left a cluster empty in every restart; lower num_clusters"
        )
    _, cent, lab = best
    order = list(dict.fromkeys(lab.tolist()))
    remap = {old: new for new, old in enumerate(order)}
    return cent[order], np.array([remap[v] for v in lab])


def pick_per_cluster(labels: np.ndarray, n: int, seed: int) -> list[int]:
    """Positions (into labels) of n picks: clusters take turns, largest first (ties: lower label), each turn
    one member drawn uniformly from the cluster's remaining members; exhausted clusters are skipped."""
    if n > len(labels):
        raise ConfigError(f"nfds: cannot pick {n} scenes from {len(labels)} candidates")
    rng = np.random.default_rng(seed)
    members = {c: list(rng.permutation(np.nonzero(labels == c)[0])) for c in np.unique(labels)}
    order = sorted(members, key=lambda c: (-len(members[c]), c))
    picks: list[int] = []
    while len(picks) < n:
        for c in order:
            if members[c] and len(picks) < n:
                picks.append(int(members[c].pop(0)))
    return picks


# --- the builder ------------------------------------------------------------------------------------------


@register_calibration_builder("nfds")
def build_nfds(
    pool: Sequence[SceneSample],
    n: int = 40,
    seed: int = 0,
    *,
    model: Any = None,
    scope: str = "aggregator",
    config: NFDSConfig | dict | None = None,
    **options: Any,
) -> CalibrationSet:
    """NFDS calibration set of n scenes from `pool` (module docstring).

    model: the FP GeometryModel that will be quantized (required: the statistics are its activations).
    config: NFDSConfig or dict; keyword options naming NFDSConfig fields override it; any other keyword
        (e.g. source=...) is recorded in meta, as build_random does.
    """
    pool = list(pool)
    if model is None:
        raise ConfigError(
            "calibration builder 'nfds' scores the candidate scenes with the FP model: pass model=<GeometryModel>"
        )
    check_pool(pool, n)
    fields = {f.name for f in dataclasses.fields(NFDSConfig)}
    cfg = make_config(NFDSConfig, config, what="calibration builder 'nfds'")
    overrides = {k: v for k, v in options.items() if k in fields}
    if overrides:
        cfg = make_config(
            NFDSConfig, {**dataclasses.asdict(cfg), **overrides}, what="calibration builder 'nfds'"
        )
    extra = {k: v for k, v in options.items() if k not in fields}
    cfg.check()
    frames = {s.num_frames for s in pool}
    if len(frames) != 1:
        raise ConfigError(f"nfds: pool scenes have different frame counts {sorted(frames)}; use one count")
    if frames.pop() < 2:
        raise ConfigError("nfds: the frame-aware feature needs at least 2 frames per scene")

    deep = deep_blocks(model, scope, cfg.deep_fraction)
    stats = [scene_statistics(model, s, scope, deep, cfg) for s in pool]
    means = np.stack([m for m, _, _ in stats])
    variances = np.stack([v for _, v, _ in stats])
    feats = np.stack([f for _, _, f in stats])

    scores = None
    threshold = None
    reasons: list[list[str]] = [[] for _ in pool]
    if cfg.filter == "zscore":
        keep, scores, threshold = zscore_filter(means, variances, cfg.drop_fraction, cfg.eps)
        for i in np.nonzero(~keep)[0]:
            reasons[i].append(f"z-score {scores[i]:.4g} > threshold {threshold:.4g}")
    elif cfg.filter == "iqr":
        groups = [s.meta.get(cfg.group_key, "all") for s in pool]
        keep, reasons = iqr_filter(means, variances, groups, cfg.iqr_k, cfg.iqr_min_group)
    else:
        keep = np.ones(len(pool), dtype=bool)
    kept = np.nonzero(keep)[0]
    if len(kept) < n:
        raise ConfigError(
            f"nfds: only {len(kept)} of {len(pool)} pool scenes pass the '{cfg.filter}' filter but {n} are "
            f"wanted; enlarge the pool or lower drop_fraction"
        )
    cent, labels = kmeans(feats[kept], cfg.num_clusters, seed, cfg.kmeans_restarts, cfg.kmeans_iters)
    chosen = sorted(int(kept[p]) for p in pick_per_cluster(labels, n, seed))
    cluster_of = {int(kept[p]): int(labels[p]) for p in range(len(kept))}

    def scene(i):
        return pool[i].meta.get("scene", str(i))

    per_scene = []
    for i in range(len(pool)):
        per_scene.append(
            {
                "index": i,
                "scene": scene(i),
                "deep_mean": [float(v) for v in means[i]],
                "deep_var": [float(v) for v in variances[i]],
                "score": None if scores is None else float(scores[i]),
                "kept": bool(keep[i]),
                "dropped_because": reasons[i],
                "cluster": cluster_of.get(i),
                "feature": [float(v) for v in feats[i]],
                "selected": i in chosen,
            }
        )
    meta = {
        "pool_size": len(pool),
        "config": dataclasses.asdict(cfg),
        "deep_blocks": deep,
        "filter": {
            "rule": cfg.filter,
            "threshold": threshold,
            "kept": int(keep.sum()),
            "dropped": [
                {"index": int(i), "scene": scene(i), "why": reasons[i]} for i in np.nonzero(~keep)[0]
            ],
        },
        "clusters": {
            "k": int(len(cent)),
            "sizes": [int((labels == c).sum()) for c in range(len(cent))],
            "centroids": [[float(v) for v in c] for c in cent],
        },
        "selected": [{"index": i, "scene": scene(i), "cluster": cluster_of[i]} for i in chosen],
        "per_scene": per_scene,
        **extra,
    }
    return CalibrationSet([pool[i] for i in chosen], builder="nfds", seed=seed, meta=meta)
