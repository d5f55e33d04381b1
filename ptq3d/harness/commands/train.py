"""`ptq3d train-tiny`: train the bundled default model `vggt-tiny-synthetic` on generated scenes and score it on
the held-out synthetic protocol (see ptq3d.harness.train_tiny)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-tiny",
        help="train the tiny VGGT of the bundled default model on synthetic scenes (CPU: about 40 min)",
        description="Reproduce the bundled vggt-tiny-synthetic weights: generate the training scenes (training "
        "seeds only), train with VGGT's losses, write safetensors and score the held-out protocol.",
    )
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the bundled run's)")
    p.add_argument(
        "--out", type=Path, default=Path("vggt_tiny_synthetic.safetensors"), help="weights file to write"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the batch draws")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--work-dir", type=Path, default=None, help="pool cache, checkpoint and log (default: beside --out)"
    )
    p.add_argument("--pool-scenes", type=int, default=None, help="number of generated training scenes")
    p.add_argument("--workers", type=int, default=2, help="processes generating the training scenes")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for training (default 1)")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint in the work dir")
    p.add_argument(
        "--eval-scenes", type=int, default=32, help="held-out scenes to score at the end (0: skip)"
    )
    p.add_argument(
        "--fp16", action="store_true", help="store the final weights in float16 (the bundled file)"
    )
    p.add_argument(
        "--card-json",
        type=Path,
        default=None,
        help="also write the model card numbers (held-out metrics, RTN, outlier variant, activation statistics)",
    )
    p.add_argument(
        "--evaluate-only",
        type=Path,
        default=None,
        metavar="WEIGHTS",
        help="skip training: score WEIGHTS on the held-out protocol (with --card-json: the full model card)",
    )
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    import dataclasses
    import logging

    from ptq3d.errors import ConfigError
    from ptq3d.harness import train_tiny as tt

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    overrides = {"seed": args.seed}
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.pool_scenes is not None:
        overrides["pool_scenes"] = args.pool_scenes
    if args.threads is not None:
        overrides["threads"] = args.threads
    if args.workers < 1:
        raise ConfigError(f"train-tiny: --workers must be >= 1, got {args.workers}")
    if args.eval_scenes < 0:
        raise ConfigError(f"train-tiny: --eval-scenes must be >= 0, got {args.eval_scenes}")
    cfg = dataclasses.replace(tt.TrainConfig(), **overrides)
    if args.evaluate_only is not None:
        weights = args.evaluate_only
        if not weights.is_file():
            raise ConfigError(f"train-tiny: --evaluate-only {weights}: file not found")
    else:
        res = tt.train(cfg, args.out, args.work_dir, args.device, args.workers, resume=not args.no_resume)
        weights = tt.export_fp16(res.weights, res.weights) if args.fp16 else res.weights
        print(
            f"wrote {weights} ({cfg.steps} steps, training {res.wall_s:.0f} s, scene generation {res.pool_s:.0f} s)"
        )
    if args.card_json is not None:
        numbers = tt.write_model_card_json(weights, args.card_json, num_scenes=args.eval_scenes or 32)
        print(f"wrote {args.card_json}")
        print(json.dumps(numbers["heldout"], indent=1))
    elif args.eval_scenes:
        from ptq3d.models import load_model
        from ptq3d.models.bundled import vggt_tiny_synthetic_config

        model = load_model(vggt_tiny_synthetic_config(), weights=weights)
        results = tt.evaluate({"fp": model}, tt.heldout_scenes(args.eval_scenes))
        print(json.dumps(tt.headline(results), indent=1))
    return 0
