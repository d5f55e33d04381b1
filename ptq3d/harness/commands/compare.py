"""`ptq3d compare BASELINE NEW`: a regression gate between two results stores.

Cells are matched by what they ran (model, method name and config hash, scheme, scope, protocol, calibration
and seed), never by display label; a scene-set, protocol, model-weight or calibration-data mismatch between
matched cells is refused unless --allow-mismatch names it (scenes, protocol, model, calibration). A metric regresses when it got worse (by its direction) by more than
the tolerance; with --noise-aware only when the paired bootstrap CI over the common scenes lies above it. A
cell that finished in BASELINE but failed in NEW regresses; cells missing from NEW fail the gate unless
--allow-missing; new cells are listed, not gated. Exits 1 on FAIL, 0 on PASS, 2 on bad input.
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
    p.add_argument("--allow-missing", action="store_true", help="cells missing from NEW do not fail the gate")
    p.add_argument(
        "--allow-mismatch",
        action="append",
        default=[],
        metavar="KIND",
        help="compare matched cells whose scenes / protocol / model / calibration differ, and report it "
        "(repeatable, or comma-separated)",
    )
    p.add_argument(
        "--noise-aware",
        action="store_true",
        help="regress only when the paired bootstrap CI of the per-scene worsening lies above the tolerance",
    )
    p.add_argument("--confidence", type=float, default=0.95, help="CI level of --noise-aware (default 0.95)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of --noise-aware")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed of --noise-aware")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from ptq3d.errors import UserError
    from ptq3d.harness.commands.report import resolve_store
    from ptq3d.reports.compare import compare_stores

    if args.tolerance < 0:
        raise UserError(f"--tolerance {args.tolerance}: must be >= 0")
    if args.resamples < 100:
        raise UserError(f"--resamples {args.resamples}: use at least 100")
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
        metrics=[m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None,
        stage=args.stage,
        allow_missing=args.allow_missing,
        allow_mismatch=[k.strip() for item in args.allow_mismatch for k in item.split(",") if k.strip()],
        noise_aware=args.noise_aware,
        confidence=args.confidence,
        n_resamples=args.resamples,
        seed=args.seed,
    )
    print(result.to_text())
    return 0 if result.passed else 1
