"""`plan = "..."` in a [[methods]] entry: parsed into the cell (content in the id, name in the label), run on the
real components with every site at the plan's bits, and stored with the cell's manifest."""

from __future__ import annotations

import json
import sqlite3

import pytest

from ptq3d.errors import ConfigError
from ptq3d.harness.cli import main
from ptq3d.harness.config import expand, loads_config
from ptq3d.quant.plan import PrecisionPlan

CONFIG = """
[run]
schemes = ["w4a16"]
output_dir = "{out}"
reference = false

[[models]]
name = "vggt-tiny-synthetic-sinks"

[[methods]]
name = "rtn"

[[methods]]
name = "rtn"
plan = "{plan}"

[[protocols]]
name = "synthetic-smoke"
limit = 1
metrics = ["pose.auc@30", "depth.abs_rel"]

[eval]
bench = false
outlier_stats = false
threads = 1
"""


@pytest.fixture
def plan_file(tmp_path):
    plan = PrecisionPlan(
        "first-two-w8",
        blocks={"aggregator.frame_blocks.0": "w8", "aggregator.global_blocks.0": "w8"},
        source={"made_by": "test"},
    )
    return plan.save(tmp_path / "plan.toml")


def test_plan_in_the_cell_identity(tmp_path, plan_file):
    cfg = loads_config(CONFIG.format(out=tmp_path / "o", plan=plan_file), base_dir=tmp_path)
    plain, mixed = expand(cfg)
    assert plain.method.plan is None and "plan" not in plain.to_dict()["method"]
    assert mixed.method.plan["name"] == "first-two-w8" and mixed.method.display == "rtn [first-two-w8]"
    assert plain.cell_id != mixed.cell_id and plain.row_key != mixed.row_key
    other = PrecisionPlan("first-two-w8", blocks={"aggregator.frame_blocks.0": "w6"}).save(
        tmp_path / "p2.toml"
    )
    changed = expand(loads_config(CONFIG.format(out=tmp_path / "o", plan=other), base_dir=tmp_path))[1]
    assert changed.cell_id != mixed.cell_id  # same name, other bits: another cell, never a stale result


def test_plan_errors_name_the_entry(tmp_path):
    with pytest.raises(ConfigError, match=r"\[\[methods\]\]\[1\]\.plan.*not found"):
        loads_config(CONFIG.format(out=tmp_path / "o", plan=tmp_path / "missing.toml"), base_dir=tmp_path)


def test_plan_runs_and_is_stored(tmp_path, plan_file):
    cfg = tmp_path / "run.toml"
    out = tmp_path / "out"
    cfg.write_text(CONFIG.format(out=out, plan=plan_file))
    assert main(["run", str(cfg), "--no-progress"]) == 0
    con = sqlite3.connect(out / "results.sqlite")
    rows = con.execute("SELECT method_label, status, manifest FROM cells ORDER BY method_label").fetchall()
    assert [(r[0], r[1]) for r in rows] == [("rtn", "ok"), ("rtn [first-two-w8]", "ok")]
    plain, mixed = (json.loads(r[2]) for r in rows)
    assert plain["plan"] is None and plain["summary"]["effective_weight_bits"] == 4
    assert mixed["plan"]["name"] == "first-two-w8" and mixed["scheme"]["name"] == "w4a16+first-two-w8"
    bits = {s: v["weight"] for s, v in mixed["sites"].items()}
    assert all(b.startswith("8b") for s, b in bits.items() if s.startswith("aggregator.frame_blocks.0."))
    assert all(b.startswith("4b") for s, b in bits.items() if s.startswith("aggregator.frame_blocks.1."))
    assert 4 < mixed["summary"]["effective_weight_bits"] < 8
    assert mixed["summary"]["quantized_weight_bytes"] > plain["summary"]["quantized_weight_bytes"]
    assert "mixed (4/8)" in mixed["effective_format"]["short"]
    md = "\n".join(p.read_text() for p in (out / "reports").rglob("*.md"))
    assert "W bits" in md and f"{mixed['summary']['effective_weight_bits']:.2f}" in md and "W5.00 mixed" in md


def test_validate_checks_plan_units_and_method_schemes(tmp_path, plan_file):
    from ptq3d.harness.config import check_names

    typo = PrecisionPlan("typo", blocks={"aggregator.frame_block.0": "w8"}).save(tmp_path / "typo.toml")
    with pytest.raises(ConfigError, match=r"\[\[methods\]\]\[1\]\.plan \(rtn \[typo\]\).*frame_block\.0"):
        check_names(loads_config(CONFIG.format(out=tmp_path / "o", plan=typo), base_dir=tmp_path))
    own = CONFIG.replace('plan = "{plan}"', 'label = "x"\nschemes = ["w4a8", "w9a8"]').format(
        out=tmp_path / "o"
    )
    with pytest.raises(ConfigError, match=r"\[\[methods\]\]\[1\]\.schemes\[1\] = 'w9a8'"):
        check_names(loads_config(own, base_dir=tmp_path))
    ok = CONFIG.replace('plan = "{plan}"', 'label = "rtn w4a8"\nschemes = ["w4a8"]').format(
        out=tmp_path / "o"
    )
    cells = expand(loads_config(ok, base_dir=tmp_path))
    assert [(c.method.display, c.scheme) for c in cells] == [("rtn", "w4a16"), ("rtn w4a8", "w4a8")]


def test_quantize_cli_takes_a_plan(tmp_path, plan_file):
    out = tmp_path / "q"
    args = ["quantize", "--model", "vggt-tiny-synthetic-sinks", "--method", "rtn", "--scheme", "w4a16"]
    assert main([*args, "--calib", "none", "--plan", str(plan_file), "--out", str(out), "--no-progress"]) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["plan"]["name"] == "first-two-w8" and man["summary"]["bits_histogram"]["W8A16"] == 8
    assert main([*args, "--calib", "none", "--plan", str(tmp_path / "nope.toml"), "--out", str(out)]) == 2
