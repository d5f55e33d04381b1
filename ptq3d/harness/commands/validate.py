"""`ptq3d validate CONFIG`: check a run configuration (keys, types, names, paths) and show its grid."""

from __future__ import annotations

import argparse
from collections import Counter


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "validate", help="check a run configuration and print its grid", description=__doc__
    )
    p.add_argument("config", help="TOML run configuration")
    p.add_argument("--list", action="store_true", help="list every cell")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from ptq3d.harness.config import load_config

    cfg = load_config(args.config)
    cells = cfg.cells()
    print(f"{args.config}: ok ({len(cells)} cells -> {cfg.output_dir})")
    print(f"  models:    {', '.join(m.display for m in cfg.models)}")
    print(f"  methods:   {', '.join(m.display for m in cfg.methods)}")
    print(f"  schemes:   {', '.join(cfg.schemes) or '-'}")
    print(f"  protocols: {', '.join(p.name for p in cfg.protocols)}")
    cal = cfg.calibration
    if cal.protocol:
        print(
            f"  calibration: {cal.protocol}, builders {', '.join(cal.builders)}, {cal.num_scenes} scenes, seeds {cal.seeds}"
        )
    by_method = Counter(c.method.display for c in cells)
    print("  cells per method: " + ", ".join(f"{k} {v}" for k, v in by_method.items()))
    if args.list:
        for c in cells:
            print(f"  {c.cell_id}  {c.describe()}")
    return 0
