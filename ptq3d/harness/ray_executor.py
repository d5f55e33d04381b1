"""Run a grid's cells as Ray tasks, on a cluster or on a local Ray instance (`ptq3d run CONFIG --executor ray`).

The contract is the one every executor keeps (ptq3d.harness.executors): `map(specs, cache_dir)` yields one
CellResult per CellSpec as cells finish, and the driver (ptq3d.harness.sweep) alone writes the SQLite store. A
task ships the spec as a plain dict, runs the pure function `run_cell(spec, cache_dir)` on a worker and ships
the CellResult back; workers never touch the store.

What is expensive is shared, once per cluster:
- Cells are grouped by what their FP predictions depend on (model, protocol, components, device). One cell of
  each group (its FP reference cell when there is one) runs first; the rest of the group is submitted when it
  has finished, so its FP predictions and metrics are in the cache for all of them: ten methods on one
  dataset cost one FP pass across the cluster. Groups run side by side.
- The cache travels in one of two ways (`cache`):
  "shared": every worker reads and writes one cache directory that all nodes see (a local instance, or NFS);
  the cache's writes are atomic renames, so concurrent workers may share it.
  "object-store": every cell runs against a private temporary cache directory seeded with its group's
  entries, which travel through Ray's object store; new entries (FP predictions and metrics, anything the
  runner caches by content hash) come back with the result, are put in the object store once for the rest of
  the group, and are written into the driver's cache directory.
  "auto" (default): "shared" on a local instance, "object-store" when connecting to a cluster.

Faults: a worker that dies mid-cell (killed, out of memory, its node lost) has its cell resubmitted, up to
`max_retries` times; then the cell is recorded as failed, with the reason of every attempt. An error raised by
the task itself (e.g. ptq3d not importable on a worker) is deterministic and is recorded at once. A driver
that dies takes its tasks with it (Ray's ownership model); rerunning the same command resumes from the store.

Ray is an optional dependency (`pip install "ptq3d[distributed]"`); it is imported only when this executor
runs.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptq3d.errors import ConfigError, UserError
from ptq3d.harness.executors import Executor, worker_failed
from ptq3d.harness.fpcache import atomic_write
from ptq3d.results.records import CellResult, CellSpec, short_hash
from ptq3d.results.store import DiskFullError

INSTALL_HINT = 'the ray executor needs Ray: pip install "ptq3d[distributed]" (or: pip install "ray>=2.9")'
CACHE_MODES = ("auto", "shared", "object-store")


@dataclass
class RayOptions:
    """The `[ray]` table of a run configuration (every key optional).

    address: Ray cluster to join ("auto": the cluster this machine belongs to; "ray://host:10001": Ray
        Client); empty = start a local instance. `--address` overrides it.
    num_cpus, num_gpus, memory_gb: the resource request of one cell; num_gpus "auto" = 1 when the cluster
        has GPUs and the cell's [eval].device is not "cpu", else 0.
    max_retries: resubmissions of a cell whose worker died mid-cell, before it is recorded as failed.
    cache: "auto" | "shared" | "object-store" (see the module docstring).
    shared_cache_dir: with cache = "shared", a directory every node sees (default: the run's cache_dir).
    local_cpus: CPUs of the local instance (0 = all of this machine's).
    runtime_env: passed to ray.init (e.g. { py_modules = ["/src/ptq3d"], env_vars = { ... } }).
    """

    address: str = ""
    num_cpus: float = 1.0
    num_gpus: float | str = "auto"
    memory_gb: float = 0.0
    max_retries: int = 2
    cache: str = "auto"
    shared_cache_dir: str = ""
    local_cpus: int = 0
    runtime_env: dict[str, Any] = field(default_factory=dict)


_KEY_TYPES: dict[str, tuple[type, ...]] = {
    "address": (str,),
    "num_cpus": (int, float),
    "num_gpus": (int, float, str),
    "memory_gb": (int, float),
    "max_retries": (int,),
    "cache": (str,),
    "shared_cache_dir": (str,),
    "local_cpus": (int,),
    "runtime_env": (dict,),
}


def parse_ray_options(
    table: dict[str, Any], source: str = "<config>", base_dir: Path | None = None
) -> RayOptions:
    """Validate a `[ray]` table; ConfigError names the file, the key, the value and what is allowed."""
    where = f"{source}: [ray]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table, got {type(table).__name__}")
    for key, value in table.items():
        if key not in _KEY_TYPES:
            import difflib

            close = difflib.get_close_matches(key, list(_KEY_TYPES), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{where}: unknown key '{key}'{hint} (allowed: {', '.join(_KEY_TYPES)})")
        if isinstance(value, bool) or not isinstance(value, _KEY_TYPES[key]):
            want = " or ".join(t.__name__ for t in _KEY_TYPES[key])
            raise ConfigError(f"{where}.{key} = {value!r}: expected {want}")
    opts = RayOptions(**table)
    if opts.num_cpus < 0 or opts.memory_gb < 0 or opts.max_retries < 0 or opts.local_cpus < 0:
        bad = next(k for k in ("num_cpus", "memory_gb", "max_retries", "local_cpus") if getattr(opts, k) < 0)
        raise ConfigError(f"{where}.{bad} = {getattr(opts, bad)!r}: must be >= 0")
    if isinstance(opts.num_gpus, str) and opts.num_gpus != "auto":
        raise ConfigError(f'{where}.num_gpus = {opts.num_gpus!r}: expected a number or "auto"')
    if not isinstance(opts.num_gpus, str) and opts.num_gpus < 0:
        raise ConfigError(f"{where}.num_gpus = {opts.num_gpus!r}: must be >= 0")
    if opts.cache not in CACHE_MODES:
        raise ConfigError(f"{where}.cache = {opts.cache!r}: allowed values are {', '.join(CACHE_MODES)}")
    if opts.shared_cache_dir and base_dir is not None and not Path(opts.shared_cache_dir).is_absolute():
        opts.shared_cache_dir = str(base_dir / opts.shared_cache_dir)
    return opts


def import_ray():
    """`ray`, or a UserError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return ray


# --- worker side ----------------------------------------------------------------------------------------


def _list_files(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.name.startswith(".tmp-")
    )


def run_cell_task(
    spec_dict: dict[str, Any], cache_dir: str | None, shipped: dict[str, Any] | None
) -> tuple[CellResult, dict[str, bytes], dict[str, Any]]:
    """What one Ray task runs. cache_dir: the shared cache (shared mode) or None; shipped: relative cache path
    -> ObjectRef of its bytes (object-store mode) or None. Returns (result, new cache entries as relative path
    -> bytes, where it ran)."""
    import socket

    from ptq3d.harness.runner import run_cell

    spec = CellSpec.from_dict(spec_dict)
    where = {"host": socket.gethostname(), "pid": os.getpid()}
    if shipped is None:
        return run_cell(spec, cache_dir), {}, where
    import ray

    private = Path(tempfile.mkdtemp(prefix="ptq3d-cell-"))
    try:
        names = list(shipped)
        for name, data in zip(names, ray.get([shipped[n] for n in names]), strict=True):
            atomic_write(private / name, data)
        result = run_cell(spec, str(private))
        new = {n: (private / n).read_bytes() for n in _list_files(private) if n not in shipped}
        return result, new, where
    finally:
        shutil.rmtree(private, ignore_errors=True)


# --- driver side ----------------------------------------------------------------------------------------


def fp_group(spec: CellSpec) -> str:
    """Cells with equal groups share their FP predictions: what the FP cache key depends on."""
    return short_hash(
        {
            "model": spec.to_dict()["model"],
            "protocol": spec.to_dict()["protocol"],
            "components": spec.components,
            "device": spec.options.device,
        }
    )


def _worker_death_errors(ray: Any) -> tuple[type, ...]:
    """Exceptions meaning the worker (or its node) died under the cell: worth another attempt."""
    names = (
        "WorkerCrashedError",
        "OutOfMemoryError",
        "NodeDiedError",
        "LocalRayletDiedError",
        "ObjectLostError",
    )
    return tuple(getattr(ray.exceptions, n) for n in names if hasattr(ray.exceptions, n))


@dataclass
class _Group:
    """Cells sharing FP predictions: the leader runs first. entries: relative cache path -> ObjectRef of its
    bytes (object-store mode)."""

    leader: CellSpec
    followers: list[CellSpec]
    entries: dict[str, Any] = field(default_factory=dict)


class RayExecutor(Executor):
    """Cells as Ray tasks; see the module docstring. `address` overrides options.address."""

    name = "ray"

    def __init__(self, options: RayOptions | None = None, address: str | None = None, progress: bool = False):
        self.options = options or RayOptions()
        if address is not None:
            self.options.address = address
        self.progress = progress
        self.started_ray = False
        self._has_gpu: bool | None = None

    # --- connection ---------------------------------------------------------------------------------------
    def connect(self):
        """ray, initialised: an instance already running in this process, the configured cluster, or a new
        local instance."""
        ray = import_ray()
        if ray.is_initialized():
            return ray
        o = self.options
        kwargs: dict[str, Any] = {"include_dashboard": False}
        if o.runtime_env:
            kwargs["runtime_env"] = o.runtime_env
        if o.address:
            kwargs["address"] = o.address
        elif o.local_cpus:
            kwargs["num_cpus"] = o.local_cpus
        try:
            ray.init(**kwargs)
        except ConnectionError as exc:
            raise UserError(f"cannot connect to the Ray cluster at '{o.address}': {exc}") from None
        self.started_ray = True
        return ray

    def is_local(self, ray: Any) -> bool:
        if not self.options.address:
            return True
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        return len(nodes) == 1 and nodes[0].get("NodeManagerAddress") in ("127.0.0.1", _local_ip())

    def cache_mode(self, ray: Any) -> str:
        mode = self.options.cache
        if mode == "auto":
            mode = "shared" if self.is_local(ray) else "object-store"
        return mode

    def resources(self, ray: Any, spec: CellSpec) -> dict[str, Any]:
        o = self.options
        gpus = o.num_gpus
        if gpus == "auto":
            if self._has_gpu is None:
                self._has_gpu = ray.cluster_resources().get("GPU", 0) > 0
            gpus = 1 if self._has_gpu and spec.options.device != "cpu" else 0
        res: dict[str, Any] = {"num_cpus": o.num_cpus, "num_gpus": gpus}
        if o.memory_gb:
            res["memory"] = int(o.memory_gb * 1024**3)
        return res

    # --- the run ----------------------------------------------------------------------------------------
    def map(self, specs: Sequence[CellSpec], cache_dir: str | None) -> Iterator[CellResult]:
        if not specs:
            return
        ray = self.connect()
        try:
            yield from self._map(ray, list(specs), cache_dir)
        finally:
            if self.started_ray:
                ray.shutdown()
                self.started_ray = False

    def _map(self, ray: Any, specs: list[CellSpec], cache_dir: str | None) -> Iterator[CellResult]:
        mode = self.cache_mode(ray)
        shared_dir = (self.options.shared_cache_dir or cache_dir) if mode == "shared" else None
        driver_cache = Path(cache_dir) if cache_dir else None
        task = ray.remote(run_cell_task)
        deaths = _worker_death_errors(ray)
        retries = self.options.max_retries

        groups: dict[str, _Group] = {}
        for spec in specs:
            g = groups.get(fp_group(spec))
            if g is None:
                groups[fp_group(spec)] = _Group(spec, [])
            elif spec.is_reference and not g.leader.is_reference:  # the FP reference cell leads its group
                g.followers.insert(0, g.leader)
                g.leader = spec
            else:
                g.followers.append(spec)
        remaining = {k: 1 + len(g.followers) for k, g in groups.items()}

        pending: dict[Any, tuple[CellSpec, str, list[str]]] = {}  # ref -> (spec, group, attempt errors)

        def submit(spec: CellSpec, key: str, attempts: list[str]) -> None:
            shipped = dict(groups[key].entries) if mode == "object-store" else None
            ref = task.options(
                **self.resources(ray, spec),
                max_retries=0,
                retry_exceptions=False,
                name=f"ptq3d-cell-{spec.cell_id}",
            ).remote(spec.to_dict(), shared_dir, shipped)
            pending[ref] = (spec, key, attempts)

        for key, g in groups.items():
            submit(g.leader, key, [])
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                ref = done[0]
                spec, key, attempts = pending.pop(ref)
                try:
                    result, new_entries, where = ray.get(ref)
                except deaths as exc:
                    attempts.append(f"{type(exc).__name__}: {_first_line(exc)}")
                    if len(attempts) <= retries:
                        print(
                            f"ptq3d ray: worker died running {spec.describe()} "
                            f"({type(exc).__name__}); retry {len(attempts)}/{retries}",
                            file=sys.stderr,
                            flush=True,
                        )
                        submit(spec, key, attempts)
                        continue
                    result, new_entries = (
                        worker_failed(
                            spec, "ray", attempts, f"worker died {len(attempts)} times; last: {attempts[-1]}"
                        ),
                        {},
                    )
                except ray.exceptions.RayError as exc:  # the task itself raised: deterministic, no retry
                    if isinstance(getattr(exc, "cause", None), DiskFullError):
                        raise exc.cause from None  # not the cell's fault: stop the run, as in-process does
                    attempts.append(f"{type(exc).__name__}: {_first_line(exc)}")
                    result, new_entries = (
                        worker_failed(spec, "ray", attempts, f"ray task error: {attempts[-1]}"),
                        {},
                    )
                else:
                    result.provenance["executor"] = {
                        "name": "ray",
                        "attempts": len(attempts) + 1,
                        "attempt_errors": attempts,
                        **where,
                    }
                group = groups[key]
                self._keep_entries(ray, group, new_entries, driver_cache)
                if spec is group.leader:  # its FP entries are in the cache now: the rest of the group may go
                    for follower in group.followers:
                        submit(follower, key, [])
                remaining[key] -= 1
                if remaining[key] == 0:  # nobody else needs the group's entries: free the object store
                    group.entries.clear()
                yield result
        finally:
            for ref in pending:  # a driver that stops early (error, Ctrl-C) leaves no work running
                ray.cancel(ref, force=True)

    @staticmethod
    def _keep_entries(ray: Any, group: _Group, new: dict[str, bytes], driver_cache: Path | None) -> None:
        for name, data in new.items():
            if name not in group.entries:
                group.entries[name] = ray.put(data)
            if driver_cache is not None and not (driver_cache / name).exists():
                atomic_write(driver_cache / name, data)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:500]


def _local_ip() -> str:
    import socket

    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def make_ray_executor(
    options: RayOptions | dict[str, Any] | None = None, address: str | None = None, progress: bool = False
) -> RayExecutor:
    """The ray executor (a UserError naming the install command when Ray is missing). options: a RayOptions
    or a raw `[ray]` table."""
    import_ray()
    if isinstance(options, dict):
        options = parse_ray_options(options)
    return RayExecutor(options, address=address, progress=progress)


__all__ = [
    "CACHE_MODES",
    "INSTALL_HINT",
    "RayExecutor",
    "RayOptions",
    "fp_group",
    "make_ray_executor",
    "parse_ray_options",
    "run_cell_task",
]
