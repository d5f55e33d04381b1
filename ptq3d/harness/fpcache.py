"""On-disk cache of full-precision predictions and their metrics, so N methods cost one FP pass.

Key = SHA-256 of (model weights content hash, protocol hash, scene content hash, device type). The entry is
`<cache>/fp/<key[:2]>/<key>.safetensors` (the Predictions tensors) plus `<key>.<metrics-hash>.json` (the
metric values for one metric list and alignment). Writes go to a temporary file and are renamed into place, so
a killed run never leaves a half-written entry and concurrent workers may share one cache. A full disk raises
DiskFullError (the temporary file removed), never a half entry. A metrics entry holding a non-finite or
non-numeric value is treated as absent (recomputed and rewritten), never reused.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from ptq3d.results.records import short_hash
from ptq3d.results.store import disk_full_error, is_disk_full


def fp_key(model_hash: str, protocol_hash: str, scene_hash: str, device: str) -> str:
    return short_hash(
        {"model": model_hash, "protocol": protocol_hash, "scene": scene_hash, "device": device}, 32
    )


def _write_all(f, data: bytes) -> None:
    f.write(data)


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write via a temporary file + rename, so a reader (or a killed run) never sees half an entry. A full
    disk raises DiskFullError naming the file, with the temporary file removed."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
        with os.fdopen(fd, "wb") as f:
            _write_all(f, data)
            f.flush()
            os.fsync(f.fileno())  # ENOSPC can surface only at flush/fsync on some file systems
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full_error(path, exc) from None
        raise


class FPCache:
    """get/put Predictions and metric dicts by key. root None disables caching."""

    def __init__(self, root: str | Path | None):
        self.root = Path(root) / "fp" if root else None

    def _path(self, key: str, suffix: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}{suffix}"

    # --- predictions ------------------------------------------------------------------------------------
    def get_predictions(self, key: str) -> Any | None:
        if self.root is None:
            return None
        path = self._path(key, ".safetensors")
        if not path.exists():
            return None
        from safetensors.torch import load_file

        from ptq3d.models.base import Predictions

        try:
            t = load_file(str(path))
        except Exception:  # a corrupt entry is a cache miss, not an error
            return None
        return Predictions(
            depth=t["depth"],
            depth_conf=t["depth_conf"],
            world_points=t["world_points"],
            points_conf=t["points_conf"],
            extrinsics=t["extrinsics"],
            intrinsics=t.get("intrinsics"),
            raw={"from_cache": True},
        )

    def put_predictions(self, key: str, pred: Any) -> None:
        if self.root is None:
            return
        from safetensors.torch import save

        tensors = {k: v.detach().cpu().contiguous() for k, v in pred.tensors().items()}
        atomic_write(self._path(key, ".safetensors"), save(tensors))

    # --- metrics ----------------------------------------------------------------------------------------
    def get_metrics(self, key: str, metrics_key: str) -> dict[str, float] | None:
        if self.root is None:
            return None
        path = self._path(key, f".{metrics_key}.json")
        try:
            values = {k: float(v) for k, v in json.loads(path.read_text()).items()}
        except (OSError, ValueError, TypeError, AttributeError):
            return None
        if not all(math.isfinite(v) for v in values.values()):
            return None  # an entry with NaN/Inf was written by something else: recompute, never reuse
        return values

    def put_metrics(self, key: str, metrics_key: str, values: dict[str, float]) -> None:
        """Cache finite metric values only (a non-finite one fails its cell and must not be reused)."""
        if self.root is None or not all(math.isfinite(float(v)) for v in values.values()):
            return
        atomic_write(self._path(key, f".{metrics_key}.json"), json.dumps(values).encode())
