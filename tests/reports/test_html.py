"""The HTML report: what was run, the failure banner, escaping of user strings, and a real headless-browser
render at 1400 px (no horizontal scroll, no console message, banner present)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from ptq3d.reports import write_reports
from ptq3d.reports.html import to_html
from ptq3d.results.read import load_results
from tests.harness.fakes import XSS
from tests.reports.stores import cell, scaled, write

WIDTH = 1400


@pytest.fixture(scope="module")
def report(grid_store, tmp_path_factory) -> Path:
    return write_reports(grid_store, tmp_path_factory.mktemp("report"))["html"]


def test_sections_and_contents(report):
    html = report.read_text()
    for anchor in ("run", "leaderboard", "costs", "plots", "tables", "blocks", "outliers", "coverage",
                   "stage-costs", "failed"):  # fmt: skip
        assert f'id="{anchor}"' in html
    assert html.count("<svg") >= 5  # per-task loss, loss vs bits, loss vs cost, per-block error, outliers
    assert '<td class="l">RTN</td>' in html
    assert 'class="n best"' in html and 'class="n second"' in html and "± " in html
    # what was run, at the top
    top = html[: html.index('id="leaderboard"')]
    for what in ("Model", "Protocol", "toy-smoke: 2 scenes", "Schemes", "w8a8, w4a8", "Calibration", "seeds 0, 1",
                 "Device", "load", "Scored"):  # fmt: skip
        assert what in top, what
    # the failure banner names every failed cell and its stage
    banner = html[html.index('id="failure-banner"') : html.index("</div>", html.index('id="failure-banner"'))]
    assert banner.count("<li>") == 8 and banner.count("stage <b>calibrate</b>") == 8 and "boom" in banner
    assert "4 quantized linears" in html and "blocks.0.fc1" in html  # coverage manifest
    assert html.count("<details") == 4  # per-block table, outlier table, coverage, stage costs: one each
    # self-contained: nothing is fetched (no src/href to a URL, no stylesheet links)
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:|//|file:)", html) and "<link" not in html


def test_no_banner_without_failures(tmp_path):
    path = write(tmp_path / "ok.sqlite", [cell("fp", "fp32"), cell("rtn", "w8a8", scaled({}, 0.01))])
    html = to_html(load_results(path))
    assert 'id="failure-banner"' not in html and "EXCLUDED from every score: pose.auc@5" in html


def test_user_strings_are_escaped(report):
    html = report.read_text()
    # the only markup-looking versions of the label are escaped ones; nothing executable made it through
    assert "<script" not in html.lower()
    assert "&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;" in html
    assert "<img" not in html and "&lt;img src=x onerror=" in html
    assert "toy-xss" in html
    assert not re.search(r"<[a-z]+[^>]*onerror", html)


def test_stage_real_reports_the_real_backend(grid_store):
    html = to_html(load_results(grid_store), stage="real")
    assert "<b>real</b> stage" in html and '<td class="l">RTN</td>' in html


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        if os.environ.get("PTQ3D_SKIP_BROWSER") == "1":
            pytest.skip("PTQ3D_SKIP_BROWSER=1 and no chromium")
        pytest.fail("chromium is not installed (scripts/install.sh installs it; PTQ3D_SKIP_BROWSER=1 skips)")
    return exe


def _run_chromium(exe: str, *args: str) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="ptq3d-chromium-")
    try:
        return subprocess.run(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--disable-sync",
                "--disable-quic",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                "--enable-logging=stderr",
                "--v=0",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


# measures the laid-out page (every collapsible opened): page width vs viewport, and any element wider than it
_MEASURE = """<script>
document.querySelectorAll('details').forEach(d => d.open = true);
const c = document.documentElement.clientWidth;
const wide = [...document.querySelectorAll('table, svg, dl, div, p, h3')]
  .filter(e => e.getBoundingClientRect().right > c + 1)
  .map(e => e.tagName + '#' + (e.id || e.className) + ':' + Math.round(e.getBoundingClientRect().right));
document.title = 'MEASURE ' + JSON.stringify({scroll: document.documentElement.scrollWidth, client: c, wide: wide});
</script>"""


@pytest.mark.browser
def test_renders_in_headless_chromium_at_1400px(report, tmp_path):
    from PIL import Image, ImageStat

    exe = _chromium()
    url = report.resolve().as_uri()
    dom = _run_chromium(exe, f"--window-size={WIDTH},1000", "--virtual-time-budget=3000", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # rendered: the DOM has the report; the injected label is text and did not run (title unchanged)
    assert "<title>ptq3d report</title>" in dom.stdout and "pwned</title>" not in dom.stdout
    assert "Leaderboard: accuracy retained vs FP" in dom.stdout
    assert 'id="failure-banner"' in dom.stdout  # a cell failed: the banner is there
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in dom.stdout
    # no console output at all: no errors, no CSP violations (an injected script would log one)
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console

    # no horizontal scroll at 1400 px: a copy with a measuring script (the report itself forbids scripts)
    probe = tmp_path / "probe.html"
    html = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", report.read_text())
    probe.write_text(html.replace("</body>", _MEASURE + "</body>"))
    res = _run_chromium(
        exe, f"--window-size={WIDTH},1000", "--virtual-time-budget=3000", "--dump-dom", probe.as_uri()
    )
    title = re.search(r"<title>MEASURE (.*?)</title>", res.stdout)
    assert title, res.stderr[-2000:]
    m = json.loads(title.group(1).replace("&quot;", '"'))
    assert m["client"] >= WIDTH - 20 and m["scroll"] <= m["client"] and m["wide"] == [], m

    shot = tmp_path / "shot.png"
    res = _run_chromium(exe, f"--window-size={WIDTH},1600", f"--screenshot={shot}", url)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    img = Image.open(shot).convert("L")
    assert img.size == (WIDTH, 1600)
    dark = sum(img.histogram()[:200]) / (img.size[0] * img.size[1])
    assert dark > 0.01 and ImageStat.Stat(img).stddev[0] > 10  # text, tables and plots, not a blank page
    assert XSS  # (the label under test)
