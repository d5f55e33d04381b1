"""`ptq3d models`: list the registered models with their parameter counts."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list the available models (name, family, parameters)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=handle)


def _fmt_params(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n:,} ({n / 1e9:.2f} B)" if n >= 1e9 else f"{n:,} ({n / 1e6:.1f} M)"


def handle(args: argparse.Namespace) -> int:
    from ptq3d.models import list_models

    rows = list_models()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    table = [("NAME", "FAMILY", "PARAMETERS", "DESCRIPTION")] + [
        (r["name"], r["family"], _fmt_params(r["params"]), r["description"]) for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)) + "  " + row[3])
    return 0
