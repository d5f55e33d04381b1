"""End to end on the real components: vggt-tiny (seeded random init), synthetic-smoke, FP + RTN; checks the
store, the CSV, the LaTeX and the HTML. Also checks the default suite's grid without running it."""

from __future__ import annotations

import io
import sqlite3

import pandas as pd
import pytest

from ptq3d.harness.cli import main

CONFIG = """
[run]
schemes = ["w8a8", "w4a4"]
output_dir = "{out}"

[[models]]
name = "vggt-tiny"
label = "VGGT-tiny"

[[methods]]
name = "rtn"
label = "RTN"

[[protocols]]
name = "synthetic-smoke"
limit = 1
metrics = ["pose.auc@30", "depth.abs_rel", "depth.delta<1.25"]

[calibration]
protocol = "synthetic-calib"
num_scenes = 1

[eval]
bench_repeats = 1
threads = 1
"""


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_real_grid_end_to_end(tmp_path, capsys):
    cfg = tmp_path / "real.toml"
    out = tmp_path / "out"
    cfg.write_text(CONFIG.format(out=out))
    assert main(["run", str(cfg), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "ran 3 cells, skipped 0 finished, 0 failed" in printed and "FP passes 1" in printed

    con = sqlite3.connect(out / "results.sqlite")
    cells = con.execute(
        "SELECT method, scheme, status, costs, manifest, provenance FROM cells ORDER BY method, scheme"
    ).fetchall()
    assert [(c[0], c[1], c[2]) for c in cells] == [
        ("fp", "fp32", "ok"),
        ("rtn", "w4a4", "ok"),
        ("rtn", "w8a8", "ok"),
    ]
    import json

    rtn = json.loads(cells[2][4])
    assert rtn["method"] == "rtn" and rtn["summary"]["num_quantized_linears"] > 0  # coverage manifest
    prov = json.loads(cells[2][5])
    assert prov["model"]["weights"] == "random init (seed 0)" and "note" in prov["model"]
    assert prov["calibration_hash"] and prov["protocol_hash"] and prov["versions"]["torch"].startswith("2.13")
    costs = json.loads(cells[2][3])
    assert costs["model_bytes_q"] < costs["model_bytes_fp"] and costs["latency_backend"].startswith(
        "emulated"
    )
    stages = dict(
        con.execute(
            "SELECT stage, status FROM stages WHERE cell_id = (SELECT cell_id FROM cells WHERE scheme='w8a8')"
        )
    )
    assert stages == {s: "ok" for s in ("load", "fp_eval", "calibrate", "eval_fake", "eval_real", "bench")}
    agg = dict(
        con.execute(
            "SELECT m.stage || ':' || m.metric, m.value FROM metrics m JOIN cells c USING(cell_id) "
            "WHERE c.scheme='w8a8' AND m.scene='*'"
        )
    )
    for stage in ("fp", "fake", "real"):
        assert 0 <= agg[f"{stage}:depth.delta<1.25"] <= 1 and agg[f"{stage}:depth.abs_rel"] > 0

    reports = out / "reports"
    csv = pd.read_csv(io.StringIO((reports / "report.csv").read_text()))
    assert set(csv["metric"]) >= {"pose.auc@30", "depth.abs_rel", "depth.delta<1.25"}
    assert set(csv["stage"]) == {"fp", "fake", "real"} and (csv["status"] == "ok").all()
    tex = (reports / "report.tex").read_text()
    assert r"\toprule" in tex and r"$\uparrow$" in tex and "RTN" in tex  # the layout: tests/reports
    html = (reports / "report.html").read_text()
    assert "VGGT-tiny" in html and "random weights" in html and "<svg" in html and "aggregator." in html

    # rerun: every cell is skipped
    assert main(["run", str(cfg), "--no-progress", "--no-report"]) == 0
    assert "ran 0 cells, skipped 3 finished" in capsys.readouterr().out


def by_method(cells, name):
    return [c for c in cells if c.method.name == name]


def test_default_suite_grid(tmp_path):
    from ptq3d.harness.default_suite import default_config
    from ptq3d.methods import list_methods

    cfg = default_config(tmp_path / "d")
    cells = cfg.cells()
    methods = [m for m in list_methods() if m != "fp"]
    assert cells[0].is_reference
    from ptq3d.harness.default_suite import WEIGHT_ONLY_METHODS

    assert {(c.method.name, c.scheme) for c in cells[1:]} == {
        (m, s) for m in methods for s in ("w8a8", "w4a8", "w4a4")
    } | {(m, "w4a16") for m in WEIGHT_ONLY_METHODS if m in methods}
    assert "qvggt" in methods and "w4a16" in {c.scheme for c in by_method(cells, "qvggt")}
    assert cfg.sensitivity is not None and "w4a4" in cfg.sensitivity.schemes
    assert cfg.output_dir == str((tmp_path / "d").resolve())
    # the bundled trained model (with its outlier channels) on its held-out protocol, calibrated on training seeds
    from ptq3d.harness.default_suite import CALIBRATION_SEEDS, EVAL_SCENES

    assert cells[0].model.name == "vggt-tiny-synthetic-sinks"
    assert cells[0].protocol.name == "synthetic-heldout-112" and cells[0].protocol.limit == EVAL_SCENES >= 6
    assert cells[1].calibration.protocol == "synthetic-calib-112"
    # each method with its own (scaled) paper settings; every calibrated method over >= 2 seeds
    by = {}
    for c in cells[1:]:
        by.setdefault(c.method.name, []).append(c)
    seeds = {m: sorted({c.seed for c in cs}) for m, cs in by.items()}
    assert seeds["rtn"] == [0] and all(seeds[m] == list(CALIBRATION_SEEDS) for m in methods if m != "rtn")
    assert len(CALIBRATION_SEEDS) >= 2
    taptq, qv, fgq = by["taptq"][0], by["quantvggt"][0], by["fgq"][0]
    assert taptq.options.scope == "all" and taptq.calibration.builder == "taptq"
    assert qv.options.scope == "aggregator" and qv.calibration.builder == "nfds"
    assert qv.calibration.options["filter"] == "zscore" and qv.calibration.num_scenes == 4  # 40 / 8, capped
    assert (
        fgq.calibration.num_scenes == 4 and fgq.calibration.frames == 4 and fgq.method.config["epochs"] == 1
    )
    assert fgq.method.display == "fgq (1 epoch)"
    stamped = default_config()
    assert "/ptq3d-runs/" in stamped.output_dir and stamped.output_dir.rsplit("/", 1)[1][:2] == "20"
    assert stamped.cache_dir.endswith("/ptq3d-runs/cache")  # shared by timestamped runs


PAPERS = "methods_as_papers.toml"


def _papers_grid(tmp_path, tiny: bool):
    """The example grid of every method with its paper settings; tiny: 1 evaluation scene, 1 epoch, no bench,
    no real-kernel stage and 2 calibration scenes where it asked for more (sizes still differ per method)."""
    from pathlib import Path

    import ptq3d.harness
    from ptq3d.harness.config import loads_config

    text = (Path(ptq3d.harness.__file__).parent / "examples" / PAPERS).read_text()
    text = text.replace(
        'output_dir = "ptq3d-runs/methods-as-papers"', f'output_dir = "{tmp_path / "papers"}"'
    )
    if tiny:
        text = text.replace("limit = 4", "limit = 1").replace("epochs = 2", "epochs = 1")
        text = text.replace("num_scenes = 8", "num_scenes = 3").replace("num_scenes = 5", "num_scenes = 4")
        text = text.replace('real_backend = "auto"', 'real_backend = "none"').replace(
            "bench = true", "bench = false"
        )
        text = text.replace("[eval]\n", "[eval]\noutlier_stats = false\n")
    return loads_config(text, source=PAPERS)


def _settings(c):
    cal = c.calibration
    if cal is None:  # the FP reference
        return (c.method.preset, c.options.scope, None, None, None, None)
    return (
        c.method.preset,
        c.options.scope,
        cal.builder,
        cal.num_scenes,
        cal.frames,
        c.method.config.get("epochs"),
    )


def test_methods_as_papers_grid_gives_each_method_its_own_settings(tmp_path):
    from ptq3d.methods import list_methods

    cells = _papers_grid(tmp_path, tiny=False).cells()
    by = {c.method.display: c for c in cells}
    assert {c.method.name for c in cells} == set(list_methods())  # every method, FP included
    assert _settings(by["taptq"])[:4] == ("paper", "all", "taptq", 2)
    assert _settings(by["quantvggt"]) == ("paper", "aggregator", "nfds", 5, 4, 2)
    assert by["quantvggt"].calibration.options == {
        "filter": "zscore",
        "drop_fraction": 0.2,
        "num_clusters": 4,
    }
    code = by["QuantVGGT (code)"]
    assert _settings(code) == ("code", "aggregator", "nfds", 3, 4, 2)
    assert code.calibration.options["filter"] == "iqr" and code.calibration.options["num_clusters"] == 3
    assert code.method.config["smooth_weight"] == "unrotated"  # the code preset's values
    assert by["quantvggt"].method.config["smooth_weight"] == "rotated"
    assert _settings(by["flatquant"]) == ("paper", "aggregator", "random", 8, 4, 2)
    assert sorted(c.seed for c in cells if c.method.name == "fgq") == [0, 1]
    assert len({c.cell_id for c in cells}) == len(cells)


@pytest.mark.slow
def test_methods_as_papers_grid_runs_end_to_end(tmp_path):
    """Acceptance (issue 17): every method with its paper settings side by side runs on the bundled tiny model,
    and each stored record carries its own settings and preset."""
    from ptq3d.harness.sweep import run_grid
    from ptq3d.results.records import CellSpec
    from ptq3d.results.store import ResultsStore

    cfg = _papers_grid(tmp_path, tiny=True)
    summary = run_grid(cfg)
    assert summary.ran == len(cfg.cells()) == 17 and not summary.failed, summary.failed
    with ResultsStore(summary.store_path) as st:
        stored = {r["cell_id"]: (CellSpec.from_dict(r["spec"]), r) for r in st.cells()}
    for cell in cfg.cells():
        spec, row = stored[cell.cell_id]
        assert _settings(spec) == _settings(cell) and spec.calibration == cell.calibration
        assert spec.method.config == cell.method.config
        if cell.calibration is not None and not cell.is_reference and cell.method.name != "rtn":
            prov = row["provenance"]["calibration"]
            assert (prov["builder"], prov["num_scenes"]) == (
                cell.calibration.builder,
                cell.calibration.num_scenes,
            )
    scopes = {spec.method.display: spec.options.scope for spec, _ in stored.values()}
    assert scopes["taptq"] == "all" and scopes["fgq"] == "aggregator"
    manifests = {spec.method.display: row["manifest"] for spec, row in stored.values()}
    # TAPTQ's scope reaches the quantizer: it quantizes more linears than the aggregator-only methods
    assert len(manifests["taptq"]["sites"]) > len(manifests["flatquant"]["sites"])


def test_example_config_validates(capsys):
    from pathlib import Path

    import ptq3d.harness

    example = Path(ptq3d.harness.__file__).parent / "examples" / "grid.toml"
    assert main(["validate", str(example)]) == 0
    out = capsys.readouterr().out
    # FP + rtn (no calibration dependence: 3 schemes) + smoothquant and gptq (3 schemes x 2 seeds each)
    assert "ok (16 cells" in out and "SmoothQuant a=0.5" in out


@pytest.mark.parametrize(
    "what, expect",
    [
        ("methods", "rtn"),
        ("protocols", "synthetic-smoke"),
        ("metrics", "pose.auc@30"),
        ("datasets", "co3d"),
        ("schemes", "w4a8"),
        ("models", "vggt-tiny"),
    ],
)
def test_ls_real(what, expect, capsys):
    assert main(["ls", what]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert expect in names
    if what == "methods":
        assert "fp" not in names  # the FP reference is not a method to rank


@pytest.mark.parametrize(
    "protocol, message",
    [
        (
            '{ name = "synthetic-smoke", alignment = "vgt" }',
            "unknown alignment preset 'vgt'; did you mean 'vggt'?",
        ),
        (
            '{ name = "synthetic-smoke", alignment_options = { max_pts = 3 } }',
            "bad alignment_options {'max_pts': 3}",
        ),
        ('{ name = "synthetic-smoke", metrics = ["pose.auc@31"] }', "unknown metric 'pose.auc@31'"),
    ],
)
def test_real_names_are_validated(protocol, message):
    from ptq3d.errors import ConfigError
    from ptq3d.harness.config import loads_config

    text = f'models = ["vggt-tiny"]\nmethods = ["rtn"]\nprotocols = [{protocol}]\n[run]\nschemes = ["w8a8"]\n'
    with pytest.raises(ConfigError, match="protocols"):
        loads_config(text)
    try:
        loads_config(text)
    except ConfigError as exc:
        assert message in str(exc)
