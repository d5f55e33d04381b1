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
    p.add_argument(
        "--allow-imports",
        action="store_true",
        help='let [run].components = "module:attr" import its module (a config file is not code otherwise)',
    )
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from ptq3d.harness.config import load_config
    from ptq3d.harness.identity import check_labels, check_rows

    cfg = load_config(args.config, allow_imports=args.allow_imports)
    notes = check_labels(cfg)  # labels unique per kind, "FP" reserved, schemes normalised
    cells = cfg.cells()
    check_rows(cells, cfg.source)
    print(f"{args.config}: ok ({len(cells)} cells -> {cfg.output_dir})")
    for note in notes:
        print(f"  note: {note}")
    print(f"  models:    {', '.join(m.display for m in cfg.models)}")
    print(f"  methods:   {', '.join(m.display for m in cfg.methods)}")
    print(f"  schemes:   {', '.join(cfg.schemes) or '-'}")
    print(f"  protocols: {', '.join(p.name for p in cfg.protocols)}")
    for plan in cfg.plans():  # each method's own settings
        cal = plan.calibration
        how = "no calibration"
        if cal.protocol:
            frames = f" x {cal.frames} frames" if cal.frames else ""
            opts = f" {cal.options}" if cal.options else ""
            how = f"{'/'.join(cal.builders)}{opts} on {cal.protocol}, {cal.num_scenes} scenes{frames}, seeds {cal.seeds}"
        epochs = f", epochs {plan.ref.config['epochs']}" if "epochs" in plan.ref.config else ""
        print(f"  {plan.ref.display}: preset {plan.ref.preset}, scope {plan.scope}{epochs}; {how}")
    if cfg.components == "real":
        from ptq3d.methods.registry import broken_plugins

        for why in broken_plugins().values():  # reported, and only configs naming the plugin fail
            print(f"  warning: {why}")
    by_method = Counter(c.method.display for c in cells)
    print("  cells per method: " + ", ".join(f"{k} {v}" for k, v in by_method.items()))
    if args.list:
        for c in cells:
            print(f"  {c.cell_id}  {c.describe()}")
    return 0
