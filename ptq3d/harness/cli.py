"""The `ptq3d` command line.

Each sub-command lives in its own module under ptq3d/harness/commands/ and exposes
`register(subparsers)`, which adds its parser and sets `func=handler(args) -> int`.
Modules are discovered automatically, so a new command needs no edit here.

User errors (bad config, unknown name, missing file) raise `UserError` and exit with code 2 and a one-line
message, and so does a full disk (ENOSPC anywhere); Ctrl-C exits with code 130 and one line; anything else is
a bug and keeps its traceback. `ptq3d run` exits 3 when cells failed (see `ptq3d run --help`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from ptq3d import __version__
from ptq3d.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2), like our UserErrors; sub-parsers inherit the class."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ptq3d",
        description="Benchmark post-training quantization of 3D geometry transformers (VGGT, Pi3).",
    )
    parser.add_argument("--version", action="version", version=f"ptq3d {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from ptq3d.harness import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"ptq3d.harness.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"ptq3d {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ptq3d {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # a full disk anywhere (reports, caches, the store) is one line, not a traceback
        from ptq3d.results.store import disk_full_error, is_disk_full

        if not is_disk_full(exc):
            raise
        where = getattr(exc, "filename", None) or "a file"
        print(f"ptq3d {args.command}: error: {disk_full_error(where, exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
