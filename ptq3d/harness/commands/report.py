"""`ptq3d report STORE`: write CSV, Markdown, LaTeX and HTML reports from a results store."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="write CSV/Markdown/LaTeX/HTML reports from a results store", description=__doc__
    )
    p.add_argument("store", help="results store (results.sqlite) or a run directory containing one")
    p.add_argument("--out", help="output directory (default: <store dir>/reports)")
    p.add_argument("--format", default="csv,md,tex,html", help="comma-separated subset of csv,md,tex,html")
    p.add_argument("--stage", default="fake", choices=["fake", "real"], help="quantized stage to score")
    p.add_argument("--metrics", help="comma-separated metrics for the tables (default: all with a direction)")
    p.add_argument("--title", default="ptq3d report")
    p.set_defaults(func=handle)


def resolve_store(path: str) -> Path:
    from ptq3d.errors import UserError
    from ptq3d.harness.sweep import STORE_NAME

    p = Path(path)
    if p.is_dir():
        p = p / STORE_NAME
    if not p.is_file():
        raise UserError(f"results store '{p}' does not exist")
    return p


def handle(args: argparse.Namespace) -> int:
    from ptq3d.errors import UserError
    from ptq3d.reports import FORMATS, write_reports
    from ptq3d.reports.leaderboard import leaderboard, leaderboard_to_text
    from ptq3d.results.read import load_results

    store = resolve_store(args.store)
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UserError(f"--format {args.format!r}: allowed values are {', '.join(FORMATS)}")
    metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else None
    results = load_results(store)
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
