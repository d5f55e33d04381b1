"""`ptq3d sensitivity`: per-block (or per-site) quantization sensitivity per task, the cheap estimates beside it
with their rank correlations, and a mixed-precision plan for a bit budget.

Writes to --out: sensitivity.json (ptq3d.calibration.sensitivity.SensitivityTable, read by the HTML report when
it sits in a run directory), sensitivity.csv, sensitivity.png (units x tasks heatmap) and, with --budget,
plan.toml (a PrecisionPlan any method takes through `plan = "..."`). Prints the table with the correlations.
Calibration options are those of `ptq3d quantize`.
"""

from __future__ import annotations

import argparse


def add_calibration_args(p: argparse.ArgumentParser) -> None:
    """The calibration options of `ptq3d quantize` (source, builder, size, pool, frames, image size, seed)."""
    p.add_argument(
        "--calib",
        default="synthetic",
        choices=["synthetic", "random"],
        help="calibration source: synthetic scenes or uniform random images",
    )
    p.add_argument("--calib-builder", default="random", help="calibration-set builder (default random)")
    p.add_argument("--calib-size", type=int, default=4, help="number of calibration scenes")
    p.add_argument(
        "--calib-pool", type=int, default=None, help="candidate scenes to choose from (default: size)"
    )
    p.add_argument("--calib-frames", type=int, default=4, help="frames per calibration scene")
    p.add_argument("--image-size", type=int, nargs=2, default=[112, 112], metavar=("H", "W"))
    p.add_argument("--seed", type=int, default=0, help="calibration selection seed")


def build_calibration(args: argparse.Namespace, model, model_name: str):
    """The CalibrationSet the calibration options describe (as `ptq3d quantize` builds it)."""
    from ptq3d.calibration import get_calibration_builder
    from ptq3d.calibration.sets import random_pool, synthetic_pool
    from ptq3d.errors import ConfigError

    patch = getattr(getattr(model.module, "config", None), "patch_size", None)
    h, w = args.image_size
    if h <= 0 or w <= 0 or (patch and (h % patch or w % patch)):
        raise ConfigError(
            f"--image-size {h} {w}: height and width must be positive multiples of {model_name}'s patch size "
            f"{patch}"
            if patch
            else f"--image-size {h} {w}: height and width must be positive"
        )
    if args.calib_size <= 0:
        raise ConfigError(f"--calib-size {args.calib_size}: must be positive")
    make_pool = synthetic_pool if args.calib == "synthetic" else random_pool
    pool = make_pool(
        args.calib_pool or args.calib_size, args.calib_frames, h, w, first_seed=args.seed * 100_000
    )
    return get_calibration_builder(args.calib_builder)(
        pool, args.calib_size, seed=args.seed, model=model, source=args.calib
    )


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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
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
        table.plan = plan.to_dict()
        written.append(plan.save(out / "plan.toml"))
    written.append(table.save_json(out / "sensitivity.json"))
    written.append(table.save_csv(out / "sensitivity.csv"))
    data = report.load(out / "sensitivity.json")
    written.append(report.save_heatmap_png(data, out / "sensitivity.png"))
    print(report.to_markdown(data))
    for p in written:
        print(f"wrote {p}")
    return 0
