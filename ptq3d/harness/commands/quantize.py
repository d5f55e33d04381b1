"""`ptq3d quantize`: quantize a model with a registered method and write the quantized state.

Output directory: model.safetensors + manifest.json (coverage, scheme, config, calibration hash, stats);
`ptq3d.methods.load_quantized(DIR)` restores it bit-exactly.
"""

from __future__ import annotations

import argparse


def add_calibration_args(p: argparse.ArgumentParser, none_allowed: bool = False) -> None:
    """The calibration options (source, builder, size, pool, frames, image size, seed); shared with
    `ptq3d sensitivity`. none_allowed: --calib none (no calibration set) is a choice."""
    p.add_argument(
        "--calib",
        default="synthetic",
        choices=["synthetic", "random", "none"] if none_allowed else ["synthetic", "random"],
        help="calibration source: synthetic scenes, uniform random images"
        + (", or none" if none_allowed else ""),
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
    """The CalibrationSet the calibration options describe (None with --calib none); checks --image-size
    against the model's patch size."""
    from ptq3d.calibration import get_calibration_builder
    from ptq3d.calibration.sets import random_pool, synthetic_pool
    from ptq3d.errors import ConfigError

    patch = getattr(getattr(model.module, "config", None), "patch_size", None)
    h, w = args.image_size
    if h <= 0 or w <= 0 or (patch and (h % patch or w % patch)):
        raise ConfigError(
            f"--image-size {h} {w}: height and width must be positive multiples of {model_name}'s patch size "
            f"{patch} (e.g. {max(1, round(h / patch)) * patch} {max(1, round(w / patch)) * patch})"
            if patch
            else f"--image-size {h} {w}: height and width must be positive"
        )
    if args.calib == "none":
        return None
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
        "quantize",
        help="quantize a model with a PTQ method and save it (safetensors + JSON manifest)",
        description="Quantize a model with a registered PTQ method (ptq3d.methods) and save the result.",
    )
    p.add_argument("--model", required=True, help="model name (see `ptq3d models`), e.g. vggt-tiny")
    p.add_argument(
        "--method", required=True, help="PTQ method: fp, rtn, smoothquant, gptq, quarot or a plugin"
    )
    p.add_argument(
        "--scheme", default="w8a8", help="w8a8, w6a6, w4a8, w4a4, w4a16, w4g128a16, w8a8-static ..."
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--weights", default=None, help="checkpoint to load (default: the model's default weights)"
    )
    p.add_argument(
        "--scope", default="aggregator", choices=["aggregator", "all"], help="which blocks to quantize"
    )
    add_calibration_args(p, none_allowed=True)
    p.add_argument(
        "--plan",
        default=None,
        help="mixed-precision plan (.toml/.json, e.g. from `ptq3d sensitivity --budget`) over --scheme",
    )
    p.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method config value (repeatable), e.g. --set actorder=true --set percdamp=0.05",
    )
    p.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="load a checkpoint holding NaN/Inf tensors (refused by default); a quantized model with NaN/Inf "
        "tensors is never written",
    )
    p.add_argument("--no-progress", action="store_true", help="no per-block progress bar")
    p.set_defaults(func=handle)


def _parse_settings(items: list[str]) -> dict[str, str]:
    from ptq3d.errors import ConfigError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip()] = value
    return out


def handle(args: argparse.Namespace) -> int:
    from ptq3d.methods import get_method, quantize_model, save_quantized
    from ptq3d.models import load_model

    config = _parse_settings(args.settings)
    spec = get_method(args.method)
    spec.make_config(config)  # fail on bad keys before loading anything
    model = load_model(args.model, weights=args.weights, allow_nonfinite=args.allow_nonfinite)
    calib = build_calibration(args, model, args.model)
    qm = quantize_model(
        model,
        args.method,
        None if args.method == "fp" else args.scheme,
        calib,
        config,
        args.scope,
        progress=not args.no_progress,
        inplace=True,
        plan=args.plan,
    )
    from ptq3d.errors import CheckpointError
    from ptq3d.models.loading import nonfinite_tensors

    bad = nonfinite_tensors(qm.module.state_dict())
    if bad:  # a model of NaN/Inf gives NaN outputs downstream: never write one
        shown = ", ".join(bad[:5]) + (f", ... and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise CheckpointError(
            f"{args.method} ({args.scheme}): quantized model holds NaN/Inf in {shown}; not written"
        )
    out = save_quantized(qm, args.out)
    st = qm.stats
    n = len(qm.manifest["sites"])
    print(
        f"quantized {args.model} with {args.method} ({qm.scheme.name}): {n} linears, "
        f"calibration {st.wall_time_s:.2f} s, peak RSS {st.peak_rss_bytes / 2**20:.0f} MiB -> {out}"
    )
    return 0
