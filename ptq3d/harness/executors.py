"""Executors run cells; the driver (ptq3d.harness.sweep) alone writes the store.

Contract: `executor.map(specs, cache_dir)` yields one CellResult per CellSpec, in any order, as cells finish.
A cell is a picklable CellSpec and its execution the pure function `run_cell(spec, cache_dir)`, so another
engine (a process pool here; Ray or a cluster scheduler later) only has to ship specs out and results back.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
from collections.abc import Iterator, Sequence

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


def _run_in_worker(spec_dict: dict, cache_dir: str | None) -> CellResult:
    # specs travel as plain dicts: the same shape a remote engine would send as JSON
    return run_cell(CellSpec.from_dict(spec_dict), cache_dir)


class ProcessPoolExecutor(Executor):
    """Runs cells in `workers` spawned processes. Peak-memory numbers are per worker process; timings of
    concurrent cells share the machine, so use it for accuracy sweeps, not for latency tables."""

    name = "processes"

    def __init__(self, workers: int = 2):
        if workers < 1:
            raise UserError(f"--workers must be >= 1, got {workers}")
        self.workers = workers

    def map(self, specs: Sequence[CellSpec], cache_dir: str | None) -> Iterator[CellResult]:
        ctx = mp.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx) as pool:
            futures = [pool.submit(_run_in_worker, s.to_dict(), cache_dir) for s in specs]
            for fut in cf.as_completed(futures):
                yield fut.result()


EXECUTORS = {
    "inprocess": InProcessExecutor,
    "processes": ProcessPoolExecutor,
    "ray": "ptq3d.harness.ray_executor:RayExecutor",  # optional extra; imported only when asked for
}


def make_executor(name: str, workers: int = 1, progress: bool = False, **options) -> Executor:
    """options (ray): ray = the config's [ray] table or a RayOptions, address = --address."""
    if name == "inprocess":
        return InProcessExecutor(progress=progress)
    if name == "processes":
        return ProcessPoolExecutor(workers=workers)
    if name == "ray":
        from ptq3d.harness.ray_executor import make_ray_executor

        return make_ray_executor(options.get("ray"), options.get("address"), progress=progress)
    from ptq3d.errors import unknown_name_error

    raise unknown_name_error("executor", name, EXECUTORS)
