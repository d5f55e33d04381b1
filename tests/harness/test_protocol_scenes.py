"""A [[protocols]] entry restricted to some scenes (a partial copy of a dataset), and `validate` checking the data
root: on the real 7-Scenes sample in ../shared/datasets (stairs seq-01/02/04 only)."""

from __future__ import annotations

import shutil

import pytest

from ptq3d.errors import ConfigError
from ptq3d.harness.config import loads_config
from ptq3d.harness.real import RealComponents
from tests.datasets.datasets_paths import SAMPLES

ROOT = SAMPLES / "7scenes"
GRID = """
[run]
schemes = ["w8a8"]
[[models]]
name = "vggt-tiny"
[[methods]]
name = "rtn"
[[protocols]]
name = "pi3-7scenes-sparse"
root = "{root}"
{scenes}
"""


def config(root, scenes: str = 'scenes = ["stairs/seq-01"]'):
    return loads_config(GRID.format(root=root, scenes=scenes), source="grid.toml")


def test_scene_subset_runs_only_those_scenes():
    cfg = config(ROOT)
    (ref,) = cfg.protocols
    assert ref.scenes == ("stairs/seq-01",)
    scenes = RealComponents().load_scenes(ref)
    assert [s.meta["scene"] for s in scenes] == ["stairs/seq-01"]


def test_unknown_scene_is_one_line_naming_it():
    with pytest.raises(ConfigError, match="nope/seq-99") as err:
        config(ROOT, 'scenes = ["nope/seq-99"]')
    assert "\n" not in str(err.value) and "grid.toml" in str(err.value)


def test_empty_scene_list_is_refused():
    with pytest.raises(ConfigError, match=r"scenes = \[\]: expected a non-empty list"):
        config(ROOT, "scenes = []")


def test_validate_names_a_scene_folder_missing_under_the_root(tmp_path):
    root = tmp_path / "7scenes"
    shutil.copytree(ROOT, root)
    shutil.rmtree(root / "stairs" / "seq-01")
    with pytest.raises(ConfigError, match="seq-01") as err:
        config(root)
    assert "\n" not in str(err.value)
