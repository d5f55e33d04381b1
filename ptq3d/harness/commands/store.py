"""`ptq3d store repair RUN_DIR`: the way out of a corrupt results store.

The corrupt file is moved aside (results.sqlite.corrupt-<time>, never deleted) and a new results.sqlite holds
every cell that could still be read whole; `ptq3d run` on the same config then recomputes only the cells that
were lost. RUN_DIR may also name the store file itself.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "store",
        help="maintain a results store (repair a corrupt one)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    r = sub.add_parser("repair", help="move a corrupt store aside and keep its readable cells")
    r.add_argument("run_dir", help="run directory (or its results.sqlite)")
    r.set_defaults(func=handle_repair)


def handle_repair(args: argparse.Namespace) -> int:
    from ptq3d.harness.sweep import STORE_NAME
    from ptq3d.results.store import repair_store

    path = Path(args.run_dir)
    if path.is_dir():
        path = path / STORE_NAME
    out = repair_store(path)
    print(f"moved the corrupt store to {out['moved_to']}")
    if not out["index_readable"]:
        print(f"new store {path}: kept 0 cells (the old store's list of cells could not be read)")
    else:
        print(f"new store {path}: kept {len(out['kept'])} cells, lost {len(out['lost'])} (unreadable)")
    if out["lost"] or not out["index_readable"]:
        print("rerun the same `ptq3d run` command to recompute the lost cells")
    return 0
