"""Executors run cells; the driver (ptq3d.harness.sweep) alone writes the store.

Contract: `executor.map(specs, cache_dir)` yields one CellResult per CellSpec, in any order, as cells finish.
A cell is a picklable CellSpec and its execution the pure function `run_cell(spec, cache_dir)`, so another
engine (a process pool here; Ray or a cluster scheduler later) only has to ship specs out and results back.

Faults: a worker process that dies mid-cell (killed, out of memory, os._exit) breaks the pool; the process-pool
executor starts a new pool and resubmits the unfinished cells: a cell that had started when the pool broke is
charged one attempt and is recorded as failed (failed_stage "worker") after `max_retries` resubmissions, as
the Ray executor does; cells that were only queued are resubmitted free. A full disk (DiskFullError) or Ctrl-C
stops the pool (its workers are terminated, their current cells abandoned: nothing of them is stored).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from ptq3d.errors import UserError
from ptq3d.harness.runner import run_cell
from ptq3d.results.records import CellResult, CellSpec


class Executor:
    """Base class. name: how `--executor` selects it."""

    name = "abstract"

    def map(self, specs: Sequence[CellSpec], cache_dir: str | None) -> Iterator[CellResult]:
        raise NotImplementedError


class InProcessExecutor(Executor):
    """Runs the cells one after another in this process (the default; exact per-stage memory numbers)."""

    name = "inprocess"

    def __init__(self, progress: bool = False):
        self.progress = progress

    def map(self, specs: Sequence[CellSpec], cache_dir: str | None) -> Iterator[CellResult]:
        for spec in specs:
            yield run_cell(spec, cache_dir, progress=self.progress)


def _init_worker() -> None:
    # Ctrl-C reaches the whole process group; the driver alone handles it (and stops the pool), so workers
    # print no tracebacks of their own
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_in_worker(spec_dict: dict, cache_dir: str | None, started_dir: str | None = None) -> CellResult:
    # specs travel as plain dicts: the same shape a remote engine would send as JSON
    spec = CellSpec.from_dict(spec_dict)
    if started_dir:  # lets the driver tell a cell that was running when its worker died from a queued one
        (Path(started_dir) / spec.cell_id).touch()
    return run_cell(spec, cache_dir)


def worker_failed(spec: CellSpec, executor: str, attempts: list[str], reason: str = "") -> CellResult:
    """The record of a cell whose worker died (or whose task errored) on every attempt; reason defaults to the
    death count and the last attempt's error."""
    now = time.time()
    reason = reason or f"the worker process died {len(attempts)} times; last: {attempts[-1]}"
    result = CellResult(
        spec=spec,
        status="failed",
        failed_stage="worker",
        reason=f"worker: {reason}"[:2000],
        started_at=now,
        finished_at=now,
    )
    result.provenance["executor"] = {"name": executor, "attempts": len(attempts), "attempt_errors": attempts}
    return result


def _stop(pool: cf.ProcessPoolExecutor) -> None:
    """Cancel queued cells and terminate the workers (their current cells are abandoned)."""
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        if proc.is_alive():
            proc.terminate()
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        proc.join(timeout=5)


class ProcessPoolExecutor(Executor):
    """Runs cells in `workers` spawned processes. Peak-memory numbers are per worker process; timings of
    concurrent cells share the machine, so use it for accuracy sweeps, not for latency tables. A cell whose
    worker died is resubmitted up to `max_retries` times (see the module docstring)."""

    name = "processes"

    def __init__(self, workers: int = 2, max_retries: int = 2):
        if workers < 1:
            raise UserError(f"--workers must be >= 1, got {workers}")
        if max_retries < 0:
            raise UserError(f"max_retries must be >= 0, got {max_retries}")
        self.workers = workers
        self.max_retries = max_retries

    def map(self, specs: Sequence[CellSpec], cache_dir: str | None) -> Iterator[CellResult]:
        ctx = mp.get_context("spawn")
        attempts: dict[str, list[str]] = {s.cell_id: [] for s in specs}
        todo = list(specs)
        idle_breaks = 0  # pools that broke with no cell started (a worker that cannot even start)
        with tempfile.TemporaryDirectory(prefix="ptq3d-pool-") as started:
            while todo:
                broken: list[tuple[CellSpec, str]] = []
                pool = cf.ProcessPoolExecutor(
                    max_workers=min(self.workers, len(todo)), mp_context=ctx, initializer=_init_worker
                )
                clean = False
                try:
                    futures = {}
                    for s in todo:
                        try:
                            futures[pool.submit(_run_in_worker, s.to_dict(), cache_dir, started)] = s
                        except BrokenProcessPool as exc:  # broke while submitting: the rest never started
                            broken.append((s, f"{type(exc).__name__}: {exc}"))
                    for fut in cf.as_completed(futures):
                        spec = futures[fut]
                        try:
                            result = fut.result()
                        except BrokenProcessPool as exc:
                            broken.append((spec, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"))
                            continue
                        result.provenance["executor"] = {
                            "name": self.name,
                            "attempts": len(attempts[spec.cell_id]) + 1,
                            "attempt_errors": attempts[spec.cell_id],
                        }
                        yield result
                    clean = True
                finally:
                    if clean:
                        pool.shutdown(wait=True)
                    else:  # an error, Ctrl-C or a consumer that stopped early: leave no work running
                        _stop(pool)
                todo = []
                charged = False
                for spec, error in broken:
                    marker = Path(started) / spec.cell_id
                    if not marker.exists():  # still queued when the pool broke: not this cell's fault
                        todo.append(spec)
                        continue
                    marker.unlink()
                    charged = True
                    attempts[spec.cell_id].append(error)
                    if len(attempts[spec.cell_id]) > self.max_retries:
                        yield worker_failed(spec, self.name, attempts[spec.cell_id])
                        continue
                    print(
                        f"ptq3d processes: worker died running {spec.describe()}; "
                        f"retry {len(attempts[spec.cell_id])}/{self.max_retries}",
                        file=sys.stderr,
                        flush=True,
                    )
                    todo.append(spec)
                if broken and not charged:
                    idle_breaks += 1
                    if idle_breaks > self.max_retries:
                        raise UserError(f"the worker processes die before running any cell ({broken[0][1]})")


EXECUTORS = {
    "inprocess": InProcessExecutor,
    "processes": ProcessPoolExecutor,
    "ray": "ptq3d.harness.ray_executor:RayExecutor",  # optional extra; imported only when asked for
}


def make_executor(name: str, workers: int = 1, progress: bool = False, **options) -> Executor:
    """options (ray): ray = the config's [ray] table or a RayOptions, address = --address; (processes):
    max_retries = resubmissions of a cell whose worker died (default 2)."""
    if name == "inprocess":
        return InProcessExecutor(progress=progress)
    if name == "processes":
        return ProcessPoolExecutor(workers=workers, max_retries=int(options.get("max_retries", 2)))
    if name == "ray":
        from ptq3d.harness.ray_executor import make_ray_executor

        return make_ray_executor(options.get("ray"), options.get("address"), progress=progress)
    from ptq3d.errors import unknown_name_error

    raise unknown_name_error("executor", name, EXECUTORS)
