"""The synthetic scene generator: determinism, exact geometry, configurable cameras, seed split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptq3d.datasets.geometry import project, unproject_depth
from ptq3d.datasets.synthetic import (
    COMPASS_COLOURS,
    HELDOUT_SEEDS,
    TRAIN_SEEDS,
    CameraConfig,
    SceneConfig,
    generate_scene,
    heldout_seed,
    is_heldout_seed,
    make_geometry,
    write_synthetic_dataset,
)
from ptq3d.errors import ConfigError, UserError


def test_deterministic_and_seed_dependent():
    a = generate_scene(3, num_frames=3, height=28, width=42)
    b = generate_scene(3, num_frames=3, height=28, width=42)
    c = generate_scene(4, num_frames=3, height=28, width=42)
    assert a.content_hash() == b.content_hash()
    assert a.content_hash() != c.content_hash()
    assert a.images.shape == (3, 3, 28, 42) and a.depth.shape == (3, 28, 42)
    assert a.images.dtype.is_floating_point and a.images.min() >= 0 and a.images.max() <= 1


def test_depth_points_and_cameras_are_consistent():
    s = generate_scene(1, num_frames=3, height=40, width=50)
    assert s.valid_mask.all()  # a closed room: every ray hits something
    for i in range(3):
        K, E = s.intrinsics[i].double().numpy(), s.extrinsics[i].double().numpy()
        pts = unproject_depth(s.depth[i].double().numpy(), K, E)
        np.testing.assert_allclose(pts, s.points[i].double().numpy(), atol=1e-4)
        uv, z = project(s.points[i].double().numpy(), K, E)
        np.testing.assert_allclose(z, s.depth[i].double().numpy(), rtol=1e-5)
        u = np.arange(50) + 0.5
        np.testing.assert_allclose(uv[0, :, 0], u, atol=1e-3)
        R = E[:, :3]
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-6)
    # views see one world: a point seen by view 0 has the same depth in view 1 where visible
    fg = s.meta["foreground"]
    assert 0 < fg.float().mean() < 1


def test_open_side_gives_invalid_pixels():
    s = generate_scene(
        2,
        num_frames=4,
        height=32,
        width=32,
        scene=SceneConfig(open_sides=("ceiling", "+x", "-x", "+z", "-z")),
    )
    assert 0 < s.valid_mask.float().mean() < 1
    assert (s.depth[~s.valid_mask] == 0).all()
    with pytest.raises(ConfigError, match="unknown room side"):
        generate_scene(2, num_frames=1, height=8, width=8, scene=SceneConfig(open_sides=("roof",)))


def test_compass_walls_fix_the_wall_colours_and_nothing_else():
    plain, compass = make_geometry(9), make_geometry(9, SceneConfig(compass_walls=True))
    faces = ("-x", "+x", "floor", "ceiling", "-z", "+z")  # the generator's face order
    for face, a, b in zip(faces, plain.room.textures, compass.room.textures, strict=True):
        if face in COMPASS_COLOURS:
            np.testing.assert_array_equal(b.c1, COMPASS_COLOURS[face])
            assert not np.allclose(a.c1, b.c1)
        else:  # floor and ceiling keep their random texture
            np.testing.assert_array_equal(a.c1, b.c1)
        assert (a.kind, a.scale, a.angle, a.seed) == (b.kind, b.scale, b.angle, b.seed)
    np.testing.assert_array_equal(plain.room.lo, compass.room.lo)
    np.testing.assert_array_equal(plain.target, compass.target)
    assert [type(o) for o in plain.objects] == [type(o) for o in compass.objects]
    # same geometry and cameras, other pixels
    s0 = generate_scene(9, num_frames=2, height=24, width=24)
    s1 = generate_scene(9, num_frames=2, height=24, width=24, scene=SceneConfig(compass_walls=True))
    assert np.array_equal(s0.depth.numpy(), s1.depth.numpy())
    assert np.array_equal(s0.extrinsics.numpy(), s1.extrinsics.numpy())
    assert not np.array_equal(s0.images.numpy(), s1.images.numpy())


@pytest.mark.parametrize("mode,ordered", [("orbit", True), ("orbit", False), ("forward", True)])
def test_first_azimuth_fixes_where_the_first_view_looks_from(mode, ordered):
    for seed in (1, 2):
        cam = CameraConfig(mode=mode, ordered=ordered, first_azimuth_deg=0.0, elevation_deg=(10.0, 10.0),
                           target_jitter=0.0, roll_deg=0.0)  # fmt: skip
        s = generate_scene(seed, num_frames=5, height=16, width=16, camera=cam)
        R, t = s.extrinsics[0, :, :3].double(), s.extrinsics[0, :, 3].double()
        centre = -R.T @ t
        forward = R[2]
        assert centre[2] > 0 and forward[2] < -0.9, forward  # at +z of the target, looking towards -z
        if mode == "orbit":  # exactly: azimuth 0, 10 degrees down (forward paths step sideways from it)
            assert abs(float(forward[0])) < 1e-6, forward
            assert float(torch.rad2deg(torch.asin(-forward[1]))) == pytest.approx(10.0, abs=1e-4)
        free = generate_scene(
            seed, num_frames=5, height=16, width=16, camera=CameraConfig(mode=mode, ordered=ordered)
        )
        assert np.array_equal(free.depth.shape, s.depth.shape)


def test_camera_distribution_is_configurable():
    def centres(cfg):
        s = generate_scene(5, num_frames=6, height=16, width=16, camera=cfg)
        E = s.extrinsics.double().numpy()
        return -np.einsum("sji,sj->si", E[:, :, :3], E[:, :, 3])

    narrow = centres(CameraConfig(azimuth_span_deg=5.0, distance=(3.0, 3.0), elevation_deg=(20, 20)))
    wide = centres(CameraConfig(azimuth_span_deg=120.0, distance=(3.0, 3.0), elevation_deg=(20, 20)))
    spread = lambda c: np.linalg.norm(c - c.mean(0), axis=1).max()  # noqa: E731
    assert spread(wide) > 5 * spread(narrow)
    fwd = centres(CameraConfig(mode="forward", baseline=2.0, distance=(3.0, 3.0), elevation_deg=(10, 10)))
    assert np.linalg.norm(fwd[0] - fwd[-1]) == pytest.approx(2.0, rel=0.05)
    with pytest.raises(ConfigError):
        generate_scene(0, camera=CameraConfig(mode="spiral"))


def test_seed_split():
    assert not set(range(0, 10)) & {heldout_seed(i) for i in range(10)}
    assert TRAIN_SEEDS.stop <= HELDOUT_SEEDS.start
    assert is_heldout_seed(heldout_seed(0)) and not is_heldout_seed(123)
    assert generate_scene(heldout_seed(1), num_frames=1, height=8, width=8).meta["heldout"] is True


def test_write_unknown_format(tmp_path):
    with pytest.raises(UserError, match="did you mean 'nrgbd'"):
        write_synthetic_dataset("nrgb", tmp_path, [0])


@pytest.mark.parametrize("fmt", ["co3d", "7scenes", "nrgbd", "eth3d"])
def test_every_format_reads_back(tmp_path, fmt):
    from ptq3d.datasets import co3d, eth3d, nrgbd, sevenscenes

    kw = dict(num_frames=3, height=24, width=32, camera=CameraConfig(fov_deg=(60, 60)))
    ids = write_synthetic_dataset(fmt, tmp_path, [7, 8], **kw)
    ref = generate_scene(8, **kw)
    if fmt == "co3d":
        s = co3d.load_co3d_sequence(tmp_path, *ids[1].split("/"))
    elif fmt == "7scenes":
        s = sevenscenes.load_7scenes_sequence(
            tmp_path, *ids[1].split("/"), focal=float(ref.intrinsics[0, 0, 0])
        )
    elif fmt == "nrgbd":
        s = nrgbd.load_nrgbd_scene(tmp_path, ids[1])
    else:
        s = eth3d.load_eth3d_scene(tmp_path, ids[1])
    np.testing.assert_allclose(s.extrinsics, ref.extrinsics, atol=1e-5)
    m = s.valid_mask & ref.valid_mask
    assert m.sum() > 0.9 * ref.valid_mask.sum()
    assert ((s.depth[m] - ref.depth[m]).abs() / ref.depth[m]).max() < 1e-3


@pytest.mark.benchmark(group="synthetic")
def test_generation_speed(benchmark):
    s = benchmark.pedantic(
        generate_scene, args=(0,), kwargs=dict(num_frames=8, height=112, width=112), rounds=1
    )
    assert s.num_frames == 8
