"""Tables: paper layout (scheme blocks, papers' names, fixed decimals, <= 10 columns), best/second within a
block by direction, ± over seeds, CSV rows, Markdown as plain text, the leaderboard on a real grid."""

from __future__ import annotations

import io
import math
import re

import pandas as pd
import pytest

from ptq3d.reports.leaderboard import leaderboard, leaderboard_rows
from ptq3d.reports.tables import (
    MAX_VALUE_COLUMNS,
    PaperTable,
    TableCell,
    _mark_best,
    build_tables,
    tex_escape,
    to_csv,
    to_latex,
    to_markdown,
)
from ptq3d.results.read import load_results, retained, scheme_bits
from tests.harness.fakes import XSS
from tests.reports.stores import cell, scaled, write


def test_retained_and_scheme_bits():
    assert retained(0.8, 1.0, True) == 0.8
    assert retained(0.2, 0.1, False) == 0.5  # lower is better: error doubled -> half retained
    assert math.isnan(retained(5, 4, None)) and math.isnan(retained(0.0, 0.0, True))  # FP 0: no ratio
    assert (
        scheme_bits("w4a8") == (4, 8)
        and scheme_bits("w4g128a16") == (4, 16)
        and scheme_bits("fp32") == (32, 32)
    )


def test_best_and_second_follow_the_direction_within_a_block_and_skip_nan():
    t = PaperTable("m", "p", [("x", 3)], ["up", "down", "zero"], {"up": True, "down": False, "zero": True},
                   {"up": 3, "down": 3, "zero": 3}, {"zero"}, "fake", 4, 1)  # fmt: skip
    vals = {
        "A": (0.9, 0.3, 0.0),
        "B": (0.7, 0.1, 0.002),
        "C": (0.8, 0.2, 0.0),
        "D": (math.nan, math.nan, 0.0),
    }
    block = [(k, [TableCell(x) for x in v]) for k, v in vals.items()]
    _mark_best(t, block)
    marks = {label: [c.mark for c in cells] for label, cells in block}
    assert marks == {
        "A": ["best", None, None],
        "B": [None, "best", None],  # 'zero' is degenerate: never marked
        "C": ["second", "second", None],
        "D": [None, None, None],  # NaN never ranks
    }


def _tabulars(tex: str) -> list[str]:
    return re.findall(r"\\begin\{tabular\}\{(\w+)\}(.*?)\\end\{tabular\}", tex, flags=re.S)


def test_paper_tables_from_the_grid(grid_store):
    res = load_results(grid_store)
    tables = build_tables(res)
    assert [(t.model, t.protocol) for t in tables] == [("Toy", "toy-smoke"), ("Toy", "toy-xss")]
    t = tables[0]
    assert t.columns == ["depth.abs_rel", "depth.delta1"] and t.tasks == [("depth", 2)]
    assert t.reference[0] == "FP" and [s for s, _ in t.blocks] == ["w8a8", "w4a8"]  # most bits first
    w4 = dict(t.blocks)["w4a8"]
    assert [label for label, _ in w4] == ["RTN", "W-only", XSS]  # failed 'boom' cells never enter a table
    rtn, wonly = dict(w4)["RTN"], dict(w4)["W-only"]
    assert rtn[0].se is not None and wonly[0].se is None  # two seeds -> ± over seeds; no calibration -> none
    for _scheme, block in t.blocks:  # the marks agree with the printed values, per block
        for j, m in enumerate(t.columns):
            vals = {label: float(t.fmt(m, cells[j].value)) for label, cells in block}
            want = min(vals.values()) if m == "depth.abs_rel" else max(vals.values())
            assert all(vals[label] == want for label, cells in block if cells[j].mark == "best")
    assert t.label == "tab:ptq3d-toy-toy-smoke-depth" and tables[1].label != t.label


def test_latex_is_paper_ready(grid_store):
    tex = to_latex(load_results(grid_store), title="grid")
    assert (
        tex.startswith("% ptq3d report tables")
        and r"\begin{document}" in tex
        and tex.rstrip().endswith(r"\end{document}")
    )
    tabs = _tabulars(tex)
    assert len(tabs) == 3  # leaderboard + one table per protocol
    for spec, body in tabs:
        assert len(spec) <= 11 and r"\toprule" in body and r"\bottomrule" in body and "\n\n" not in body
    assert tex.count(r"\label{tab:") == 3 and tex.count(r"\caption{") == 3
    assert r"\label{tab:ptq3d-leaderboard}" in tex
    assert r"\multicolumn{2}{c}{Depth}" in tex and r"AbsRel $\downarrow$" in tex
    assert "W8A8 & " in tex and "W4A8 & " in tex and "FP & FP" in tex
    assert r"\textbf{" in tex and r"\underline{" in tex and r"$\pm$" in tex
    assert "<script>" not in tex and r"\textless{}script\textgreater{}" in tex
    # fixed decimals per column: every number of a metric column has the same number of decimals
    _spec, body = tabs[1]
    rows = [r for r in body.split(r"\\") if "&" in r and "Method" not in r and "multicolumn" not in r]
    for j in (2, 3):
        decs = {len(m.group(1)) for r in rows if (m := re.search(r"\d+\.(\d+)", r.split("&")[j]))}
        assert len(decs) == 1, decs
    assert (
        tex_escape("a_b & 50% #1 $x$ {y} ~^\\ |")
        == r"a\_b \& 50\% \#1 \$x\$ \{y\} \textasciitilde{}\textasciicircum{}\textbackslash{} \textbar{}"
    )


def test_wide_tables_are_split(tmp_path):
    many = [f"depth.m{i}" for i in range(11)]
    base = {m: [0.5, 0.6, 0.7] for m in many}
    from tests.reports import stores

    info = dict(
        stores.INFO,
        **{m: {"higher_is_better": True, "unit": "fraction", "aggregation": "mean"} for m in many},
    )
    cells = [cell("fp", "fp32", fp=base), cell("rtn", "w8a8", scaled({}, 0.1, base=base), fp=base)]
    for c in cells:
        c.metric_info = info
    tables = build_tables(load_results(write(tmp_path / "w.sqlite", cells)))
    assert [len(t.columns) for t in tables] == [MAX_VALUE_COLUMNS, 11 - MAX_VALUE_COLUMNS]


def test_csv_has_one_row_per_cell_and_metric(grid_store):
    res = load_results(grid_store)
    df = pd.read_csv(io.StringIO(to_csv(res)))
    ok = df[df["status"] == "ok"]
    assert len(ok) == len(res.metrics)
    assert not ok.duplicated(["cell_id", "stage", "metric"]).any()
    failed = df[df["status"] == "failed"]
    assert len(failed) == 8 and failed["reason"].str.contains("boom").all()
    assert {"fp", "fake", "real"} <= set(ok["stage"])
    r = ok[(ok["stage"] == "fake") & (ok["metric"] == "depth.delta1")].iloc[0]
    assert r["retained"] == pytest.approx(r["value"] / r["fp_value"])


def test_markdown_reads_as_plain_text(grid_store):
    md = to_markdown(load_results(grid_store))
    assert "## Leaderboard" in md and "**" in md and "## Failed cells" in md
    assert "&lt;" not in md and "&gt;" not in md and "<u>" not in md  # no HTML entities, no HTML markup
    assert not re.search(r"(?<!\\)<(script|img|/script)", md) and "\\<script>" in md  # no label opens a tag
    for line in md.splitlines():  # every table row has as many cells as its header
        if line.startswith("|"):
            assert line.rstrip().endswith("|")
    assert "boom: this method always fails" in md


def test_leaderboard_on_the_grid(grid_store):
    res = load_results(grid_store)
    lb = leaderboard(res)
    ranked = lb[lb["rank_num"].notna()]
    assert list(ranked["rank_num"]) == sorted(ranked["rank_num"])
    complete = ranked[ranked["status"] == "ok"]
    assert list(complete["score_pct"]) == sorted(complete["score_pct"], reverse=True)
    boom = lb[lb["method"] == "boom"]
    assert (boom["status"] == "failed").all() and (boom["rank"] == "–").all() and boom["failed"].sum() == 8
    # one entry by hand: RTN w4a8 depth (the only task) = mean over seeds of the worst protocol's retained
    m = res.metrics
    sel = m[(m["method_label"] == "RTN") & (m["scheme"] == "w4a8") & (m["stage"] == "fake")
            & (m["metric"] == "depth.abs_rel")]  # fmt: skip
    per_protocol = sel.groupby("protocol")["retained"].mean()
    row = lb[(lb["method_label"] == "RTN") & (lb["scheme"] == "w4a8")].iloc[0]
    assert row["score_pct"] == pytest.approx(100 * per_protocol.min()) and row["n_seeds"] == 2
    assert row["latency_backend"].startswith("emulated") and row["speedup"] == pytest.approx(
        row["latency_fp_ms"] / row["latency_ms"], rel=0.5
    )


def test_several_builders_are_named(tmp_path):
    from ptq3d.harness.config import load_config
    from ptq3d.harness.sweep import run_grid
    from tests.harness.fakes import write_config

    body = (
        '[[models]]\nname = "toy"\n[[methods]]\nname = "rtn"\n[[protocols]]\nname = "toy-smoke"\n'
        '[calibration]\nprotocol = "toy-heldout"\nnum_scenes = 2\nbuilders = ["random", "first"]\n'
        "[eval]\nbench = false\noutlier_stats = false\n"
    )
    cfg = write_config(tmp_path / "b.toml", body, f'schemes = ["w8a8"]\noutput_dir = "{tmp_path / "o"}"')
    res = load_results(run_grid(load_config(cfg)).store_path)
    assert sorted(r["Method"] for r in leaderboard_rows(leaderboard(res)) if r["Rank"] != "FP") == [
        "rtn (first)",
        "rtn (random)",
    ]
    (table,) = build_tables(res)
    assert [label for label, _ in table.blocks[0][1]] == ["rtn (random)", "rtn (first)"]
