"""Config loopholes of issue 20, each with its exact trigger: a one-line ConfigError naming the file and the key
(or a normalised, de-duplicated value), never a later failure or a silently different run."""

from __future__ import annotations

import importlib.metadata
import sys

import pytest

from ptq3d.errors import ConfigError, UserError
from ptq3d.harness.cli import main
from ptq3d.harness.config import load_config, loads_config
from tests.harness.conftest import GRID
from tests.harness.fakes import COMPONENTS

REAL = """
[run]
schemes = ["w8a8"]
[[models]]
name = "vggt-tiny"
[[methods]]
name = "{method}"
config = {config}
[[protocols]]
name = "synthetic-smoke"
[calibration]
protocol = "synthetic-calib"
num_scenes = 2
"""


def one_line_error(text: str, source: str = "bad.toml", **kw) -> str:
    with pytest.raises(ConfigError) as err:
        loads_config(text, source=source, **kw)
    message = str(err.value)
    assert "\n" not in message and source in message
    return message


@pytest.mark.parametrize(
    "edit, message",
    [
        (("num_scenes = 2", "num_scenes = 2\nlimit = -5"), "[calibration].limit = -5: must be >= 0"),
        (("seeds = [0, 1]", "seeds = [-1]"), "[calibration].seeds = [-1]: seed -1 is not in 0..4294967295"),
        (("seeds = [0, 1]", "seeds = [0, 0]"), "[calibration].seeds = [0, 0]: seed 0 is listed twice"),
        (("num_scenes = 2", "num_scenes = 2\nframes = 0"), "[calibration].frames = 0: must be >= 1"),
        (("bench_repeats = 2", "bench_repeats = 0"), "[eval].bench_repeats = 0: must be >= 1"),
        (('name = "toy"\n', 'name = "toy"\ninit_seed = -3\n'), "[[models]][0].init_seed = -3"),
        (
            ("num_scenes = 2", "num_scenes = 2\noptions = { x = nan }"),
            "[calibration].options.x = nan: must be a finite number",
        ),
    ],
)
def test_ranges_are_checked_with_the_key_named(edit, message):
    text = f'[run]\ncomponents = "{COMPONENTS}"\nschemes = ["w8a8"]\n' + GRID.replace(*edit)
    assert message in one_line_error(text)


@pytest.mark.parametrize(
    "method, config, message",
    [
        ("rtn", "{ act_clip_ratio = 0 }", "config key 'act_clip_ratio' = 0.0: must be in (0, 1]"),
        ("rtn", "{ act_clip_ratio = -1 }", "config key 'act_clip_ratio' = -1.0: must be in (0, 1]"),
        (
            "rtn",
            "{ act_clip_ratio = nan }",
            "[[methods]][0].config.act_clip_ratio = nan: must be a finite number",
        ),
        ("smoothquant", "{ alpha = [1, 2] }", "smoothquant alpha=2: must be a number in [0, 1]"),
        ("gptq", '{ percdamp = "a lot" }', "percdamp"),
    ],
)
def test_method_config_values_are_checked_at_validate(method, config, message):
    err = one_line_error(REAL.format(method=method, config=config))
    assert "[[methods]][0].config" in err and message in err


def test_schemes_are_normalised_and_deduplicated(make_config):
    cfg = load_config(make_config(run='schemes = ["w8a8", "W8A8", " w8a8 ", "w4A4"]'))
    assert cfg.schemes == ["w8a8", "w4a4"]
    cells = cfg.cells()
    assert len({c.cell_id for c in cells}) == len(cells)
    assert sorted({c.scheme for c in cells if not c.is_reference}) == ["w4a4", "w8a8"]


def test_unsupported_scheme_widths_are_refused():
    text = REAL.format(method="rtn", config="{}").replace('schemes = ["w8a8"]', 'schemes = ["w8a8", "w4a3"]')
    err = one_line_error(text)
    assert "[run].schemes[1] = 'w4a3'" in err and "not a supported width pair" in err
    # modifiers of a supported pair stay valid
    loads_config(text.replace('"w4a3"', '"W4G32A8-static"'), source="ok.toml")


def test_non_utf8_and_deeply_nested_configs(tmp_path):
    bad = tmp_path / "latin1.toml"
    bad.write_bytes('[run]\nname = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.toml: not UTF-8 text \(byte 17"):
        load_config(bad)
    assert "nested too deeply" in one_line_error("a = " + "[" * 5000 + "]" * 5000)


def test_components_are_not_imported_from_a_config(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "imported"
    (tmp_path / "evil_components.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass C: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    text = '[run]\ncomponents = "evil_components:C"\nschemes = ["w8a8"]\n' + GRID
    err = one_line_error(text, allow_imports=False)
    assert "would import module 'evil_components'" in err and "--allow-imports" in err
    assert not marker.exists() and "evil_components" not in sys.modules
    path = tmp_path / "evil.toml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    assert "--allow-imports" in capsys.readouterr().err and not marker.exists()
    # an attribute of an already imported module that is not a Components class is refused too (no call)
    assert "would import" in one_line_error(
        text.replace("evil_components:C", "os:abort"), allow_imports=False
    )
    # registered names and already imported Components classes need no flag
    loads_config(f'[run]\ncomponents = "{COMPONENTS}"\nschemes = ["w8a8"]\n' + GRID, allow_imports=False)
    # with the flag, the import is the user's explicit choice (and C is no Components: still an error)
    with pytest.raises(UserError, match="did not produce a Components instance"):
        loads_config(text, allow_imports=True)
    assert marker.exists()


@pytest.fixture
def broken_plugin(monkeypatch):
    """A `ptq3d.methods` entry point whose module does not import."""
    from ptq3d.methods import registry

    ep = importlib.metadata.EntryPoint(
        "brokenplug", "ptq3d_no_such_plugin_module", registry.ENTRY_POINT_GROUP
    )
    real = importlib.metadata.entry_points

    def entry_points(**kw):
        return [ep] if kw.get("group") == registry.ENTRY_POINT_GROUP else real(**kw)

    monkeypatch.setattr(registry.importlib.metadata, "entry_points", entry_points)
    monkeypatch.setitem(registry._loaded, "plugins", False)
    monkeypatch.setattr(registry, "_BROKEN", {})
    yield
    monkeypatch.undo()
    registry._loaded["plugins"] = False


def test_a_broken_plugin_blocks_only_configs_that_use_it(broken_plugin, tmp_path, capsys):
    ok = tmp_path / "ok.toml"
    ok.write_text(REAL.format(method="rtn", config="{}"))
    assert main(["validate", str(ok)]) == 0
    out = capsys.readouterr().out
    assert "warning: cannot load ptq3d method plugin 'brokenplug' (ptq3d_no_such_plugin_module)" in out
    err = one_line_error(REAL.format(method="brokenplug", config="{}"))
    assert "[[methods]][0].name: cannot load ptq3d method plugin 'brokenplug'" in err
    assert "ModuleNotFoundError" in err


def test_quantize_image_size_must_be_a_multiple_of_the_patch(tmp_path, capsys):
    rc = main(
        [
            "quantize",
            "--model",
            "vggt-tiny",
            "--method",
            "rtn",
            "--out",
            str(tmp_path / "q"),
            "--image-size",
            "100",
            "100",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "--image-size 100 100" in err and "patch size 14" in err and "98 98" in err
    assert not (tmp_path / "q").exists()
