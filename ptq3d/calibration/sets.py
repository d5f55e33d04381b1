"""Calibration sets: the scenes a method calibrates on, how they were chosen, and the built-in pools.

CalibrationSet carries its samples with the builder, seed and a content hash (for provenance and cache keys);
builders (random here; NFDS and TAPTQ's coarse-to-fine in their own files) are registered in
ptq3d.calibration.builders.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ptq3d.calibration.builders import register_calibration_builder
from ptq3d.datasets.base import SceneSample
from ptq3d.errors import ConfigError


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
