"""A cell's identity by content, and the label rules that keep one report row per cell.

A cell id (CellSpec.cell_id) hashes the whole spec, and `prepare(cfg)` puts the content of every input into it
before a run:

- weights: ModelRef.weights_sha256, the SHA-256 of the checkpoint file's bytes (the model's bundled default
  checkpoint when no weights are named). Hashing a 4 GB checkpoint takes seconds, so digests are cached by
  (path, size, mtime, ctime, inode) in memory and in `<cache_dir>/file-hashes.json`; replacing a file in place
  changes its mtime/ctime/inode and so forces a new digest.
- dataset files: ProtocolRef.data_hash, the protocol definition's hash (its version) plus a manifest of the
  files under its root: every file's relative path, size and mtime, and the SHA-256 of each file of at most
  SMALL_FILE_BYTES (pose and split files, calibration lists); big images are covered by size and mtime.
- method code: MethodRef.version, the `version` of the method's registry entry (bump it when a change to the
  method's code changes its numbers).
- protocol, method config and scheme are fields of the spec already; schemes are normalised first ("W8A8 " is
  "w8a8"), so spellings of one scheme make one cell.

Labels (what a report row shows) must be unique per kind: two models, methods or protocols with one label
and different settings are refused (ConfigError naming both entries; identical entries are run once, with a
note). The label "FP" (any case) is reserved for the full-precision reference row. After expansion, no two
cells may share a row key (CellSpec.row_key).

`mark_changed(store_path, cells)` compares a grid with a store it resumes: a finished cell of the same row
whose inputs changed is marked "stale" (never ranked) and reported in one line per change, and the run
recomputes it (its cell id is new); writing the new cell replaces the stale one (ResultsStore.write_cell).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ptq3d.errors import ConfigError
from ptq3d.harness.config import normalise_scheme
from ptq3d.results.records import FP_METHOD, CellSpec, short_hash, spec_changes

SMALL_FILE_BYTES = 64 * 1024
RESERVED_METHOD_LABELS = ("fp",)  # compared case-insensitively: the FP reference row's label
HASH_CACHE_NAME = "file-hashes.json"

_memo: dict[str, str] = {}


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_sha256(path: str | Path, cache_file: str | Path | None = None) -> str:
    """SHA-256 (hex) of a file's bytes, cached by (path, size, mtime, ctime, inode)."""
    p = Path(path).resolve()
    key = _stat_key(p)
    if key in _memo:
        return _memo[key]
    disk: dict[str, str] = {}
    if cache_file is not None:
        try:
            disk = json.loads(Path(cache_file).read_text())
        except (OSError, ValueError):
            disk = {}
    digest = disk.get(key) if isinstance(disk, dict) else None
    if not isinstance(digest, str):
        digest = _sha256_file(p)
        if cache_file is not None:
            from ptq3d.harness.fpcache import atomic_write

            live = {k: v for k, v in disk.items() if Path(k.split("|", 1)[0]).exists()}
            live[key] = digest
            atomic_write(Path(cache_file), json.dumps(live, indent=0, sort_keys=True).encode())
    _memo[key] = digest
    return digest


def tree_manifest(root: str | Path) -> str:
    """Hash (hex) of the files under `root`: relative path, size and mtime of each, and the content of each
    file of at most SMALL_FILE_BYTES. A single file is hashed the same way."""
    root = Path(root)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        rel = p.name if p == root else p.relative_to(root).as_posix()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        if st.st_size <= SMALL_FILE_BYTES:
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


# --- labels ---------------------------------------------------------------------------------------------


def _unique_by_label(
    src: str, where: str, items: Sequence[Any], label: Callable[[Any], str], notes: list[str]
) -> list[Any]:
    kept: list[Any] = []
    first: dict[str, tuple[int, Any]] = {}
    for i, item in enumerate(items):
        name = label(item)
        if name not in first:
            first[name] = (i, item)
            kept.append(item)
            continue
        j, prev = first[name]
        if prev == item:
            notes.append(f"{where}[{i}] repeats {where}[{j}] ({name!r}): it runs once")
            continue
        differ = sorted({c.split(":", 1)[0] for c in spec_changes(_plain(prev), _plain(item))})
        raise ConfigError(
            f"{src}: {where}[{j}] and {where}[{i}] are both labelled {name!r} but differ in "
            f"{', '.join(differ)}: give each a distinct 'label'"
        )
    return kept


def _plain(obj: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(obj), default=str))


def check_labels(cfg: Any) -> list[str]:
    """Refuse labels that would merge two different rows (ConfigError, one line naming both entries) or take
    the FP reference row's label; run identical entries once. Normalises and de-duplicates cfg.schemes.
    Returns notes (one line each) on what was de-duplicated. Needs names resolved (methods = "all" expanded)."""
    src = cfg.source
    notes: list[str] = []
    schemes: list[str] = []
    for i, s in enumerate(cfg.schemes):
        n = normalise_scheme(s)
        if not n:
            raise ConfigError(f"{src}: [run].schemes[{i}] = {s!r}: empty scheme name")
        if n in schemes:
            notes.append(f"[run].schemes[{i}] = {s!r} is scheme {n!r} again: it runs once")
            continue
        schemes.append(n)
    cfg.schemes = schemes
    for i, m in enumerate(cfg.methods):
        if m.name != FP_METHOD and m.display.strip().casefold() in RESERVED_METHOD_LABELS:
            raise ConfigError(
                f"{src}: [[methods]][{i}] ({m.name}) is labelled {m.display!r}, which is reserved for the "
                "full-precision reference row: choose another label"
            )
    cfg.models = _unique_by_label(src, "[[models]]", cfg.models, lambda m: m.display, notes)
    cfg.methods = _unique_by_label(src, "[[methods]]", cfg.methods, lambda m: m.display, notes)
    cfg.protocols = _unique_by_label(src, "[[protocols]]", cfg.protocols, lambda p: p.name, notes)
    return notes


def check_rows(cells: Sequence[CellSpec], source: str = "<config>") -> None:
    """No two different cells with one row key (they would be merged into one report row)."""
    seen: dict[tuple, CellSpec] = {}
    for c in cells:
        prev = seen.setdefault(c.row_key, c)
        if prev is not c and prev.cell_id != c.cell_id:
            differ = sorted({x.split(":", 1)[0] for x in spec_changes(prev.to_dict(), c.to_dict())})
            raise ConfigError(
                f"{source}: two cells would share the row {' | '.join(map(str, c.row_key))} but differ in "
                f"{', '.join(differ)}: give them distinct labels"
            )


# --- content fingerprints -------------------------------------------------------------------------------


def _default_weights(components: str, model: str) -> Path | None:
    if components != "real":
        return None
    from ptq3d.models.registry import get_spec

    weights = get_spec(model).default_weights
    return Path(weights) if weights else None


def method_version(comp: Any, method: str) -> str:
    """The method's code version: Components.method_version(name) where the components define it, the
    registry entry's `version` for the real components, else "1"."""
    fn = getattr(comp, "method_version", None)
    if callable(fn):
        return str(fn(method))
    if getattr(comp, "name", "") == "real" and method != FP_METHOD:
        from ptq3d.methods import get_method

        return str(getattr(get_method(method), "version", "1"))
    return "1"


def data_hash(comp: Any, ref: Any) -> str:
    """Fingerprint of a protocol's definition and of the files under its root."""
    root = getattr(ref, "root", None)
    files = tree_manifest(root) if root and Path(root).exists() else None
    return short_hash({"protocol": comp.protocol_hash(ref), "files": files}, 16)


def prepare(cfg: Any) -> list[str]:
    """Make `cfg`'s cells content-addressed and their rows unique, in place, before a run: check_labels, then
    fill weights_sha256, data_hash and version into cfg.models, cfg.protocols and cfg.methods, then check the
    expanded cells' row keys. Returns one-line notes (de-duplicated entries). ConfigError on a label clash."""
    from ptq3d.harness.components import get_components

    notes = check_labels(cfg)
    comp = get_components(cfg.components)
    hash_cache = Path(cfg.cache_dir) / HASH_CACHE_NAME if cfg.cache_dir else None
    models = []
    for m in cfg.models:
        path = Path(m.weights) if m.weights else _default_weights(cfg.components, m.name)
        digest = file_sha256(path, hash_cache) if path is not None and path.is_file() else ""
        models.append(dataclasses.replace(m, weights_sha256=digest))
    cfg.models = models
    cfg.protocols = [dataclasses.replace(p, data_hash=data_hash(comp, p)) for p in cfg.protocols]
    cfg.methods = [
        dataclasses.replace(m, version=method_version(comp, m.name)) if m.name != "*all*" else m
        for m in cfg.methods
    ]
    # every calibration protocol a method draws from (the run's, or its own entry's): definition and files
    from ptq3d.results.records import ProtocolRef

    sources = {(cfg.calibration.protocol, cfg.calibration.root, cfg.calibration.limit)}
    sources |= {(p.calibration.protocol, p.calibration.root, p.calibration.limit) for p in cfg.plans()}
    cfg.calibration_data_hashes = {
        key: data_hash(comp, ProtocolRef(*key)) for key in sorted(sources, key=str) if key[0]
    }
    check_rows(cfg.cells(), cfg.source)
    cfg.identity_prepared = True  # run_grid does not prepare again
    return notes


# --- resuming ---------------------------------------------------------------------------------------------


def mark_changed(store_path: str | Path, cells: Sequence[CellSpec]) -> list[str]:
    """Finished cells in the store at `store_path` whose row is in `cells` under another id (an input
    changed): marked "stale" in the store (never ranked; replaced when recomputed). Returns one line per
    distinct change: how many cells and what changed (spec key: old -> new)."""
    if not Path(store_path).is_file():
        return []
    from ptq3d.results.store import ResultsStore

    by_change: dict[str, int] = {}
    stale: dict[str, str] = {}
    with ResultsStore(store_path) as store:
        slots = store.slots()
        for c in cells:
            old = slots.get(c.slot_id)
            if old is None or old["cell_id"] == c.cell_id:
                continue
            changes = spec_changes(old["spec"], c.to_dict())
            what = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
            by_change[what] = by_change.get(what, 0) + 1
            if old["status"] != "stale":
                stale[old["cell_id"]] = f"inputs changed ({what}); recomputation pending"
        store.mark_stale(stale)
    return [
        f"{n} finished cell{'s' if n > 1 else ''} with changed inputs ({what}): recomputing"
        for what, n in by_change.items()
    ]


__all__ = [
    "check_labels",
    "check_rows",
    "data_hash",
    "file_sha256",
    "mark_changed",
    "method_version",
    "normalise_scheme",
    "prepare",
    "tree_manifest",
]
