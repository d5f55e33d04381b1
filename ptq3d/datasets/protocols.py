"""Evaluation protocols as data: which scenes, which frames, which resolution. A `Protocol` is frozen and hashed
(sha256 of its canonical JSON); the hash goes into every result so that numbers from different protocols are
never compared by accident (the PTQ papers use three different ones; notes/datasets_and_metrics.md section 3).

Frame sampling (`sampling`):
- "all": every frame, in the dataset's order (sorted ids).
- "stride": every `stride`-th frame starting at the first (kf_every); with `stride_cap_half` the stride is
  min(stride, n // 2) so that at least two frames remain (QuantVGGT's NRGBD loader).
- "random": `frames_per_scene` distinct frames drawn with numpy's legacy RandomState.choice, kept in draw order.
  seed_scope "protocol": one RandomState(seed) consumed scene after scene in protocol order, as VGGT's
  test_co3d.py seeds numpy once (so a limited run draws the same frames for its first scenes);
  "scene": a fresh RandomState per scene seeded from (seed, scene id).
- "first": the first `frames_per_scene` frames.
Then `max_frames` truncates. Frames the dataset marks invalid (e.g. NRGBD nan poses) are skipped with a warning
only if their kind is in `skippable`; the count lands in the scene's meta ('num_skipped').

Dataset options (`options`, sorted (key, value) pairs):
- co3d: subset ('fewview_dev'), min_viewpoint_quality (0.5), max_translation_sum (None);
  sequence_sampling ('first': the first `max_scenes_per_group` sorted sequences of a category, or 'random':
  that many drawn with Python's random.Random(seed).sample, as QuantVGGT's make_calibation.py);
  draw_clips (N: N distinct sequences drawn as FGQ does, a random category then a random sequence in it, with
  numpy RandomState(seed); replaces the per-category listing).
- dtu, kitti: none. re10k: split_folder (default: the protocol's split).
- 7scenes: focal (525), depth_source ('auto' | 'proj' | 'raw').
- eth3d: calibration ('dslr_calibration_jpg').
- synthetic (no root): num_scenes, first_heldout_index (0) -> seeds heldout_seed(first + i) when scenes is "all";
  num_frames, height, width; camera_config / scene_config as (field, value) pairs of CameraConfig / SceneConfig.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptq3d.datasets.base import SceneSample
from ptq3d.datasets.preprocess import MODES, Preprocess
from ptq3d.errors import ConfigError, DataError, unknown_name_error

DATASETS = ("co3d", "7scenes", "nrgbd", "eth3d", "dtu", "re10k", "kitti", "synthetic")
SAMPLINGS = ("all", "stride", "random", "first")


@dataclass(frozen=True)
class Protocol:
    """A versioned evaluation protocol. `scenes` is a tuple of scene ids or "all" (CO3D: categories or
    'category/sequence'; 7-Scenes: 'scene/seq-XX'; NRGBD, ETH3D: scene folders; synthetic: 'seed-<n>').
    `options` holds dataset-specific settings as sorted (key, value) pairs (see `option`)."""

    name: str
    version: int
    dataset: str
    scenes: tuple[str, ...] | str = "all"
    split: str = "test"
    sampling: str = "all"
    stride: int = 1
    frames_per_scene: int | None = None
    seed: int = 0
    seed_scope: str = "protocol"
    max_frames: int | None = None
    stride_cap_half: bool = False
    min_scene_frames: int = 0
    max_scenes: int | None = None
    max_scenes_per_group: int | None = None
    resolution: int = 518
    patch_size: int = 14
    preprocessing: str = "crop"
    skippable: tuple[str, ...] = ()
    options: tuple[tuple[str, Any], ...] = ()
    description: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise unknown_name_error("dataset", self.dataset, DATASETS)
        if self.sampling not in SAMPLINGS:
            raise ConfigError(
                f"protocol '{self.name}': sampling '{self.sampling}' is not one of {', '.join(SAMPLINGS)}"
            )
        if self.preprocessing not in MODES:
            raise ConfigError(
                f"protocol '{self.name}': preprocessing '{self.preprocessing}' is not one of {MODES}"
            )
        if self.seed_scope not in ("protocol", "scene"):
            raise ConfigError(f"protocol '{self.name}': seed_scope must be 'protocol' or 'scene'")
        if self.sampling in ("random", "first") and not self.frames_per_scene:
            raise ConfigError(f"protocol '{self.name}': sampling '{self.sampling}' needs frames_per_scene")
        if self.stride < 1:
            raise ConfigError(f"protocol '{self.name}': stride must be >= 1, got {self.stride}")
        if isinstance(self.scenes, list):
            object.__setattr__(self, "scenes", tuple(self.scenes))
        if isinstance(self.scenes, str) and self.scenes != "all":
            raise ConfigError(f"protocol '{self.name}': scenes must be a list of scene ids or 'all'")
        object.__setattr__(self, "skippable", tuple(self.skippable))
        object.__setattr__(self, "options", tuple(sorted((str(k), v) for k, v in dict(self.options).items())))
        Preprocess(self.preprocessing, self.resolution, self.patch_size)  # validates size vs patch

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.canonical_json())

    def canonical_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    @property
    def hash(self) -> str:
        """sha256 (hex) of the canonical JSON of every field."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(self.preprocessing, self.resolution, self.patch_size)

    def restrict(self, scenes: list[str] | tuple[str, ...]) -> Protocol:
        """The same protocol on a subset of its scenes (a partial copy of a dataset; a different hash). Each id must
        be one of the protocol's scenes, or (CO3D) a sequence 'category/sequence' of one of its categories; for a
        protocol over "all" scenes any id is accepted here and checked against the data root when loading."""
        if isinstance(scenes, str) or not scenes:
            raise ConfigError(f"protocol '{self.name}': scenes must be a non-empty list of scene ids")
        scenes = tuple(str(x) for x in scenes)
        if self.scenes != "all":
            own = set(self.scenes)
            unknown = [x for x in scenes if x not in own and not (self.dataset == "co3d" and x.partition("/")[0] in own
                                                                and x.partition("/")[2])]  # fmt: skip
            if unknown:
                shown = ", ".join(sorted(self.scenes)[:6]) + (", ..." if len(self.scenes) > 6 else "")
                raise ConfigError(
                    f"protocol '{self.name}': unknown scenes {', '.join(map(repr, unknown))} (its scenes: {shown})"
                )
        return dataclasses.replace(self, scenes=scenes)

    def with_limit(self, max_scenes: int | None) -> Protocol:
        """The same protocol restricted to its first `max_scenes` scenes (a different hash: it is a different run)."""
        return dataclasses.replace(self, max_scenes=max_scenes)


# ---------------------------------------------------------------------------------------------- registry
_REGISTRY: dict[str, Protocol] = {}


def register_protocol(protocol: Protocol, overwrite: bool = False) -> Protocol:
    """Add a protocol; re-registering the same name with different content needs overwrite=True."""
    old = _REGISTRY.get(protocol.name)
    if old is not None and old.hash != protocol.hash and not overwrite:
        raise ConfigError(
            f"protocol '{protocol.name}' is already registered with different settings; give the new one "
            f"another name or a new version and pass overwrite=True"
        )
    _REGISTRY[protocol.name] = protocol
    return protocol


def get_protocol(name: str) -> Protocol:
    if name not in _REGISTRY:
        raise unknown_name_error("protocol", name, _REGISTRY)
    return _REGISTRY[name]


def list_protocols() -> list[Protocol]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


# ---------------------------------------------------------------------------------------------- sampling
def _scene_rng(protocol: Protocol, scene: str, shared: np.random.RandomState) -> np.random.RandomState:
    if protocol.seed_scope == "protocol":
        return shared
    return np.random.RandomState((protocol.seed * 1_000_003 + zlib.crc32(scene.encode())) % 2**32)


def sample_frames(protocol: Protocol, frame_ids: list, rng: np.random.RandomState) -> list:
    """Apply the protocol's frame sampling to one scene's ordered frame ids."""
    n = len(frame_ids)
    if protocol.sampling == "all":
        out = list(frame_ids)
    elif protocol.sampling == "stride":
        s = max(1, min(protocol.stride, n // 2)) if protocol.stride_cap_half else protocol.stride
        out = list(frame_ids[::s])
    elif protocol.sampling == "first":
        out = list(frame_ids[: protocol.frames_per_scene])
    else:
        k = protocol.frames_per_scene
        idx = rng.choice(n, k, replace=False) if n >= k else rng.permutation(n)
        out = [frame_ids[i] for i in idx]
    return out[: protocol.max_frames] if protocol.max_frames else out


# ---------------------------------------------------------------------------------------------- scenes
def _require_root(protocol: Protocol, root) -> Path:
    if root is None:
        raise ConfigError(
            f"protocol '{protocol.name}' reads dataset '{protocol.dataset}' and needs a data root"
        )
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: {protocol.dataset} root folder not found")
    return root


def list_protocol_scenes(protocol: Protocol, root: str | Path | None = None) -> list[tuple[str, list]]:
    """[(scene id, all frame ids of that scene in order)] the protocol evaluates, before frame sampling and
    before `max_scenes`. Scenes failing the protocol's scene filters (CO3D quality, min_scene_frames) are left out."""
    ds = protocol.dataset
    out: list[tuple[str, list]] = []
    if ds == "synthetic":
        from ptq3d.datasets.synthetic import heldout_seed

        n = int(protocol.option("num_frames", 8))
        if protocol.scenes == "all":
            first = int(protocol.option("first_heldout_index", 0))
            seeds = [heldout_seed(first + i) for i in range(int(protocol.option("num_scenes", 1)))]
            scenes = [f"seed-{s}" for s in seeds]
        else:
            scenes = list(protocol.scenes)
        return [(s, list(range(n))) for s in scenes]
    root = _require_root(protocol, root)
    if ds == "co3d":
        from ptq3d.datasets import co3d

        cats = co3d.list_categories(root) if protocol.scenes == "all" else list(protocol.scenes)
        if not cats:
            raise DataError(f"{root}: no CO3D categories (folders with frame_annotations.jgz)")
        if protocol.option("draw_clips"):
            return _draw_co3d_clips(protocol, root, cats)
        for entry in cats:
            cat, _, only = entry.partition("/")
            index = co3d.Co3dCategory(root, cat)
            seqs = index.select_sequences(
                subset=protocol.option("subset", "fewview_dev"),
                split=protocol.split,
                min_viewpoint_quality=protocol.option("min_viewpoint_quality", 0.5),
                min_frames=protocol.min_scene_frames,
                max_translation_sum=protocol.option("max_translation_sum"),
            )
            names = [only] if only else list(seqs)
            if only and only not in seqs:
                raise DataError(
                    f"{root / cat}: sequence '{only}' is not in split '{protocol.split}' or fails the filters"
                )
            if protocol.max_scenes_per_group:
                k = protocol.max_scenes_per_group
                if protocol.option("sequence_sampling", "first") == "random":
                    import random

                    names = random.Random(f"{protocol.seed}/{cat}").sample(sorted(names), min(k, len(names)))
                else:
                    names = sorted(names)[:k]
            out += [(f"{cat}/{s}", sorted(seqs[s])) for s in names]
        return out
    if ds == "7scenes":
        from ptq3d.datasets import sevenscenes

        ids = (
            sevenscenes.list_sequences(root, protocol.split)
            if protocol.scenes == "all"
            else list(protocol.scenes)
        )
        for sid in ids:
            out.append((sid, sevenscenes.list_frames(root / sid)))
    elif ds == "dtu":
        from ptq3d.datasets import dtu

        ids = dtu.list_scans(root) if protocol.scenes == "all" else list(protocol.scenes)
        for sid in ids:
            out.append((sid, dtu.list_frames(root / sid)))
    elif ds == "kitti":
        from ptq3d.datasets import kitti

        ids = kitti.list_drives(root) if protocol.scenes == "all" else list(protocol.scenes)
        for sid in ids:
            out.append((sid, kitti.list_frames(root, sid)))
    elif ds == "re10k":
        from ptq3d.datasets import re10k

        split = protocol.option("split_folder", protocol.split)
        ids = re10k.list_sequences(root, split) if protocol.scenes == "all" else list(protocol.scenes)
        for sid in ids:
            out.append((sid, re10k.list_frames(root, split, sid)))
    elif ds == "nrgbd":
        from ptq3d.datasets import nrgbd

        ids = nrgbd.list_scenes(root) if protocol.scenes == "all" else list(protocol.scenes)
        for sid in ids:
            if not (root / sid).is_dir():
                raise DataError(f"{root / sid}: NRGBD scene folder not found")
            out.append((sid, nrgbd.list_frames(root / sid, len(nrgbd.read_poses(root / sid)))))
    else:  # eth3d
        from ptq3d.datasets import eth3d
        from ptq3d.datasets.colmap import read_images_txt

        cal = protocol.option("calibration", eth3d.CALIBRATION)
        ids = eth3d.list_scenes(root, cal) if protocol.scenes == "all" else list(protocol.scenes)
        for sid in ids:
            names = sorted(im.name for im in read_images_txt(root / sid / cal / "images.txt").values())
            out.append((sid, names))
    return [(s, f) for s, f in out if len(f) >= protocol.min_scene_frames]


def _draw_co3d_clips(protocol: Protocol, root: Path, cats: list[str]) -> list[tuple[str, list]]:
    """FGQ's calibration draw: `draw_clips` times a random category, then a random sequence of it not drawn
    before (numpy RandomState(seed)); no quality filter unless the protocol sets one."""
    from ptq3d.datasets import co3d

    n = int(protocol.option("draw_clips"))
    rng = np.random.RandomState(protocol.seed)
    pools = {}
    for cat in cats:
        seqs = co3d.Co3dCategory(root, cat).select_sequences(
            subset=protocol.option("subset", "fewview_dev"), split=protocol.split,
            min_viewpoint_quality=protocol.option("min_viewpoint_quality"), min_frames=protocol.min_scene_frames,
        )  # fmt: skip
        pools[cat] = {s: sorted(f) for s, f in sorted(seqs.items())}
    available = sum(len(v) for v in pools.values())
    if available < n:
        raise DataError(
            f"{root}: protocol '{protocol.name}' draws {n} clips but only {available} sequences qualify"
        )
    out = []
    while len(out) < n:
        cat = cats[rng.randint(len(cats))]
        if not pools[cat]:
            continue
        names = sorted(pools[cat])
        seq = names[rng.randint(len(names))]
        out.append((f"{cat}/{seq}", pools[cat].pop(seq)))
    return out


def check_roots(protocol: Protocol, root: str | Path | None = None) -> list[str]:
    """One line per problem with the data root a protocol reads: missing, not a folder, unreadable, or (for a
    protocol with listed scenes) a scene folder absent. [] when fine; synthetic protocols need no root."""
    if protocol.dataset == "synthetic":
        return []
    if root is None or str(root) == "":
        return [f"protocol '{protocol.name}' ({protocol.dataset}): no data root given"]
    import os

    root = Path(root)
    if not root.exists():
        return [f"{root}: {protocol.dataset} root for protocol '{protocol.name}' does not exist"]
    if not root.is_dir():
        return [f"{root}: {protocol.dataset} root for protocol '{protocol.name}' is not a folder"]
    if not os.access(root, os.R_OK | os.X_OK):
        return [f"{root}: {protocol.dataset} root for protocol '{protocol.name}' is not readable"]
    problems = []
    if protocol.scenes != "all":
        for scene in protocol.scenes:
            if protocol.dataset == "re10k":
                from ptq3d.datasets import re10k

                path = re10k.metadata_path(root, protocol.option("split_folder", protocol.split), scene)
                if not path.is_file():
                    problems.append(f"{path}: camera file of scene '{scene}' not found")
                continue
            if protocol.dataset == "kitti":
                from ptq3d.datasets.kitti import DEPTH_DIR

                folder = root / DEPTH_DIR / scene
            else:
                folder = root / (scene.partition("/")[0] if protocol.dataset == "co3d" else scene)
            if not folder.is_dir():
                problems.append(f"{folder}: scene '{scene}' of protocol '{protocol.name}' not found")
    return problems


def _config(cls, pairs):
    """A generator config from a protocol option: sorted (field, value) pairs (lists become tuples), or None."""
    if not pairs:
        return cls()
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(pairs).items()}
    try:
        return cls(**fields)
    except TypeError as exc:
        raise ConfigError(f"bad {cls.__name__} in protocol options: {exc}") from None


def _load_one(protocol: Protocol, root, scene: str, frame_ids: list) -> SceneSample:
    pre = protocol.preprocess
    ds = protocol.dataset
    if ds == "synthetic":
        from ptq3d.datasets.frames import Frame, assemble_scene
        from ptq3d.datasets.synthetic import CameraConfig, SceneConfig, generate_scene

        if not scene.startswith("seed-"):
            raise ConfigError(f"synthetic scene id '{scene}' is not 'seed-<n>'")
        full = generate_scene(
            int(scene[5:]),
            num_frames=int(protocol.option("num_frames", 8)),
            height=int(protocol.option("height", 112)),
            width=int(protocol.option("width", 112)),
            camera=_config(CameraConfig, protocol.option("camera_config")),
            scene=_config(SceneConfig, protocol.option("scene_config")),
        )
        frames = [
            Frame(
                full.meta["frame_ids"][i],
                np.clip(np.rint(full.images[i].permute(1, 2, 0).numpy() * 255), 0, 255).astype(np.uint8),
                full.depth[i].numpy(),
                full.valid_mask[i].numpy(),
                full.intrinsics[i].double().numpy(),
                full.extrinsics[i].double().numpy(),
            )
            for i in frame_ids
        ]
        meta = {k: v for k, v in full.meta.items() if k not in ("frame_ids", "foreground")}
        sample = assemble_scene(frames, meta, pre)
        if pre.mode == "none" and sample.image_size == full.image_size:
            sample.points = full.points[
                list(frame_ids)
            ].clone()  # exact hit points rather than unprojected depth
        return sample
    if ds == "co3d":
        from ptq3d.datasets import co3d

        cat, seq = scene.split("/", 1)
        return co3d.load_co3d_sequence(root, cat, seq, frame_ids, pre)
    if ds == "7scenes":
        from ptq3d.datasets import sevenscenes

        sc, seq = scene.split("/", 1)
        return sevenscenes.load_7scenes_sequence(
            root, sc, seq, frame_ids, pre, focal=float(protocol.option("focal", sevenscenes.FOCAL)),
            depth_source=protocol.option("depth_source", "auto"), skippable=protocol.skippable,
        )  # fmt: skip
    if ds == "nrgbd":
        from ptq3d.datasets import nrgbd

        return nrgbd.load_nrgbd_scene(root, scene, frame_ids, pre, skippable=protocol.skippable)
    if ds == "dtu":
        from ptq3d.datasets import dtu

        return dtu.load_dtu_scan(root, scene, frame_ids, pre)
    if ds == "kitti":
        from ptq3d.datasets import kitti

        return kitti.load_kitti_drive(root, scene, frame_ids, pre, skippable=protocol.skippable)
    if ds == "re10k":
        from ptq3d.datasets import re10k

        split = protocol.option("split_folder", protocol.split)
        return re10k.load_re10k_sequence(root, split, scene, frame_ids, pre, skippable=protocol.skippable)
    from ptq3d.datasets import eth3d

    return eth3d.load_eth3d_scene(
        root, scene, frame_ids, pre, calibration=protocol.option("calibration", eth3d.CALIBRATION)
    )


def iter_protocol_scenes(
    protocol: Protocol, root: str | Path | None = None, limit: int | None = None
) -> Iterator[SceneSample]:
    """Yield the protocol's scenes one at a time (see `load_protocol_scenes`)."""
    if limit is not None:
        protocol = protocol.with_limit(limit)
    scenes = list_protocol_scenes(protocol, root)
    if protocol.max_scenes is not None:
        scenes = scenes[: protocol.max_scenes]
    if not scenes:
        raise DataError(f"protocol '{protocol.name}': no scenes found under {root}")
    shared = np.random.RandomState(protocol.seed)
    for scene, frames in scenes:
        picked = sample_frames(protocol, frames, _scene_rng(protocol, scene, shared))
        sample = _load_one(protocol, root, scene, picked)
        sample.meta.update(
            protocol=protocol.name,
            protocol_version=protocol.version,
            protocol_hash=protocol.hash,
            num_skipped=sample.meta.get("num_skipped", 0),
        )
        yield sample


def load_protocol_scenes(
    protocol: Protocol | str, root: str | Path | None = None, limit: int | None = None
) -> list[SceneSample]:
    """All scenes of a protocol (name or Protocol) as SceneSamples at the protocol's resolution. `limit` keeps the
    first `limit` scenes (recorded: the meta's protocol_hash is that of `protocol.with_limit(limit)`). Per-scene
    meta: dataset, scene, frame_ids, protocol, protocol_version, protocol_hash, num_skipped, skipped_frames."""
    if isinstance(protocol, str):
        protocol = get_protocol(protocol)
    return list(iter_protocol_scenes(protocol, root, limit))


def select_frames(sample: SceneSample, idx: list[int]) -> SceneSample:
    """A SceneSample restricted to views `idx` (meta copied, frame_ids subset)."""
    i = torch.as_tensor(idx, dtype=torch.long)
    meta = dict(sample.meta)
    if "frame_ids" in meta:
        meta["frame_ids"] = [meta["frame_ids"][k] for k in idx]
    return SceneSample(
        sample.images[i], sample.depth[i], sample.valid_mask[i], sample.intrinsics[i], sample.extrinsics[i],
        None if sample.points is None else sample.points[i], meta,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- published
# the bundled vggt-tiny-synthetic model's images and scene distribution (ptq3d.harness.train_tiny)
_BUNDLED_MODEL_SCENES = (
    ("height", 112),
    ("width", 112),
    ("scene_config", (("compass_walls", True),)),
    ("camera_config", (("first_azimuth_deg", 0.0),)),
)


def _published() -> list[Protocol]:
    from ptq3d.datasets.co3d import ALL_CATEGORIES, SEEN_CATEGORIES
    from ptq3d.datasets.dtu import TAPTQ_CALIB_SCANS, TEST_SCANS
    from ptq3d.datasets.eth3d import SCENES as ETH3D_SCENES
    from ptq3d.datasets.nrgbd import SCENES as NRGBD_SCENES
    from ptq3d.datasets.sevenscenes import TEST_SEQUENCES

    seven = tuple(f"{s}/{q}" for s, qs in TEST_SEQUENCES.items() for q in qs)
    # version 2: pose AUC pooled per category, then averaged over categories (VGGT test_co3d.py; was per sequence)
    co3d_common = dict(
        version=2, dataset="co3d", scenes=SEEN_CATEGORIES, split="test", sampling="random", frames_per_scene=10,
        seed=0, seed_scope="protocol", min_scene_frames=50, resolution=518, preprocessing="crop",
        options=(("subset", "fewview_dev"), ("min_viewpoint_quality", 0.5), ("max_translation_sum", 1e5),
                 ("pose_aggregation", "category")),
    )  # fmt: skip
    qvggt_calib = dict(
        version=1, dataset="co3d", scenes=SEEN_CATEGORIES, sampling="random", frames_per_scene=10, seed=0,
        seed_scope="protocol", min_scene_frames=50, max_scenes_per_group=10, resolution=518, preprocessing="pad",
        options=(("subset", "fewview_dev"), ("min_viewpoint_quality", 0.5), ("sequence_sampling", "random")),
    )  # fmt: skip
    seven_common = dict(version=1, dataset="7scenes", scenes=seven, split="test", sampling="stride",
                        resolution=518, preprocessing="crop", options=(("depth_source", "auto"),))  # fmt: skip
    nrgbd_common = dict(version=1, dataset="nrgbd", scenes=NRGBD_SCENES, sampling="stride", resolution=518,
                        preprocessing="crop", skippable=("nan_pose",))  # fmt: skip
    return [
        Protocol(
            name="vggt-co3d",
            **co3d_common,
            description="CO3D v2 camera pose, 41 seen categories, fewview_dev test sequences with viewpoint quality "
            "> 0.5, >= 50 frames, no |T| sum > 1e5; 10 random frames per sequence (numpy seed 0, drawn in order); "
            "crop @518",
            source="facebookresearch/vggt evaluation/test_co3d.py, preprocess_co3d.py; QuantVGGT run_co3d.py",
        ),  # fmt: skip
        Protocol(
            name="quantvggt-co3d-fast",
            **{**co3d_common, "max_scenes_per_group": 20},
            description="as vggt-co3d with --fast_eval: the first 20 sorted sequences of each category",
            source="wlfeng0509/QuantVGGT evaluation/run_co3d.py --fast_eval",
        ),  # fmt: skip
        Protocol(
            name="quantvggt-7scenes",
            stride=100,
            **seven_common,
            description="7-Scenes 18 test sequences, every 100th frame, crop @518 (518x392)",
            source="wlfeng0509/QuantVGGT evaluation/run_7andN.py (kf 100)",
        ),  # fmt: skip
        Protocol(
            name="pi3-7scenes-sparse",
            stride=200,
            **seven_common,
            description="7-Scenes 18 test sequences, every 200th frame (CUT3R sparse setting), width 518",
            source="yyfz/Pi3 evaluation configs (7scenes sparse); FGQ, TAPTQ",
        ),  # fmt: skip
        Protocol(
            name="pi3-7scenes-dense",
            stride=40,
            **seven_common,
            description="7-Scenes 18 test sequences, every 40th frame (Pi3 dense setting), width 518",
            source="yyfz/Pi3 evaluation configs (7scenes dense); TAPTQ TMM",
        ),  # fmt: skip
        Protocol(
            name="quantvggt-nrgbd",
            stride=100,
            stride_cap_half=True,
            **nrgbd_common,
            description="NRGBD 9 scenes, stride min(100, n/2), crop @518; nan-pose frames skipped",
            source="wlfeng0509/QuantVGGT evaluation/run_7andN.py",
        ),  # fmt: skip
        Protocol(
            name="pi3-nrgbd-sparse",
            stride=500,
            **nrgbd_common,
            description="NRGBD 9 scenes, every 500th frame (CUT3R sparse), width 518; nan-pose frames skipped",
            source="yyfz/Pi3 evaluation configs (nrgbd sparse)",
        ),  # fmt: skip
        Protocol(
            name="pi3-nrgbd-dense",
            stride=100,
            **nrgbd_common,
            description="NRGBD 9 scenes, every 100th frame (Pi3 dense), width 518; nan-pose frames skipped",
            source="yyfz/Pi3 evaluation configs (nrgbd dense)",
        ),  # fmt: skip
        Protocol(
            name="pi3-eth3d",
            version=1,
            dataset="eth3d",
            scenes=ETH3D_SCENES,
            sampling="stride",
            stride=5,
            resolution=518,
            preprocessing="crop",
            options=(("calibration", "dslr_calibration_jpg"),),
            description="ETH3D high-res 13 training scenes, every 5th image sorted by name, width 518 "
            "(518x350), distorted cameras resampled to their pinhole K",
            source="yyfz/Pi3 evaluation datasets/eth3d.py, prepare_eth3d.py; FGQ, TAPTQ (kf 5)",
        ),  # fmt: skip
        Protocol(
            name="vggt-co3d-20",
            **{**co3d_common, "frames_per_scene": 20},
            description="as vggt-co3d with 20 random frames per sequence (190 pairs) instead of 10",
            source="facebookresearch/vggt evaluation/test_co3d.py (num_frames 20); issue 18.2",
        ),  # fmt: skip
        Protocol(
            name="fgq-co3d",
            version=1,
            dataset="co3d",
            scenes=ALL_CATEGORIES,
            split="test",
            sampling="random",
            frames_per_scene=10,
            seed=42,
            seed_scope="protocol",
            resolution=504,
            preprocessing="crop",
            options=(("subset", "fewview_dev"), ("min_viewpoint_quality", 0.5)),
            description="CO3D v2 pose, all 51 categories, 10 random frames per sequence (numpy seed 42), 512 crop as "
            "the Pi3/recons_eval loader (width 512 -> 504, the multiple of 14 the model takes). The reference "
            "draws from a precomputed seq-id map (2,506 sequences) that is not released: the sequences and frames "
            "drawn here differ from it",
            source="ypzhng/FGQ relpose/eval_angle.py via ZhouTimeMachine/recons_eval; yyfz/Pi3 evaluation configs",
        ),  # fmt: skip
        Protocol(
            name="quantvggt-calib-co3d",
            **qvggt_calib,
            split="train",
            description="QuantVGGT calibration pool, paper preset: 10 random CO3D *train* sequences of each of the 41 "
            "categories (>= 50 frames), 10 random frames each, pad @518 (the builder then picks 20, paper 40)",
            source="wlfeng0509/QuantVGGT paper (calibration from the CO3D training set); evaluation/make_calibation.py",
        ),  # fmt: skip
        Protocol(
            name="quantvggt-calib-co3d-code",
            **qvggt_calib,
            split="test",
            description="QuantVGGT calibration pool, code preset: as quantvggt-calib-co3d but drawn from the *test* "
            "sequences, as the released make_calibation.py does (it can overlap the evaluation sequences)",
            source="wlfeng0509/QuantVGGT evaluation/make_calibation.py (reads {category}_test.jgz)",
        ),  # fmt: skip
        Protocol(
            name="fgq-calib-co3d",
            version=1,
            dataset="co3d",
            scenes=ALL_CATEGORIES,
            split="train",
            sampling="random",
            frames_per_scene=4,
            seed=42,
            seed_scope="protocol",
            resolution=518,
            preprocessing="squash",
            options=(("subset", "fewview_dev"), ("min_viewpoint_quality", None), ("draw_clips", 64)),
            description="FGQ calibration: 64 clips drawn as a random category then a random train sequence, 4 random "
            "frames each, resized to 518x518 without keeping the aspect ratio (squash), seed 42, no filtering",
            source="ypzhng/FGQ scripts/calibrate_flatquant_vggt.py, compute_fisher.py (notes/methods.md section 3.2)",
        ),  # fmt: skip
        Protocol(
            name="pi3-dtu",
            version=1,
            dataset="dtu",
            scenes=TEST_SCANS,
            sampling="stride",
            stride=5,
            resolution=518,
            preprocessing="crop",
            description="DTU 22 evaluation scans, every 5th of the 49 views (10 frames), width 518; Spann3R's layout, "
            "depth in millimetres",
            source="yyfz/Pi3 evaluation configs (DTU kf 5); HengyiWang/spann3r datasets/dtu.py; FGQ, TAPTQ (kf 5)",
        ),  # fmt: skip
        Protocol(
            name="taptq-calib-dtu",
            version=1,
            dataset="dtu",
            scenes=TAPTQ_CALIB_SCANS,
            sampling="stride",
            stride=5,
            resolution=518,
            preprocessing="crop",
            description="TAPTQ's final calibration set DTU_train_8: training scans 5, 6, 7, 8, 18, 22, 56, 123, every "
            "5th view (10 frames), 518 px; GT point maps available for its point-map loss",
            source="bolli03/TAPTQ tmm_calibration_manifest.json (notes/methods.md section 4.2 (e))",
        ),  # fmt: skip
        Protocol(
            name="fgq-re10k",
            version=1,
            dataset="re10k",
            split="test",
            sampling="random",
            frames_per_scene=10,
            seed=42,
            seed_scope="protocol",
            resolution=504,
            preprocessing="crop",
            skippable=("missing_image",),
            description="RealEstate10K pose, test split (FGQ: 1719 sequences), 10 random frames (numpy seed 42), 512 "
            "crop (504 for patch 14); frames whose image is missing are skipped and counted, as the reference "
            "skips them",
            source="ypzhng/FGQ relpose/eval_dist.py via recons_eval; facebookresearch/PoseDiffusion datasets/re10k.py",
        ),  # fmt: skip
        Protocol(
            name="pi3-kitti-depth",
            version=1,
            dataset="kitti",
            sampling="all",
            resolution=518,
            preprocessing="crop",
            description="KITTI depth val drives as MonST3R gathers them (first 110 GT frames of each drive), all "
            "frames, width 518 crop; depth only (no cameras in this layout). Video depth aligns once per drive, mono "
            "depth per frame: a metric setting, not a data one. The reference's input resize for KITTI is not "
            "checked here",
            source="Junyi42/monst3r datasets_preprocess/prepare_kitti.py; yyfz/Pi3 videodepth, monodepth evals; "
            "FGQ Table 4 [3P]",
        ),  # fmt: skip
        Protocol(
            name="synthetic-smoke",
            version=1,
            dataset="synthetic",
            sampling="all",
            resolution=56,
            preprocessing="crop",
            options=(("num_scenes", 2), ("num_frames", 4), ("height", 56), ("width", 56)),
            description="2 held-out synthetic scenes of 4 views at 56x56 (no data root needed)",
            source="ptq3d.datasets.synthetic",
        ),  # fmt: skip
        Protocol(
            name="synthetic-heldout",
            version=1,
            dataset="synthetic",
            sampling="all",
            resolution=224,
            preprocessing="crop",
            options=(("num_scenes", 16), ("num_frames", 8), ("height", 168), ("width", 224)),
            description="16 held-out synthetic scenes (seeds 1e9 + i, never used for training), 8 views at "
            "224x168",
            source="ptq3d.datasets.synthetic",
        ),  # fmt: skip
        Protocol(
            name="synthetic-heldout-518",
            version=1,
            dataset="synthetic",
            sampling="all",
            resolution=518,
            preprocessing="crop",
            options=(("num_scenes", 8), ("num_frames", 8), ("height", 392), ("width", 518)),
            description="8 held-out synthetic scenes, 8 views at VGGT's 518x392",
            source="ptq3d.datasets.synthetic",
        ),  # fmt: skip
        Protocol(
            name="synthetic-heldout-112",
            version=2,  # v2: compass walls, the bundled model's training distribution
            dataset="synthetic",
            sampling="all",
            resolution=112,
            preprocessing="crop",
            options=(("num_scenes", 32), ("num_frames", 8), *_BUNDLED_MODEL_SCENES),
            description="32 held-out synthetic scenes (seeds 1e9 + i, never used for training), 8 ordered views on "
            "a 90-degree orbit at 112x112 in rooms with compass walls: the resolution and scene distribution of "
            "the bundled vggt-tiny-synthetic model",
            source="ptq3d.datasets.synthetic; ptq3d.harness.train_tiny",
        ),  # fmt: skip
        Protocol(
            name="synthetic-calib",
            version=1,
            dataset="synthetic",
            scenes=tuple(f"seed-{s}" for s in range(101, 117)),
            sampling="all",
            resolution=56,
            preprocessing="crop",
            options=(("num_frames", 4), ("height", 56), ("width", 56)),
            description="16 synthetic calibration scenes (training-range seeds 101-116), 4 views at 56x56; "
            "disjoint from the held-out evaluation scenes",
            source="ptq3d.datasets.synthetic",
        ),  # fmt: skip
        Protocol(
            name="synthetic-calib-112",
            version=2,  # v2: compass walls, as synthetic-heldout-112 v2
            dataset="synthetic",
            scenes=tuple(f"seed-{s}" for s in range(101, 117)),
            sampling="all",
            resolution=112,
            preprocessing="crop",
            options=(("num_frames", 4), *_BUNDLED_MODEL_SCENES),
            description="16 synthetic calibration scenes (training-range seeds 101-116), 4 views at 112x112 in "
            "rooms with compass walls (the bundled model's resolution and scene distribution); disjoint from the "
            "held-out evaluation scenes",
            source="ptq3d.datasets.synthetic",
        ),  # fmt: skip
    ]


for _p in _published():
    register_protocol(_p)
