"""Model names -> builders, and `load_model`, the one way the rest of ptq3d gets a GeometryModel.

A builder takes no arguments and returns a GeometryModel whose module has random (or constructor) weights;
it must build under whatever default device is active, so that load_model can build on the meta device
and list_models can count parameters without allocating memory.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import nn

from ptq3d.errors import UserError, unknown_name_error
from ptq3d.models.base import GeometryModel
from ptq3d.models.loading import LoadReport, apply_state_dict, check_finite, check_state_dict, read_state_dict

log = logging.getLogger(__name__)

Builder = Callable[[], GeometryModel]


@dataclass(frozen=True)
class ModelSpec:
    """name, family ('vggt' / 'pi3' / ...), builder, one-line description, optional bundled default weights."""

    name: str
    family: str
    builder: Builder
    description: str = ""
    default_weights: Path | None = None
    placeholder: bool = False  # a lazy entry that a real registration may replace
    post_load: Callable[[GeometryModel], None] | None = (
        None  # applied after the weights (e.g. outlier injection)
    )


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    builder: Builder,
    *,
    family: str = "",
    description: str = "",
    default_weights: str | Path | None = None,
    overwrite: bool = False,
    placeholder: bool = False,
    post_load: Callable[[GeometryModel], None] | None = None,
) -> None:
    """Make `name` loadable by load_model. Re-registering a name raises unless overwrite=True (placeholders,
    such as the lazy Pi3 entries, may always be replaced)."""
    old = _REGISTRY.get(name)
    if old is not None and not (overwrite or old.placeholder):
        raise ValueError(f"model '{name}' is already registered (pass overwrite=True to replace it)")
    _REGISTRY[name] = ModelSpec(
        name,
        family or name.split("-")[0],
        builder,
        description,
        Path(default_weights) if default_weights else None,
        placeholder,
        post_load,
    )
    _param_count.cache_clear()


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise unknown_name_error("model", name, _REGISTRY)
    return _REGISTRY[name]


# --- built-in models -----------------------------------------------------------------------------
def _vggt_builder(config_factory: Callable, name: str) -> Builder:
    def build() -> GeometryModel:
        from ptq3d.models.vggt import VGGT, VGGTAdapter

        return VGGTAdapter(VGGT(config_factory()), name=name)

    return build


def _pi3_entry(name: str) -> tuple[Callable, str | None]:
    """(builder, description or None) from ptq3d.models.pi3.PI3_MODELS[name]; entries may be a callable or
    a (callable, description) tuple."""
    try:
        mod = importlib.import_module("ptq3d.models.pi3")
    except ImportError as exc:
        raise UserError(
            f"model '{name}' is not available: ptq3d.models.pi3 cannot be imported ({exc})"
        ) from exc
    table = getattr(mod, "PI3_MODELS", None)
    if not table or name not in table:
        raise UserError(f"model '{name}' is not available: ptq3d.models.pi3 has no PI3_MODELS['{name}']")
    entry = table[name]
    if isinstance(entry, tuple):
        return entry[0], (entry[1] if len(entry) > 1 else None)
    return entry, None


def _pi3_builder(name: str) -> Builder:
    """Lazy entry: the Pi3 implementation lives in ptq3d.models.pi3 (table PI3_MODELS)."""

    def build() -> GeometryModel:
        fn, _ = _pi3_entry(name)
        out = fn()
        if isinstance(out, GeometryModel):
            return out
        adapter = getattr(importlib.import_module("ptq3d.models.pi3"), "Pi3Adapter", None)
        if isinstance(out, nn.Module) and adapter is not None:
            return adapter(out, name=name)
        raise UserError(
            f"model '{name}': PI3_MODELS['{name}'] built a {type(out).__name__}, not a GeometryModel"
        )

    return build


def _register_builtins() -> None:
    from ptq3d.models.vggt.config import VGGTConfig

    register_model(
        "vggt-1b",
        _vggt_builder(VGGTConfig.vggt_1b, "vggt-1b"),
        family="vggt",
        description="VGGT-1B (facebook/VGGT-1B architecture; track head not implemented). Random init "
        "unless weights are given.",
    )
    register_model(
        "vggt-tiny",
        _vggt_builder(VGGTConfig.tiny, "vggt-tiny"),
        family="vggt",
        description="Tiny VGGT of the reference goldens (ViT-S/14 x2, 2 aggregator pairs at 384). For "
        "conformance tests, not for judging quantization.",
    )
    from ptq3d.models.bundled import VGGT_TINY_SYNTHETIC_WEIGHTS, vggt_tiny_synthetic_config

    register_model(
        "vggt-tiny-synthetic",
        _vggt_builder(vggt_tiny_synthetic_config, "vggt-tiny-synthetic"),
        family="vggt",
        description="The bundled default model: tiny VGGT (112x112, width 128) trained on synthetic scenes by "
        "`ptq3d train-tiny`; model card in ptq3d/models/bundled/README.md.",
        default_weights=VGGT_TINY_SYNTHETIC_WEIGHTS,
    )
    from ptq3d.models.bundled import VGGT_TINY_SYNTHETIC_SINKS_WEIGHTS

    register_model(
        "vggt-tiny-synthetic-sinks",
        _vggt_builder(vggt_tiny_synthetic_config, "vggt-tiny-synthetic-sinks"),
        family="vggt",
        description="vggt-tiny-synthetic fine-tuned with massive activations (two channels at +-30) on its "
        "camera and register tokens, so the qkv/fc1 inputs are heavy-tailed because of the special tokens, as "
        "in VGGT-1B; trained-like weight columns. Model card in ptq3d/models/bundled/README.md.",
        default_weights=VGGT_TINY_SYNTHETIC_SINKS_WEIGHTS,
    )
    from ptq3d.models.bundled.outliers import inject_channel_outliers

    register_model(
        "vggt-tiny-synthetic-outliers",
        _vggt_builder(vggt_tiny_synthetic_config, "vggt-tiny-synthetic-outliers"),
        family="vggt",
        description="vggt-tiny-synthetic with function-preserving outlier channels (20-60x, 2 per site) moved into "
        "the qkv/fc1/proj inputs, as VGGT-1B has; same predictions. The default benchmark's model.",
        default_weights=VGGT_TINY_SYNTHETIC_WEIGHTS,
        post_load=lambda model: inject_channel_outliers(model),
    )
    register_model(
        "pi3",
        _pi3_builder("pi3"),
        family="pi3",
        description="Pi3 (yyfz233/Pi3 architecture). Random init unless weights are given.",
        placeholder=True,
    )
    register_model(
        "pi3-tiny",
        _pi3_builder("pi3-tiny"),
        family="pi3",
        description="Tiny Pi3 of the reference goldens (width 384).",
        placeholder=True,
    )


# --- loading -------------------------------------------------------------------------------------
def _resolve(name_or_config) -> ModelSpec:
    if isinstance(name_or_config, str):
        return get_spec(name_or_config)
    from ptq3d.models.vggt.config import VGGTConfig

    if isinstance(name_or_config, VGGTConfig):
        cfg = name_or_config
        return ModelSpec(
            "vggt-custom", "vggt", _vggt_builder(lambda: cfg, "vggt-custom"), "VGGT from a config"
        )
    raise UserError(f"load_model: expected a model name or a VGGTConfig, got {type(name_or_config).__name__}")


def _reset_constant_buffers(module: nn.Module) -> bool:
    """After to_empty(): refill non-persistent buffers through each owner's reset_constant_buffers().
    Returns False if some module has non-persistent buffers and no such method (then we cannot build on meta)."""
    ok = True
    for mod in module.modules():
        if getattr(mod, "_non_persistent_buffers_set", None) and not hasattr(mod, "reset_constant_buffers"):
            ok = False
    if ok:
        for mod in module.modules():
            if hasattr(mod, "reset_constant_buffers"):
                mod.reset_constant_buffers()
    return ok


def _fill_constant_defaults(module: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Complete `state` (in place) with constant buffers the checkpoint lacks, where the model declares them
    through constant_state_defaults(). Returns the filled keys (also logged)."""
    make_defaults = getattr(module, "constant_state_defaults", None)
    if make_defaults is None:
        return []
    defaults = make_defaults()
    filled = sorted(k for k in defaults if k not in state)
    for k in filled:
        state[k] = defaults[k]
    if filled:
        log.warning("checkpoint lacks constant buffers %s; filled with their fixed values", ", ".join(filled))
    return filled


def load_model(
    name_or_config,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    allow_nonfinite: bool = False,
) -> GeometryModel:
    """Build a registered model (or a VGGTConfig) in eval mode on `device`.

    weights: a checkpoint path (.safetensors, .safetensors.xz, .pt/.pth/.bin); None -> the model's bundled
    default weights if it has any, else random init. Loading is strict (CheckpointError lists missing,
    unexpected and mis-shaped keys); keys of parts we do not implement (VGGT's track head) are reported in
    `model.load_report.ignored` and logged. Builds on the meta device first when weights are given, so a
    1B model is not randomly initialised just to be overwritten. A checkpoint with NaN/Inf tensors is refused
    with their names unless allow_nonfinite (ptq3d.models.loading.check_finite).
    """
    spec = _resolve(name_or_config)
    weights = weights if weights is not None else spec.default_weights
    device = torch.device(device)
    if weights is None:
        with device:
            model = spec.builder()
        model.load_report = None
        if spec.post_load is not None:
            spec.post_load(model)
        return model.eval()
    state = read_state_dict(weights)
    with torch.device("meta"):
        model = spec.builder()
    module = model.module
    prefixes = tuple(getattr(module, "IGNORED_KEY_PREFIXES", ()))
    filled = _fill_constant_defaults(module, state)
    check_state_dict(module, state, str(weights), prefixes)  # fail before allocating the model
    check_finite({k: v for k, v in state.items() if not k.startswith(prefixes)}, str(weights), allow_nonfinite)
    module.to_empty(device=device)
    if not _reset_constant_buffers(module):  # rebuild for real: some buffer value would be lost
        with device:
            model = spec.builder()
        module = model.module
    report: LoadReport = apply_state_dict(module, state, str(weights), prefixes, allow_nonfinite)
    report.filled = filled
    model.load_report = report
    if spec.post_load is not None:
        spec.post_load(model)
    return model.eval()


@cache
def _param_count(name: str) -> int:
    with torch.device("meta"):
        model = get_spec(name).builder()
    return sum(p.numel() for p in model.module.parameters())


def list_models() -> list[dict]:
    """[{name, family, params (int, or None if the model cannot be built here), description}], sorted by name."""
    rows = []
    for name in model_names():
        spec = _REGISTRY[name]
        desc = spec.description
        try:
            if spec.placeholder and spec.family == "pi3":
                desc = _pi3_entry(name)[1] or desc
            params = _param_count(name)
        except UserError as exc:
            params, desc = None, f"{desc} [unavailable: {exc}]"
        rows.append({"name": name, "family": spec.family, "params": params, "description": desc})
    return rows


_register_builtins()
