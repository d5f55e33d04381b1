"""`ptq3d run [CONFIG]`: run a grid of cells into a results store, write the reports, print the leaderboard.

Without CONFIG it runs the embedded default benchmark (ptq3d.harness.default_suite) into
./ptq3d-runs/<timestamp>/. Running the same CONFIG again resumes: finished cells are skipped, except those whose
inputs changed (checkpoint or dataset files, method code version, settings): they are named and recomputed.

Exit codes:
  0    every cell finished ok
  2    bad input, stopped before or between cells (config, names, paths, a corrupt store, a full disk);
       one line says what and how to go on; every cell finished before it is stored
  3    the run finished, and some cells failed (each is listed with its stage and reason; all are stored)
  130  interrupted (Ctrl-C): finished cells are stored; rerun the same command to resume
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run",
        help="run a benchmark grid (default: the embedded default suite)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", help="TOML run configuration (omit for the default suite)")
    p.add_argument("--out", help="output directory (store, reports, cache); overrides [run].output_dir")
    p.add_argument("--cache-dir", help="FP-prediction cache directory (default <out>/cache)")
    p.add_argument(
        "--executor",
        default="inprocess",
        choices=["inprocess", "processes", "ray"],
        help="how cells run (ray: needs `pip install ptq3d[distributed]`)",
    )
    p.add_argument(
        "--address",
        help="Ray cluster address for --executor ray (default: [ray].address, else a local instance)",
    )
    p.add_argument("--workers", type=int, default=2, help="worker processes for --executor processes")
    p.add_argument("--retry-failed", action="store_true", help="rerun cells recorded as failed")
    p.add_argument(
        "--stage", default="fake", choices=["fake", "real"], help="quantized stage the reports score"
    )
    p.add_argument("--no-report", action="store_true", help="do not write the reports")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--allow-imports",
        action="store_true",
        help='let [run].components = "module:attr" import its module (a config file is not code otherwise)',
    )
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from ptq3d.harness.config import load_config
    from ptq3d.harness.executors import make_executor
    from ptq3d.harness.sweep import run_grid
    from ptq3d.reports import write_reports
    from ptq3d.reports.leaderboard import leaderboard, leaderboard_to_text
    from ptq3d.results.read import load_results

    if args.config:
        cfg = load_config(args.config, allow_imports=args.allow_imports)
    else:
        from ptq3d.harness.default_suite import default_config

        cfg = default_config(args.out)
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        from ptq3d.errors import UserError

        raise UserError(f"--out '{args.out}' is an existing file, not a directory")
    if args.out:
        cfg.output_dir = str(Path(args.out))
        if not args.cache_dir:
            cfg.cache_dir = str(Path(args.out) / "cache")
    if args.cache_dir:
        cfg.cache_dir = args.cache_dir
    from ptq3d.errors import UserError
    from ptq3d.harness import identity
    from ptq3d.harness.fpcache import atomic_write
    from ptq3d.harness.sweep import STORE_NAME

    out_dir = Path(cfg.output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output directory '{out_dir}' is an existing file")
    notes = identity.prepare(cfg)  # content-addressed cell ids, unique labels, normalised schemes
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = out_dir / "config.toml"
    if (
        cfg.text and not saved.exists()
    ):  # what ran, next to its results (`ptq3d run <dir>/config.toml` resumes)
        atomic_write(saved, cfg.text.encode())
    for note in notes:
        print(f"note: {note}")
    for line in identity.mark_changed(out_dir / STORE_NAME, cfg.cells()):
        print(line)
    progress = not args.no_progress and sys.stderr.isatty()
    executor = make_executor(
        args.executor, args.workers, progress=progress, ray=cfg.ray, address=args.address
    )
    n = len(cfg.cells())
    print(f"ptq3d run: {cfg.name}: {n} cells -> {cfg.output_dir}", flush=True)
    try:
        summary = run_grid(cfg, executor=executor, retry_failed=args.retry_failed, progress=progress)
    except KeyboardInterrupt:
        again = " ".join(["ptq3d run", *([args.config] if args.config else []), "--out", str(out_dir)])
        print(
            f"ptq3d run: interrupted; the finished cells are stored in {out_dir / STORE_NAME}; "
            f"resume with: {again}",
            file=sys.stderr,
        )
        return 130
    print(
        f"ran {summary.ran} cells, skipped {summary.skipped} finished, {len(summary.failed)} failed "
        f"in {summary.wall_s:.1f} s (FP passes {summary.counters.get('fp_passes', 0)}, "
        f"FP cache hits {summary.counters.get('fp_cache_hits', 0)})"
    )
    for what, reason in summary.failed:
        print(f"  failed: {what}: {reason}")
    print()
    print(leaderboard_to_text(leaderboard(load_results(summary.store_path), args.stage)))
    print(f"store:  {summary.store_path}")
    sensitivity_failed = False
    if cfg.sensitivity is not None:
        from ptq3d.harness.sensitivity_stage import run_sensitivity

        try:
            run_sensitivity(cfg)
        except (UserError, RuntimeError, ValueError) as exc:  # the grid's results are stored: report, go on
            sensitivity_failed = True
            print(f"ptq3d run: the [sensitivity] stage failed: {str(exc).splitlines()[0]}", file=sys.stderr)
    if not args.no_report:
        paths = write_reports(
            summary.store_path, Path(cfg.output_dir) / "reports", stage=args.stage, title=f"ptq3d: {cfg.name}"
        )
        print(f"report: {paths['html']}")
        print(f"tables: {paths['md']}, {paths['tex']}, {paths['csv']}")
    from ptq3d.results.store import ResultsStore

    with ResultsStore(
        summary.store_path, readonly=True
    ) as store:  # failures of earlier invocations count too
        failed = store.cell_ids("failed") & {c.cell_id for c in cfg.cells()}
    if failed:
        print(
            f"ptq3d run: {len(failed)} cells of this grid failed ({len(summary.failed)} in this invocation; "
            "stored with stage and reason, never ranked; --retry-failed reruns them): exit code 3"
        )
        return 3
    if sensitivity_failed:
        print("ptq3d run: the grid finished but its [sensitivity] stage failed (message above): exit code 3")
        return 3
    return 0
