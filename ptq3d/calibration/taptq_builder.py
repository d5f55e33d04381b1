"""TAPTQ's progressive coarse-to-fine calibration construction (builder "taptq").

From a candidate pool of scenes, with the FP model:
1. Coarse (statistical purity): score every scene by the stability of its activations across layers and
   drop the least stable (1 - keep_ratio) fraction.
   - "layer_variance" (bolli03/TAPTQ `PTQ/test_filter.py`): the variance across the block outputs of every
     token element, averaged over tokens and channels (higher = less stable).
   - "tail_ratio": the mean over blocks of max|x| / std(x) of the block output (an outlier statistic).
2. Fine (geometric representativeness): embed each surviving scene by its camera-token trajectory, the
   `embed_token` token of every frame at the output of block `embed_block`, each frame L2-normalised, frames
   concatenated ([S * C]); K-Means (k-means++, `n_init` restarts, seeded) with `num_clusters` clusters
   (default = the budget n), then "medoid" (the scene nearest each centroid, largest clusters first) or
   "proportional" (slots shared out by cluster size, nearest-to-centroid scenes first within a cluster).
   Slots left over (empty clusters) go to the scene farthest from those already chosen.

This is a reconstruction (shared/notes/methods.md section 4.3): the repo has only the exploratory scripts
(camera tokens of the last aggregator layer + K-Means with K = 4, n_init 10, seed 42; a 90 % stability filter);
the exact statistic, K and selection rule of the paper are not recoverable. All of them are config fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ptq3d.calibration.builders import register_calibration_builder
from ptq3d.calibration.sets import CalibrationSet, check_pool
from ptq3d.datasets.base import SceneSample
from ptq3d.errors import ConfigError
from ptq3d.typed_config import make_config

STATISTICS = ("layer_variance", "tail_ratio")
SELECTIONS = ("medoid", "proportional")


@dataclass
class TAPTQCalibConfig:
    """statistic: coarse score ("layer_variance" | "tail_ratio"); keep_ratio: fraction kept by the coarse stage
    (at least the budget n is always kept); scope: block scope whose outputs are scored and embedded;
    embed_block: block index (in scope) of the camera tokens (-1 = last); embed_token: token index within a
    frame (0 = VGGT's camera token / Pi3's first register token); num_clusters: K (None = budget n);
    selection: "medoid" | "proportional"; n_init: K-Means restarts."""

    statistic: str = "layer_variance"
    keep_ratio: float = 0.9
    scope: str = "aggregator"
    embed_block: int = -1
    embed_token: int = 0
    num_clusters: int | None = None
    selection: str = "medoid"
    n_init: int = 10

    def validate(self) -> None:
        if self.statistic not in STATISTICS:
            raise ConfigError(
                f"taptq calibration statistic '{self.statistic}': expected one of {', '.join(STATISTICS)}"
            )
        if self.selection not in SELECTIONS:
            raise ConfigError(
                f"taptq calibration selection '{self.selection}': expected one of {', '.join(SELECTIONS)}"
            )
        if not 0 < self.keep_ratio <= 1:
            raise ConfigError(f"taptq calibration keep_ratio={self.keep_ratio}: must be in (0, 1]")
        if self.num_clusters is not None and self.num_clusters < 1:
            raise ConfigError(f"taptq calibration num_clusters={self.num_clusters}: must be >= 1")
        if self.n_init < 1:
            raise ConfigError(f"taptq calibration n_init={self.n_init}: must be >= 1")


# --- statistics ------------------------------------------------------------------------------------


def layer_variance(outputs: Sequence[torch.Tensor]) -> float:
    """Mean over token elements of the variance across layers; outputs: L block outputs of one scene, same shape."""
    stack = torch.stack([o.double() for o in outputs])  # [L, ...]
    return float(stack.var(dim=0, unbiased=False).mean())


def tail_ratio(outputs: Sequence[torch.Tensor]) -> float:
    """Mean over layers of max|x| / std(x) of the block output."""
    return float(np.mean([float(o.abs().max() / o.double().std().clamp_min(1e-12)) for o in outputs]))


@torch.no_grad()
def scene_features(model, scene: SceneSample, cfg: TAPTQCalibConfig) -> tuple[float, np.ndarray]:
    """(coarse score, camera-token trajectory embedding [S * C]) of one scene under the FP model."""
    x, ctx = model.capture_block_input(scene.images.unsqueeze(0).float(), cfg.scope)
    outs = []
    for blk in model.blocks(cfg.scope):
        x = blk.forward(x, ctx)
        outs.append(x[0])  # [S, P, C]
    same = [o for o in outs if o.shape == outs[-1].shape]  # encoder blocks have their own token layout
    score = (layer_variance if cfg.statistic == "layer_variance" else tail_ratio)(same)
    try:
        tok = outs[cfg.embed_block][:, cfg.embed_token].double()  # [S, C]
    except IndexError as exc:
        raise ConfigError(
            f"taptq calibration embed_block={cfg.embed_block} / embed_token={cfg.embed_token}: {exc}"
        ) from exc
    tok = tok / tok.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return score, tok.reshape(-1).numpy()


# --- selection -------------------------------------------------------------------------------------


def coarse_filter(scores: Sequence[float], keep_ratio: float, min_keep: int) -> list[int]:
    """Indices (in pool order) of the max(min_keep, ceil(keep_ratio * N)) scenes with the lowest score."""
    n = len(scores)
    k = min(n, max(min_keep, int(np.ceil(keep_ratio * n))))
    order = np.argsort(np.asarray(scores), kind="stable")
    return sorted(int(i) for i in order[:k])


def kmeans(data: np.ndarray, k: int, seed: int, n_init: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """K-Means (scipy kmeans2, k-means++ init) with n_init seeded restarts; the lowest inertia wins.
    data [N, D] -> (centroids [k, D], labels [N])."""
    from scipy.cluster.vq import kmeans2

    best = None
    rng = np.random.default_rng(seed)
    for _ in range(n_init):
        cent, lab = kmeans2(data, k, minit="++", seed=rng, iter=50)
        inertia = float(((data - cent[lab]) ** 2).sum())
        if best is None or inertia < best[0]:
            best = (inertia, cent, lab)
    return best[1], best[2]


def select_representatives(
    emb: np.ndarray,
    n: int,
    seed: int,
    num_clusters: int | None = None,
    selection: str = "medoid",
    n_init: int = 10,
) -> tuple[list[int], np.ndarray]:
    """n rows of emb [N, D] representing its clusters (see module docstring). -> (sorted indices, labels [N])."""
    N = emb.shape[0]
    if n >= N:
        return list(range(N)), np.zeros(N, dtype=int)
    k = min(N, num_clusters or n)
    cent, lab = kmeans(emb, k, seed, n_init)
    dist = np.linalg.norm(emb - cent[lab], axis=1)
    sizes = np.bincount(lab, minlength=k)
    clusters = [c for c in np.argsort(-sizes, kind="stable") if sizes[c] > 0]
    if selection == "medoid":
        quota = {c: 1 for c in clusters}
    else:  # proportional: largest remainders
        raw = sizes / sizes.sum() * n
        quota = {c: int(np.floor(raw[c])) for c in clusters}
        for c in sorted(clusters, key=lambda c: -(raw[c] - np.floor(raw[c]))):
            if sum(quota.values()) >= n:
                break
            quota[c] += 1
    chosen: list[int] = []
    for c in clusters:
        members = np.where(lab == c)[0]
        members = members[np.argsort(dist[members], kind="stable")]
        chosen.extend(int(i) for i in members[: quota[c]])
    chosen = chosen[:n]
    while len(chosen) < n:  # farthest-point fill for empty clusters
        rest = [i for i in range(N) if i not in chosen]
        d = [min(np.linalg.norm(emb[i] - emb[j]) for j in chosen) if chosen else 0.0 for i in rest]
        chosen.append(rest[int(np.argmax(d))])
    return sorted(chosen), lab


@register_calibration_builder("taptq")
def build_taptq(
    pool: Sequence[SceneSample],
    n: int,
    seed: int = 0,
    model: Any = None,
    config: TAPTQCalibConfig | dict | None = None,
    **meta: Any,
) -> CalibrationSet:
    """TAPTQ coarse-to-fine calibration set of n scenes from `pool`, scored with the FP GeometryModel `model`.

    All pool scenes must have the same frame count (the trajectory embeddings are concatenated per frame).
    meta records the scores, the kept scenes, the cluster labels and the selection.
    """
    cfg = make_config(TAPTQCalibConfig, config, what="calibration builder 'taptq'")
    cfg.validate()
    pool = list(pool)
    if model is None:
        raise ConfigError("calibration builder 'taptq' needs the FP model (pass model=GeometryModel)")
    check_pool(pool, n)
    frames = {s.num_frames for s in pool}
    if len(frames) != 1:
        raise ConfigError(
            f"calibration builder 'taptq': pool scenes have different frame counts {sorted(frames)}"
        )
    scores, embs = zip(*(scene_features(model, s, cfg) for s in pool), strict=True)
    kept = coarse_filter(scores, cfg.keep_ratio, n)
    sel, labels = select_representatives(
        np.stack([embs[i] for i in kept]), n, seed, cfg.num_clusters, cfg.selection, cfg.n_init
    )
    chosen = [kept[i] for i in sel]
    return CalibrationSet(
        [pool[i] for i in chosen],
        builder="taptq",
        seed=seed,
        meta={
            "pool_size": len(pool),
            "config": asdict(cfg),
            "model": getattr(model, "name", type(model).__name__),
            "scores": [float(s) for s in scores],
            "kept": kept,
            "clusters": [int(c) for c in labels],
            "selected": chosen,
            **meta,
        },
    )
