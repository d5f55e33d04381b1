"""`ptq3d sensitivity`: per-block (or per-site) quantization sensitivity per task, the cheap estimates beside it
with their rank correlations, and a mixed-precision plan for a bit budget.

Writes to --out: sensitivity.json (ptq3d.calibration.sensitivity.SensitivityTable, read by the HTML report when
it sits in a run directory), sensitivity.csv, sensitivity.png (units x tasks heatmap) and, with --budget,
plan.toml (a PrecisionPlan any method takes through `plan = "..."`). Prints the table with the correlations.
Calibration options are those of `ptq3d quantize`.
"""

from __future__ import annotations

import argparse

from ptq3d.harness.commands.quantize import add_calibration_args, build_calibration


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sensitivity",
        help="per-block quantization sensitivity per task, cheap estimates, and a mixed-precision plan",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model name (see `ptq3d models`)")
    p.add_argument("--scheme", default="w4a4", help="scheme each unit is quantized at (w4a4, w4a16, ...)")
    p.add_argument(
        "--weights", default=None, help="checkpoint to load (default: the model's default weights)"
    )
    p.add_argument("--scope", default="aggregator", choices=["aggregator", "all"], help="which blocks")
    p.add_argument("--granularity", default="block", choices=["block", "site"], help="unit: block or linear")
    p.add_argument("--tasks", default="camera,depth,points", help="comma-separated tasks")
    add_calibration_args(p)
    p.add_argument(
        "--no-estimates", action="store_true", help="skip the gradient pass (Fisher, Gauss-Newton)"
    )
    p.add_argument(
        "--budget", type=float, default=None, metavar="BITS", help="write plan.toml for this average"
    )
    p.add_argument("--high-bits", type=int, default=8, help="weight bits of the raised units (default 8)")
    p.add_argument(
        "--high-act-bits",
        type=int,
        default=None,
        help="also raise the units' activations to these bits (16 = FP; default: the scheme's)",
    )
    p.add_argument("--plan-task", default="worst", help="rank units by this task, or 'worst' (default)")
    p.add_argument("--plan-name", default=None, help="plan name (default sens-<task>-<budget>b)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from ptq3d.calibration.sensitivity import block_sensitivity, plan_for_budget
    from ptq3d.errors import ConfigError
    from ptq3d.harness.sensitivity_stage import write_table
    from ptq3d.models import load_model
    from ptq3d.quant.spec import get_scheme
    from ptq3d.reports import sensitivity as report

    if args.threads:
        torch.set_num_threads(args.threads)
    scheme = get_scheme(args.scheme)  # fail on a bad name before loading anything
    if args.budget is not None and not args.budget >= scheme.weight.bits:
        raise ConfigError(f"--budget {args.budget}: below the scheme's {scheme.weight.bits} weight bits")
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    model = load_model(args.model, weights=args.weights)
    calib = build_calibration(args, model, args.model)
    table = block_sensitivity(
        model,
        calib,
        scheme,
        args.scope,
        args.granularity,
        tasks,
        estimates=not args.no_estimates,
        seed=args.seed,
    )
    plan = None
    if args.budget is not None:
        plan = plan_for_budget(
            table,
            model,
            scheme,
            args.budget,
            args.high_bits,
            args.plan_task,
            args.plan_name,
            args.high_act_bits,
        )
    out = Path(args.out)
    written = write_table(table, out, plan)
    print(report.to_markdown(report.load(out / "sensitivity.json")))
    for p in written:
        print(f"wrote {p}")
    return 0
