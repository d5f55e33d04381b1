"""`ptq3d run [CONFIG]`: run a grid of cells into a results store, write the reports, print the leaderboard.

Without CONFIG it runs the embedded default benchmark (ptq3d.harness.default_suite) into
./ptq3d-runs/<timestamp>/. Running the same CONFIG again resumes: finished cells are skipped.
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
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from ptq3d.harness.config import load_config
    from ptq3d.harness.executors import make_executor
    from ptq3d.harness.sweep import run_grid
    from ptq3d.reports import write_reports
    from ptq3d.reports.leaderboard import leaderboard, leaderboard_to_text
    from ptq3d.results.read import load_results

    if args.config:
        cfg = load_config(args.config)
    else:
        from ptq3d.harness.default_suite import default_config

        cfg = default_config(args.out)
    if args.out:
        cfg.output_dir = str(Path(args.out))
        if not args.cache_dir:
            cfg.cache_dir = str(Path(args.out) / "cache")
    if args.cache_dir:
        cfg.cache_dir = args.cache_dir
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = out_dir / "config.toml"
    if (
        cfg.text and not saved.exists()
    ):  # what ran, next to its results (`ptq3d run <dir>/config.toml` resumes)
        saved.write_text(cfg.text)
    progress = not args.no_progress and sys.stderr.isatty()
    executor = make_executor(
        args.executor, args.workers, progress=progress, ray=cfg.ray, address=args.address
    )
    n = len(cfg.cells())
    print(f"ptq3d run: {cfg.name}: {n} cells -> {cfg.output_dir}", flush=True)
    summary = run_grid(cfg, executor=executor, retry_failed=args.retry_failed, progress=progress)
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
    if not args.no_report:
        paths = write_reports(
            summary.store_path, Path(cfg.output_dir) / "reports", stage=args.stage, title=f"ptq3d: {cfg.name}"
        )
        print(f"report: {paths['html']}")
        print(f"tables: {paths['md']}, {paths['tex']}, {paths['csv']}")
    return 0
