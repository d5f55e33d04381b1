"""The [sensitivity] table of a run: measured after the grid, reused when nothing changed, recomputed when the
model or options change, shown in the HTML report; bad tables fail at load with one line."""

from __future__ import annotations

import json

import pytest

from ptq3d.errors import ConfigError
from ptq3d.harness.cli import main
from ptq3d.harness.config import loads_config

CONFIG = """
[run]
schemes = ["w4a8"]
output_dir = "{out}"
reference = true

[[models]]
name = "vggt-tiny-synthetic-sinks"

[[methods]]
name = "rtn"

[[protocols]]
name = "synthetic-smoke"
limit = 1
metrics = ["pose.auc@30", "depth.abs_rel"]

[calibration]
protocol = "synthetic-calib-112"

[eval]
bench = false
outlier_stats = false
threads = 1

[sensitivity]
schemes = ["w4a4"]
num_scenes = 1
estimates = {estimates}
budget = 4.5
"""


def test_stage_writes_reuses_and_reports(tmp_path, capsys):
    out = tmp_path / "out"
    cfg = tmp_path / "run.toml"
    cfg.write_text(CONFIG.format(out=out, estimates="false"))
    assert main(["run", str(cfg), "--no-progress"]) == 0
    d = out / "sensitivity" / "vggt-tiny-synthetic-sinks" / "w4a4"
    table = json.loads((d / "sensitivity.json").read_text())
    assert [r["unit"] for r in table["rows"]][:2] == [
        "aggregator.frame_blocks.0",
        "aggregator.global_blocks.0",
    ]
    assert all(r["camera"] >= 0 and r["depth"] >= 0 for r in table["rows"])
    assert (d / "plan.toml").is_file() and (d / "sensitivity.png").stat().st_size > 0
    assert table["plan"]["source"]["budget_bits"] == 4.5
    html = (out / "reports" / "report.html").read_text()
    assert "Sensitivity" in html and "sensitivity/vggt-tiny-synthetic-sinks/w4a4/sensitivity.json" in html
    md = (out / "reports" / "report.md").read_text()
    assert "## Sensitivity: vggt-tiny-synthetic-sinks · w4a4 · per block" in md and "Plan `" in md
    printed = capsys.readouterr().out
    assert "sensitivity: vggt-tiny-synthetic-sinks w4a4:" in printed
    # a rerun with nothing changed reuses the table; another option recomputes it
    mtime = (d / "sensitivity.json").stat().st_mtime_ns
    assert main(["run", str(cfg), "--no-progress"]) == 0
    assert "reused" in capsys.readouterr().out and (d / "sensitivity.json").stat().st_mtime_ns == mtime
    key = json.loads((d / "key.json").read_text())
    assert key["options"]["estimates"] is False
    cfg.write_text(CONFIG.format(out=out, estimates="true"))
    assert main(["run", str(cfg), "--no-progress"]) == 0
    assert json.loads((d / "key.json").read_text())["options"]["estimates"] is True
    assert json.loads((d / "sensitivity.json").read_text())["rows"][0]["fisher_depth"] is not None


@pytest.mark.parametrize(
    "table,match",
    [
        ('granularity = "layer"', r"\[sensitivity\]\.granularity"),
        ("budget = 12.0", r"\[sensitivity\]\.budget = 12.0"),
        ('schemes = ["w9a4"]', r"\[sensitivity\]\.schemes\[0\] = 'w9a4'"),
        ("scenes = 2", r"\[sensitivity\]: unknown key 'scenes'"),
    ],
)
def test_bad_tables_fail_at_load(tmp_path, table, match):
    text = (
        CONFIG.format(out=tmp_path / "o", estimates="false").split("[sensitivity]")[0]
        + "[sensitivity]\n"
        + table
    )
    with pytest.raises(ConfigError, match=match):
        loads_config(text, base_dir=tmp_path)
