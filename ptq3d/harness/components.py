"""The one place where the harness touches models, datasets, metrics, methods and kernels.

The runner only calls the methods of a `Components` object, so a signature change elsewhere in ptq3d touches
this file alone, and tests can run the whole harness on small fake components.

`get_components(name)` resolves the `components` field of a CellSpec: "real" (the ptq3d implementations, this
module's RealComponents), a name registered with `register_components`, an installed entry point of the group
`ptq3d.components`, or "package.module:attr" naming a Components subclass or factory (importable in every
worker, which is what a distributed executor needs). A config file is not code: `check_components_allowed`
refuses a "module:attr" that would import a module unless imports are allowed (`--allow-imports`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from ptq3d.errors import ConfigError, UserError, unknown_name_error
from ptq3d.results.records import FP_METHOD, CalibRef, ModelRef, ProtocolRef


@dataclass(frozen=True)
class MetricInfo:
    """How to read a metric: higher_is_better (None: a count, no direction), unit, aggregation, and weight_key: the
    per-scene count metric that weights a "weighted" / "pooled" aggregation (None for the others)."""

    name: str
    higher_is_better: bool | None
    unit: str = ""
    aggregation: str = "mean"
    weight_key: str | None = None


@dataclass
class QuantOutcome:
    """What quantize() hands back to the runner. model: the quantized model (predict-able through the
    components); manifest: coverage manifest (JSON-able); stats: calibration statistics (JSON-able; the runner
    reads "blocks" [{name, kind, sqnr_db, rel_mse, ...}] for the per-block error table); calib_time_s and
    calib_peak_bytes: as measured by the method itself (None if it does not measure)."""

    model: Any
    manifest: dict[str, Any]
    stats: dict[str, Any]
    calib_time_s: float | None = None
    calib_peak_bytes: int | None = None


class Components:
    """Interface the runner needs. Scenes are `ptq3d.datasets.base.SceneSample` (images [S, 3, H, W] in
    [0, 1]); predictions are `ptq3d.models.base.Predictions` with batch dimension 1."""

    name = "abstract"

    # --- names (validation, `ptq3d ls`) ----------------------------------------------------------------
    def list_models(self) -> list[str]:
        raise NotImplementedError

    def list_methods(self) -> list[str]:
        """Registered PTQ methods, the FP reference excluded."""
        raise NotImplementedError

    def list_schemes(self) -> list[str]:
        raise NotImplementedError

    def list_protocols(self) -> list[str]:
        raise NotImplementedError

    def list_datasets(self) -> list[str]:
        return []

    def list_metrics(self) -> list[str]:
        raise NotImplementedError

    def list_calibration_builders(self) -> list[str]:
        raise NotImplementedError

    def check_scheme(self, scheme: str) -> None:
        """Raise UserError if `scheme` is not a valid scheme name (default: must be listed)."""
        if scheme not in self.list_schemes():
            raise unknown_name_error("scheme", scheme, self.list_schemes())

    def check_plan(self, ref: ModelRef, plan: dict[str, Any], scope: str) -> None:
        """Raise UserError if a mixed-precision plan (PrecisionPlan.to_dict) names a block or site that model
        `ref` does not have at `scope` (default: no check; components that know the architecture override it)."""

    def check_method_config(self, method: str, config: dict[str, Any]) -> None:
        """Raise UserError if `config` is not valid for `method`."""

    def resolve_method_config(
        self, method: str, preset: str, config: dict[str, Any], defaults: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The config `method` runs with: `preset`'s values, then `defaults` (e.g. the epochs of its calibration
        defaults, where the config has such a field), then the user's keys; validated (UserError naming the
        key). Default: one preset, "paper", and the user's keys as they are."""
        if preset != "paper":
            raise unknown_name_error(f"preset of method '{method}'", preset, ["paper"])
        self.check_method_config(method, config)
        return dict(config)

    def method_presets(self, method: str) -> list[str]:
        """The presets `method` declares ("paper", the default, always)."""
        return ["paper"]

    def method_calibration_defaults(self, method: str, preset: str) -> dict[str, Any]:
        """The method's own calibration settings for `preset` (builder, num_scenes, frames, epochs, scope,
        builder_options); {} if it declares none."""
        return {}

    def check_builder_options(self, builder: str, options: dict[str, Any]) -> None:
        """Raise UserError if `options` are not valid for calibration builder `builder` (default: none are)."""
        if options:
            raise UserError(
                f"calibration builder '{builder}' takes no options (got {', '.join(sorted(options))})"
            )

    def protocol_frames(self, protocol: str) -> int | None:
        """Frames per scene of `protocol` where it fixes them (checks `frames` at validate time), else None."""
        return None

    def method_needs_calibration(
        self, method: str, config: dict[str, Any], scheme: str | None = None
    ) -> bool:
        """Whether `method` with `config` at `scheme` uses calibration data (scheme None: with any scheme)."""
        return method != FP_METHOD

    def protocol_needs_root(self, protocol: str) -> bool:
        return False

    def check_alignment(self, ref: ProtocolRef) -> None:
        """Raise UserError if the protocol's alignment preset / options are invalid."""

    def check_protocol_data(self, ref: ProtocolRef) -> list[str]:
        """One line per problem with the protocol's data (root missing or unreadable, a listed scene absent, an
        unknown scene in ref.scenes); [] when fine. Raises UserError for a scene subset the protocol lacks."""
        return []

    # --- models ----------------------------------------------------------------------------------------
    def load_model(self, ref: ModelRef, device: str) -> Any:
        raise NotImplementedError

    def model_hash(self, model: Any) -> str:
        """Content hash of the model's weights (16 hex)."""
        raise NotImplementedError

    def predict(self, model: Any, images: Any) -> Any:
        """images [1, S, 3, H, W] on the model's device -> Predictions."""
        raise NotImplementedError

    def model_bytes(self, model: Any) -> int:
        raise NotImplementedError

    def quant_sites(self, model: Any, scope: str) -> dict[str, Any]:
        """Fully-qualified name -> nn.Linear of the sites in scope (for outlier statistics)."""
        return {}

    def block_of_site(self, model: Any, scope: str) -> dict[str, str]:
        """site name -> block name (for grouping outlier statistics per block)."""
        return {}

    # --- data ------------------------------------------------------------------------------------------
    def load_scenes(self, ref: ProtocolRef) -> list[Any]:
        raise NotImplementedError

    def protocol_hash(self, ref: ProtocolRef) -> str:
        raise NotImplementedError

    def scene_name(self, scene: Any) -> str:
        meta = getattr(scene, "meta", {}) or {}
        return str(meta.get("scene", "scene"))

    def scene_hash(self, scene: Any) -> str:
        return scene.content_hash()

    # --- metrics ---------------------------------------------------------------------------------------
    def metric_names(self, ref: ProtocolRef) -> list[str]:
        """The metrics this protocol reports (ref.metrics if given, else the protocol's defaults)."""
        raise NotImplementedError

    def metric_info(self, name: str) -> MetricInfo:
        raise NotImplementedError

    def required_fields(self, ref: ProtocolRef) -> tuple[str, ...]:
        """Prediction fields that must be finite for the cell to count (the ones the metrics read). Non-finite
        values elsewhere are noted in the cell's stats, not failed on."""
        return ("depth", "depth_conf", "world_points", "points_conf", "extrinsics")

    def evaluate(self, pred: Any, scene: Any, ref: ProtocolRef, metrics: Sequence[str]) -> dict[str, float]:
        raise NotImplementedError

    def aggregate(
        self, per_scene: list[dict[str, float]], metrics: Sequence[str], groups: Sequence[str] | None = None
    ) -> dict[str, tuple[float, float]]:
        """Per-scene values -> {metric: (value, standard error over scenes)}; groups: one label per scene
        (`scene_groups`) for metrics the protocol aggregates per group, or None."""
        raise NotImplementedError

    def scene_groups(self, ref: ProtocolRef, scenes: list[Any]) -> list[str] | None:
        """The group label of every scene where the protocol aggregates per group (CO3D pose AUC per category,
        as VGGT and QuantVGGT compute it), else None."""
        return None

    # --- calibration and quantization ------------------------------------------------------------------
    def build_calibration(self, ref: CalibRef, pool: list[Any], model: Any = None) -> Any:
        """The calibration set of `ref` drawn from `pool`; model: the FP model, for builders that score
        candidates with its activations (nfds, taptq)."""
        raise NotImplementedError

    def calibration_hash(self, calibration: Any) -> str:
        raise NotImplementedError

    def quantize(
        self,
        model: Any,
        method: str,
        scheme: str,
        calibration: Any,
        config: dict[str, Any],
        scope: str,
        progress: bool = False,
        plan: dict[str, Any] | None = None,
    ) -> QuantOutcome:
        """Quantize a copy of `model` (the FP model must stay usable); progress: a bar per calibrated block;
        plan: a mixed-precision plan as PrecisionPlan.to_dict (only passed when the method entry names one)."""
        raise NotImplementedError

    def backends(self, device: str) -> list[str]:
        """Real-kernel backends usable on `device` (e.g. ["emulated"] on CPU, ["emulated", "triton"] on CUDA)."""
        return []

    def set_backend(self, model: Any, backend: str) -> None:
        raise NotImplementedError

    # --- provenance ------------------------------------------------------------------------------------
    def describe_model(self, model: Any, ref: ModelRef) -> dict[str, Any]:
        """Provenance notes about the model (e.g. 'random init, seed 0')."""
        return {"name": ref.name, "weights": ref.weights or f"random init (seed {ref.init_seed})"}


# --- resolution ---------------------------------------------------------------------------------------------

_FACTORIES: dict[str, Callable[[], Components] | str] = {"real": "ptq3d.harness.real:RealComponents"}


def register_components(name: str, factory: Callable[[], Components] | str) -> None:
    """Make `name` usable as a CellSpec's components (a callable or a "module:attr" string)."""
    _FACTORIES[name] = factory
    get_components.cache_clear()


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    if not attr:
        raise ConfigError(f"components '{target}': expected 'package.module:attr'")
    try:
        obj = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"components '{target}': cannot import module '{module}' ({exc})") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"components '{target}': module '{module}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    return obj


ENTRY_POINT_GROUP = "ptq3d.components"


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def check_components_allowed(name: str, allow_imports: bool) -> None:
    """Raise ConfigError unless resolving `name` runs no code the user did not install or ask for: a registered
    name, an installed `ptq3d.components` entry point, or (without allow_imports) a "module:attr" whose module
    is already imported and whose attribute is a Components subclass."""
    if allow_imports or name in _FACTORIES or name in _entry_points():
        return
    if ":" not in name:
        raise unknown_name_error("components", name, [*_FACTORIES, *_entry_points()])
    module, _, attr = name.partition(":")
    obj = sys.modules.get(module)
    for part in attr.split(".") if obj is not None else ():
        obj = getattr(obj, part, None)
    if not (isinstance(obj, type) and issubclass(obj, Components)):
        raise ConfigError(
            f"components '{name}' would import module '{module}': a config file may only name registered "
            f"components or a '{ENTRY_POINT_GROUP}' entry point; pass --allow-imports to import it"
        )


@cache
def get_components(name: str = "real") -> Components:
    """The Components instance for `name` (cached per process)."""
    if name in _FACTORIES:
        factory = _FACTORIES[name]
    elif ":" in name:
        factory = name
    elif name in _entry_points():
        try:
            factory = _entry_points()[name].load()
        except Exception as exc:
            raise ConfigError(
                f"components '{name}': cannot load its entry point ({type(exc).__name__}: {exc})"
            ) from None
    else:
        raise unknown_name_error("components", name, [*_FACTORIES, *_entry_points()])
    if isinstance(factory, str):
        factory = _import(factory)
    comp = factory()
    if not isinstance(comp, Components):
        raise UserError(
            f"components '{name}' did not produce a Components instance (got {type(comp).__name__})"
        )
    return comp
