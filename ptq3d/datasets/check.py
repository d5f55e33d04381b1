"""Validate a dataset folder: decode every frame the loaders would read and list what is missing or corrupt."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ptq3d.datasets.frames import InvalidFrame
from ptq3d.errors import DataError, unknown_name_error

CHECKABLE = ("co3d", "7scenes", "nrgbd", "eth3d", "dtu", "re10k", "kitti")


@dataclass
class CheckReport:
    """problems: one line per missing/corrupt file (each a DataError message); invalid: frames the dataset marks
    invalid (e.g. NRGBD nan poses), which protocols may skip."""

    dataset: str
    root: str
    scenes: int = 0
    frames_ok: int = 0
    problems: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.scenes > 0

    def lines(self) -> list[str]:
        out = [f"{self.dataset} at {self.root}: {self.scenes} scenes, {self.frames_ok} frames readable, "
               f"{len(self.problems)} problems, {len(self.invalid)} invalid (skippable) frames"]  # fmt: skip
        out += [f"  PROBLEM {p}" for p in self.problems]
        out += [f"  invalid {p}" for p in self.invalid]
        return out


def _unexpected(exc: BaseException, where: str) -> str:
    text = str(exc).strip().splitlines()
    return f"{where}: unreadable ({type(exc).__name__}: {text[0] if text else 'no message'})"


def _try(report: CheckReport, fn, *args) -> object | None:
    try:
        result = fn(*args)
    except InvalidFrame as exc:
        report.invalid.append(str(exc))
        return None
    except DataError as exc:
        report.problems.append(str(exc))
        return None
    except (
        Exception
    ) as exc:  # a loader bug or an input no check foresaw: one line in the report, no traceback
        report.problems.append(
            _unexpected(exc, " ".join(str(a) for a in args[:2] if isinstance(a, str | Path)))
        )
        return None
    report.frames_ok += 1
    return result


def check_dataset(dataset: str, root: str | Path, max_frames_per_scene: int | None = None) -> CheckReport:
    """Read every scene and frame of `dataset` under `root` (at most `max_frames_per_scene` per scene)."""
    if dataset not in CHECKABLE:
        raise unknown_name_error("dataset", dataset, CHECKABLE)
    root = Path(root)
    report = CheckReport(dataset, str(root))
    if not root.is_dir():
        report.problems.append(f"{root}: root folder not found")
        return report
    try:
        checks = {"co3d": _check_co3d, "7scenes": _check_7scenes, "nrgbd": _check_nrgbd, "eth3d": _check_eth3d,
                  "dtu": _check_dtu, "re10k": _check_re10k, "kitti": _check_kitti}  # fmt: skip
        checks[dataset](root, report, max_frames_per_scene)
    except DataError as exc:
        report.problems.append(str(exc))
    except Exception as exc:  # data check reports; it never ends in a traceback
        report.problems.append(_unexpected(exc, str(root)))
    if report.scenes == 0 and not report.problems:
        report.problems.append(f"{root}: no {dataset} scenes found")
    return report


def _check_co3d(root: Path, report: CheckReport, cap: int | None) -> None:
    from ptq3d.datasets import co3d

    for cat in co3d.list_categories(root):
        try:
            index = co3d.Co3dCategory(root, cat)
        except DataError as exc:
            report.problems.append(str(exc))
            continue
        set_lists = sorted((root / cat / "set_lists").glob("set_lists_*.json"))
        if not set_lists:
            report.problems.append(f"{root / cat / 'set_lists'}: no set_lists_<subset>.json files")
        for path in set_lists:
            subset = path.stem[len("set_lists_") :]
            try:
                data = index.set_list(subset)
                # the test split is what evaluation reads: it must not be empty; other splits may be
                for split in sorted(k for k in data if k == "test" or data[k]):
                    for seq, numbers in index.split_frames(subset, split).items():
                        if seq not in index.frames:
                            raise DataError(f"{path}: split '{split}' names unknown sequence '{seq}'")
                        for n in numbers:
                            index.frame_record(seq, n)
                if "test" not in data:
                    raise DataError(f"{path}: no 'test' split (has {', '.join(sorted(data)) or 'none'})")
            except DataError as exc:
                report.problems.append(str(exc))
        for seq, frames in index.frames.items():
            report.scenes += 1
            if seq not in index.sequences:
                report.problems.append(f"{index._sa_path}: no record for sequence '{seq}'")
            for n in sorted(frames)[:cap]:
                rec = frames[n]
                _try(report, co3d.read_co3d_frame, root, rec, index._fa_path, True)
                mask = rec.get("mask", {}).get("path") if isinstance(rec.get("mask"), dict) else None
                if mask and not (root / mask).is_file():
                    report.problems.append(f"{root / mask}: missing foreground mask")


def _check_7scenes(root: Path, report: CheckReport, cap: int | None) -> None:
    from ptq3d.datasets import sevenscenes

    for scene in sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("seq-*"))):
        for split in ("TestSplit.txt", "TrainSplit.txt"):
            if split == "TrainSplit.txt" and not (root / scene / split).exists():
                continue  # evaluation needs only the test split
            try:
                for seq in sevenscenes.read_split(root / scene / split):
                    if not (root / scene / seq).is_dir():
                        report.problems.append(
                            f"{root / scene / split}: names {seq}, which is not in {root / scene}"
                        )
            except DataError as exc:
                report.problems.append(str(exc))
        for seq in sorted(p.name for p in (root / scene).glob("seq-*") if p.is_dir()):
            report.scenes += 1
            try:
                ids = sevenscenes.list_frames(root / scene / seq)
            except DataError as exc:
                report.problems.append(str(exc))
                continue
            for fid in ids[:cap]:
                _try(report, sevenscenes.read_7scenes_frame, root / scene / seq, fid)


def _check_nrgbd(root: Path, report: CheckReport, cap: int | None) -> None:
    from ptq3d.datasets import nrgbd

    for scene in nrgbd.list_scenes(root):
        report.scenes += 1
        sdir = root / scene
        try:
            focal, poses = nrgbd.read_focal(sdir), nrgbd.read_poses(sdir)
            ids = nrgbd.list_frames(sdir, len(poses))
        except DataError as exc:
            report.problems.append(str(exc))
            continue
        if len(poses) != len(ids):
            report.problems.append(f"{sdir / 'poses.txt'}: {len(poses)} poses for {len(ids)} images")
        for i in ids[:cap]:
            _try(report, nrgbd.read_nrgbd_frame, sdir, i, poses, focal)


def _check_eth3d(root: Path, report: CheckReport, cap: int | None) -> None:
    from ptq3d.datasets import eth3d
    from ptq3d.datasets.colmap import read_colmap_text

    for scene in eth3d.list_scenes(root):
        report.scenes += 1
        sdir = root / scene
        try:
            model = read_colmap_text(sdir / eth3d.CALIBRATION)
        except DataError as exc:
            report.problems.append(str(exc))
            continue
        if not model.images:
            report.problems.append(f"{sdir / eth3d.CALIBRATION / 'images.txt'}: empty scene (no images)")
        for name in sorted(im.name for im in model.images.values())[:cap]:
            _try(report, eth3d.read_eth3d_frame, sdir, model, name)


def _check_dtu(root: Path, report: CheckReport, cap: int | None) -> None:
    from ptq3d.datasets import dtu

    for scan in dtu.list_scans(root):
        report.scenes += 1
        try:
            ids = dtu.list_frames(root / scan)
        except DataError as exc:
            report.problems.append(str(exc))
            continue
        for view in ids[:cap]:
            _try(report, dtu.read_dtu_frame, root / scan, view)


def _check_re10k(root: Path, report: CheckReport, cap: int | None) -> None:
    from ptq3d.datasets import re10k

    splits = [s for s in ("train", "test") if (root / s).is_dir()]
    if not splits:
        raise DataError(f"{root}: no RealEstate10K split folder (train/ or test/ with <sequence>.txt files)")
    for split in splits:
        for seq in re10k.list_sequences(root, split):
            report.scenes += 1
            try:
                stamps = re10k.list_frames(root, split, seq)
            except DataError as exc:
                report.problems.append(str(exc))
                continue
            for ts in stamps[:cap]:
                _try(report, _re10k_frame, root, split, seq, ts)


def _re10k_frame(root: Path, split: str, seq: str, ts: int):
    from ptq3d.datasets import re10k

    return re10k.load_re10k_sequence(root, split, seq, [ts])


def _check_kitti(root: Path, report: CheckReport, cap: int | None) -> None:
    from ptq3d.datasets import kitti

    for drive in kitti.list_drives(root):
        report.scenes += 1
        try:
            ids = kitti.list_frames(root, drive)
        except DataError as exc:
            report.problems.append(str(exc))
            continue
        for fid in ids[:cap]:
            _try(report, kitti.read_kitti_frame, root, drive, fid)
