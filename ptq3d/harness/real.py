"""RealComponents: the harness's adapter onto ptq3d.models, .datasets, .metrics, .methods and .kernels.

Every call the runner makes into the rest of ptq3d goes through this class, so a signature change elsewhere
touches this file only. Heavy modules are imported on first use.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ptq3d.errors import ConfigError, UserError, unknown_name_error
from ptq3d.harness.components import Components, MetricInfo, QuantOutcome
from ptq3d.results.records import FP_METHOD, CalibRef, ModelRef, ProtocolRef

# The headline metrics per task (the tables stay readable); [[protocols]].metrics picks others.
DEFAULT_METRICS: tuple[str, ...] = (
    "pose.auc@30",
    "pose.auc@5",
    "depth.abs_rel",
    "depth.delta<1.25",
    "points.acc",
    "points.comp",
    "points.nc",
)


def state_hash(module) -> str:
    """SHA-256 (16 hex) over a module's state_dict names, dtypes, shapes and bytes."""
    import numpy as np
    import torch

    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(np.ascontiguousarray(t.numpy()).tobytes())
    return h.hexdigest()[:16]


class RealComponents(Components):
    """The ptq3d implementations (see Components for the contract)."""

    name = "real"

    # --- names -----------------------------------------------------------------------------------------
    def list_models(self) -> list[str]:
        from ptq3d.models import model_names

        return model_names()

    def list_methods(self) -> list[str]:
        from ptq3d.methods import list_methods

        return [m for m in list_methods() if m != FP_METHOD]

    def list_schemes(self) -> list[str]:
        from ptq3d.methods import list_schemes

        return list_schemes()

    def check_scheme(self, scheme: str) -> None:
        from ptq3d.methods import get_scheme

        get_scheme(scheme)  # accepts named schemes and the w<b>[g<G>]a<b>[-static|-asym] grammar

    def list_protocols(self) -> list[str]:
        from ptq3d.datasets import list_protocols

        return [p.name for p in list_protocols()]

    def list_datasets(self) -> list[str]:
        from ptq3d.datasets.protocols import DATASETS

        return list(DATASETS)

    def list_metrics(self) -> list[str]:
        from ptq3d.metrics import list_metrics

        return list_metrics()

    def list_calibration_builders(self) -> list[str]:
        from ptq3d.calibration.builders import list_calibration_builders

        return list_calibration_builders()

    def describe(self, kind: str, name: str) -> str:
        """One line for `ptq3d ls`."""
        try:
            if kind == "models":
                from ptq3d.models.registry import get_spec

                return get_spec(name).description
            if kind == "methods":
                from ptq3d.methods import get_method

                return get_method(name).description
            if kind == "protocols":
                from ptq3d.datasets import get_protocol

                p = get_protocol(name)
                return f"[{p.dataset} v{p.version}] {p.description}"
            if kind == "metrics":
                from ptq3d.metrics import get_metric

                s = get_metric(name)
                d = {True: "higher is better", False: "lower is better", None: "count"}[s.higher_is_better]
                return f"{s.unit}, {d}, {s.aggregation} over scenes"
        except UserError:
            return ""
        return ""

    def check_method_config(self, method: str, config: dict[str, Any]) -> None:
        from ptq3d.methods import get_method

        get_method(method).make_config(config)

    def method_needs_calibration(
        self, method: str, config: dict[str, Any], scheme: str | None = None
    ) -> bool:
        if method == FP_METHOD:
            return False
        from ptq3d.methods import get_method, get_scheme

        spec = get_method(method)
        cfg = spec.make_config(config)
        if spec.needs_calibration(False, cfg):
            return True  # calibrates whatever the activations (e.g. QuaRot with GPTQ weights)
        static = bool(getattr(cfg, "act_static", False))
        if scheme is not None:
            s = get_scheme(scheme)
            static = static or (s.act is not None and not s.act.dynamic)
        elif spec.requires_calibration == "static_act":
            return True  # some scheme might be static: ask for calibration data
        return spec.needs_calibration(static)

    def protocol_needs_root(self, protocol: str) -> bool:
        from ptq3d.datasets import get_protocol

        return get_protocol(protocol).dataset != "synthetic"

    # --- models ----------------------------------------------------------------------------------------
    def load_model(self, ref: ModelRef, device: str) -> Any:
        from ptq3d.models import load_model

        if ref.options:
            raise ConfigError(
                f"model '{ref.name}': options {sorted(ref.options)} are not supported by load_model"
            )
        return load_model(ref.name, weights=ref.weights, device=device)

    def model_hash(self, model: Any) -> str:
        return state_hash(model.module)

    def predict(self, model: Any, images: Any) -> Any:
        return model.predict(images)

    def model_bytes(self, model: Any) -> int:
        from ptq3d.kernels import model_bytes

        mb = model_bytes(model.module)
        return mb.model_bytes_quantized if mb.quant_sites else mb.model_bytes_fp16

    def quant_sites(self, model: Any, scope: str) -> dict[str, Any]:
        return model.quant_sites(scope)

    def block_of_site(self, model: Any, scope: str) -> dict[str, str]:
        out = {}
        for blk, sites in model.iter_block_sites(scope):
            for rel in sites:
                out[f"{blk.name}.{rel}"] = blk.name
        return out

    def describe_model(self, model: Any, ref: ModelRef) -> dict[str, Any]:
        from ptq3d.models.registry import get_spec

        spec = get_spec(ref.name)
        weights = ref.weights or (str(spec.default_weights) if spec.default_weights else None)
        out: dict[str, Any] = {"name": ref.name, "family": spec.family, "params": model.num_parameters()}
        if weights:
            out["weights"] = weights
        else:
            out["weights"] = f"random init (seed {ref.init_seed})"
            out["note"] = (
                f"{ref.name} has random weights (seed {ref.init_seed}): accuracy is measured against the ground "
                "truth of the scenes, but an untrained model predicts noise, so read the numbers as quantization "
                "error relative to FP, not as geometry quality."
            )
        return out

    # --- data ------------------------------------------------------------------------------------------
    def _protocol(self, ref: ProtocolRef):
        from ptq3d.datasets import get_protocol

        p = get_protocol(ref.name)
        return p.with_limit(ref.limit) if ref.limit else p

    def load_scenes(self, ref: ProtocolRef) -> list[Any]:
        from ptq3d.datasets import load_protocol_scenes

        return load_protocol_scenes(self._protocol(ref), ref.root)

    def protocol_hash(self, ref: ProtocolRef) -> str:
        return self._protocol(ref).hash[:16]

    # --- metrics ---------------------------------------------------------------------------------------
    def metric_names(self, ref: ProtocolRef) -> list[str]:
        return list(ref.metrics) if ref.metrics else list(DEFAULT_METRICS)

    def metric_info(self, name: str) -> MetricInfo:
        from ptq3d.metrics import get_metric

        s = get_metric(name)
        return MetricInfo(name, s.higher_is_better, s.unit, s.aggregation)

    def _policy(self, ref: ProtocolRef):
        from ptq3d.metrics import AlignmentPolicy

        opts = dict(ref.alignment_options)
        try:
            return AlignmentPolicy.preset(ref.alignment, **opts) if ref.alignment else AlignmentPolicy(**opts)
        except TypeError as exc:
            raise ConfigError(f"protocol '{ref.name}': bad alignment_options {opts}: {exc}") from None

    def check_alignment(self, ref: ProtocolRef) -> None:
        self._policy(ref)

    def required_fields(self, ref: ProtocolRef) -> tuple[str, ...]:
        base = ("depth", "depth_conf", "world_points", "points_conf", "extrinsics")
        # VGGT with random weights can predict a zero field of view (ReLU), i.e. infinite focal lengths;
        # only the depth-unprojection policy reads the predicted intrinsics
        return base + (("intrinsics",) if self._policy(ref).point_source == "depth_unproject" else ())

    def evaluate(self, pred: Any, scene: Any, ref: ProtocolRef, metrics) -> dict[str, float]:
        from ptq3d.metrics import evaluate_scene

        return evaluate_scene(pred.to("cpu"), scene, list(metrics), self._policy(ref))

    def aggregate(self, per_scene, metrics) -> dict[str, tuple[float, float]]:
        from ptq3d.metrics import aggregate

        return aggregate(per_scene, list(metrics))

    # --- calibration and quantization ------------------------------------------------------------------
    def build_calibration(self, ref: CalibRef, pool: list[Any], model: Any = None) -> Any:
        from ptq3d.methods import get_calibration_builder

        if ref.num_scenes > len(pool):
            raise ConfigError(
                f"calibration: num_scenes = {ref.num_scenes} but protocol '{ref.protocol}' has {len(pool)} scenes"
            )
        return get_calibration_builder(ref.builder)(pool, ref.num_scenes, ref.seed, model=model)

    def calibration_hash(self, calibration: Any) -> str:
        return calibration.hash

    def quantize(self, model, method, scheme, calibration, config, scope, progress=False) -> QuantOutcome:
        from ptq3d.methods import quantize_model

        qm = quantize_model(model, method, scheme, calibration, config, scope, progress=progress)
        st = qm.stats
        return QuantOutcome(qm, qm.manifest, st.to_dict(), st.wall_time_s, st.peak_rss_bytes)

    def backends(self, device: str) -> list[str]:
        out = ["emulated"]
        if device.startswith("cuda"):
            out.append("triton")
        return out

    def set_backend(self, model: Any, backend: str) -> None:
        from ptq3d.methods import set_backend

        if backend not in ("fake", "emulated", "triton"):
            raise unknown_name_error("backend", backend, ("fake", "emulated", "triton"))
        set_backend(model, backend)
