"""Property-based checks (issue 20 item 8): generated configs and labels through `validate` and the report
writers. Whatever the input: a one-line ptq3d error or success, never a traceback, never a silently changed
number (the leaderboard's values do not depend on how a method is labelled)."""

from __future__ import annotations

import math
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptq3d.errors import UserError
from ptq3d.harness.config import loads_config
from ptq3d.reports.html import to_html
from ptq3d.reports.tables import to_csv, to_latex, to_markdown
from ptq3d.results.read import load_results
from tests.reports.stores import cell, scaled, write

FAST = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# values a careless or hostile user writes: wrong types, out of range, odd strings, NaN, nesting
WILD = st.one_of(
    st.integers(-10, 10),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(string.printable, max_size=12),
    st.lists(st.integers(-3, 3), max_size=3),
    st.just("w8a8"),
    st.just(" W4A4 "),
    st.just("w4a3"),
    st.just("module:attr"),
)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


BASE = {
    ("run", "schemes"): '["w8a8"]',
    ("calibration", "protocol"): '"synthetic-calib"',
    ("calibration", "num_scenes"): "2",
}
KEYS = [
    ("run", "schemes"),
    ("run", "reference"),
    ("calibration", "num_scenes"),
    ("calibration", "limit"),
    ("calibration", "seeds"),
    ("calibration", "frames"),
    ("calibration", "builder"),
    ("eval", "scope"),
    ("eval", "bench_repeats"),
    ("eval", "threads"),
    ("eval", "precision"),
    ("eval", "real_backend"),
    ("method", "act_clip_ratio"),
    ("method", "alpha"),
    ("method", "preset"),
    ("protocol", "limit"),
    ("protocol", "scenes"),
    ("top", "components"),
]


def render(overrides: dict) -> str:
    tables: dict[str, list[str]] = {"run": [], "calibration": [], "eval": []}
    method, protocol, top = [], [], []
    for (table, key), text in {**BASE, **overrides}.items():
        line = f"{key} = {text}"
        if table == "method":
            method.append(line if key == "preset" else f"config.{line}")
        elif table == "protocol":
            protocol.append(line)
        elif table == "top":
            top.append(line)
        else:
            tables[table].append(line)
    out = top + ['models = ["vggt-tiny"]', "[[methods]]", 'name = "smoothquant"', *method]
    out += ["[[protocols]]", 'name = "synthetic-smoke"', *protocol]
    for name, lines in tables.items():
        out += [f"[{name}]", *lines]
    return "\n".join(out) + "\n"


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), WILD, max_size=4))
def test_generated_configs_validate_or_fail_in_one_line(overrides):
    text = render({k: toml_value(v) for k, v in overrides.items()})
    try:
        cfg = loads_config(text, source="gen.toml", allow_imports=False)
    except UserError as exc:
        message = str(exc)
        assert message and "\n" not in message, message
        assert "Traceback" not in message
        return
    # accepted: every scheme is normalised and every cell is distinct
    assert all(s == s.strip().lower() for s in cfg.schemes)
    ids = [c.cell_id for c in cfg.cells()]
    assert len(ids) == len(set(ids))


LABEL = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=24)


@pytest.fixture(scope="module")
def reference_board(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "r.sqlite"
    quant = scaled({"pose.auc@30": 0.8}, 0.01, 3)
    res = load_results(write(path, [cell("fp", "fp32"), cell("rtn", "w8a8", quant, label="plain")]))
    return quant, res.leaderboard("fake")


@FAST
@given(label=LABEL)
def test_any_label_renders_in_every_writer_with_the_same_numbers(label, reference_board, tmp_path_factory):
    quant, ref = reference_board
    path = tmp_path_factory.mktemp("lbl") / "r.sqlite"
    res = load_results(write(path, [cell("fp", "fp32"), cell("rtn", "w8a8", quant, label=label)]))
    board = res.leaderboard("fake")
    row, ref_row = board[board["method"] == "rtn"].iloc[0], ref[ref["method"] == "rtn"].iloc[0]
    assert row["score_pct"] == pytest.approx(ref_row["score_pct"], rel=1e-12)  # a label never moves a number
    md = to_markdown(res)
    tex = to_latex(res)
    html = to_html(res)
    to_csv(res)
    for line in md.splitlines():  # every table row is one line with balanced outer pipes
        if line.startswith("|"):
            assert line.rstrip().endswith("|")
    assert (
        "\n\n"
        not in tex.split(r"\begin{document}")[-1].split(r"\begin{tabular}")[-1].split(r"\end{tabular}")[0]
    )
    assert "<script" not in html.lower()
