"""`ptq3d data`: check a dataset folder, list evaluation protocols, write synthetic scenes in a dataset's format."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="datasets: check a folder, list protocols, write synthetic scenes")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    c = sub.add_parser("check", help="validate a dataset folder and report missing or corrupt files")
    c.add_argument("dataset", help="co3d, 7scenes, nrgbd, eth3d, dtu, re10k or kitti")
    c.add_argument("root", help="dataset root folder")
    c.add_argument("--max-frames", type=int, default=None, help="check at most this many frames per scene")
    c.set_defaults(func=_check)
    ls = sub.add_parser("ls", help="list the registered evaluation protocols")
    ls.add_argument("--verbose", "-v", action="store_true", help="print every field as JSON")
    ls.set_defaults(func=_ls)
    s = sub.add_parser("synth", help="write synthetic scenes in a real dataset's on-disk format")
    s.add_argument("format", help="co3d, 7scenes, nrgbd, eth3d, dtu, re10k or kitti")
    s.add_argument("root", help="output folder")
    s.add_argument("--seeds", type=int, nargs="+", default=[0], help="scene seeds")
    s.add_argument("--frames", type=int, default=8)
    s.add_argument("--height", type=int, default=112)
    s.add_argument("--width", type=int, default=112)
    s.set_defaults(func=_synth)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def _check(args: argparse.Namespace) -> int:
    from ptq3d.datasets.check import check_dataset

    report = check_dataset(args.dataset, args.root, args.max_frames)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def _ls(args: argparse.Namespace) -> int:
    from ptq3d.datasets.protocols import list_protocols

    for p in list_protocols():
        if args.verbose:
            print(f"{p.name} {p.hash}\n  {p.canonical_json()}")
        else:
            n = len(p.scenes) if isinstance(p.scenes, tuple) else "all"
            frames = {"stride": f"stride {p.stride}", "random": f"{p.frames_per_scene} random (seed {p.seed})",
                      "first": f"first {p.frames_per_scene}", "all": "all frames"}[p.sampling]  # fmt: skip
            print(f"{p.name:24s} v{p.version} {p.dataset:9s} scenes={n!s:4s} {frames:22s} "
                  f"{p.preprocessing}@{p.resolution} {p.hash[:12]}")  # fmt: skip
    return 0


def _synth(args: argparse.Namespace) -> int:
    from ptq3d.datasets.synthetic import write_synthetic_dataset

    ids = write_synthetic_dataset(
        args.format, args.root, args.seeds, num_frames=args.frames, height=args.height, width=args.width
    )
    print(f"wrote {len(ids)} {args.format} scenes under {args.root}: {', '.join(ids)}")
    return 0
