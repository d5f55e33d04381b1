"""The HTML report: contents, escaping of user strings, and a real headless-browser render."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def report(grid_store, tmp_path_factory) -> Path:
    return write_reports(grid_store, tmp_path_factory.mktemp("report"))["html"]


def test_sections_and_contents(report):
    html = report.read_text()
    for anchor in ("leaderboard", "plots", "tables", "blocks", "outliers", "coverage", "costs", "failed"):
        assert f'id="{anchor}"' in html
    assert html.count("<svg") >= 4  # bits, cost, per-block error, outliers
    assert '<td class="l">RTN</td>' in html
    assert 'class="best"' in html and 'class="second"' in html and "± " in html
    assert "boom: this method always fails" in html
    assert "4 quantized linears" in html and "blocks.0.fc1" in html  # coverage manifest
    # self-contained: nothing is fetched (no src/href to a URL, no stylesheet links)
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:|//|file:)", html) and "<link" not in html


def test_user_strings_are_escaped(report):
    html = report.read_text()
    # the only markup-looking versions of the label are escaped ones; nothing executable made it through
    assert "<script" not in html.lower()
    assert "&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;" in html
    assert "<img" not in html and "&lt;img src=x onerror=" in html
    # scene names with markup (toy-xss protocol) are text too
    assert "toy-xss" in html
    assert not re.search(r"<[a-z]+[^>]*onerror", html)


def test_stage_real_reports_the_real_backend(grid_store):
    html = to_html(load_results(grid_store), stage="real")
    assert "<b>real</b> backend stage" in html and '<td class="l">RTN</td>' in html


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


@pytest.mark.browser
def test_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image, ImageStat

    exe = _chromium()
    url = report.resolve().as_uri()
    dom = _run_chromium(exe, "--virtual-time-budget=3000", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # rendered: the DOM has the report; the injected label is text and did not run (title unchanged)
    assert "<title>ptq3d report</title>" in dom.stdout and "pwned</title>" not in dom.stdout
    assert "Leaderboard: accuracy retained vs FP" in dom.stdout
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in dom.stdout
    # no console output at all: no errors, no CSP violations (an injected script would log one)
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console

    shot = tmp_path / "shot.png"
    res = _run_chromium(exe, "--window-size=1200,1600", f"--screenshot={shot}", url)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    img = Image.open(shot).convert("L")
    assert img.size == (1200, 1600)
    dark = sum(img.histogram()[:200]) / (img.size[0] * img.size[1])
    assert dark > 0.01 and ImageStat.Stat(img).stddev[0] > 10  # text, tables and plots, not a blank page
    assert XSS  # (the label under test)
