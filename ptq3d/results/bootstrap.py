"""Paired bootstrap over scenes: one set of scene resamples shared by every series, so differences between
methods (and from FP) are judged on the same scenes.

`paired_bootstrap(data, statistic)`: `data` maps a stratum (e.g. a protocol) to an array [..., n_scenes] of
per-scene values (methods, FP and weights stacked on the leading axes). For every stratum the scene indices
are drawn once, [n_resamples, n_scenes], and applied to every series of that stratum; strata are drawn
independently from one generator, in key order. With one stratum the draw is exactly scipy.stats.bootstrap's
(`paired=True`, same `rng` seed: `rng.integers(0, n, (n_resamples, n))`), and the interval is the same
percentile interval (scipy.stats.quantile of the bootstrap distribution), which tests/reports check.

`statistic(resampled)` gets {stratum: array [..., B, n]} and returns an array [k, B] (or [B]); the estimate is
the statistic of the original scenes. Percentile intervals; standard error = std (ddof=1) of the distribution.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

N_RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass
class BootstrapResult:
    """estimate, low, high, se: [k] (or scalars for a scalar statistic); distribution: [k, B]."""

    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    se: np.ndarray
    distribution: np.ndarray


def resample_indices(n: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Scene indices [n_resamples, n] drawn with replacement (scipy.stats.bootstrap's draw)."""
    return rng.integers(0, n, (n_resamples, n))


def percentile_interval(
    distribution: np.ndarray, confidence: float = CONFIDENCE
) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) over the last axis, as scipy.stats.bootstrap(method="percentile") computes them."""
    from scipy import stats

    alpha = (1 - confidence) / 2
    q = stats.quantile(np.asarray(distribution, dtype=np.float64), np.array([alpha, 1 - alpha]), axis=-1)
    return q[..., 0], q[..., 1]


def paired_bootstrap(
    data: Mapping[str, np.ndarray],
    statistic: Callable[[dict[str, np.ndarray]], np.ndarray],
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> BootstrapResult:
    """Bootstrap `statistic` over scenes, resampling each stratum's scenes once for all its series."""
    if not data:
        raise ValueError("paired_bootstrap: no data")
    rng = np.random.default_rng(seed)
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in sorted(data.items())}
    resampled = {}
    for key, arr in arrays.items():
        n = arr.shape[-1]
        if n < 2:
            raise ValueError(
                f"paired_bootstrap: stratum '{key}' has {n} scene(s); resampling needs 2 or more"
            )
        idx = resample_indices(n, n_resamples, rng)
        resampled[key] = arr[..., idx]  # [..., B, n]
    dist = np.asarray(statistic(resampled), dtype=np.float64)
    est = np.asarray(statistic({k: v[..., None, :] for k, v in arrays.items()}), dtype=np.float64)[..., 0]
    low, high = percentile_interval(dist, confidence)
    se = dist.std(axis=-1, ddof=1)
    return BootstrapResult(est, low, high, se, dist)


def paired_mean_difference(
    a: np.ndarray,
    b: np.ndarray,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> BootstrapResult:
    """Bootstrap of mean(a) - mean(b) for per-scene values a, b [n] of the same scenes (a paired test: the
    difference is significant at `confidence` when [low, high] excludes 0)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_mean_difference: a {a.shape} and b {b.shape} must be the same 1-d shape")

    def diff(r: dict[str, np.ndarray]) -> np.ndarray:
        x = r["scenes"]
        return x[0].mean(axis=-1) - x[1].mean(axis=-1)

    return paired_bootstrap({"scenes": np.stack([a, b])}, diff, n_resamples, confidence, seed)
