"""FGQ: Fisher-Guided Quantization (Zhang, Cheng, Feng et al., arXiv 2605.15828; code `ypzhng/FGQ`).

FlatQuant (ptq3d.methods.flatquant) whose block reconstruction loss weights each output channel by how much the
three tasks (camera pose, depth, point map) are sensitive to it, estimated by a per-task diagonal Fisher.

Step 1, per-task diagonal Fisher at every block output (`compute_fisher`, FGQ's `compute_fisher.py`):
    F_k[l, c] = (1/N) sum_n sum_tokens (dL_k / dh_{l,t,c})^2
h_l: the output of block l (scope order: frame_0, global_0, frame_1, ...; FGQ's index 2i / 2i+1), L_k the task
loss: `loss="output_sum"` (FGQ's code: L_k = sum of the raw task output tensor: pose encoding, depth, world
points) or `loss="gt"` (our option, for calibration scenes with ground truth: L1 on the pose encoding against the
GT one, mean |depth error| and mean point distance over valid pixels, GT normalised as VGGT trains: first camera's
frame, lengths over the mean distance of the valid points to it). One forward per scene with grad, one backward
per task (retain_graph). A task whose head never reads a block gets exactly 0 there.

Step 2, channel weights (`channel_weights`, FGQ's `load_fisher_weights`, Eqs. 12-15):
    F_k <- F_k / mean_{l,c} F_k;   s[l, c] = sum_k lambda_k F_k[l, c]  (lambda_k = 1 in the paper: task_weights);
    w_l[c] = s[l, c] / mean_c s[l, c];   w_l[c] <- max(w_l[c], floor = 0.01).

Step 3, Fisher-weighted block reconstruction: FlatQuant's loss becomes mean_{t,c} w_l[c] (h~ - h)^2, divided by
its detached value before backward (FGQ's code; `normalize_loss`). The transforms are FlatQuant's, unchanged.

Presets: "paper" (default; Fisher over all calibration scenes, 64 x 4 frames, as the third-party notes of the
paper state) and "code" (ypzhng/FGQ bfd01a7: the Fisher from 32 of the 64 clips, the README's setting).
Both: 15 epochs, aggregator scope, random builder (CALIBRATION_DEFAULTS).

Ablations (the paper's Table 5): `use_fisher=False` (plain FlatQuant objective with FGQ's loss normalisation),
`tasks=("points",)` (single task), `tasks=("points", "depth")`, all three (default). The Fisher of all three
tasks is always computed and kept (so it can be inspected and plotted); `tasks` picks which enter the weights.

Kept with the quantized model: QuantizedModel.stats.fisher (a FisherResult: the [tasks, blocks, channels] tensor
and the pass's own time and memory), a JSON summary in stats.extra["fisher"] where CalibrationStats has an
`extra` dict, per-block Fisher means in stats.blocks (serialised by save_quantized); `save_fgq` writes the full
tensor as fisher.safetensors next to the saved model, `load_fisher` reads it back, `plot_fisher` plots it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from ptq3d.calibration.block_gradients import squared_block_output_grads
from ptq3d.errors import CheckpointError, ConfigError, DataError
from ptq3d.methods.flatquant import FlatQuantConfig, run_flatquant
from ptq3d.methods.registry import register_method
from ptq3d.quant.stats import PeakMemory

TASKS: tuple[str, ...] = ("camera", "depth", "points")
FISHER_LOSSES: tuple[str, ...] = ("output_sum", "gt")
FISHER_FILE = "fisher.safetensors"


@dataclass
class FisherResult:
    """Per-task diagonal Fisher at the block outputs.

    fisher [T, L, C] float32 (tasks x blocks in scope order x channels). tasks, blocks: their names.
    loss: "output_sum" | "gt". num_samples: calibration scenes used. cost: time_s, peak_rss_bytes,
    delta_rss_bytes, cuda_peak_bytes of the pass (empty when loaded without it).
    """

    fisher: torch.Tensor
    tasks: tuple[str, ...]
    blocks: tuple[str, ...]
    loss: str = "output_sum"
    num_samples: int = 0
    cost: dict[str, Any] = field(default_factory=dict)

    def task(self, name: str) -> torch.Tensor:
        """[L, C] Fisher of one task."""
        if name not in self.tasks:
            raise ConfigError(f"Fisher task '{name}' not computed (have: {', '.join(self.tasks)})")
        return self.fisher[self.tasks.index(name)]

    def block_means(self) -> dict[str, list[float]]:
        """task -> [L] mean over channels of F_k[l, :]."""
        return {t: self.fisher[i].mean(dim=1).tolist() for i, t in enumerate(self.tasks)}

    def summary(self) -> dict[str, Any]:
        """JSON-safe description (everything but the channel dimension)."""
        return {
            "tasks": list(self.tasks),
            "blocks": list(self.blocks),
            "channels": int(self.fisher.shape[-1]),
            "loss": self.loss,
            "num_samples": self.num_samples,
            "cost": dict(self.cost),
            "block_mean": self.block_means(),
        }

    def save(self, path: str | Path) -> Path:
        """Write fisher [T, L, C] to a safetensors file, the rest as its JSON metadata."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {k: v for k, v in self.summary().items() if k != "block_mean"}
        save_file(
            {"fisher": self.fisher.detach().float().contiguous()},
            str(path),
            metadata={"fgq": json.dumps(meta)},
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> FisherResult:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(
                f"{path}: no such Fisher file (write one with FisherResult.save or save_fgq)"
            )
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("fgq", "{}"))
                fisher = f.get_tensor("fisher")
        except Exception as exc:  # safetensors raises several types for a corrupt file
            raise CheckpointError(f"{path}: not a Fisher safetensors file ({exc})") from exc
        tasks, blocks = tuple(meta.get("tasks", ())), tuple(meta.get("blocks", ()))
        if fisher.dim() != 3 or fisher.shape[0] != len(tasks) or fisher.shape[1] != len(blocks):
            raise CheckpointError(
                f"{path}: fisher shape {tuple(fisher.shape)} does not match {len(tasks)} tasks x {len(blocks)} blocks"
            )
        return cls(
            fisher,
            tasks,
            blocks,
            meta.get("loss", "?"),
            int(meta.get("num_samples", 0)),
            meta.get("cost", {}),
        )


# --- step 1: the Fisher pass -------------------------------------------------------------------------


def normalised_gt(sample, image_hw: tuple[int, int]) -> dict[str, torch.Tensor]:
    """VGGT-style GT of one scene: world = first camera, lengths divided by the mean distance of the valid points
    to it. Returns depth [S, H, W], points [S, H, W, 3], valid [S, H, W], pose_enc [S, 9]. Pixel centres at +0.5."""
    from ptq3d.models.vggt.pose import extri_intri_to_pose_encoding

    depth, valid, K, E = (
        sample.depth.float(),
        sample.valid_mask.bool(),
        sample.intrinsics.float(),
        sample.extrinsics.float(),
    )
    if not bool(valid.any()):
        raise DataError(
            f"FGQ fisher_loss 'gt': calibration scene '{sample.meta.get('scene')}' has no valid GT depth "
            "(use fisher_loss=output_sum, or calibration scenes with ground truth)"
        )
    S, H, W = depth.shape
    if tuple(image_hw) != (H, W):
        raise DataError(f"FGQ fisher_loss 'gt': GT depth {H}x{W} does not match the images {image_hw}")
    v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    x = (u - K[:, 0, 2, None, None]) / K[:, 0, 0, None, None] * depth
    y = (v - K[:, 1, 2, None, None]) / K[:, 1, 1, None, None] * depth
    cam = torch.stack([x, y, depth], dim=-1)  # [S, H, W, 3] in each camera's frame
    R, t = E[:, :, :3], E[:, :, 3]
    Ri0 = R[:1] @ R.transpose(-1, -2)  # camera i -> camera 0 rotation
    pts = torch.einsum("sij,shwj->shwi", Ri0, cam - t[:, None, None, :]) + t[:1, None, None, :]
    scale = (pts.norm(dim=-1)[valid]).mean().clamp_min(1e-6)
    Rn = R @ R[:1].transpose(-1, -2)
    tn = t - (Rn @ t[:1, :, None])[..., 0]
    ext = torch.cat([Rn, (tn / scale)[..., None]], dim=-1)
    return {
        "depth": depth / scale,
        "points": pts / scale,
        "valid": valid,
        "pose_enc": extri_intri_to_pose_encoding(ext, K, (H, W)),
    }


def task_losses(outputs: dict[str, torch.Tensor], loss: str, gt: dict[str, torch.Tensor] | None) -> dict:
    """Scalar loss per task. outputs: GeometryModel.task_outputs of one scene (camera [1, S, D], depth [1, S, H, W],
    points [1, S, H, W, 3]). loss "output_sum": the sum of each output (FGQ); "gt": errors against `gt`
    (normalised_gt) on the valid pixels."""
    if loss == "output_sum":
        return {k: v.sum() for k, v in outputs.items()}
    out = {}
    valid = gt["valid"].to(outputs["depth"].device)
    n = valid.sum().clamp_min(1)
    for k, v in outputs.items():
        ref = gt["pose_enc" if k == "camera" else k].to(v.device, v.dtype)
        if k == "camera":
            if v.shape[-1] != ref.shape[-1]:
                raise ConfigError(
                    f"FGQ fisher_loss 'gt': camera output width {v.shape[-1]} is not a VGGT pose encoding (9)"
                )
            out[k] = (v[0] - ref).abs().mean()
        elif k == "depth":
            out[k] = ((v[0] - ref).abs() * valid).sum() / n
        else:
            out[k] = ((v[0] - ref).norm(dim=-1) * valid).sum() / n
    return out


def compute_fisher(
    model,
    samples: list,
    tasks: tuple[str, ...] = TASKS,
    loss: str = "output_sum",
    scope: str = "aggregator",
) -> FisherResult:
    """Per-task diagonal Fisher at every block output (module docstring, step 1).

    model: GeometryModel (FP; left unchanged, parameters' requires_grad restored). samples: SceneSamples
    (images [S, 3, H, W]), each run as a batch of one scene. Returns FisherResult with fisher [T, L, C] and the
    pass's cost (wall time, peak RSS, CUDA peak).
    """
    if loss not in FISHER_LOSSES:
        raise ConfigError(f"FGQ fisher_loss={loss!r}: use one of {', '.join(FISHER_LOSSES)}")
    if not samples:
        raise ConfigError("FGQ: the Fisher pass needs at least one calibration scene")
    blocks = model.blocks(scope)
    if not blocks:
        raise ConfigError(f"model '{model.name}' has no blocks in scope '{scope}'")

    def scene_losses(outputs, sample, _n):
        missing = [t for t in tasks if t not in outputs]
        if missing:
            raise ConfigError(f"model '{model.name}' has no task output {', '.join(missing)}")
        gt = normalised_gt(sample, tuple(sample.images.shape[-2:])) if loss == "gt" else None
        return task_losses({t: outputs[t] for t in tasks}, loss, gt)

    with PeakMemory() as pm:
        t0 = time.perf_counter()
        grads = squared_block_output_grads(model, samples, scope, scene_losses)
        elapsed = time.perf_counter() - t0
    widths = {g.numel() for per_block in grads.values() for g in per_block}
    if len(widths) != 1:
        raise ConfigError(f"FGQ: block outputs of different widths {sorted(widths)} in scope '{scope}'")
    cost = {
        "time_s": elapsed,
        "peak_rss_bytes": pm.peak_rss_bytes,
        "delta_rss_bytes": pm.delta_rss_bytes,
        "cuda_peak_bytes": pm.cuda_peak_bytes,
        "forward_passes": len(samples),
        "backward_passes": len(samples) * len(tasks),
    }
    fisher = torch.stack([torch.stack(grads[t]) for t in tasks]).float()
    return FisherResult(fisher, tuple(tasks), tuple(b.name for b in blocks), loss, len(samples), cost)


# --- step 2: channel weights ---------------------------------------------------------------------


def channel_weights(
    fisher: torch.Tensor, task_weights: torch.Tensor | list[float] | None = None, floor: float = 0.01
) -> torch.Tensor:
    """fisher [T, L, C] -> loss weights w [L, C] (module docstring, step 2).

    Per task: divide by its mean over (blocks, channels) (a task with an all-zero Fisher contributes nothing);
    sum over tasks with task_weights [T] (default 1 each); per block divide by the mean over channels (a block no
    task is sensitive to gets weight 1 everywhere); then w = max(w, floor)."""
    f = fisher.double()
    if f.dim() != 3:
        raise ConfigError(f"channel_weights: fisher must be [tasks, blocks, channels], got {tuple(f.shape)}")
    T = f.shape[0]
    lam = (
        torch.ones(T, dtype=torch.float64) if task_weights is None else torch.as_tensor(task_weights).double()
    )
    if lam.shape != (T,):
        raise ConfigError(f"channel_weights: {lam.numel()} task weights for {T} tasks")
    if bool((lam < 0).any()):
        raise ConfigError(f"channel_weights: task weights must be >= 0, got {lam.tolist()}")
    mean_k = f.mean(dim=(1, 2), keepdim=True)
    fn = torch.where(mean_k > 0, f / mean_k.clamp_min(1e-300), torch.zeros_like(f))
    s = (lam.view(T, 1, 1) * fn).sum(dim=0)  # [L, C]
    mean_l = s.mean(dim=1, keepdim=True)
    w = torch.where(mean_l > 0, s / mean_l.clamp_min(1e-300), torch.ones_like(s))
    return w.clamp_min(floor).float()


# --- plotting ------------------------------------------------------------------------------------


def plot_fisher(fisher: FisherResult | torch.Tensor, path: str | Path, tasks=None, blocks=None) -> Path:
    """SVG (matplotlib, Agg) of the Fisher per block and task: left, the channel-mean Fisher per block, each task
    divided by its own mean over blocks (log scale: where each task is sensitive); right, the channel weights
    w_l[c] of all tasks combined (blocks x channels). fisher: FisherResult or a [T, L, C] tensor (then `tasks`
    and `blocks` name its axes; default task i / block index)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(fisher, FisherResult):
        tensor, tasks, blocks = fisher.fisher, list(fisher.tasks), list(fisher.blocks)
    else:
        tensor = torch.as_tensor(fisher)
        if tensor.dim() != 3:
            raise ConfigError(f"plot_fisher: expected [tasks, blocks, channels], got {tuple(tensor.shape)}")
        tasks = list(tasks) if tasks is not None else [f"task {i}" for i in range(tensor.shape[0])]
        blocks = list(blocks) if blocks is not None else [str(i) for i in range(tensor.shape[1])]
    f = tensor.double()
    per_block = f.mean(dim=2)  # [T, L]
    norm = per_block / per_block.mean(dim=1, keepdim=True).clamp_min(1e-300)
    labels = [b.replace("aggregator.", "").replace("_blocks.", "") for b in blocks]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 1.3]})
    x = range(len(blocks))
    for i, t in enumerate(tasks):
        y = norm[i].clamp_min(1e-12).tolist()
        ax0.plot(x, y, marker="o", label=t)
    ax0.set_yscale("log")
    ax0.set_xticks(list(x))
    ax0.set_xticklabels(labels, rotation=90, fontsize=7)
    ax0.set_ylabel("mean Fisher per block / task mean")
    ax0.set_title("Per-task sensitivity by block")
    ax0.legend(fontsize=8)
    w = channel_weights(tensor.float())
    im = ax1.imshow(w.numpy().T, aspect="auto", origin="lower", cmap="viridis")
    ax1.set_xticks(list(x))
    ax1.set_xticklabels(labels, rotation=90, fontsize=7)
    ax1.set_ylabel("channel")
    ax1.set_title("FGQ channel weights w_l[c] (all tasks)")
    fig.colorbar(im, ax=ax1)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), format="svg")
    plt.close(fig)
    return path


# --- the method ----------------------------------------------------------------------------------


@dataclass
class FGQConfig(FlatQuantConfig):
    """FGQ = FlatQuantConfig (the transforms and schedule) plus:

    use_fisher: weight the loss by the Fisher (False: the "plain" row of Table 5).
    tasks: the tasks whose Fisher enters the weights (Table 5: ("points",), ("points", "depth"), all three).
    task_weights: lambda_k per entry of `tasks` (empty = 1 each, the paper).
    fisher_loss: "output_sum" (FGQ's code) or "gt" (losses against the calibration scenes' ground truth).
    fisher_samples: calibration scenes used for the Fisher (0 = all; FGQ: 32 of its 64).
    weight_floor: lower bound of the channel weights (0.01).
    fisher_path: a FisherResult safetensors file to use instead of computing one (FGQ's two-script pipeline).
    normalize_loss: FGQ divides the loss by its detached value (default True here).
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"paper": {}, "code": {"fisher_samples": 32}}
    CALIBRATION_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"builder": "random", "num_scenes": 64, "frames": 4, "epochs": 15, "scope": "aggregator"},
        "code": {"builder": "random", "num_scenes": 64, "frames": 4, "epochs": 15, "scope": "aggregator"},
    }

    use_fisher: bool = True
    tasks: tuple[str, ...] = TASKS
    task_weights: tuple[float, ...] = ()
    fisher_loss: str = "output_sum"
    fisher_samples: int = 0
    weight_floor: float = 0.01
    fisher_path: str | None = None
    normalize_loss: bool = True

    def check(self) -> None:
        super().check()
        tasks = tuple(self.tasks)
        bad = [t for t in tasks if t not in TASKS]
        if bad or not tasks:
            raise ConfigError(f"fgq tasks={self.tasks!r}: choose one or more of {', '.join(TASKS)}")
        if len(set(tasks)) != len(tasks):
            raise ConfigError(f"fgq tasks={self.tasks!r}: a task is listed twice")
        if self.task_weights and len(self.task_weights) != len(tasks):
            raise ConfigError(f"fgq task_weights={self.task_weights!r}: need one weight per task in {tasks}")
        if self.fisher_loss not in FISHER_LOSSES:
            raise ConfigError(f"fgq fisher_loss={self.fisher_loss!r}: use one of {', '.join(FISHER_LOSSES)}")
        if self.fisher_samples < 0:
            raise ConfigError(f"fgq fisher_samples={self.fisher_samples}: must be >= 0")
        if not 0.0 <= self.weight_floor < 1.0:
            raise ConfigError(f"fgq weight_floor={self.weight_floor}: must be in [0, 1)")


def _stats_extra(stats) -> dict:
    """stats.extra (a dict serialised with the stats once CalibrationStats has that field)."""
    extra = getattr(stats, "extra", None)
    if not isinstance(extra, dict):
        extra = {}
        stats.extra = extra
    return extra


def fisher_weights(fisher: FisherResult, config: FGQConfig) -> torch.Tensor:
    """[L, C] channel weights from the tasks and task weights of `config`."""
    idx = [fisher.tasks.index(t) for t in config.tasks]
    lam = [float(x) for x in config.task_weights] if config.task_weights else None
    return channel_weights(fisher.fisher[idx], lam, config.weight_floor)


@register_method("fgq", config=FGQConfig, requires_calibration="always", propagate="fp", version="2")
def quantize_fgq(model, calibration, scheme, config: FGQConfig, ctx) -> None:
    """FGQ: FlatQuant with a per-task, per-block, per-channel Fisher-weighted reconstruction loss."""
    config.tasks = tuple(config.tasks)
    config.check()
    fisher = weights = None
    if config.use_fisher:
        names = tuple(b.name for b in model.blocks(ctx.scope))
        if config.fisher_path:
            fisher = FisherResult.load(config.fisher_path)
            if fisher.blocks != names:
                raise ConfigError(
                    f"fgq fisher_path {config.fisher_path}: its blocks ({len(fisher.blocks)}) are not the "
                    f"model's blocks in scope '{ctx.scope}' ({len(names)})"
                )
            missing = [t for t in config.tasks if t not in fisher.tasks]
            if missing:
                raise ConfigError(f"fgq fisher_path {config.fisher_path}: no Fisher for {', '.join(missing)}")
        else:
            samples = list(calibration.samples)
            if config.fisher_samples:
                samples = samples[: config.fisher_samples]
            fisher = compute_fisher(model, samples, TASKS, config.fisher_loss, ctx.scope)
        weights = fisher_weights(fisher, config)
        ctx.stats.fisher = fisher
        _stats_extra(ctx.stats)["fisher"] = fisher.summary()
    run_flatquant(ctx, calibration, config, weights)
    if fisher is not None:
        means = fisher.block_means()
        for rec in ctx.stats.blocks:
            if rec["name"] not in fisher.blocks:
                continue
            j = fisher.blocks.index(rec["name"])
            rec["fisher_mean"] = {t: _finite(means[t][j]) for t in fisher.tasks}
            rec["fisher_weight_max"] = _finite(float(weights[j].max()))
            rec["fisher_weight_min"] = _finite(float(weights[j].min()))


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


# --- keeping the Fisher with a saved model -------------------------------------------------------


def save_fgq(qm, directory: str | Path) -> Path:
    """save_quantized(qm, directory) plus the Fisher of an FGQ model as `fisher.safetensors` beside it."""
    from ptq3d.methods.api import save_quantized

    d = save_quantized(qm, directory)
    fisher = getattr(qm.stats, "fisher", None)
    if isinstance(fisher, FisherResult):
        fisher.save(Path(d) / FISHER_FILE)
    return Path(d)


def load_fisher(directory: str | Path) -> FisherResult:
    """The FisherResult saved by save_fgq in `directory` (or a Fisher safetensors file itself)."""
    p = Path(directory)
    return FisherResult.load(p / FISHER_FILE if p.is_dir() else p)
