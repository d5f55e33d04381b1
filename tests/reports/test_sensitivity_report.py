"""The sensitivity map in the reports: Markdown, the heatmap, and the HTML report's Sensitivity section when the
run directory holds sensitivity.json (escaped, and absent otherwise)."""

from __future__ import annotations

from ptq3d.calibration.sensitivity import SensitivityTable
from ptq3d.reports import sensitivity as rs
from ptq3d.reports.html import to_html
from ptq3d.results.read import load_results
from tests.reports.stores import cell, scaled, write

EVIL = "<script>alert(1)</script>"


def _table() -> SensitivityTable:
    rows = []
    for i, (c, d, p) in enumerate([(0.03, 0.004, 0.02), (0.01, 0.07, 0.05), (0.02, 0.0, 0.0)]):
        rows.append(
            {
                "unit": f"aggregator.frame_blocks.{i}",
                "block": f"aggregator.frame_blocks.{i}",
                "kind": "frame",
                "num_params": 1000,
                "camera": c,
                "depth": d,
                "points": p,
                "block_rel_mse": 1e-3 * (i + 1),
                "block_sqnr_db": 30.0 - i,
                "fisher_camera": c / 2,
                "fisher_depth": d,
                "fisher_points": p,
                "gn_camera": c,
                "gn_depth": d,
                "gn_points": p,
            }  # fmt: skip
        )
    rows[0]["unit"] = EVIL
    return SensitivityTable(
        "vggt-tiny", "w4a4", "aggregator", "block", ("camera", "depth", "points"), rows,
        correlations={"fisher": {"camera": {"spearman": 0.5, "kendall": 0.333}}},
        time_s={"measured": 1.0, "estimates": 0.5, "total": 1.5},
        calibration={"num_samples": 2, "builder": "random", "hash": "abc123"},
        plan={"name": "sens-worst-4.5b", "blocks": {"aggregator.frame_blocks.1": "w8"}, "sites": {},
              "source": {"order": ["aggregator.frame_blocks.1"], "high_bits": 8, "budget_bits": 4.5,
                         "average_weight_bits": 4.44, "task": "worst"}},
    )  # fmt: skip


def _store(path):
    return write(path / "results.sqlite", [cell("fp", "fp32"), cell("rtn", "w8a8", scaled({}, 0.01))])


def test_html_has_the_section_only_with_sensitivity_json(tmp_path):
    store = _store(tmp_path)
    assert 'id="sensitivity"' not in to_html(load_results(store))
    _table().save_json(tmp_path / "sensitivity.json")
    html = to_html(load_results(store))
    sec = html[html.index('id="sensitivity"') : html.index('id="outliers"')]
    assert "vggt-tiny · w4a4 · per block" in sec and "<svg" in sec
    assert "FGQ Fisher x block error" in sec and "0.500" in sec and "0.333" in sec  # the correlation row
    assert "sens-worst-4.5b" in sec and '<td class="l">w8</td>' in sec  # the plan and its raised block
    assert sec.count("<tr>") == 1 + 1 + 1 + 3  # correlation header + row, table header + 3 units
    assert "<script" not in html and "&lt;script&gt;" in sec


def test_every_table_in_the_run_and_a_broken_one_reported(tmp_path):
    store = _store(tmp_path)
    _table().save_json(
        tmp_path / "sensitivity" / "vggt-tiny" / "w4a4" / "sensitivity.json"
    )  # the run stage's
    (tmp_path / "w4a16").mkdir()
    (tmp_path / "w4a16" / "sensitivity.json").write_text('{"format": "ptq3d.sensitivity/1"}')
    secs = rs.sensitivity_sections(tmp_path)
    assert [s["source"] or s["title"] for s in secs] == [
        "w4a16/sensitivity.json",
        "sensitivity/vggt-tiny/w4a4/sensitivity.json",
    ]
    assert "malformed sensitivity table" in secs[0]["error"] and secs[1]["rows"][1]["plan"] == "w8"
    html = to_html(load_results(store))
    assert "malformed sensitivity table" in html and html.count("<svg") >= 1


def test_markdown_and_png(tmp_path):
    data = _table().to_dict()
    md = rs.to_markdown(data)
    assert (
        md.count("| aggregator.frame_blocks.") == 2
        and "| FGQ Fisher x block error | camera | 0.5 | 0.333 |" in md
    )
    # most fragile per task; a unit with zero error is never listed for that task
    assert rs.fragile(data) == {
        "camera": [EVIL, "aggregator.frame_blocks.2", "aggregator.frame_blocks.1"],
        "depth": ["aggregator.frame_blocks.1", EVIL],
        "points": ["aggregator.frame_blocks.1", EVIL],
    }
    assert "aggregator.frame_blocks.1 = w8" in md
    png = rs.save_heatmap_png(data, tmp_path / "h.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
