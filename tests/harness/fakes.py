"""Small fake components for the harness tests: a toy pixel-MLP 'geometry model', toy scenes, two metrics,
a round-to-nearest method and methods that fail on purpose. Selected with components = "tests.harness.fakes:
FakeComponents" (importable from the repository root, so subprocesses and pool workers find it too)."""

from __future__ import annotations

import copy
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ptq3d.datasets.base import SceneSample
from ptq3d.errors import ConfigError, UserError, unknown_name_error
from ptq3d.harness.components import Components, MetricInfo, QuantOutcome
from ptq3d.models.base import Predictions
from ptq3d.results.records import short_hash

COMPONENTS = "tests.harness.fakes:FakeComponents"

XSS = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"

PROTOCOLS = {  # name -> (number of scenes, seed, needs root)
    "toy-smoke": (2, 11, False),
    "toy-heldout": (4, 99, False),
    "toy-xss": (2, 11, False),
    "toy-data": (2, 5, True),
}
METRICS = {
    "depth.abs_rel": MetricInfo("depth.abs_rel", False, "fraction", "mean"),
    "depth.delta1": MetricInfo("depth.delta1", True, "fraction", "mean"),
    "depth.pixels": MetricInfo("depth.pixels", None, "count", "sum"),
}
METHOD_KEYS = {"sleep": (int, float), "log": str, "clip": (int, float)}
CALIBRATING = ("rtn", "nan", "boom")


class ToyBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, h):
        return h + self.fc2(torch.nn.functional.gelu(self.fc1(h)))


class ToyModel(nn.Module):
    """images [1, S, 3, H, W] -> per-pixel MLP -> depth, points; cameras are identity."""

    def __init__(self, dim: int = 8, blocks: int = 2):
        super().__init__()
        self.stem = nn.Linear(3, dim)
        self.blocks = nn.ModuleList(ToyBlock(dim) for _ in range(blocks))
        self.head = nn.Linear(dim, 4)
        self.backend = "fp"

    def predict(self, images: torch.Tensor) -> Predictions:
        x = images[0].permute(0, 2, 3, 1)  # [S, H, W, 3]
        h = torch.tanh(self.stem(x))
        for blk in self.blocks:
            h = blk(h)
        out = self.head(h)
        S, H, W = x.shape[:3]
        depth = torch.nn.functional.softplus(out[..., 0]) + 0.5
        ext = torch.eye(3, 4).expand(S, 3, 4).clone()
        return Predictions(
            depth=depth[None],
            depth_conf=torch.ones(1, S, H, W),
            world_points=out[None, ..., 1:4],
            points_conf=torch.ones(1, S, H, W),
            extrinsics=ext[None],
            intrinsics=None,
        )


@dataclass
class ToyCalibration:
    samples: list
    builder: str
    seed: int


def _scheme_bits(scheme: str) -> tuple[int, int]:
    m = re.fullmatch(r"w(\d+)a(\d+)", scheme)
    if not m:
        raise UserError(f"unknown scheme '{scheme}' (expected wXaY)")
    return int(m.group(1)), int(m.group(2))


def _fake_quant(x: torch.Tensor, bits: int, dim: int, clip: float = 1.0) -> torch.Tensor:
    if bits >= 16:
        return x
    qmax = 2 ** (bits - 1) - 1
    scale = clip * x.abs().amax(dim=dim, keepdim=True).clamp_min(1e-8) / qmax
    return (x / scale).round().clamp(-qmax - 1, qmax) * scale


class FakeComponents(Components):
    name = "fake"

    def list_models(self):
        return ["toy", "toy-wide"]

    def list_methods(self):
        return ["rtn", "wonly", "nan", "boom"]

    def list_schemes(self):
        return ["w8a8", "w4a8", "w4a4", "w8a16", "w4a16"]

    def check_scheme(self, scheme):
        _scheme_bits(scheme)

    def list_protocols(self):
        return list(PROTOCOLS)

    def list_datasets(self):
        return ["toy"]

    def list_metrics(self):
        return list(METRICS)

    def list_calibration_builders(self):
        return ["random", "first"]

    def check_method_config(self, method, config):
        for k, v in config.items():
            if k not in METHOD_KEYS:
                raise unknown_name_error(f"config key for method '{method}'", k, METHOD_KEYS)
            if not isinstance(v, METHOD_KEYS[k]):
                raise ConfigError(f"method '{method}': config key '{k}' = {v!r} has the wrong type")

    def method_needs_calibration(self, method, config, scheme=None):
        return method in CALIBRATING

    def protocol_needs_root(self, protocol):
        return PROTOCOLS[protocol][2]

    # --- models ------------------------------------------------------------------------------------------
    def load_model(self, ref, device):
        dim = int(ref.options.get("dim", 16 if ref.name == "toy-wide" else 8))
        model = ToyModel(dim)
        if ref.weights:
            from safetensors.torch import load_file

            model.load_state_dict(load_file(ref.weights))
        return model.eval().to(device)

    def model_hash(self, model):
        h = __import__("hashlib").sha256()
        for k, v in sorted(model.state_dict().items()):
            h.update(k.encode() + v.detach().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    def predict(self, model, images):
        return model.predict(images)

    def model_bytes(self, model):
        wbits = getattr(model, "wbits", 32)
        return sum(p.numel() * (wbits if p.dim() == 2 else 32) // 8 for p in model.parameters())

    def quant_sites(self, model, scope):
        return {f"blocks.{i}.{n}": getattr(b, n) for i, b in enumerate(model.blocks) for n in ("fc1", "fc2")}

    def block_of_site(self, model, scope):
        return {s: s.rsplit(".", 1)[0] for s in self.quant_sites(model, scope)}

    # --- data --------------------------------------------------------------------------------------------
    def load_scenes(self, ref):
        if ref.name not in PROTOCOLS:
            raise unknown_name_error("protocol", ref.name, PROTOCOLS)
        n, seed, _ = PROTOCOLS[ref.name]
        n = min(n, ref.limit) if ref.limit else n
        scenes = []
        for i in range(n):
            g = torch.Generator().manual_seed(seed * 1000 + i)
            images = torch.rand(2, 3, 6, 6, generator=g)
            depth = 1.0 + images.mean(1)
            name = f"{XSS} scene {i}" if ref.name == "toy-xss" else f"{ref.name}-{i:02d}"
            scenes.append(
                SceneSample(
                    images=images,
                    depth=depth,
                    valid_mask=torch.ones_like(depth, dtype=torch.bool),
                    intrinsics=torch.eye(3).expand(2, 3, 3).clone(),
                    extrinsics=torch.eye(3, 4).expand(2, 3, 4).clone(),
                    meta={"dataset": "toy", "scene": name, "frame_ids": [0, 1]},
                )
            )
        return scenes

    def protocol_hash(self, ref):
        return short_hash({"name": ref.name, "limit": ref.limit, "v": 1})

    # --- metrics -----------------------------------------------------------------------------------------
    def metric_names(self, ref):
        return list(ref.metrics) if ref.metrics else list(METRICS)

    def metric_info(self, name):
        return METRICS[name]

    def evaluate(self, pred, scene, ref, metrics):
        d = pred.depth[0].double()
        gt = scene.depth.double()
        d = d * (gt.median() / d.median())  # median scale alignment
        rel = (d - gt).abs() / gt
        ratio = torch.maximum(d / gt, gt / d)
        out = {
            "depth.abs_rel": float(rel.mean()),
            "depth.delta1": float((ratio < 1.05).double().mean()),
            "depth.pixels": float(gt.numel()),
        }
        return {m: out[m] for m in metrics}

    def aggregate(self, per_scene, metrics, groups=None):
        out = {}
        for m in metrics:
            v = np.array([s[m] for s in per_scene], dtype=np.float64)
            if METRICS[m].aggregation == "sum":
                out[m] = (float(v.sum()), float("nan"))
            else:
                se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
                out[m] = (float(v.mean()), se)
        return out

    # --- calibration and quantization --------------------------------------------------------------------
    def build_calibration(self, ref, pool, model=None):
        if ref.builder == "first":
            chosen = pool[: ref.num_scenes]
        else:
            idx = np.random.default_rng(ref.seed).permutation(len(pool))[: ref.num_scenes]
            chosen = [pool[i] for i in sorted(idx)]
        return ToyCalibration(chosen, ref.builder, ref.seed)

    def calibration_hash(self, calibration):
        return short_hash([s.content_hash() for s in calibration.samples])

    def quantize(self, model, method, scheme, calibration, config, scope, progress=False):
        t0 = time.perf_counter()
        if config.get("log"):
            with open(config["log"], "a") as f:
                f.write(
                    json.dumps(
                        {"method": method, "scheme": scheme, "seed": getattr(calibration, "seed", None)}
                    )
                    + "\n"
                )
        if config.get("sleep"):
            time.sleep(float(config["sleep"]))
        if method == "boom":
            raise RuntimeError("boom: this method always fails")
        wbits, abits = _scheme_bits(scheme)
        q = copy.deepcopy(model)
        q.wbits, q.abits = wbits, abits
        sites = self.quant_sites(q, scope)
        clip = float(config.get("clip", 1.0))
        if (
            method == "rtn"
        ):  # a calibration-dependent clip, so seeds (calibration draws) give different numbers
            clip *= 0.3 + 0.8 * float(torch.stack([s.images.mean() for s in calibration.samples]).mean())
        blocks = []
        with torch.no_grad():
            for lin in sites.values():
                w = lin.weight.clone()
                lin.weight.copy_(_fake_quant(w, wbits, dim=1, clip=clip))
                if method == "nan":
                    lin.weight[0, 0] = float("nan")
                if abits < 16:
                    lin.register_forward_pre_hook(lambda m, a, b=abits: (_fake_quant(a[0], b, dim=-1),))
            for i, _ in enumerate(q.blocks):
                e = torch.stack(
                    [
                        (getattr(q.blocks[i], n).weight - getattr(model.blocks[i], n).weight).pow(2).mean()
                        for n in ("fc1", "fc2")
                    ]
                ).mean()
                blocks.append(
                    {
                        "name": f"blocks.{i}",
                        "kind": "frame",
                        "rel_mse": float(e),
                        "sqnr_db": float(-10 * math.log10(max(float(e), 1e-12))),
                    }
                )
        manifest = {
            "scheme": scheme,
            "sites": {n: {"w_bits": wbits, "a_bits": abits, "granularity": "per-channel"} for n in sites},
            "skipped": {"stem": "outside scope", "head": "outside scope"},
        }
        return QuantOutcome(q, manifest, {"blocks": blocks}, calib_time_s=time.perf_counter() - t0)

    def backends(self, device):
        return ["emulated"]

    def set_backend(self, model, backend):
        if backend == "emulated" and getattr(model, "abits", 16) < 8:
            raise NotImplementedError("the toy emulated backend has no 4-bit activation kernel")
        model.backend = backend


# one RTN method on the toy model: the grid the fault and identity tests vary ({weights}: more [[models]] lines,
# {backend}: [eval].real_backend)
RTN_GRID = """
[[models]]
name = "toy"
{weights}
[[methods]]
name = "rtn"
label = "RTN"
[[protocols]]
name = "toy-smoke"
[calibration]
protocol = "toy-heldout"
num_scenes = 2
[eval]
bench = false
outlier_stats = false
real_backend = "{backend}"
threads = 1
"""


def rtn_grid(
    tmp_path: Path,
    body: str = RTN_GRID,
    components: str = COMPONENTS,
    schemes: str = '["w8a8"]',
    weights: str = "",
    backend: str = "none",
) -> Path:
    """tmp_path/grid.toml: `body` (RTN_GRID or a variant of it) run with `components` at `schemes`, writing its store
    under tmp_path/out."""
    path = tmp_path / "grid.toml"
    path.write_text(
        f'[run]\ncomponents = "{components}"\nschemes = {schemes}\noutput_dir = "{tmp_path / "out"}"\n'
        + body.format(weights=weights, backend=backend)
    )
    return path


def write_config(path: Path, body: str, run: str = "") -> Path:
    """Write a TOML config whose [run] uses the fake components (`run`: more [run] lines; body: the rest)."""
    path.write_text(f'[run]\ncomponents = "{COMPONENTS}"\n{run}\n{body}')
    return path
