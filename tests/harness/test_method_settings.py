"""Each method with its own settings in one grid: presets, per-method scope and calibration, the methods' own
calibration defaults, and their place in the cell identity (on the fake components)."""

from __future__ import annotations

import pytest

from ptq3d.errors import ConfigError, UserError
from ptq3d.harness.components import register_components
from ptq3d.harness.config import loads_config
from ptq3d.harness.sweep import run_grid
from ptq3d.results.records import CellSpec
from ptq3d.results.store import ResultsStore
from tests.harness.fakes import FakeComponents

PRESETS = {"rtn": {"paper": {"clip": 1.0}, "code": {"clip": 0.9}}}
# rtn's own calibration settings per preset, as a method config class declares them (CALIBRATION_DEFAULTS)
CAL_DEFAULTS = {
    "rtn": {
        "paper": {"builder": "first", "num_scenes": 3, "epochs": 7, "scope": "all"},
        "code": {"builder": "random", "num_scenes": 2, "builder_options": {"k": 5}},
    }
}


class PresetComponents(FakeComponents):
    """The fake components with presets and per-method calibration defaults, and builder options {k: int}."""

    name = "fake-presets"

    def resolve_method_config(self, method, preset, config, defaults=None):
        known = PRESETS.get(method, {"paper": {}})
        if preset not in known:
            raise UserError(f"method '{method}' has no preset '{preset}' (known: {', '.join(known)})")
        merged = {**known[preset], **config}
        self.check_method_config(method, merged)
        return merged

    def method_presets(self, method):
        return list(PRESETS.get(method, {"paper": {}}))

    def method_calibration_defaults(self, method, preset):
        return dict(CAL_DEFAULTS.get(method, {}).get(preset, {}))

    def check_builder_options(self, builder, options):
        for k, v in options.items():
            if k != "k" or not isinstance(v, int) or v < 1:
                raise UserError(
                    f"calibration builder '{builder}': option {k} = {v!r}: expected k = a positive integer"
                )


register_components("fake-presets", PresetComponents)


def grid(methods: str, calibration: str = 'protocol = "toy-heldout"', eval_: str = "") -> str:
    return (
        '[run]\ncomponents = "fake-presets"\nschemes = ["w8a8"]\nreference = false\n'
        f'[[models]]\nname = "toy"\n[[protocols]]\nname = "toy-smoke"\n{methods}\n'
        f"[calibration]\n{calibration}\n[eval]\nbench = false\noutlier_stats = false\n{eval_}"
    )


def cells_by_label(text: str) -> dict[str, list[CellSpec]]:
    out: dict[str, list[CellSpec]] = {}
    for c in loads_config(text).cells():
        out.setdefault(c.method.display, []).append(c)
    return out


def test_methods_defaults_apply_when_the_toml_is_silent():
    (cell,) = cells_by_label(grid('[[methods]]\nname = "rtn"'))["rtn"]
    assert cell.calibration.builder == "first" and cell.calibration.num_scenes == 3
    assert cell.options.scope == "all"  # the method's own scope
    assert cell.method.preset == "paper" and cell.method.config == {"clip": 1.0}


def test_inline_calibration_overrides_the_run_and_the_method_defaults():
    text = grid(
        '[[methods]]\nname = "rtn"\nlabel = "A"\nscope = "aggregator"\n'
        'calibration = { builder = "random", num_scenes = 2, frames = 2, seeds = [3, 4], options = { k = 2 } }\n'
        '[[methods]]\nname = "rtn"\nlabel = "B"',
        'protocol = "toy-heldout"\nnum_scenes = 4\nseeds = [0]',
    )
    by = cells_by_label(text)
    a, b = by["A"], by["B"]
    assert [(c.calibration.builder, c.calibration.num_scenes, c.calibration.frames, c.seed) for c in a] == [
        ("random", 2, 2, 3),
        ("random", 2, 2, 4),
    ]
    assert all(c.calibration.options == {"k": 2} and c.options.scope == "aggregator" for c in a)
    # B: the run's explicit num_scenes and seeds beat rtn's defaults; builder and scope stay rtn's own
    assert [(c.calibration.builder, c.calibration.num_scenes, c.seed, c.options.scope) for c in b] == [
        ("first", 4, 0, "all")
    ]


def test_eval_scope_set_in_the_toml_beats_the_methods_default():
    (cell,) = cells_by_label(grid('[[methods]]\nname = "rtn"', eval_='scope = "aggregator"\n'))["rtn"]
    assert cell.options.scope == "aggregator"


def test_builders_are_not_crossed_with_methods_that_name_their_own():
    text = grid(
        '[[methods]]\nname = "rtn"\nlabel = "own"\ncalibration = { builder = "random" }\n'
        '[[methods]]\nname = "rtn"\nlabel = "ablation"',
        'protocol = "toy-heldout"\nbuilders = ["random", "first"]',
    )
    by = cells_by_label(text)
    assert [c.calibration.builder for c in by["own"]] == ["random"]
    assert sorted(c.calibration.builder for c in by["ablation"]) == ["first", "random"]  # an explicit list


def test_preset_is_recorded_labelled_and_part_of_the_cell_id():
    text = grid('[[methods]]\nname = "rtn"\n[[methods]]\nname = "rtn"\npreset = "code"')
    by = cells_by_label(text)
    (paper,), (code,) = by["rtn"], by["rtn (code)"]
    assert code.method.preset == "code" and code.method.config == {"clip": 0.9}  # the preset's values
    assert code.calibration.builder == "random" and code.calibration.options == {"k": 5}  # its own defaults
    assert code.options.scope == "aggregator"  # "code" declares no scope: the run's default
    assert paper.cell_id != code.cell_id
    # explicit keys beat the preset
    (mine,) = cells_by_label(grid('[[methods]]\nname = "rtn"\npreset = "code"\nconfig = { clip = 0.5 }'))[
        "rtn (code)"
    ]
    assert mine.method.config == {"clip": 0.5}


@pytest.mark.parametrize(
    "field, value",
    [("frames", 3), ("options", {"k": 9}), ("num_scenes", 1)],
)
def test_calibration_settings_are_part_of_the_cell_id(field, value):
    import dataclasses

    (cell,) = cells_by_label(grid('[[methods]]\nname = "rtn"'))["rtn"]
    other = dataclasses.replace(cell, calibration=dataclasses.replace(cell.calibration, **{field: value}))
    assert other.cell_id != cell.cell_id
    assert CellSpec.from_dict(other.to_dict()) == other


@pytest.mark.parametrize(
    "methods, calibration, message",
    [
        (
            '[[methods]]\nname = "rtn"\npreset = "fast"',
            "",
            "[[methods]][0].preset (rtn (fast)): unknown preset of method 'rtn' 'fast' (known: code, paper)",
        ),
        (
            '[[methods]]\nname = "rtn"\nscope = "blocks"',
            "",
            "[[methods]][0].scope = 'blocks': allowed values are aggregator, all",
        ),
        (
            '[[methods]]\nname = "rtn"\ncalibration = { num_scenes = 0 }',
            "",
            "[[methods]][0].calibration.num_scenes = 0: must be >= 1",
        ),
        (
            '[[methods]]\nname = "rtn"\ncalibration = { frames = -1 }',
            "",
            "[[methods]][0].calibration.frames = -1: must be >= 1",
        ),
        ('[[methods]]\nname = "rtn"\ncalibration = { seeds = [1, 1] }', "", "seed 1 is listed twice"),
        (
            '[[methods]]\nname = "rtn"\ncalibration = { builder = "kmeans" }',
            "",
            "unknown calibration builder 'kmeans'",
        ),
        ('[[methods]]\nname = "rtn"\ncalibration = { options = { k = 0 } }', "", "option k = 0"),
        (
            '[[methods]]\nname = "rtn"\ncalibration = { root = "/data" }',
            "",
            "[[methods]][0].calibration.root = '/data': give the 'protocol' it is the data root of",
        ),
        (
            '[[methods]]\nname = "rtn"\ncalibration = { sizes = 2 }',
            "",
            "[[methods]][0].calibration: unknown key 'sizes'",
        ),
    ],
)
def test_per_method_settings_are_checked(methods, calibration, message):
    with pytest.raises(ConfigError) as err:
        loads_config(grid(methods, calibration or 'protocol = "toy-heldout"'), source="m.toml")
    assert message in str(err.value) and "m.toml" in str(err.value) and "\n" not in str(err.value)


def test_each_stored_cell_carries_its_own_settings(tmp_path):
    text = grid(
        '[[methods]]\nname = "rtn"\nlabel = "R1"\ncalibration = { num_scenes = 1, seeds = [0, 1] }\n'
        '[[methods]]\nname = "rtn"\npreset = "code"\nscope = "all"\n'
        '[[methods]]\nname = "wonly"',
    )
    cfg = loads_config(text.replace("reference = false\n", f'reference = false\noutput_dir = "{tmp_path}"\n'))
    summary = run_grid(cfg)
    assert summary.ran == 4
    with ResultsStore(summary.store_path) as st:
        stored = {CellSpec.from_dict(r["spec"]).cell_id: CellSpec.from_dict(r["spec"]) for r in st.cells()}
    assert set(stored) == {c.cell_id for c in cfg.cells()}
    by = {}
    for c in stored.values():
        by.setdefault(c.method.display, []).append(c)
    assert sorted(c.seed for c in by["R1"]) == [0, 1] and all(c.calibration.num_scenes == 1 for c in by["R1"])
    (code,) = by["rtn (code)"]
    assert (code.method.preset, code.options.scope, code.calibration.builder, code.calibration.options) == (
        "code",
        "all",
        "random",
        {"k": 5},
    )
