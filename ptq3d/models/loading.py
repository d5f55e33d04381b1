"""Reading checkpoint files and loading them strictly into a model.

Formats (by file name): `.safetensors`, `.safetensors.xz` (lzma-compressed safetensors, the reference
format), `.pt` / `.pth` / `.bin` (torch.load with weights_only=True: plain tensors only, never pickled code).
A checkpoint must match the model key for key and shape for shape; keys under a model's declared ignored
prefixes (VGGT: `track_head.`, a head we do not implement) are reported in the LoadReport and logged.
A checkpoint holding NaN or Inf in any floating tensor it loads is refused with the tensor names: such a model
gives NaN outputs that metrics could turn into quiet numbers. `allow_nonfinite=True` lets an expert load one
anyway; the report then lists the tensors in `nonfinite`.
"""

from __future__ import annotations

import logging
import lzma
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ptq3d.errors import CheckpointError

log = logging.getLogger(__name__)

SUFFIXES = (".safetensors", ".safetensors.xz", ".pt", ".pth", ".bin")
MAX_LISTED = 8  # keys shown per category in an error message


@dataclass
class LoadReport:
    """What a checkpoint load did. loaded: number of tensors copied; ignored: checkpoint keys skipped on purpose
    (e.g. VGGT's track head); cast: keys whose dtype was converted to the model's (e.g. bf16 -> fp32);
    filled: constant buffers the checkpoint lacked, completed with their fixed values (e.g. Pi3 image_mean);
    nonfinite: tensors holding NaN/Inf, loaded only because allow_nonfinite=True was given."""

    path: str
    loaded: int
    ignored: list[str] = field(default_factory=list)
    cast: list[str] = field(default_factory=list)
    filled: list[str] = field(default_factory=list)
    nonfinite: list[str] = field(default_factory=list)


def _short_list(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED])
    return shown + (f", ... and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else "")


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Accept a plain state_dict or one nested under 'state_dict' / 'model' (common training checkpoints)."""
    if isinstance(obj, dict):
        for nest in ("state_dict", "model"):
            if nest in obj and isinstance(obj[nest], dict) and not isinstance(obj[nest], torch.Tensor):
                obj = obj[nest]
                break
        bad = [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
        if not bad:
            return dict(obj)
        raise CheckpointError(
            f"{path}: not a state_dict of tensors (entries {_short_list([str(b) for b in bad])})"
        )
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state_dict (dict of name -> tensor)")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a {name: tensor} dict on the CPU. Raises CheckpointError naming the file
    for a missing, truncated, corrupt, code-carrying or unsupported file."""
    from safetensors.torch import load as st_load
    from safetensors.torch import load_file

    path = Path(path)
    name = path.name.lower()
    if not name.endswith(SUFFIXES):
        raise CheckpointError(
            f"{path}: unsupported checkpoint format (expected one of {', '.join(SUFFIXES)})"
        )
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        if name.endswith(".safetensors"):
            return load_file(str(path), device="cpu")
        if name.endswith(".safetensors.xz"):
            with lzma.open(path) as fh:
                return st_load(fh.read())
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: refused to unpickle: the file holds objects or code beyond plain tensors "
            f"(loaded with weights_only=True; re-save it as a state_dict or .safetensors) [{first}]"
        ) from exc
    except (lzma.LZMAError, EOFError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt compressed checkpoint ({exc})") from exc
    except Exception as exc:  # safetensors / zip / torch errors differ by version; name the file in all cases
        raise CheckpointError(
            f"{path}: truncated or corrupt checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    return _unwrap(obj, path)


def nonfinite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating tensors in `state` holding NaN or Inf, each with its count ('name (3 nan, 1 inf)')."""
    out = []
    for k, v in state.items():
        if not (v.is_floating_point() or v.is_complex()) or v.device.type == "meta":
            continue
        finite = torch.isfinite(v)
        if bool(finite.all()):
            continue
        n_nan = int(torch.isnan(v).sum())
        n_inf = int((~finite).sum()) - n_nan
        out.append(f"{k} ({n_nan} nan, {n_inf} inf)")
    return out


def check_finite(state: dict[str, torch.Tensor], source: str, allow_nonfinite: bool = False) -> list[str]:
    """Raise CheckpointError naming the tensors of `state` that hold NaN/Inf unless allow_nonfinite; returns them."""
    bad = nonfinite_tensors(state)
    if bad and not allow_nonfinite:
        raise CheckpointError(
            f"{source}: {len(bad)} tensors hold NaN/Inf: {_short_list(bad)} (refused; pass allow_nonfinite=True "
            f"or --allow-nonfinite to load it anyway)"
        )
    return bad


def check_state_dict(
    module: nn.Module, state: dict[str, torch.Tensor], source: str, ignored_prefixes: tuple[str, ...] = ()
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Strictly compare `state` with module.state_dict() by key and shape.

    Returns (the matching entries, the ignored keys). Raises CheckpointError listing missing, unexpected and
    mis-shaped keys (the first few of each, with counts).
    """
    expected = module.state_dict()
    ignored = sorted(k for k in state if k not in expected and k.startswith(ignored_prefixes))
    unexpected = sorted(k for k in state if k not in expected and not k.startswith(ignored_prefixes))
    missing = [k for k in expected if k not in state]
    shapes = [
        f"{k} (checkpoint {list(state[k].shape)}, model {list(expected[k].shape)})"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_short_list(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_short_list(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} mis-shaped: {_short_list(shapes)}")
    if problems:
        raise CheckpointError(f"{source}: checkpoint does not match the model; " + "; ".join(problems))
    return {k: state[k] for k in expected}, ignored


def apply_state_dict(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    source: str,
    ignored_prefixes: tuple[str, ...] = (),
    allow_nonfinite: bool = False,
) -> LoadReport:
    """Strictly load `state` into `module` (see check_state_dict); floating tensors are cast to the model's
    dtypes. Keys under ignored_prefixes are reported in the LoadReport and logged. Tensors with NaN/Inf are
    refused (CheckpointError with their names) unless allow_nonfinite."""
    matched, ignored = check_state_dict(module, state, source, ignored_prefixes)
    nonfinite = check_finite(matched, source, allow_nonfinite)
    if nonfinite:
        log.warning("%s: loading %d tensors with NaN/Inf (allow_nonfinite): %s", source, len(nonfinite),
                    _short_list(nonfinite))  # fmt: skip
    expected = module.state_dict()
    cast = []
    for k, v in matched.items():
        want = expected[k]
        if v.dtype != want.dtype:
            if not (v.is_floating_point() and want.is_floating_point()):
                raise CheckpointError(
                    f"{source}: key {k} has dtype {v.dtype}, the model expects {want.dtype}"
                )
            cast.append(k)
            matched[k] = v.to(want.dtype)
    module.load_state_dict(matched, strict=True)
    if ignored:
        log.warning(
            "%s: ignored %d checkpoint keys the model does not implement (%s)",
            source,
            len(ignored),
            _short_list(ignored),
        )
    return LoadReport(path=source, loaded=len(matched), ignored=ignored, cast=cast, nonfinite=nonfinite)


def load_checkpoint(
    module: nn.Module, path: str | Path, ignored_prefixes: tuple[str, ...] = (), allow_nonfinite: bool = False
) -> LoadReport:
    """Read `path` and load it strictly into `module` (see apply_state_dict)."""
    return apply_state_dict(module, read_state_dict(path), str(path), ignored_prefixes, allow_nonfinite)
