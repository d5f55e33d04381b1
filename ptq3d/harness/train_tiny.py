"""Training of the bundled default model `vggt-tiny-synthetic` (a tiny VGGT, same architecture code as VGGT-1B)
on procedurally generated multi-view scenes, and its held-out evaluation.

Data: a pool of scenes from `ptq3d.datasets.synthetic` with TRAINING seeds only (seed = `pool_seed_base + i`,
inside `TRAIN_SEEDS`), each with `pool_frames` views and its own randomised camera / scene configuration
(`random_scene_configs`). A step draws B scenes and S views of each, with a per-view colour jitter. The first
(reference) view is path frame 0 and the others a random subset, sorted along the path or shuffled
(`anchor_first_view`; off: a random subset, the first drawn view being the reference).

Why rooms with compass walls and an anchored first view: every training and held-out room has walls whose
colour is fixed by the direction they face (`SceneConfig.compass_walls`), and path frame 0 looks from azimuth 0
(`CameraConfig.first_azimuth_deg`), so the first camera's frame is (up to its elevation, roll and look-at
jitter) a fixed frame of the room, and a single view tells its pose relative to it. A from-scratch model this
small does not learn cross-view correspondence on a CPU budget: on rooms with random walls and a random start,
eight runs of 1500 steps (camera weight 5, learning rate 4e-4 or 1e-3, 2-8 views, a small-baseline curriculum,
smooth paths, head width 32 or 64) all collapsed to about one relative pose for every non-first view, and on a
toy task (two copies of one image, the second rolled by 1-3 patches) the relative yaw was not learned in 1000
steps. VGGT-1B starts from pretrained DINOv2 features and trains on many GPUs for days. With these per-view cues
the predicted poses already follow the views after 800 steps; the camera head still reads the aggregator's camera
tokens, so quantizing the aggregator moves them.

Ground truth is normalised as VGGT does (training/train_utils/normalization.py): everything is expressed in the
first camera's frame and divided by the average distance of the valid world points to that camera, so the
model predicts scale-normalised depth, points and translations.

Losses (VGGT paper section 3.3, our own formulation):
- camera: L1 on the pose encoding absT_quaR_FoV, over the camera head's refinement iterations weighted by
  gamma^(n-1-k) (gamma = 0.6, normalised to sum 1); FoV terms weighted 0.5; the camera loss weighted 5 against
  1 for depth and points, as VGGT's training configuration does.
- depth / points: aleatoric confidence regression, mean over valid pixels of conf * |pred - gt| - alpha log conf
  (|.| = Euclidean norm over channels), plus the same conf-weighted term on first differences along x and y
  (the gradient term).
Optimiser: AdamW (betas 0.9 / 0.95, weight decay 0.05 on matrices only), linear warm-up then cosine decay,
gradient clipping at 1. Seeded (torch, numpy); runs in float32 on one CPU thread by default.

Evaluation: `TINY_HELDOUT_PROTOCOL` ("synthetic-heldout-112" v2): held-out seeds (never used for training), the
generator's default cameras (orbit over 90 degrees, 8 ordered views) starting at azimuth 0 and its default
scenes with compass walls, at the training resolution 112 x 112. `evaluate` scores the FP model, the trivial
predictors (`trivial_predictions`) and, where asked, a quantized copy, with the metrics' default AlignmentPolicy.

Sinks variant (`vggt-tiny-synthetic-sinks`): `finetune_sinks` plants massive activations on the special tokens
(ptq3d.models.bundled.sinks) and fine-tunes with the same data and losses; `token_type_statistics`,
`weight_column_norm_ratios` and `sinks_card_numbers` measure its model card. Command line:
`python -m ptq3d.harness.train_tiny sinks` (the weights) and `... sinks-card` (the card's JSON).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ptq3d.datasets.base import SceneSample
from ptq3d.datasets.protocols import get_protocol, load_protocol_scenes
from ptq3d.datasets.synthetic import TRAIN_SEEDS, CameraConfig, SceneConfig, generate_scene, is_heldout_seed
from ptq3d.errors import ConfigError
from ptq3d.models.base import GeometryModel, Predictions
from ptq3d.models.bundled import VGGT_TINY_SYNTHETIC_IMAGE_SIZE, vggt_tiny_synthetic_config
from ptq3d.models.vggt import VGGT
from ptq3d.models.vggt.pose import extri_intri_to_pose_encoding

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- protocol
TINY_HELDOUT_PROTOCOL = get_protocol("synthetic-heldout-112")  # registered in ptq3d.datasets.protocols


# ---------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class TrainConfig:
    """One training run. frames: (min, max) views per scene in a step; frames_per_step: B = max(1, this // S)
    scenes per step; pool_*: the generated training scenes (pool_scenes scenes of pool_frames views)."""

    steps: int = 7000
    seed: int = 0
    lr: float = 4e-4
    min_lr_ratio: float = 0.02
    warmup_steps: int = 150
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    frames: tuple[int, int] = (3, 8)
    frames_per_step: int = 12
    shuffle_prob: float = 0.3  # probability of shuffling the view order rather than keeping the path order
    pool_scenes: int = 800
    pool_frames: int = 12
    pool_seed_base: int = 0
    image_size: tuple[int, int] = VGGT_TINY_SYNTHETIC_IMAGE_SIZE
    conf_alpha: float = 0.2
    camera_gamma: float = 0.6
    fov_weight: float = 0.5
    grad_loss_weight: float = 1.0
    camera_weight: float = 5.0  # VGGT's training configuration weights the camera loss 5x
    depth_weight: float = 1.0
    point_weight: float = 1.0
    colour_jitter: float = 0.15
    # the reference view of every draw is path frame 0 (it faces the room's -z); False: any view of the path
    anchor_first_view: bool = True
    threads: int = 1
    log_every: int = 25
    checkpoint_every_s: float = 300.0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"train-tiny: steps must be >= 1, got {self.steps}")
        lo, hi = self.frames
        if not 2 <= lo <= hi <= self.pool_frames:
            raise ConfigError(
                f"train-tiny: frames {self.frames} must satisfy 2 <= min <= max <= {self.pool_frames}"
            )
        last = self.pool_seed_base + self.pool_scenes - 1
        if self.pool_seed_base not in TRAIN_SEEDS or last not in TRAIN_SEEDS:
            raise ConfigError(
                f"train-tiny: pool seeds {self.pool_seed_base}..{last} leave the training seed range"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- data
def random_scene_configs(seed: int) -> tuple[CameraConfig, SceneConfig]:
    """The randomised camera and scene configuration of training scene `seed` (its own random stream)."""
    rng = np.random.default_rng([seed, 7])
    d0 = rng.uniform(1.8, 2.8)
    fov0 = rng.uniform(45.0, 70.0)
    camera = CameraConfig(
        mode="forward" if rng.random() < 0.2 else "orbit",
        distance=(d0, d0 + rng.uniform(0.2, 1.0)),
        azimuth_span_deg=float(rng.uniform(45.0, 150.0)),
        elevation_deg=(float(rng.uniform(0.0, 15.0)), float(rng.uniform(25.0, 45.0))),
        roll_deg=float(rng.uniform(0.0, 10.0)),
        baseline=float(rng.uniform(0.5, 2.0)),
        target_jitter=float(rng.uniform(0.1, 0.4)),
        fov_deg=(fov0, fov0 + 15.0),
        first_azimuth_deg=0.0,
    )
    sides = ("ceiling", "+x", "-x", "+z", "-z")
    open_sides = tuple(s for s in sides if rng.random() < 0.1)
    scene = SceneConfig(
        num_boxes=(0, int(rng.integers(1, 5))),
        num_spheres=(0, int(rng.integers(1, 5))),
        open_sides=open_sides,
        compass_walls=True,
    )
    return camera, scene


def _generate_pool_scene(args: tuple[int, int, int, int]) -> dict[str, np.ndarray]:
    seed, frames, height, width = args
    camera, scene = random_scene_configs(seed)
    s = generate_scene(seed, num_frames=frames, height=height, width=width, camera=camera, scene=scene)
    return {
        "images": np.clip(np.rint(s.images.numpy() * 255), 0, 255).astype(
            np.uint8
        ),  # as the protocols' uint8 I/O
        "depth": s.depth.numpy(),
        "intrinsics": s.intrinsics.numpy(),
        "extrinsics": s.extrinsics.numpy(),
    }


@dataclass
class ScenePool:
    """Generated training scenes. images uint8 [N, F, 3, H, W]; depth float32 [N, F, H, W] (0 = invalid);
    intrinsics [N, F, 3, 3]; extrinsics [N, F, 3, 4] (OpenCV camera-from-world, world = generator frame)."""

    images: torch.Tensor
    depth: torch.Tensor
    intrinsics: torch.Tensor
    extrinsics: torch.Tensor
    seeds: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])


def pool_key(cfg: TrainConfig) -> str:
    spec = (cfg.pool_seed_base, cfg.pool_scenes, cfg.pool_frames, cfg.image_size, "v2-compass-anchored")
    return hashlib.sha256(repr(spec).encode()).hexdigest()[:12]


def build_pool(cfg: TrainConfig, workers: int = 1, cache_dir: str | Path | None = None) -> ScenePool:
    """Generate (or read from `cache_dir`) the training pool. Every seed is checked to be a training seed."""
    from safetensors.torch import load_file, save_file

    seeds = [cfg.pool_seed_base + i for i in range(cfg.pool_scenes)]
    if any(is_heldout_seed(s) for s in seeds):  # __post_init__ guarantees this; kept as the contract's guard
        raise ConfigError("train-tiny: a pool seed is a held-out seed")
    cache = Path(cache_dir) / f"pool-{pool_key(cfg)}.safetensors" if cache_dir else None
    if cache is not None and cache.is_file():
        t = load_file(str(cache))
        log.info("training pool read from %s", cache)
        return ScenePool(t["images"], t["depth"], t["intrinsics"], t["extrinsics"], seeds)
    H, W = cfg.image_size
    jobs = [(s, cfg.pool_frames, H, W) for s in seeds]
    t0 = time.perf_counter()
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as p:
            rows = p.map(_generate_pool_scene, jobs, chunksize=8)
    else:
        rows = [_generate_pool_scene(j) for j in jobs]
    pool = ScenePool(
        *(
            torch.from_numpy(np.stack([r[k] for r in rows]))
            for k in ("images", "depth", "intrinsics", "extrinsics")
        ),
        seeds=seeds,
    )
    log.info("generated %d training scenes in %.0f s", len(seeds), time.perf_counter() - t0)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"images": pool.images, "depth": pool.depth, "intrinsics": pool.intrinsics}
        save_file({**tensors, "extrinsics": pool.extrinsics}, str(cache))
    return pool


def relative_to_first(extrinsics: torch.Tensor) -> torch.Tensor:
    """extrinsics [..., S, 3, 4] camera-from-world -> [..., S, 3, 4] camera-from-first-camera:
    R_i R_0^T and t_i - R_i R_0^T t_0 (the first camera becomes the identity)."""
    R, t = extrinsics[..., :3], extrinsics[..., 3]
    R0, t0 = R[..., :1, :, :], t[..., :1, :]
    Rn = R @ R0.transpose(-1, -2)
    tn = t - (Rn @ t0[..., None])[..., 0]
    return torch.cat([Rn, tn[..., None]], dim=-1)


def first_camera_normalisation(
    depth: torch.Tensor, intrinsics: torch.Tensor, extrinsics: torch.Tensor
) -> dict[str, torch.Tensor]:
    """VGGT's GT normalisation for one batch.

    depth [B, S, H, W] (0 = invalid), intrinsics [B, S, 3, 3] (pixel centres at +0.5), extrinsics [B, S, 3, 4]
    camera-from-world. Returns, with world = the first camera and lengths divided by the per-scene average
    distance of the valid points to that camera: depth [B, S, H, W], points [B, S, H, W, 3], valid [B, S, H, W],
    extrinsics [B, S, 3, 4], pose_enc [B, S, 9] (absT_quaR_FoV), scale [B] (the divisor, in metres).
    """
    B, S, H, W = depth.shape
    valid = depth > 0
    v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    K = intrinsics
    x = (u - K[..., 0, 2, None, None]) / K[..., 0, 0, None, None] * depth
    y = (v - K[..., 1, 2, None, None]) / K[..., 1, 1, None, None] * depth
    cam = torch.stack([x, y, depth], dim=-1)  # [B, S, H, W, 3] in each camera's frame
    R, t = extrinsics[..., :3], extrinsics[..., 3]
    R0, t0 = R[:, :1], t[:, :1]
    # camera i -> camera 0: X0 = R0 R_i^T (X_i - t_i) + t0
    Ri0 = R0 @ R.transpose(-1, -2)  # [B, S, 3, 3]
    pts = torch.einsum("bsij,bshwj->bshwi", Ri0, cam - t[:, :, None, None, :]) + t0[:, :, None, None, :]
    dist = pts.norm(dim=-1) * valid
    scale = dist.sum((1, 2, 3)) / valid.sum((1, 2, 3)).clamp_min(1)
    scale = scale.clamp_min(1e-6)
    rel = relative_to_first(extrinsics)
    ext = torch.cat([rel[..., :3], rel[..., 3:] / scale[:, None, None, None]], dim=-1)
    s4 = scale[:, None, None, None]
    return {
        "depth": depth / s4,
        "points": pts / s4[..., None] * valid[..., None],
        "valid": valid,
        "extrinsics": ext,
        "pose_enc": extri_intri_to_pose_encoding(ext, intrinsics, (H, W)),
        "scale": scale,
    }


class BatchSampler:
    """Seeded draws of training batches from a ScenePool (see module docstring)."""

    def __init__(self, pool: ScenePool, cfg: TrainConfig, seed: int):
        self.pool, self.cfg = pool, cfg
        self.rng = np.random.default_rng([seed, 11])

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def draw(self) -> dict[str, torch.Tensor]:
        """-> images [B, S, 3, H, W] float in [0, 1], the normalised GT (first_camera_normalisation) and the
        path frames drawn, views [B, S]."""
        cfg, rng = self.cfg, self.rng
        S = int(rng.integers(cfg.frames[0], cfg.frames[1] + 1))
        B = min(max(1, cfg.frames_per_step // S), len(self.pool))
        scenes = rng.choice(len(self.pool), B, replace=False)
        idx = []
        first = np.zeros(1 if cfg.anchor_first_view else 0, dtype=np.int64)  # path frame 0, when anchored
        for _ in range(B):
            rest = len(first) + rng.choice(cfg.pool_frames - len(first), S - len(first), replace=False)
            idx.append(np.concatenate([first, rest if rng.random() < cfg.shuffle_prob else np.sort(rest)]))
        si = torch.as_tensor(scenes)[:, None]
        vi = torch.as_tensor(np.stack(idx))
        images = self.pool.images[si, vi].float() / 255.0
        if cfg.colour_jitter > 0:  # per-view brightness and per-channel gain
            j = cfg.colour_jitter
            gain = 1 + rng.uniform(-j, j, (B, S, 1, 1, 1)) + rng.uniform(-j / 3, j / 3, (B, S, 3, 1, 1))
            images = (images * torch.from_numpy(gain).float()).clamp(0, 1)
        gt = first_camera_normalisation(
            self.pool.depth[si, vi], self.pool.intrinsics[si, vi], self.pool.extrinsics[si, vi]
        )
        return {"images": images, **gt, "views": vi}


# ---------------------------------------------------------------------------------------------- losses
def camera_loss(
    pose_list: list[torch.Tensor], gt_pose: torch.Tensor, gamma: float, fov_weight: float
) -> dict:
    """pose_list: the camera head's iterations, each [B, S, 9]; gt_pose [B, S, 9]. Returns loss terms."""
    n = len(pose_list)
    weights = torch.tensor([gamma ** (n - 1 - k) for k in range(n)])
    weights = weights / weights.sum()
    terms = {"T": 0.0, "R": 0.0, "FoV": 0.0}
    for w, pred in zip(weights, pose_list, strict=True):
        terms["T"] = terms["T"] + w * (pred[..., :3] - gt_pose[..., :3]).abs().mean()
        terms["R"] = terms["R"] + w * (pred[..., 3:7] - gt_pose[..., 3:7]).abs().mean()
        terms["FoV"] = terms["FoV"] + w * (pred[..., 7:] - gt_pose[..., 7:]).abs().mean()
    total = terms["T"] + terms["R"] + fov_weight * terms["FoV"]
    return {"camera": total, **{f"camera_{k}": v for k, v in terms.items()}}


def confidence_regression(
    pred: torch.Tensor,
    gt: torch.Tensor,
    conf: torch.Tensor,
    valid: torch.Tensor,
    alpha: float,
    grad_weight: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """pred, gt [B, S, H, W, C]; conf [B, S, H, W] (>= 1); valid [B, S, H, W] bool.
    Returns (conf-weighted regression with the -alpha log conf term, conf-weighted gradient term)."""
    diff = pred - gt
    err = diff.norm(dim=-1)
    m = valid.float()
    n = m.sum().clamp_min(1)
    reg = ((conf * err - alpha * torch.log(conf)) * m).sum() / n
    grad = pred.new_zeros(())
    if grad_weight > 0:
        for dim in (2, 3):  # rows (y), columns (x)
            L = diff.shape[dim]
            d = diff.narrow(dim, 1, L - 1) - diff.narrow(dim, 0, L - 1)
            mv = (valid.narrow(dim, 1, L - 1) & valid.narrow(dim, 0, L - 1)).float()
            c = conf.narrow(dim, 0, L - 1)
            grad = grad + (c * d.norm(dim=-1) * mv).sum() / mv.sum().clamp_min(1)
    return reg, grad


def vggt_losses(out: dict, batch: dict, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """All loss terms of one step and their weighted sum under 'total'."""
    losses = camera_loss(out["pose_enc_list"], batch["pose_enc"], cfg.camera_gamma, cfg.fov_weight)
    valid = batch["valid"]
    d_reg, d_grad = confidence_regression(
        out["depth"],
        batch["depth"][..., None],
        out["depth_conf"],
        valid,
        cfg.conf_alpha,
        cfg.grad_loss_weight,
    )
    p_reg, p_grad = confidence_regression(
        out["world_points"],
        batch["points"],
        out["world_points_conf"],
        valid,
        cfg.conf_alpha,
        cfg.grad_loss_weight,
    )
    losses.update(depth=d_reg, depth_grad=d_grad, point=p_reg, point_grad=p_grad)
    losses["total"] = (
        cfg.camera_weight * losses["camera"]
        + cfg.depth_weight * (d_reg + cfg.grad_loss_weight * d_grad)
        + cfg.point_weight * (p_reg + cfg.grad_loss_weight * p_grad)
    )
    return losses


# ---------------------------------------------------------------------------------------------- training
def init_weights(model: VGGT) -> None:
    """ViT initialisation of the transformer linears (truncated normal, std 0.02; zero bias), as DINOv2 and
    VGGT train from; convolutions keep PyTorch's defaults."""
    for mod in model.modules():
        if isinstance(mod, nn.Linear):
            nn.init.trunc_normal_(mod.weight, std=0.02)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr * min_lr_ratio at cfg.steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def save_weights(model: VGGT, path: str | Path, metadata: dict | None = None) -> Path:
    """Model state_dict as float32 safetensors (metadata: string values only)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={k: str(v) for k, v in (metadata or {}).items()})
    return path


def export_fp16(src: str | Path, dst: str | Path) -> Path:
    """Re-save a weights file with float16 tensors (the bundled file's storage; load_model casts back to the
    model's float32, so the bundled model IS the fp16-rounded weights: its model card is measured on them)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata() or {})
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(str(src)).items()}
    too_big = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if too_big:
        raise ConfigError(f"{src}: tensors {too_big[:3]} overflow float16")
    dst = Path(dst)
    save_file(state, str(dst), metadata={**meta, "storage": "float16"})
    return dst


@dataclass
class TrainResult:
    weights: Path
    steps: int
    wall_s: float
    pool_s: float
    history: list[dict]


def _seeded_pool(out, work_dir, cfg, workers: int):
    """(out, work dir, scene pool, seconds to build it) for a training run: the work dir (default beside `out`)
    created, torch and numpy seeded with cfg.seed, then the pool built (cached in the work dir)."""
    out = Path(out)
    work = Path(work_dir) if work_dir else out.parent / (out.stem + "_work")
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    t_pool = time.perf_counter()
    pool = build_pool(cfg, workers=workers, cache_dir=work)
    return out, work, pool, time.perf_counter() - t_pool


def train(
    cfg: TrainConfig,
    out: str | Path,
    work_dir: str | Path | None = None,
    device: str = "cpu",
    workers: int = 1,
    resume: bool = True,
) -> TrainResult:
    """Train the bundled configuration from scratch (or resume `work_dir/checkpoint.pt`); write the final weights
    to `out` (safetensors). work_dir (default: beside `out`) holds the pool cache, the checkpoint, partial weights
    (`partial.safetensors`, refreshed with every checkpoint) and the log `train_log.jsonl`."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train-tiny: --device cuda asked for, but no CUDA device is available")
    if device == "cpu":
        torch.set_num_threads(cfg.threads)
    out, work, pool, pool_s = _seeded_pool(out, work_dir, cfg, workers)

    model = VGGT(vggt_tiny_synthetic_config())
    init_weights(model)
    model.to(device)
    wall, history = _fit(model, cfg, pool, work, device, resume, cfg.to_dict())
    meta = {
        "model": "vggt-tiny-synthetic",
        "steps": cfg.steps,
        "seed": cfg.seed,
        "train_wall_s": round(wall, 1),
    }
    save_weights(model, out, meta)
    return TrainResult(out, cfg.steps, wall, pool_s, history)


def _fit(
    model: VGGT,
    cfg: TrainConfig,
    pool: ScenePool,
    work: Path,
    device: str,
    resume: bool,
    run_config: dict,
    after_step=None,
    stop_after: int | None = None,
) -> tuple[float, list[dict]]:
    """The optimisation loop of `train` and `finetune_sinks`: cfg.steps AdamW steps on draws from `pool`, with
    checkpoints (`work/checkpoint.pt`, `work/partial.safetensors`) every cfg.checkpoint_every_s and the log
    `work/train_log.jsonl`. A checkpoint resumes only a run of the same `run_config`. after_step(model), if
    given, runs after every optimiser step (finetune_sinks: re-write the held-fixed entries).
    stop_after: end after this many steps of the cfg.steps schedule (the learning rate follows cfg.steps).
    Returns (training wall seconds, logged rows); leaves `model` in eval mode."""
    stop = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    model.train()
    opt = make_optimizer(model, cfg)
    sampler = BatchSampler(pool, cfg, cfg.seed)
    start, elapsed_before = 0, 0.0
    ckpt = work / "checkpoint.pt"
    log_path = work / "train_log.jsonl"
    if resume and ckpt.is_file():
        state = torch.load(
            ckpt, map_location=device, weights_only=False
        )  # our own file: optimizer + rng state
        if state["config"] != run_config:
            raise ConfigError(
                f"{ckpt}: checkpoint was made with another configuration; delete it or pass --no-resume"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sampler.set_state(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        start, elapsed_before = state["step"], state["elapsed_s"]
        log.info("resumed from %s at step %d", ckpt, start)
    elif log_path.exists():
        log_path.unlink()

    def checkpoint(step: int, elapsed: float) -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "sampler": sampler.state(),
                "torch_rng": torch.get_rng_state(),
                "step": step,
                "elapsed_s": elapsed,
                "config": run_config,
            },
            tmp,
        )
        os.replace(tmp, ckpt)
        save_weights(model, work / "partial.safetensors", {"step": step})

    history: list[dict] = []
    t0 = time.perf_counter()
    last_ckpt = t0
    running: dict[str, float] = {}
    with log_path.open("a") as logf:
        for step in range(start, stop):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            batch = {k: v.to(device) for k, v in sampler.draw().items()}
            raw = model(batch["images"])
            losses = vggt_losses(raw, batch, cfg)
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            if after_step is not None:
                after_step(model)
            for k, v in losses.items():
                running[k] = running.get(k, 0.0) + float(v.detach())
            running["grad_norm"] = running.get("grad_norm", 0.0) + float(gnorm)
            n_done = step + 1
            if n_done % cfg.log_every == 0 or n_done == stop:
                k = cfg.log_every if n_done % cfg.log_every == 0 else n_done % cfg.log_every
                elapsed = elapsed_before + time.perf_counter() - t0
                row = {"step": n_done, "lr": lr_at(step, cfg), "elapsed_s": round(elapsed, 1)}
                row.update({name: round(v / k, 5) for name, v in running.items()})
                history.append(row)
                logf.write(json.dumps(row) + "\n")
                logf.flush()
                log.info("step %d/%d loss %.4f (%.0f s)", n_done, cfg.steps, row["total"], elapsed)
                running = {}
            now = time.perf_counter()
            if now - last_ckpt >= cfg.checkpoint_every_s and n_done < stop:
                checkpoint(n_done, elapsed_before + now - t0)
                last_ckpt = now
    wall = elapsed_before + time.perf_counter() - t0
    model.eval()
    checkpoint(stop, wall)
    return wall, history


# ---------------------------------------------------------------------------------------------- sinks variant
SINKS_MODEL = "vggt-tiny-synthetic-sinks"
# the fine-tuning run of the bundled vggt-tiny-synthetic-sinks: the training data and losses of TrainConfig,
# a shorter schedule at half the peak learning rate, batch draws seeded apart from the base run's. The bundled
# weights are the whole schedule (SINKS_STOP_AFTER = 0); a run cut at step 679 recovered pose but not depth and
# points, the full schedule recovers all three (model card).
SINKS_TRAIN_CONFIG = TrainConfig(steps=2500, seed=1, lr=2e-4, warmup_steps=100)
SINKS_STOP_AFTER = 0


def finetune_sinks(
    cfg: TrainConfig = SINKS_TRAIN_CONFIG,
    out: str | Path = "vggt_tiny_synthetic_sinks.safetensors",
    work_dir: str | Path | None = None,
    massive=None,
    base_weights: str | Path | None = None,
    workers: int = 1,
    resume: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Make `vggt-tiny-synthetic-sinks`: the bundled model (or `base_weights`) with massive activations planted on
    its camera and register tokens (`ptq3d.models.bundled.sinks.plant_massive_activations`, MassiveConfig
    `massive`), fine-tuned on the training pool of `cfg` with the losses of `train` for cfg.steps steps so that
    its predictions recover. The massive entries are held fixed: re-written after every optimiser step (AdamW
    would otherwise move and decay them). CPU, cfg.threads threads; checkpoints and resume as `train`.
    stop_after: end after that many steps of the cfg.steps schedule (a shortened run, recorded in the metadata)."""
    from ptq3d.models import load_model
    from ptq3d.models.bundled.sinks import MassiveConfig, plant_massive_activations, set_massive_entries

    massive = massive or MassiveConfig()
    torch.set_num_threads(cfg.threads)
    out, work, pool, pool_s = _seeded_pool(out, work_dir, cfg, workers)
    model = load_model("vggt-tiny-synthetic", weights=base_weights).module
    planted = plant_massive_activations(model, massive)
    base = str(base_weights) if base_weights else "vggt-tiny-synthetic"
    run_config = {**cfg.to_dict(), "massive": dataclasses.asdict(massive), "base": base}
    wall, history = _fit(
        model,
        cfg,
        pool,
        work,
        "cpu",
        resume,
        run_config,
        after_step=lambda m: set_massive_entries(m, massive),
        stop_after=stop_after,
    )
    done = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    meta = {
        "model": SINKS_MODEL,
        "base": base,
        "steps": done,
        "schedule_steps": cfg.steps,
        "seed": cfg.seed,
        "lr": cfg.lr,
        "massive": json.dumps({**dataclasses.asdict(massive), **planted}),
        "train_wall_s": round(wall, 1),
    }
    save_weights(model, out, meta)
    return TrainResult(out, done, wall, pool_s, history)


# ---------------------------------------------------------------------------------------------- evaluation
def heldout_scenes(num_scenes: int | None = None) -> list[SceneSample]:
    """The first `num_scenes` scenes of TINY_HELDOUT_PROTOCOL (all 32 when None)."""
    scenes = load_protocol_scenes(TINY_HELDOUT_PROTOCOL, limit=num_scenes)
    assert all(s.meta["heldout"] for s in scenes)
    return scenes


def trivial_predictions(sample: SceneSample) -> dict[str, Predictions]:
    """Predictors that know nothing about the images, for the scene `sample` (all [1, S, ...]):

    - "identical_cameras": every extrinsic is the identity (no motion; the translation direction is undefined,
      which the VGGT pose metric scores as a 90-degree error);
    - "mean_motion": the first camera at the identity and every other view at the scene's own mean GT pose
      relative to it (rotations averaged and projected to SO(3), translations averaged): an oracle that knows the
      sequence's average motion but cannot tell the views apart, i.e. what a camera head that ignores its
      images at best achieves;
    - "mean_depth": every pixel at the scene's mean valid GT depth (the depth metric's scale alignment makes
      any constant equivalent);
    - "plane_points": the point map of a fronto-parallel plane at the mean GT depth seen by every view from the
      first camera (GT intrinsics, identity extrinsics): one flat cloud, aligned to the GT by the metric.
    Depth, points and cameras not named by a predictor are those of the other two (they are scored separately).
    """
    S, _, H, W = sample.images.shape
    valid = sample.valid_mask & (sample.depth > 0)
    mean_depth = float(sample.depth[valid].mean())
    depth = torch.full((1, S, H, W), mean_depth)
    eye = torch.eye(3, 4).expand(1, S, 3, 4).clone()
    K = sample.intrinsics.double()
    v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    x = (u - K[:, 0, 2, None, None]) / K[:, 0, 0, None, None] * mean_depth
    y = (v - K[:, 1, 2, None, None]) / K[:, 1, 1, None, None] * mean_depth
    plane = torch.stack([x, y, torch.full_like(x, mean_depth)], -1).float()[None]
    ones = torch.ones(1, S, H, W)
    pred = Predictions(depth, ones, plane, ones, eye, sample.intrinsics[None].clone())
    rel = relative_to_first(sample.extrinsics.double())
    R_rel, t_rel = rel[:, :, :3], rel[:, :, 3]
    U, _, Vt = torch.linalg.svd(R_rel[1:].mean(0))
    R_mean = U @ torch.diag(torch.tensor([1.0, 1.0, float(torch.det(U @ Vt))], dtype=U.dtype)) @ Vt
    moving = eye.clone()
    moving[0, 1:] = torch.cat([R_mean, t_rel[1:].mean(0)[:, None]], dim=1).float()
    mean_motion = dataclasses.replace(pred, extrinsics=moving)
    return {"identical_cameras": pred, "mean_motion": mean_motion, "mean_depth": pred, "plane_points": pred}


HEADLINE_METRICS = ("pose.auc@30", "pose.rra@30", "pose.rot_err_mean", "depth.abs_rel", "depth.delta<1.25",
                    "points.acc", "points.comp", "points.chamfer")  # fmt: skip


def _predict(model: GeometryModel, sample: SceneSample) -> Predictions:
    return model.predict(sample.images[None])


def evaluate(
    models: dict[str, GeometryModel], scenes: Iterable[SceneSample], trivial: bool = True, alignment=None
) -> dict[str, dict[str, tuple[float, float]]]:
    """{predictor: {metric: (value, stderr)}} over `scenes` for each model and (trivial=True) the trivial
    predictors, with the metrics' default AlignmentPolicy unless given. Trivial predictors are scored only on
    the task they stand for (pose / depth / points)."""
    from ptq3d.metrics import aggregate, evaluate_scene, get_metric, list_metrics

    per: dict[str, list[dict]] = {name: [] for name in models}
    task_of = {
        "identical_cameras": "pose",
        "mean_motion": "pose",
        "mean_depth": "depth",
        "plane_points": "points",
    }
    task_metrics = {t: [m for m in list_metrics() if get_metric(m).task == t] for t in task_of.values()}
    if trivial:
        per.update({name: [] for name in task_of})
    for sample in scenes:
        for name, model in models.items():
            per[name].append(evaluate_scene(_predict(model, sample), sample, alignment=alignment))
        if trivial:
            for name, pred in trivial_predictions(sample).items():
                metrics = task_metrics[task_of[name]]
                per[name].append(evaluate_scene(pred, sample, metrics=metrics, alignment=alignment))
    return {name: aggregate(rows) for name, rows in per.items()}


def headline(results: dict[str, dict[str, tuple[float, float]]]) -> dict[str, dict[str, float]]:
    """The HEADLINE_METRICS values (no stderr) of each predictor, where present."""
    return {p: {m: r[m][0] for m in HEADLINE_METRICS if m in r} for p, r in results.items()}


# ---------------------------------------------------------------------------------------------- model card
CHECK_SCENES = 4  # the quick regression check of tests/models/test_bundled.py
CHECK_MAX_POINTS = 4096  # point subsampling of that check (the headline numbers use every point)


def check_policy():
    """The AlignmentPolicy of the quick check: the metrics' default with seeded subsampling of the points."""
    from ptq3d.metrics import AlignmentPolicy

    return AlignmentPolicy(max_points=CHECK_MAX_POINTS)


OUTLIER_SCENES = 8  # held-out scenes of the outlier-injection comparison
# calibration scenes: training-range seeds, disjoint from the training pool and from the held-out set
CALIBRATION_FIRST_SEED = 500_000_000
# the calibration scenes are of the held-out protocol's kind (its SceneConfig)
CALIBRATION_SCENE = SceneConfig(**dict(TINY_HELDOUT_PROTOCOL.option("scene_config")))


def model_card_numbers(
    weights: str | Path,
    num_scenes: int = 32,
    schemes: tuple[str, ...] = ("w4a4", "w8a8"),
    stats_scenes: int = 4,
    outlier_methods: tuple[str, ...] = ("smoothquant", "quarot"),
) -> dict:
    """Everything the model card reports, as a JSON-able dict:
    heldout: FP, RTN at `schemes` and the trivial predictors on `num_scenes` scenes with the metrics' default
      AlignmentPolicy (every point);
    check: FP and RTN W4A4 on the first CHECK_SCENES scenes with check_policy() (what the test re-measures);
    outliers: FP and W4A4 of RTN and `outlier_methods` on the model and on its outlier-injected variant
      (models.bundled.outliers), OUTLIER_SCENES scenes, check_policy(); calibration: 4 of 8 generated scenes;
    activations: quant-site statistics on `stats_scenes` scenes, for the model and the outlier variant."""
    import copy

    from ptq3d.calibration.sets import synthetic_pool
    from ptq3d.harness.analysis import activation_statistics, as_records, summarize_sites
    from ptq3d.methods import build_random, quantize_model
    from ptq3d.models import load_model
    from ptq3d.models.bundled import vggt_tiny_synthetic_config
    from ptq3d.models.bundled.outliers import inject_channel_outliers

    model = load_model(vggt_tiny_synthetic_config(), weights=weights)
    scenes = heldout_scenes(num_scenes)
    models: dict[str, GeometryModel] = {"fp": model}
    for scheme in schemes:
        models[f"rtn_{scheme}"] = quantize_model(model, "rtn", scheme).model
    full = headline(evaluate(models, scenes))
    check_models = {"fp": model, "rtn_w4a4": quantize_model(model, "rtn", "w4a4").model}
    check = headline(evaluate(check_models, scenes[:CHECK_SCENES], trivial=False, alignment=check_policy()))

    outlier_model = copy.deepcopy(model)
    inject_channel_outliers(outlier_model)
    h, w = VGGT_TINY_SYNTHETIC_IMAGE_SIZE
    pool = synthetic_pool(8, 8, h, w, first_seed=CALIBRATION_FIRST_SEED, scene_config=CALIBRATION_SCENE)
    calib = build_random(pool, 4, seed=0)
    omodels: dict[str, GeometryModel] = {"fp": model, "fp_outliers": outlier_model}
    for base_name, base in (("", model), ("_outliers", outlier_model)):
        omodels[f"rtn_w4a4{base_name}"] = quantize_model(base, "rtn", "w4a4").model
        for meth in outlier_methods:
            omodels[f"{meth}_w4a4{base_name}"] = quantize_model(base, meth, "w4a4", calibration=calib).model
    outl = headline(evaluate(omodels, scenes[:OUTLIER_SCENES], trivial=False, alignment=check_policy()))

    stats_images = [s.images[None] for s in scenes[:stats_scenes]]
    sites, blocks = activation_statistics(model, stats_images)
    osites, _ = activation_statistics(outlier_model, stats_images)
    return {
        "protocol": TINY_HELDOUT_PROTOCOL.name,
        "protocol_hash": TINY_HELDOUT_PROTOCOL.hash,
        "num_scenes": len(scenes),
        "heldout": full,
        "check": {"num_scenes": CHECK_SCENES, "max_points": CHECK_MAX_POINTS, **check},
        "outliers": {
            "num_scenes": OUTLIER_SCENES,
            "max_points": CHECK_MAX_POINTS,
            "calibration": calib.describe(),
            **outl,
        },  # fmt: skip
        "activations": {
            "scenes": stats_scenes,
            "summary": summarize_sites(sites),
            "summary_outliers": summarize_sites(osites),
            "sites": as_records(sites),
            "blocks": as_records(blocks),
        },
    }


def write_model_card_json(weights: str | Path, path: str | Path, **kwargs) -> dict:
    """model_card_numbers(weights, **kwargs) written as JSON to `path` (the bundled vggt_tiny_synthetic.json)."""
    numbers = model_card_numbers(weights, **kwargs)
    Path(path).write_text(json.dumps(numbers, indent=1) + "\n")
    return numbers


def model_card_tables(numbers: dict) -> str:
    """Markdown tables of a model_card_numbers dict (held-out headline, outlier comparison, activation summary)."""
    cols = ("pose.auc@30", "pose.rra@30", "pose.rot_err_mean", "depth.abs_rel", "depth.delta<1.25", "points.acc",
            "points.comp", "points.chamfer")  # fmt: skip

    def table(rows: dict[str, dict[str, float]]) -> list[str]:
        out = ["| predictor | " + " | ".join(cols) + " |", "|---" + "|---:" * len(cols) + "|"]
        for name, r in rows.items():
            if isinstance(r, dict) and any(c in r for c in cols):
                out.append(f"| {name} | " + " | ".join(f"{r[c]:.3f}" if c in r else "-" for c in cols) + " |")
        return out

    lines = [
        f"Held-out ({numbers['num_scenes']} scenes, default AlignmentPolicy):",
        "",
        *table(numbers["heldout"]),
    ]
    o = numbers["outliers"]
    lines += [
        "",
        f"Outlier comparison ({o['num_scenes']} scenes, max_points {o['max_points']}):",
        "",
        *table(o),
    ]
    lines += ["", "| quant-site input | kurtosis (median / max) | max/median channel | max/median token | "
              "special/patch norm |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    for tag, summary in (("", numbers["activations"]["summary"]), (" (outlier variant)", numbers["activations"]["summary_outliers"])):  # fmt: skip
        for layer, d in summary.items():
            lines.append(
                f"| {layer}{tag} | {d['kurtosis_median']:.1f} / {d['kurtosis_max']:.1f} | "
                f"{d['channel_max_median_median']:.1f} / {d['channel_max_median_max']:.1f} | "
                f"{d['token_max_median_median']:.1f} / {d['token_max_median_max']:.1f} | "
                f"{d['special_patch_norm_median']:.2f} / {d['special_patch_norm_max']:.2f} |"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- sinks card
TOKEN_TYPES = ("camera", "register", "patch")


@torch.no_grad()
def token_type_statistics(model: GeometryModel, images: Iterable[torch.Tensor]) -> list[dict]:
    """Heavy tails of the quant-site inputs (qkv / proj / fc1 / fc2 of every aggregator block), per token type.

    images: tensors [B, S, 3, H, W] run through `model.predict`. Every site input has rows that are whole frames
    of P = patch_start_idx + (H/p)(W/p) tokens (frame blocks [B*S, P, C], global blocks [B, S*P, C]); token 0 of
    a frame is the camera token, 1..patch_start_idx-1 the registers, the rest patches. Per row (one token's C
    input values, the unit of per-token activation quantization):
    - max_median: max|x| / median|x|;
    - kurtosis: Pearson kurtosis over the C values (a Gaussian row gives 3; one spike of C values gives ~C).
    Returns one dict per site: {'site', 'block', 'layer', and for each type t in TOKEN_TYPES: '<t>_max_median' and
    '<t>_kurtosis' (medians over that type's rows), '<t>_absmax' (max|x| over them)}."""
    agg = model.module.aggregator
    k = agg.patch_start_idx
    rows: dict[str, list[torch.Tensor]] = {}
    pairs = list(model.iter_block_sites("aggregator"))
    layout: dict[str, int] = {}

    def hook(name: str):
        def fn(_mod, args):
            x = args[0].detach().double()
            x = x.reshape(-1, layout["P"], x.shape[-1])
            a = x.abs()
            mmed = a.amax(-1) / a.median(-1).values.clamp_min(1e-12)
            c = x - x.mean(-1, keepdim=True)
            kurt = (c**4).mean(-1) / (c**2).mean(-1).clamp_min(1e-24) ** 2
            rows.setdefault(name, []).append(torch.stack([mmed, kurt, a.amax(-1)], -1))  # [rows, P, 3]

        return fn

    hooks = [lin.register_forward_pre_hook(hook(f"{blk.name}.{rel}")) for blk, lins in pairs for rel, lin in lins.items()]  # fmt: skip
    try:
        for imgs in images:
            H, W = imgs.shape[-2:]
            layout["P"] = k + (H // agg.patch_size) * (W // agg.patch_size)
            model.predict(imgs)
    finally:
        for h in hooks:
            h.remove()
    out = []
    spans = {"camera": slice(0, 1), "register": slice(1, k), "patch": slice(k, None)}
    for blk, lins in pairs:
        for rel in lins:
            name = f"{blk.name}.{rel}"
            t = torch.cat(rows[name])
            rec: dict = {"site": name, "block": blk.name, "layer": rel.split(".")[-1]}
            for typ in TOKEN_TYPES:
                v = t[:, spans[typ]].reshape(-1, 3)
                rec[f"{typ}_max_median"] = float(v[:, 0].median())
                rec[f"{typ}_kurtosis"] = float(v[:, 1].median())
                rec[f"{typ}_absmax"] = float(v[:, 2].max())
            out.append(rec)
    return out


def weight_column_norm_ratios(model: GeometryModel) -> dict[str, float]:
    """{site: min over input channels j of ||W[:, j]|| / their median} for every quantized aggregator linear
    (W [out, in]). A trained model has 0.6-0.8; the outlier-injected variant about 0.01-0.03 (shrunken columns)."""
    out = {}
    for blk, lins in model.iter_block_sites("aggregator"):
        for rel, lin in lins.items():
            norms = lin.weight.detach().double().norm(dim=0)
            out[f"{blk.name}.{rel}"] = float(norms.min() / norms.median())
    return out


def summarize_token_types(stats: list[dict]) -> dict[str, dict[str, float]]:
    """Per layer type (qkv / proj / fc1 / fc2), per token type: the median over blocks of max_median and
    kurtosis (the card's summary table)."""
    out: dict[str, dict[str, float]] = {}
    for layer in dict.fromkeys(r["layer"] for r in stats):
        sel = [r for r in stats if r["layer"] == layer]
        out[layer] = {
            f"{t}_{m}": float(np.median([r[f"{t}_{m}"] for r in sel]))
            for t in TOKEN_TYPES
            for m in ("max_median", "kurtosis")
        }
    return out


# W4A4 rows of the card's quantization check: smoothing alone against rotation + smoothing (QuantVGGT's
# block-wise learning off, so the rows compare the transforms, not the learning)
SINKS_QUANT_METHODS = (
    ("smoothquant_w4a4", "smoothquant", None),
    ("quarot_w4a4", "quarot", None),
    ("quantvggt_scale_w4a4", "quantvggt", {"variant": "scale", "learn": False}),
    ("quantvggt_dsfq_w4a4", "quantvggt", {"variant": "dsfq", "learn": False}),
)


def per_scene_metrics(
    models: dict[str, GeometryModel], scenes: Iterable[SceneSample], alignment=None
) -> dict[str, list[dict[str, float]]]:
    """{model name: [evaluate_scene(...) of each scene, in order]} (what `evaluate` aggregates)."""
    from ptq3d.metrics import evaluate_scene

    rows: dict[str, list[dict[str, float]]] = {name: [] for name in models}
    for sample in scenes:
        for name, model in models.items():
            rows[name].append(evaluate_scene(_predict(model, sample), sample, alignment=alignment))
    return rows


def paired_differences(rows: list[dict], base: list[dict]) -> dict[str, list[float]]:
    """{metric: [mean over scenes of rows - base, its standard error std(ddof=1) / sqrt(n)]} for the
    HEADLINE_METRICS, scene by scene (the two lists are the same scenes in the same order). Pairing removes the
    scene-to-scene spread that the two predictors share, so this is the noise a difference is judged against."""
    if len(rows) != len(base) or len(rows) < 2:
        raise ConfigError(f"paired_differences: need the same >= 2 scenes, got {len(rows)} and {len(base)}")
    out = {}
    for m in HEADLINE_METRICS:
        d = np.array([r[m] - b[m] for r, b in zip(rows, base, strict=True) if m in r and m in b], dtype=float)
        if len(d) >= 2:
            out[m] = [float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))]
    return out


SINKS_CHECK_SCENES = 2  # scenes of the activation statistics re-measured by tests/models/test_sinks.py
SINKS_QUANT_SCENES = 8  # held-out scenes of the card's quantization check


def sinks_card_numbers(
    weights: str | Path | None = None,
    num_scenes: int = 32,
    quant_scenes: int = SINKS_QUANT_SCENES,
    quant_methods: tuple[tuple[str, str, dict | None], ...] = SINKS_QUANT_METHODS,
    stats_scenes: int = 4,
) -> dict:
    """Everything the sinks section of the model card reports, for `weights` (None: the bundled file of
    vggt-tiny-synthetic-sinks), as a JSON-able dict:
    heldout: FP metrics of vggt-tiny-synthetic-sinks and of vggt-tiny-synthetic on `num_scenes` held-out scenes,
      default AlignmentPolicy, {metric: [value, per-scene stderr]};
    quant: FP, RTN W4A4 and `quant_methods` ((row name, method, config)) at W4A4 on the sinks model, first
      `quant_scenes` scenes, check_policy(), with stderr; calibration: 4 of 8 generated scenes as in
      model_card_numbers;
    tokens: token_type_statistics on `stats_scenes` scenes (and on the first SINKS_CHECK_SCENES, what the test
      re-measures), for both models; weights: weight_column_norm_ratios of both."""
    from ptq3d.calibration.sets import synthetic_pool
    from ptq3d.methods import build_random, quantize_model
    from ptq3d.metrics import aggregate
    from ptq3d.models import load_model

    sinks = load_model(SINKS_MODEL, weights=weights)
    plain = load_model("vggt-tiny-synthetic")
    scenes = heldout_scenes(num_scenes)
    fp_rows = per_scene_metrics({"sinks": sinks, "plain": plain}, scenes)
    h, w = VGGT_TINY_SYNTHETIC_IMAGE_SIZE
    pool = synthetic_pool(8, 8, h, w, first_seed=CALIBRATION_FIRST_SEED, scene_config=CALIBRATION_SCENE)
    calib = build_random(pool, 4, seed=0)
    qmodels: dict[str, GeometryModel] = {"fp": sinks, "rtn_w4a4": quantize_model(sinks, "rtn", "w4a4").model}
    for row, meth, config in quant_methods:
        qmodels[row] = quantize_model(sinks, meth, "w4a4", calibration=calib, config=config).model
    q_rows = per_scene_metrics(qmodels, scenes[:quant_scenes], alignment=check_policy())
    tokens = {}
    for name, m in (("sinks", sinks), ("plain", plain)):
        tokens[name] = token_type_statistics(m, [s.images[None] for s in scenes[:stats_scenes]])
        tokens[f"{name}_check"] = token_type_statistics(
            m, [s.images[None] for s in scenes[:SINKS_CHECK_SCENES]]
        )

    def keep(rows: dict[str, list[dict]]) -> dict:
        res = {p: aggregate(r) for p, r in rows.items()}
        return {p: {m: list(r[m]) for m in HEADLINE_METRICS if m in r} for p, r in res.items()}

    return {
        "protocol": TINY_HELDOUT_PROTOCOL.name,
        "protocol_hash": TINY_HELDOUT_PROTOCOL.hash,
        "num_scenes": len(scenes),
        "heldout": keep(fp_rows),
        "heldout_sinks_minus_plain": paired_differences(fp_rows["sinks"], fp_rows["plain"]),
        "quant": {
            "num_scenes": quant_scenes,
            "max_points": CHECK_MAX_POINTS,
            "calibration": calib.describe(),
            **keep(q_rows),
        },  # fmt: skip
        "quant_minus_fp": {p: paired_differences(r, q_rows["fp"]) for p, r in q_rows.items() if p != "fp"},
        "tokens": {"scenes": stats_scenes, "check_scenes": SINKS_CHECK_SCENES, **tokens},
        "token_summary": {name: summarize_token_types(tokens[name]) for name in ("sinks", "plain")},
        "weights": {"sinks": weight_column_norm_ratios(sinks), "plain": weight_column_norm_ratios(plain)},
    }


def sinks_card_tables(numbers: dict) -> str:
    """Markdown tables of a sinks_card_numbers dict: held-out FP (value ± per-scene stderr) of both models and their
    paired difference; the W4A4 check and its paired differences to FP; per-block token-type statistics; weight
    column-norm ratios."""
    cols = ("pose.auc@30", "pose.rot_err_mean", "depth.abs_rel", "depth.delta<1.25", "points.chamfer")

    def head() -> list[str]:
        return ["| predictor | " + " | ".join(cols) + " |", "|---" + "|---:" * len(cols) + "|"]

    def row(name: str, r: dict, signed: bool = False) -> str:
        fmt = "{:+.4f} ± {:.4f}" if signed else "{:.4f} ± {:.4f}"
        return f"| {name} | " + " | ".join(fmt.format(*r[c]) if c in r else "-" for c in cols) + " |"

    lines = [
        f"Held-out FP ({numbers['num_scenes']} scenes, default AlignmentPolicy; ± per-scene standard error):",
        "",
    ]
    lines += head() + [row(n, r) for n, r in numbers["heldout"].items()]
    lines.append(row("sinks - plain (paired)", numbers["heldout_sinks_minus_plain"], signed=True))
    q = numbers["quant"]
    lines += ["", f"W4A4 on the sinks model ({q['num_scenes']} scenes, max_points {q['max_points']}):", ""]
    lines += head() + [row(n, r) for n, r in q.items() if isinstance(r, dict) and "pose.auc@30" in r]
    lines += [row(f"{n} - fp (paired)", r, signed=True) for n, r in numbers["quant_minus_fp"].items()]
    lines += ["", "| site input | camera max/med | camera kurt | register max/med | register kurt | patch max/med | "
              "patch kurt | weight col min/med |", "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    ratios = numbers["weights"]["sinks"]
    for r in numbers["tokens"]["sinks"]:
        lines.append(
            f"| {r['site'].removeprefix('aggregator.')} | {r['camera_max_median']:.1f} | {r['camera_kurtosis']:.1f} | "
            f"{r['register_max_median']:.1f} | {r['register_kurtosis']:.1f} | {r['patch_max_median']:.1f} | "
            f"{r['patch_kurtosis']:.1f} | {ratios[r['site']]:.2f} |"
        )
    return "\n".join(lines)


def _main(argv: list[str] | None = None) -> int:
    """`python -m ptq3d.harness.train_tiny sinks ...`: run finetune_sinks (the reproducible command of the
    bundled vggt-tiny-synthetic-sinks weights; see its model card)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m ptq3d.harness.train_tiny")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sinks", help="fine-tune vggt-tiny-synthetic into vggt-tiny-synthetic-sinks")
    s.add_argument("--out", type=Path, default=Path("vggt_tiny_synthetic_sinks.safetensors"))
    s.add_argument("--work-dir", type=Path, default=None)
    s.add_argument("--steps", type=int, default=SINKS_TRAIN_CONFIG.steps)
    s.add_argument("--seed", type=int, default=SINKS_TRAIN_CONFIG.seed)
    s.add_argument(
        "--stop-after",
        type=int,
        default=SINKS_STOP_AFTER,
        help="end after N steps of the --steps schedule (default: the bundled run's; 0: the whole schedule)",
    )
    s.add_argument("--workers", type=int, default=1, help="processes generating the training scenes")
    s.add_argument("--no-resume", action="store_true")
    s.add_argument(
        "--fp16", action="store_true", help="store the final weights in float16 (the bundled file)"
    )
    c = sub.add_parser("sinks-card", help="write the numbers of the sinks model card (JSON)")
    c.add_argument("--weights", type=Path, default=None, help="default: the bundled file")
    c.add_argument("--out", type=Path, default=Path("vggt_tiny_synthetic_sinks.json"))
    c.add_argument("--scenes", type=int, default=32)
    c.add_argument("--quant-scenes", type=int, default=SINKS_QUANT_SCENES)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    if args.cmd == "sinks-card":
        numbers = sinks_card_numbers(args.weights, num_scenes=args.scenes, quant_scenes=args.quant_scenes)
        args.out.write_text(json.dumps(numbers, indent=1) + "\n")
        print(f"wrote {args.out}")
        return 0
    cfg = dataclasses.replace(SINKS_TRAIN_CONFIG, steps=args.steps, seed=args.seed)
    res = finetune_sinks(
        cfg,
        args.out,
        args.work_dir,
        workers=args.workers,
        resume=not args.no_resume,
        stop_after=args.stop_after or None,
    )
    weights = export_fp16(res.weights, res.weights) if args.fp16 else res.weights
    print(
        f"wrote {weights} ({res.steps} steps, training {res.wall_s:.0f} s, scene generation {res.pool_s:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
