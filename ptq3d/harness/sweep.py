"""The driver: expand a RunConfig into cells, skip the ones the store already has, hand the rest to an
executor and write each result to the store as it arrives (one transaction per cell).

A run killed at any point resumes by running the same config again: finished cells (ok or failed) are
skipped, unless retry_failed, which reruns the failed ones.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ptq3d.harness import provenance
from ptq3d.harness.config import RunConfig
from ptq3d.harness.executors import Executor, InProcessExecutor
from ptq3d.results.records import CellResult
from ptq3d.results.store import ResultsStore

log = logging.getLogger(__name__)

STORE_NAME = "results.sqlite"


@dataclass
class RunSummary:
    """What one invocation did. counters: the cells' counters summed (fp_passes, fp_cache_hits, ...)."""

    run_id: str
    store_path: Path
    total: int
    skipped: int
    ran: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (cell description, reason)
    counters: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0


def run_grid(
    cfg: RunConfig,
    store_path: str | Path | None = None,
    executor: Executor | None = None,
    retry_failed: bool = False,
    progress: bool = False,
    on_result: Callable[[CellResult], None] | None = None,
) -> RunSummary:
    """Run every cell of `cfg` that `store_path` (default <output_dir>/results.sqlite) does not have yet."""
    t0 = time.perf_counter()
    store_path = Path(store_path) if store_path else Path(cfg.output_dir) / STORE_NAME
    if not getattr(cfg, "identity_prepared", False):  # `ptq3d run` prepares (and prints) itself
        from ptq3d.harness import identity

        for line in identity.prepare(cfg) + identity.mark_changed(store_path, cfg.cells()):
            log.warning(line)
    executor = executor or InProcessExecutor(progress=progress)
    cells = cfg.cells()
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:8]
    with ResultsStore(store_path) as store:
        done = store.cell_ids("ok") if retry_failed else store.cell_ids()
        todo = [c for c in cells if c.cell_id not in done]
        summary = RunSummary(run_id, store_path, total=len(cells), skipped=len(cells) - len(todo))
        store.record_run(run_id, cfg.text, {**provenance.collect(), "config_source": cfg.source})
        bar = None
        if progress and todo:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc="cells", unit="cell", dynamic_ncols=True, position=0)
        try:
            for result in executor.map(todo, cfg.cache_dir):
                store.write_cell(result, run_id)
                summary.ran += 1
                for k, v in result.counters.items():
                    summary.counters[k] = summary.counters.get(k, 0) + v
                if not result.ok:
                    summary.failed.append((result.spec.describe(), result.reason))
                if bar is not None:
                    bar.set_postfix_str(result.spec.describe()[:60])
                    bar.update(1)
                if on_result is not None:
                    on_result(result)
        finally:
            if bar is not None:
                bar.close()
    summary.wall_s = time.perf_counter() - t0
    return summary
