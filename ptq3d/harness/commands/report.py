"""`ptq3d report [RUN]`: write CSV, Markdown, LaTeX and HTML reports from a run directory or results store;
without RUN, the latest run under ./ptq3d-runs."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="write CSV/Markdown/LaTeX/HTML reports from a results store", description=__doc__
    )
    p.add_argument(
        "store",
        nargs="?",
        help="run directory (or its results.sqlite); default: the latest run under ./ptq3d-runs",
    )
    p.add_argument("--out", help="output directory (default: <store dir>/reports)")
    p.add_argument("--format", default="csv,md,tex,html", help="comma-separated subset of csv,md,tex,html")
    p.add_argument("--stage", default="fake", choices=["fake", "real"], help="quantized stage to score")
    p.add_argument("--metrics", help="comma-separated metrics for the tables (default: all with a direction)")
    p.add_argument("--title", default="ptq3d report")
    p.add_argument(
        "--against-paper",
        metavar="NAME",
        help="print ours next to the published values of a paper config (harness/examples/papers/NAME) and exit",
    )
    p.set_defaults(func=handle)


def resolve_store(path: str | None) -> Path:
    """A run directory or store file -> the store; None -> the latest run's store under ./ptq3d-runs."""
    from ptq3d.results.read import latest_run
    from ptq3d.results.read import resolve_store as resolve

    return resolve(latest_run() if path is None else path)


def handle(args: argparse.Namespace) -> int:
    from ptq3d.errors import UserError
    from ptq3d.reports import FORMATS, write_reports
    from ptq3d.reports.leaderboard import leaderboard, leaderboard_to_text
    from ptq3d.results.read import load_results

    store = resolve_store(args.store)
    if args.store is None:
        print(f"latest run: {store.parent}")
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UserError(f"--format {args.format!r}: allowed values are {', '.join(FORMATS)}")
    metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else None
    results = load_results(store)
    if args.against_paper:
        from ptq3d.reports.against_paper import against_paper, against_paper_to_text

        print(against_paper_to_text(against_paper(results, args.against_paper, args.stage), args.against_paper))
        return 0
    if metrics:
        known = set(results.metrics["metric"])
        for m in metrics:
            if m not in known:
                from ptq3d.errors import unknown_name_error

                raise unknown_name_error("metric in this store", m, known)
    out = Path(args.out) if args.out else store.parent / "reports"
    paths = write_reports(store, out, formats, args.stage, metrics, args.title)
    print(leaderboard_to_text(leaderboard(results, args.stage)))
    for fmt, path in paths.items():
        print(f"{fmt}: {path}")
    return 0
