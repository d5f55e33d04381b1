"""The researcher's path: a third-party method package (examples/ptq3d-example-method) installed into the
environment, found through its `ptq3d.methods` entry point, run beside RTN and GPTQ through `ptq3d run` on the
bundled tiny model, and gated with `ptq3d compare`.

The package is installed with pip (no index, no build isolation, no downloads) into a temporary target directory
that is put on sys.path, so the environment itself is left untouched. The fast tests check the discovery and the
method's math; the `ptq3d run` path is slow (about a minute of CPU on 2 cores: 4 cells on 2 scenes).
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from ptq3d.harness.cli import main
from ptq3d.methods import registry
from ptq3d.methods.rtn import RTNConfig, rtn_linear
from ptq3d.quant.spec import get_scheme

PACKAGE = Path(__file__).resolve().parents[2] / "examples" / "ptq3d-example-method"


@pytest.fixture(scope="module")
def plugin():
    """Install the example package into a temporary target, load the entry points; undo it all afterwards."""
    import tempfile

    if importlib.util.find_spec("setuptools") is None:  # the package's build backend, used without isolation
        pytest.fail(
            "setuptools is not installed in this environment (pip install 'setuptools>=68')", pytrace=False
        )
    work = Path(tempfile.mkdtemp(prefix="ptq3d-plugin-"))
    source, target = work / "src", work / "site"
    # build from a copy: setuptools writes build/ and *.egg-info next to the sources
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    proc = subprocess.run([*cmd, "--target", str(target), str(source)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    try:
        assert "rtn-pclip" in registry.load_plugins(force=True)
        yield registry.get_method("rtn-pclip")
    finally:
        sys.path.remove(str(target))
        registry._METHODS.pop("rtn-pclip", None)
        sys.modules.pop("ptq3d_example_method", None)
        registry.load_plugins(force=True)  # the entry point is gone again
        shutil.rmtree(work, ignore_errors=True)


def test_the_entry_point_registers_the_method(plugin):
    assert plugin.source == "ptq3d_example_method" and plugin.name in registry.list_methods()
    cfg = plugin.make_config({"percentile": 99.0})
    assert cfg.percentile == 99.0
    with pytest.raises(Exception, match=r"percentile=40.0 must lie in \(50, 100\]"):
        plugin.make_config({"percentile": 40.0})


def test_percentile_clip_math(plugin):
    mod = sys.modules["ptq3d_example_method"]
    w = torch.tensor([[1.0, -2.0, 3.0, -100.0, 4.0]])
    # the 75th percentile of |w| = {1, 2, 3, 4, 100} is 4 (linear interpolation at rank 3 of 0..4)
    assert mod.clip_rows(w, 75.0).tolist() == [[1.0, -2.0, 3.0, -4.0, 4.0]]
    torch.manual_seed(0)
    lin = nn.Linear(64, 16)
    scheme = get_scheme("w4a8")
    same = mod.pclip_linear(lin, scheme, plugin.make_config({"percentile": 100.0}))
    rtn = rtn_linear(lin, scheme, RTNConfig())
    x = torch.randn(5, 64)
    assert torch.equal(same(x), rtn(x))  # percentile 100 is plain RTN
    with torch.no_grad():
        lin.weight[:, 0] = 5.0  # one outlier column sets every row's RTN step
    clipped = mod.pclip_linear(lin, scheme, plugin.make_config({"percentile": 95.0}))
    rtn = rtn_linear(lin, scheme, RTNConfig())
    err = lambda q: (q.dequantized_weight() - lin.weight)[:, 1:].pow(2).mean()  # noqa: E731
    assert err(clipped) < err(rtn)


GRID = """
[run]
name = "plugin-gate"
output_dir = "{out}"
schemes = ["w4a8"]
reference = true
[[models]]
name = "vggt-tiny-synthetic"
[[methods]]
name = "rtn"
[[methods]]
name = "gptq"
[[methods]]
name = "rtn-pclip"
label = "RTN + 99th percentile clip"
config = {{ percentile = 99.0 }}
[[protocols]]
name = "synthetic-heldout-112"
limit = 2
metrics = ["pose.auc@30", "depth.abs_rel", "points.acc"]
[calibration]
protocol = "synthetic-calib-112"
num_scenes = 1
seeds = [0]
[eval]
real_backend = "none"
bench = false
outlier_stats = false
threads = 1
"""


@pytest.mark.slow
def test_plugin_runs_against_rtn_and_gptq_and_is_gated(plugin, tmp_path, capsys):
    cfg = tmp_path / "grid.toml"
    cfg.write_text(GRID.format(out=tmp_path / "run"))
    assert main(["run", str(cfg), "--no-progress", "--no-report"]) == 0
    store = tmp_path / "run" / "results.sqlite"
    con = sqlite3.connect(store)
    rows = dict(con.execute("SELECT method, status FROM cells").fetchall())
    assert rows == {"fp": "ok", "rtn": "ok", "gptq": "ok", "rtn-pclip": "ok"}
    abs_rel = dict(
        con.execute(
            "SELECT c.method, m.value FROM metrics m JOIN cells c USING(cell_id) "
            "WHERE m.scene = '*' AND m.metric = 'depth.abs_rel' AND m.stage IN ('fake', 'fp') "
            "AND (c.method = 'fp') = (m.stage = 'fp')"
        ).fetchall()
    )
    con.close()
    assert set(abs_rel) == {"fp", "rtn", "gptq", "rtn-pclip"} and abs_rel["rtn-pclip"] != abs_rel["rtn"]
    capsys.readouterr()

    # the gate: the same run passes; a copy whose plugin cell got worse on every scene fails
    assert main(["compare", str(tmp_path / "run"), str(store), "--noise-aware"]) == 0
    assert capsys.readouterr().out.strip().endswith("PASS")
    worse = tmp_path / "worse.sqlite"
    shutil.copy(store, worse)
    con = sqlite3.connect(worse)
    con.execute(
        "UPDATE metrics SET value = value * 1.5 WHERE metric = 'depth.abs_rel' AND stage = 'fake' AND cell_id IN "
        "(SELECT cell_id FROM cells WHERE method = 'rtn-pclip')"
    )
    con.commit()
    con.close()
    assert main(["compare", str(store), str(worse), "--noise-aware", "--metrics", "depth.abs_rel"]) == 1
    out = capsys.readouterr().out
    assert (
        "RTN + 99th percentile clip | w4a8" in out and "depth.abs_rel" in out and out.strip().endswith("FAIL")
    )
