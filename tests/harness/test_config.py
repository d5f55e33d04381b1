"""Run configuration: parsing, validation messages, grid expansion, cell ids."""

from __future__ import annotations

import pickle

import pytest

from ptq3d.errors import ConfigError, UserError
from ptq3d.harness.config import load_config, loads_config
from ptq3d.results.records import CellSpec
from tests.harness.conftest import GRID
from tests.harness.fakes import COMPONENTS


def test_grid_expands_models_methods_schemes_seeds(make_config):
    cfg = load_config(make_config())
    cells = cfg.cells()
    # FP reference + rtn (2 schemes x 2 seeds) + wonly (no calibration: 2 schemes, no seed axis)
    assert len(cells) == 1 + 4 + 2
    assert cells[0].is_reference and cells[0].calibration is None
    rtn = [c for c in cells if c.method.name == "rtn"]
    assert sorted((c.scheme, c.calibration.seed) for c in rtn) == [
        ("w4a4", 0),
        ("w4a4", 1),
        ("w8a8", 0),
        ("w8a8", 1),
    ]
    # wonly needs no calibration: no seed axis, but it still gets the first seed's calibration set
    assert [(c.scheme, c.calibration.seed) for c in cells if c.method.name == "wonly"] == [
        ("w8a8", 0),
        ("w4a4", 0),
    ]
    assert len({c.cell_id for c in cells}) == len(cells)


def test_cell_id_is_stable_and_spec_round_trips(make_config):
    cells = load_config(make_config()).cells()
    again = load_config(make_config()).cells()
    assert [c.cell_id for c in cells] == [c.cell_id for c in again]
    for c in cells:
        assert pickle.loads(pickle.dumps(c)).cell_id == c.cell_id
        assert CellSpec.from_dict(c.to_dict()) == c


def test_methods_all_and_name_shorthands():
    text = (
        'models = ["toy"]\nmethods = "all"\nprotocols = ["toy-smoke"]\n'
        f'[run]\ncomponents = "{COMPONENTS}"\nschemes = ["w8a8"]\n[calibration]\nprotocol = "toy-heldout"\n'
    )
    cfg = loads_config(text)
    assert [m.name for m in cfg.methods] == ["rtn", "wonly", "nan", "boom"]
    assert len(cfg.cells()) == 1 + 4


@pytest.mark.parametrize(
    "body, run, message",
    [
        (
            GRID.replace("num_scenes", "num_scene"),
            'schemes = ["w8a8"]',
            "[calibration]: unknown key 'num_scene'; did you mean 'num_scenes'?",
        ),
        (GRID, 'schemes = ["w8a8"]\nseed = 3', "[run]: unknown key 'seed'"),
        (GRID, 'schemes = "w9z9"', "scheme"),
        (
            GRID.replace('name = "rtn"', 'name = "rtm"'),
            'schemes = ["w8a8"]',
            "[[methods]][0].name: unknown method 'rtm'; did you mean 'rtn'?",
        ),
        (
            GRID.replace('name = "toy-smoke"', 'name = "toy-smok"'),
            'schemes = ["w8a8"]',
            "unknown protocol 'toy-smok'",
        ),
        (
            GRID + 'real_backend = "gpu"\n',
            'schemes = ["w8a8"]',
            "[eval].real_backend = 'gpu': allowed values are auto, emulated, triton, none",
        ),
        (
            GRID + 'bench_warmup = "3"\n',
            'schemes = ["w8a8"]',
            "[eval].bench_warmup = '3': expected an integer",
        ),
        (
            GRID.replace('protocol = "toy-heldout"\n', ""),
            'schemes = ["w8a8"]',
            "[calibration].protocol is required",
        ),
        (GRID, "", "[run].schemes is required"),
        (
            GRID.replace('name = "toy"\n', 'name = "toy"\nweights = "nope.safetensors"\n'),
            'schemes = ["w8a8"]',
            "[[models]][0].weights = 'nope.safetensors': no such file",
        ),
        (
            GRID.replace('name = "rtn"\n', 'name = "rtn"\nconfig = { clipp = 1 }\n'),
            'schemes = ["w8a8"]',
            "[[methods]][0].config",
        ),
        (
            GRID.replace('name = "toy-smoke"', 'name = "toy-data"'),
            'schemes = ["w8a8"]',
            "needs a data 'root'",
        ),
        (GRID + "[extra]\n", 'schemes = ["w8a8"]', "unknown top-level key 'extra'"),
    ],
)
def test_validation_errors_name_the_key(make_config, body, run, message):
    path = make_config(body, run=run)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)  # the file is named
    assert "\n" not in str(err.value)


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="invalid TOML"):
        loads_config("[run\n", source="x.toml")
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_duplicate_labels_rejected():
    text = f'models = ["toy"]\nmethods = ["wonly", "wonly"]\nprotocols = ["toy-smoke"]\n[run]\ncomponents = "{COMPONENTS}"\nschemes = ["w8a8"]\n'
    with pytest.raises(ConfigError, match="used twice"):
        loads_config(text)


def test_relative_paths_resolve_against_the_config(tmp_path, make_config):
    cfg = load_config(make_config(run='schemes = ["w8a8"]\ncache_dir = "c"'))
    assert cfg.cache_dir == str(tmp_path / "c")
