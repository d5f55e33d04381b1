"""Procedural multi-view scenes with exact geometry: a textured room with a few textured boxes and spheres, seen by
several pinhole cameras. Everything is determined by the seed.

World frame: +y up, the floor is y = 0, the room spans [-ax, ax] x [0, hy] x [-az, az]. Cameras are OpenCV
(camera-from-world extrinsics [3, 4], pixel intrinsics, pixel centres at +0.5). Depth is z-depth, computed by
ray casting: each pixel's ray is d = R^T K^-1 (u, v, 1), whose camera-z component is 1, so the ray parameter t of
the first hit is the depth itself. Rays that leave through an open side of the room hit nothing: depth 0, invalid.

Seed split (documented contract for training vs evaluation): seeds in `TRAIN_SEEDS` = [0, 1e9) are for
training; seeds in `HELDOUT_SEEDS` = [1e9, 1e9 + 1e6) are never to be used for training and back the
`synthetic-*` evaluation protocols (scene i uses seed 1e9 + i).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ptq3d.datasets.base import SceneSample
from ptq3d.datasets.geometry import look_at
from ptq3d.errors import ConfigError

TRAIN_SEEDS = range(0, 1_000_000_000)
HELDOUT_SEEDS = range(1_000_000_000, 1_001_000_000)


def heldout_seed(index: int) -> int:
    """The seed of held-out scene `index` (never used for training)."""
    return HELDOUT_SEEDS[index]


def is_heldout_seed(seed: int) -> bool:
    return seed in HELDOUT_SEEDS


@dataclass(frozen=True)
class CameraConfig:
    """Camera distribution. "orbit": views on an arc around the content (rotation range = azimuth_span_deg);
    "forward": views on a segment of length `baseline` across the viewing direction, all looking at the content.
    Ranges are (low, high), drawn uniformly."""

    mode: str = "orbit"
    distance: tuple[float, float] = (2.2, 3.2)  # metres from the look-at target
    azimuth_span_deg: float = 90.0  # total azimuth spread of the views (orbit)
    elevation_deg: tuple[float, float] = (5.0, 35.0)
    roll_deg: float = 5.0  # max |roll| about the viewing axis
    baseline: float = 1.0  # forward mode: segment length in metres
    target_jitter: float = 0.25  # metres, per view
    fov_deg: tuple[float, float] = (55.0, 70.0)  # horizontal field of view, one per scene
    ordered: bool = True  # views in arc order (video-like); False shuffles them
    # first_azimuth_deg: orbit: the first view looks from this azimuth about the look-at target; forward: the
    # path's viewing direction comes from it (None: a random azimuth). With SceneConfig.compass_walls it ties
    # the first camera's frame to the room's walls
    first_azimuth_deg: float | None = None


@dataclass(frozen=True)
class SceneConfig:
    """Scene content. open_sides: room faces left out ('ceiling', 'floor', '+x', '-x', '+z', '-z')."""

    room_half_extent: tuple[float, float] = (3.6, 5.0)
    room_height: tuple[float, float] = (3.0, 4.0)
    num_boxes: tuple[int, int] = (1, 3)
    num_spheres: tuple[int, int] = (1, 3)
    open_sides: tuple[str, ...] = ()
    shading: bool = True
    # compass_walls=True: each wall's first colour is fixed by the direction it faces (COMPASS_COLOURS), so a
    # single view tells which way it looks, as distinct walls do in a real room
    compass_walls: bool = False


_FACES = {"-x": (0, 0), "+x": (0, 1), "floor": (1, 0), "ceiling": (1, 1), "-z": (2, 0), "+z": (2, 1)}
_TEXTURE_KINDS = ("checker", "stripes", "noise", "rings")
COMPASS_COLOURS = {  # wall -> first texture colour under SceneConfig.compass_walls
    "-x": (0.15, 0.25, 0.85),
    "+x": (0.85, 0.15, 0.15),
    "-z": (0.9, 0.8, 0.15),
    "+z": (0.15, 0.75, 0.25),
}
_LIGHT = np.array([0.3, 0.8, 0.5]) / np.linalg.norm([0.3, 0.8, 0.5])


def _rows_times(x: np.ndarray, M: np.ndarray) -> np.ndarray:
    """x [N, 3] @ M [3, 3] as three broadcast multiply-adds: numpy's matmul is slow for this skinny shape."""
    return x[:, :1] * M[0] + x[:, 1:2] * M[1] + x[:, 2:3] * M[2]


# ---------------------------------------------------------------------------------------------- textures
@dataclass
class Texture:
    """Procedural 2-D texture on surface coordinates (u, v) in metres: kind, two colours, period, angle, seed."""

    kind: str
    c1: np.ndarray
    c2: np.ndarray
    scale: float
    angle: float
    seed: int

    def __call__(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        ca, sa = np.cos(self.angle), np.sin(self.angle)
        a, b = (ca * u + sa * v) / self.scale, (-sa * u + ca * v) / self.scale
        if self.kind == "checker":
            w = ((np.floor(a) + np.floor(b)) % 2).astype(np.float64)
        elif self.kind == "stripes":
            w = 0.5 + 0.5 * np.sin(2 * np.pi * a)
        elif self.kind == "rings":
            w = (np.sqrt(a * a + b * b) % 1.0 > 0.5).astype(np.float64)
        else:  # fractal value noise, three octaves
            w = sum(0.5**o * _value_noise(a * 2**o, b * 2**o, self.seed + o) for o in range(3)) / 1.75
        return self.c1 * (1 - w[:, None]) + self.c2 * w[:, None]


def _hash01(i: np.ndarray, j: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per integer lattice point (integer hash, 64-bit wrap)."""
    m = np.uint64(0xFFFFFFFF)
    h = (i.astype(np.int64).astype(np.uint64) * np.uint64(73856093)) ^ (
        j.astype(np.int64).astype(np.uint64) * np.uint64(19349663)
    )
    h = (h ^ np.uint64(seed * 83492791 & 0xFFFFFFFF)) & m
    h = (h ^ (h >> np.uint64(16))) * np.uint64(0x45D9F3B) & m
    h = (h ^ (h >> np.uint64(16))) * np.uint64(0x45D9F3B) & m
    h = h ^ (h >> np.uint64(16))
    return h.astype(np.float64) / 4294967296.0


def _value_noise(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    i, j = np.floor(x), np.floor(y)
    fx, fy = x - i, y - j
    sx, sy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    n00, n10 = _hash01(i, j, seed), _hash01(i + 1, j, seed)
    n01, n11 = _hash01(i, j + 1, seed), _hash01(i + 1, j + 1, seed)
    return (n00 * (1 - sx) + n10 * sx) * (1 - sy) + (n01 * (1 - sx) + n11 * sx) * sy


def _random_texture(
    rng: np.random.Generator, first_colour: tuple[float, float, float] | None = None
) -> Texture:
    c1 = rng.uniform(0.05, 0.95, 3)
    if first_colour is not None:  # drawn anyway, so the rest of the scene's stream is unchanged
        c1 = np.array(first_colour)
    c2 = np.clip(1.0 - c1 + rng.normal(0, 0.15, 3), 0.0, 1.0)  # contrasting second colour
    return Texture(
        kind=str(rng.choice(_TEXTURE_KINDS)),
        c1=c1,
        c2=c2,
        scale=float(rng.uniform(0.12, 0.6)),
        angle=float(rng.uniform(0, np.pi)),
        seed=int(rng.integers(0, 2**31 - 1)),
    )


# ---------------------------------------------------------------------------------------------- geometry
@dataclass
class Room:
    lo: np.ndarray
    hi: np.ndarray
    textures: list[Texture]  # one per face, in _FACES order
    open_faces: tuple[tuple[int, int], ...] = ()

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            bound = np.where(d > 0, self.hi, self.lo)
            tk = (bound - o) / d
        tk = np.where(np.isfinite(tk) & (tk > 0), tk, np.inf)
        axis = np.argmin(tk, axis=1)
        t = tk[np.arange(tk.shape[0]), axis]
        side = (d[np.arange(len(d)), axis] > 0).astype(int)
        for ax, sd in self.open_faces:
            t = np.where((axis == ax) & (side == sd), np.inf, t)
        return t

    def shade(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        centre, half = (self.lo + self.hi) / 2, (self.hi - self.lo) / 2
        rel = (p - centre) / half
        axis = np.argmax(np.abs(rel), axis=1)
        side = (rel[np.arange(len(p)), axis] > 0).astype(int)
        normal = np.zeros_like(p)
        normal[np.arange(len(p)), axis] = np.where(side == 1, -1.0, 1.0)  # walls face inward
        colour = np.zeros_like(p)
        for f, (ax, sd) in enumerate(_FACES.values()):
            m = (axis == ax) & (side == sd)
            if m.any():
                others = [k for k in range(3) if k != ax]
                colour[m] = self.textures[f](p[m, others[0]], p[m, others[1]])
        return colour, normal, np.zeros(len(p), dtype=bool)


@dataclass
class Sphere:
    centre: np.ndarray
    radius: float
    texture: Texture

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        oc = o - self.centre
        a = np.einsum("ij,ij->i", d, d)
        b = 2 * np.einsum("ij,ij->i", oc, d)
        c = np.einsum("ij,ij->i", oc, oc) - self.radius**2
        disc = b * b - 4 * a * c
        with np.errstate(invalid="ignore"):
            t = (-b - np.sqrt(disc)) / (2 * a)
        return np.where((disc >= 0) & (t > 1e-6), t, np.inf)

    def shade(self, p: np.ndarray):
        n = (p - self.centre) / self.radius
        u = self.radius * np.arctan2(n[:, 2], n[:, 0])
        v = self.radius * np.arccos(np.clip(n[:, 1], -1, 1))
        return self.texture(u, v), n, np.ones(len(p), dtype=bool)


@dataclass
class Box:
    centre: np.ndarray
    half: np.ndarray
    yaw: float
    textures: list[Texture]  # one per local axis

    @property
    def rot(self) -> np.ndarray:  # local-to-world rotation about +y
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])

    def intersect(self, o: np.ndarray, d: np.ndarray) -> np.ndarray:
        R = self.rot
        ol, dl = _rows_times(o - self.centre, R), _rows_times(d, R)
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (-self.half - ol) / dl, (self.half - ol) / dl
        # fmax/fmin ignore the nan of 0 * inf (a ray exactly on a slab plane)
        lo, hi = np.fmin(t1, t2), np.fmax(t1, t2)
        tmin = np.fmax(np.fmax(lo[:, 0], lo[:, 1]), lo[:, 2])
        tmax = np.fmin(np.fmin(hi[:, 0], hi[:, 1]), hi[:, 2])
        return np.where((tmax >= tmin) & (tmin > 1e-6), tmin, np.inf)

    def shade(self, p: np.ndarray):
        R = self.rot
        pl = _rows_times(p - self.centre, R)
        rel = pl / self.half
        axis = np.argmax(np.abs(rel), axis=1)
        idx = np.arange(len(p))
        nl = np.zeros_like(p)
        nl[idx, axis] = np.sign(rel[idx, axis])
        colour = np.zeros_like(p)
        for ax in range(3):
            m = axis == ax
            if m.any():
                others = [k for k in range(3) if k != ax]
                colour[m] = self.textures[ax](pl[m, others[0]], pl[m, others[1]])
        return colour, _rows_times(nl, R.T), np.ones(len(p), dtype=bool)


@dataclass
class SyntheticScene:
    """The geometry of one scene: a room and its primitives, plus the look-at centre of the content."""

    room: Room
    objects: list = field(default_factory=list)
    target: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.5, 0.0]))
    shading: bool = True


def make_geometry(seed: int, config: SceneConfig = SceneConfig()) -> SyntheticScene:
    """Draw the room and primitives of scene `seed` (its own random stream, independent of the cameras)."""
    rng = np.random.default_rng([seed, 0])
    for side in config.open_sides:
        if side not in _FACES:
            raise ConfigError(f"unknown room side '{side}' (known: {', '.join(_FACES)})")
    ax, az = rng.uniform(*config.room_half_extent, size=2)
    hy = rng.uniform(*config.room_height)
    room = Room(
        lo=np.array([-ax, 0.0, -az]),
        hi=np.array([ax, hy, az]),
        textures=[
            _random_texture(rng, COMPASS_COLOURS.get(f) if config.compass_walls else None) for f in _FACES
        ],
        open_faces=tuple(_FACES[s] for s in config.open_sides),
    )
    objects: list = []
    for _ in range(int(rng.integers(config.num_boxes[0], config.num_boxes[1] + 1))):
        half = rng.uniform(0.15, 0.45, 3)
        r, a = rng.uniform(0.0, 1.1), rng.uniform(0, 2 * np.pi)
        centre = np.array([r * np.cos(a), half[1] + rng.choice([0.0, rng.uniform(0, 0.6)]), r * np.sin(a)])
        objects.append(
            Box(centre, half, float(rng.uniform(0, np.pi)), [_random_texture(rng) for _ in range(3)])
        )
    for _ in range(int(rng.integers(config.num_spheres[0], config.num_spheres[1] + 1))):
        rad = rng.uniform(0.15, 0.45)
        r, a = rng.uniform(0.0, 1.1), rng.uniform(0, 2 * np.pi)
        centre = np.array([r * np.cos(a), rad + rng.uniform(0, 0.7), r * np.sin(a)])
        objects.append(Sphere(centre, float(rad), _random_texture(rng)))
    target = np.array([0.0, rng.uniform(0.3, 0.7), 0.0])
    return SyntheticScene(room=room, objects=objects, target=target, shading=config.shading)


def make_cameras(
    seed: int,
    scene: SyntheticScene,
    num_frames: int,
    height: int,
    width: int,
    config: CameraConfig = CameraConfig(),
) -> tuple[np.ndarray, np.ndarray]:
    """Intrinsics [S, 3, 3] and camera-from-world extrinsics [S, 3, 4] (float64) from the camera stream of `seed`."""
    if config.mode not in ("orbit", "forward"):
        raise ConfigError(f"camera mode '{config.mode}' is not 'orbit' or 'forward'")
    if num_frames < 1 or height < 2 or width < 2:
        raise ConfigError(
            f"need num_frames >= 1 and an image of at least 2x2, got {num_frames}, {height}x{width}"
        )
    rng = np.random.default_rng([seed, 1])
    fov = np.deg2rad(rng.uniform(*config.fov_deg))
    f = (width / 2) / np.tan(fov / 2)
    K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    up = np.array([0.0, 1.0, 0.0])
    az0 = rng.uniform(0, 2 * np.pi)
    frac = np.linspace(-0.5, 0.5, num_frames) if num_frames > 1 else np.zeros(1)
    if not config.ordered:
        frac = rng.permutation(frac)
    if config.first_azimuth_deg is not None:  # az0 is drawn anyway, so the rest of the stream is unchanged
        first = np.deg2rad(config.first_azimuth_deg)
        az0 = first - np.deg2rad(config.azimuth_span_deg) * frac[0] if config.mode == "orbit" else first
    margin = 0.25
    lo, hi = scene.room.lo + margin, scene.room.hi - margin
    extrinsics = []
    for i in range(num_frames):
        dist = rng.uniform(*config.distance)
        el = np.deg2rad(rng.uniform(*config.elevation_deg))
        if config.mode == "orbit":
            az = az0 + np.deg2rad(config.azimuth_span_deg) * frac[i]
            offset = dist * np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])
            pos = scene.target + offset
        else:
            view = np.array([np.cos(el) * np.sin(az0), np.sin(el), np.cos(el) * np.cos(az0)])
            side = np.cross(view, up)
            side /= np.linalg.norm(side)
            pos = scene.target + dist * view + config.baseline * frac[i] * side
        pos = np.clip(pos, lo, hi)
        target = scene.target + rng.uniform(-1, 1, 3) * config.target_jitter
        roll = np.deg2rad(rng.uniform(-config.roll_deg, config.roll_deg))
        extrinsics.append(look_at(pos, target, up, roll))
    return np.repeat(K[None], num_frames, axis=0), np.stack(extrinsics)


# ---------------------------------------------------------------------------------------------- rendering
@dataclass
class Render:
    """images float32 [S, H, W, 3] in [0, 1]; depth float32 [S, H, W] (0 = no hit); valid bool [S, H, W];
    points float64 [S, H, W, 3] world hit points (0 where invalid); foreground bool [S, H, W] (primitives)."""

    images: np.ndarray
    depth: np.ndarray
    valid: np.ndarray
    points: np.ndarray
    foreground: np.ndarray


def render(scene: SyntheticScene, K: np.ndarray, extrinsics: np.ndarray, height: int, width: int) -> Render:
    """Ray cast S views (K [S, 3, 3] or [3, 3], extrinsics [S, 3, 4]) through pixel centres."""
    E = np.asarray(extrinsics, dtype=np.float64)
    S = E.shape[0]
    K = np.broadcast_to(np.asarray(K, dtype=np.float64), (S, 3, 3))
    u = np.arange(width) + 0.5
    v = np.arange(height) + 0.5
    uu, vv = np.meshgrid(u, v, indexing="xy")
    pix = np.stack([uu, vv, np.ones_like(uu)], axis=-1).reshape(-1, 3)  # [HW, 3]
    dirs, origins = [], []
    for s in range(S):
        R, t = E[s, :, :3], E[s, :, 3]
        cam = _rows_times(pix, np.linalg.inv(K[s]).T)  # camera-z = 1
        dirs.append(_rows_times(cam, R))  # R^T applied to rows
        origins.append(np.broadcast_to(-R.T @ t, cam.shape))
    d = np.concatenate(dirs)
    o = np.concatenate(origins)
    surfaces = [scene.room, *scene.objects]
    ts = np.stack([s.intersect(o, d) for s in surfaces])  # [n_surfaces, N]
    hit_id = np.argmin(ts, axis=0)
    t = ts[hit_id, np.arange(d.shape[0])]
    valid = np.isfinite(t)
    p = o + np.where(valid, t, 0.0)[:, None] * d
    colour = np.tile(np.array([0.55, 0.7, 0.9]), (d.shape[0], 1))  # "sky" through open sides
    fg = np.zeros(d.shape[0], dtype=bool)
    for k, surf in enumerate(surfaces):
        m = valid & (hit_id == k)
        if not m.any():
            continue
        c, n, is_fg = surf.shade(p[m])
        if scene.shading:  # Lambert with a fixed light: view independent, so views stay photo-consistent
            c = (
                c
                * (0.55 + 0.45 * np.abs(n[:, 0] * _LIGHT[0] + n[:, 1] * _LIGHT[1] + n[:, 2] * _LIGHT[2]))[
                    :, None
                ]
            )
        colour[m] = c
        fg[m] = is_fg
    shape = (S, height, width)
    return Render(
        images=np.clip(colour, 0, 1).reshape(*shape, 3).astype(np.float32),
        depth=np.where(valid, t, 0.0).reshape(shape).astype(np.float32),
        valid=valid.reshape(shape),
        points=np.where(valid[:, None], p, 0.0).reshape(*shape, 3),
        foreground=fg.reshape(shape),
    )


def generate_scene(
    seed: int,
    num_frames: int = 8,
    height: int = 112,
    width: int = 112,
    camera: CameraConfig = CameraConfig(),
    scene: SceneConfig = SceneConfig(),
) -> SceneSample:
    """One synthetic scene as a SceneSample (images [S, 3, H, W], exact depth, valid mask, K, camera-from-world
    extrinsics, exact world points). meta: dataset 'synthetic', scene 'seed-<seed>', frame_ids, seed, configs,
    and 'foreground' (bool tensor [S, H, W], pixels on primitives rather than the room)."""
    geometry = make_geometry(seed, scene)
    K, E = make_cameras(seed, geometry, num_frames, height, width, camera)
    r = render(geometry, K, E, height, width)
    meta = {
        "dataset": "synthetic",
        "scene": f"seed-{seed}",
        "frame_ids": [f"{i:06d}" for i in range(num_frames)],
        "seed": int(seed),
        "heldout": is_heldout_seed(seed),
        "camera_config": asdict(camera),
        "scene_config": asdict(scene),
        "foreground": torch.from_numpy(r.foreground),
    }
    return SceneSample(
        images=torch.from_numpy(np.ascontiguousarray(r.images.transpose(0, 3, 1, 2))),
        depth=torch.from_numpy(r.depth),
        valid_mask=torch.from_numpy(r.valid),
        intrinsics=torch.from_numpy(K.astype(np.float32)),
        extrinsics=torch.from_numpy(E.astype(np.float32)),
        points=torch.from_numpy(r.points.astype(np.float32)),
        meta=meta,
    )


# ---------------------------------------------------------------------------------------------- on-disk
FORMATS = ("co3d", "7scenes", "nrgbd", "eth3d", "dtu", "re10k", "kitti")


def write_synthetic_dataset(fmt: str, root: str | Path, seeds: list[int], **gen_kwargs) -> list[str]:
    """Generate scenes `seeds` and write them under `root` in a real dataset's on-disk layout. Returns the scene
    ids the matching loader takes. For 7-Scenes and NRGBD the generator's focal length is written
    (NRGBD: focal.txt) or must be passed to the loader (7-Scenes: `focal=`); see each writer. DTU is written in
    millimetres (its loader returns millimetres); RealEstate10K goes to the 'test' split and has no depth; KITTI
    has depth and no cameras."""
    from ptq3d.datasets import co3d, dtu, eth3d, kitti, nrgbd, re10k, sevenscenes

    if fmt not in FORMATS:
        from ptq3d.errors import unknown_name_error

        raise unknown_name_error("dataset format", fmt, FORMATS)
    scenes = {seed: generate_scene(seed, **gen_kwargs) for seed in seeds}
    root = Path(root)
    if fmt == "co3d":
        co3d.write_co3d_category(root, "synthetic", {f"seed_{s}": sc for s, sc in scenes.items()})
        return [f"synthetic/seed_{s}" for s in seeds]
    if fmt == "7scenes":
        sevenscenes.write_7scenes_scene(
            root, "synthetic", {i + 1: sc for i, sc in enumerate(scenes.values())}
        )
        return [f"synthetic/seq-{i + 1:02d}" for i in range(len(seeds))]
    if fmt == "nrgbd":
        for s, sc in scenes.items():
            nrgbd.write_nrgbd_scene(root / f"seed_{s}", sc)
        return [f"seed_{s}" for s in seeds]
    if fmt == "dtu":
        for s, sc in scenes.items():
            dtu.write_dtu_scan(root / f"scan{s}", sc)
        return [f"scan{s}" for s in seeds]
    if fmt == "kitti":
        for s, sc in scenes.items():
            kitti.write_kitti_drive(root, f"seed_{s}_02", sc)
        return [f"seed_{s}_02" for s in seeds]
    if fmt == "re10k":
        for s, sc in scenes.items():
            re10k.write_re10k_sequence(root, "test", f"seed_{s}", sc)
        return [f"seed_{s}" for s in seeds]
    for s, sc in scenes.items():
        eth3d.write_eth3d_scene(root / f"seed_{s}", sc)
    return [f"seed_{s}" for s in seeds]
