"""`ptq3d sensitivity` on the bundled model with a tiny calibration set: the files it writes (JSON, CSV, heatmap
PNG, plan TOML), the printed table with the rank correlations, and one-line user errors."""

from __future__ import annotations

import json

from ptq3d.calibration.sensitivity import SensitivityTable
from ptq3d.harness.cli import main
from ptq3d.quant.plan import PrecisionPlan

MODEL = "vggt-tiny-synthetic-sinks"
TINY = ["--calib-size", "1", "--calib-frames", "2", "--image-size", "42", "42", "--threads", "1"]


def test_writes_table_heatmap_and_plan(tmp_path, capsys):
    out = tmp_path / "sens"
    argv = ["sensitivity", "--model", MODEL, "--scheme", "w4a16", "--budget", "4.5", "--out", str(out), *TINY]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {
        "sensitivity.json",
        "sensitivity.csv",
        "sensitivity.png",
        "plan.toml",
    }
    table = SensitivityTable.load_json(out / "sensitivity.json")
    assert table.model == MODEL and table.scheme == "w4a16" and len(table.rows) == 8
    assert all(r["camera"] > 0 and r["depth"] > 0 and r["points"] > 0 for r in table.rows)
    assert (out / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "sensitivity.csv").read_text().splitlines()) == 9
    plan = PrecisionPlan.load(out / "plan.toml")
    # 8 equal blocks at W4: one block at W8 gives exactly 4.5 average bits
    assert len(plan.blocks) == 1 and set(plan.blocks.values()) == {"w8"}
    assert plan.source["average_weight_bits"] == 4.5 and plan.source["budget_bits"] == 4.5
    assert list(plan.blocks) == [table.ranking("worst")[0]]
    assert json.loads((out / "sensitivity.json").read_text())["plan"]["name"] == plan.name
    assert "Spearman" in printed and "FGQ Fisher" in printed and "Most fragile" in printed
    assert str(out / "plan.toml") in printed


def test_user_errors_are_one_line(tmp_path, capsys):
    for argv in (
        ["sensitivity", "--model", MODEL, "--scheme", "w4a9x", "--out", str(tmp_path)],
        ["sensitivity", "--model", MODEL, "--budget", "3", "--out", str(tmp_path)],
        ["sensitivity", "--model", MODEL, "--image-size", "40", "40", "--out", str(tmp_path)],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("ptq3d sensitivity: error:") and err.count("\n") == 1, err
