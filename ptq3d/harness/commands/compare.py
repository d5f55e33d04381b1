"""`ptq3d compare BASELINE NEW`: a regression gate between two results stores.

Cells are matched by (model, method label, scheme, protocol, calibration builder, seed). A metric regresses
when it got worse (by its direction) by more than the tolerance; a cell that finished in BASELINE but failed
or is missing in NEW also regresses. Prints what got worse and exits 1 if anything did, 0 otherwise.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare",
        help="regression gate: fail if NEW is worse than BASELINE beyond tolerance",
        description=__doc__,
    )
    p.add_argument("baseline", help="baseline results store (or run directory)")
    p.add_argument("new", help="new results store (or run directory)")
    p.add_argument("--tolerance", type=float, default=0.0, help="allowed worsening per metric (default 0)")
    p.add_argument("--relative", action="store_true", help="tolerance is a fraction of |baseline value|")
    p.add_argument(
        "--metric-tolerance",
        action="append",
        default=[],
        metavar="METRIC=TOL",
        help="per-metric tolerance override (repeatable)",
    )
    p.add_argument("--metrics", help="comma-separated metrics to gate on (default: all with a direction)")
    p.add_argument("--stage", default="fake", choices=["fake", "real"], help="quantized stage to compare")
    p.add_argument("--allow-missing", action="store_true", help="cells missing from NEW are not regressions")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from ptq3d.errors import UserError
    from ptq3d.harness.commands.report import resolve_store
    from ptq3d.reports.compare import compare_stores

    if args.tolerance < 0:
        raise UserError(f"--tolerance {args.tolerance}: must be >= 0")
    per_metric = {}
    for item in args.metric_tolerance:
        name, sep, value = item.partition("=")
        try:
            per_metric[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise UserError(f"--metric-tolerance {item!r}: expected METRIC=TOLERANCE (e.g. pose.auc@30=0.5)")
    result = compare_stores(
        resolve_store(args.baseline),
        resolve_store(args.new),
        tolerance=args.tolerance,
        relative=args.relative,
        metric_tolerances=per_metric,
        metrics=[m.strip() for m in args.metrics.split(",")] if args.metrics else None,
        stage=args.stage,
        allow_missing=args.allow_missing,
    )
    print(result.to_text())
    return 1 if result.regressions else 0
