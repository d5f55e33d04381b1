"""`ptq3d ls WHAT`: list registered models, methods, datasets, metrics, protocols, schemes or calibration builders."""

from __future__ import annotations

import argparse

KINDS = ("models", "methods", "datasets", "metrics", "protocols", "schemes", "builders")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ls", help="list registered models, methods, datasets, metrics, protocols", description=__doc__
    )
    p.add_argument("what", choices=KINDS, help="what to list")
    p.add_argument("--components", default="real", help=argparse.SUPPRESS)
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from ptq3d.harness.components import get_components

    comp = get_components(args.components)
    lister = {
        "models": comp.list_models,
        "methods": comp.list_methods,
        "datasets": comp.list_datasets,
        "metrics": comp.list_metrics,
        "protocols": comp.list_protocols,
        "schemes": comp.list_schemes,
        "builders": comp.list_calibration_builders,
    }[args.what]
    describe = getattr(comp, "describe", None)
    for name in lister():
        text = describe(args.what, name) if describe else ""
        print(f"{name:<28} {text}".rstrip())
    return 0
