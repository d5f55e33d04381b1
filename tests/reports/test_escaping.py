"""Report writers escape for their medium (issue 20, item 7), with the exact triggers: a method label with
`$...$` (matplotlib math text crashed the HTML report), a newline (broke the Markdown row), a blank line (broke
the LaTeX tabular), a `javascript:` link (survived into the Markdown). And every generated .tex compiles with a
real LaTeX engine (scripts/install.sh installs pdflatex from Debian's texlive-latex-base/-recommended)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ptq3d.reports import write_reports
from ptq3d.reports.plots import plain
from ptq3d.reports.tables import md_escape, tex_escape
from tests.reports.stores import cell, scaled, write

TRIGGERS = {
    "math": r"$\frac{1}{2}$ RTN $x_1",  # balanced and unbalanced math text
    "newline": "GPTQ\nw4 variant",
    "blank": "SmoothQuant\n\nalpha 0.5",
    "link": "[click me](javascript:alert(document.cookie))",
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("hostile")
    cells = [cell("fp", "fp32")]
    for i, label in enumerate(TRIGGERS.values()):
        cells.append(cell("rtn", "w8a8", scaled({"pose.auc@30": 0.9 + 0.02 * i}, 0.01, i), label=label))
    cells.append(cell("rtn", "w4a4", None, label=TRIGGERS["blank"], status="failed",
                      reason="calibrate: ValueError: bad\n\nthing $x$ | [a](javascript:b)", failed_stage="calibrate"))  # fmt: skip
    return write_reports(write(tmp / "results.sqlite", cells), tmp / "reports")


def test_html_with_math_text_labels_renders(hostile):
    html = hostile["html"].read_text()
    assert html.count("<svg") >= 3  # the plots were drawn, with the labels as typed
    assert r"$\frac{1}{2}$ RTN $x_1" in html and "javascript:alert" in html  # as text in tables
    assert "<script" not in html.lower() and 'href="javascript' not in html
    assert plain("$x$ a\nb") == r"\$x\$ a b"


def _cells(row: str) -> list[str]:
    return re.split(r"(?<!\\)\|", row.strip())[1:-1]


def test_markdown_rows_stay_rows_and_links_are_dead(hostile):
    md = hostile["md"].read_text()
    assert "](javascript:" not in md and "javascript\\:alert" in md
    tables, cur = [], []
    for line in md.splitlines():
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            tables.append(cur)
            cur = []
    assert len(tables) >= 3
    for t in tables:  # every row of a table has its header's number of cells: no newline split a row
        assert {len(_cells(r)) for r in t} == {len(_cells(t[0]))}, t
    assert any("GPTQ w4 variant" in r for t in tables for r in t)
    assert md_escape("a\r\nb|c") == "a b\\|c"


def test_latex_has_no_blank_line_in_a_tabular(hostile):
    tex = hostile["tex"].read_text()
    for body in re.findall(r"\\begin\{tabular\}.*?\\end\{tabular\}", tex, flags=re.S):
        assert "\n\n" not in body and "\\par" not in body
    assert r"SmoothQuant alpha 0.5" in tex and r"\$\textbackslash{}frac\{1\}\{2\}\$" in tex
    assert tex_escape("a\n\nb\tc\x00d") == "a b c d"


def _compile(tex: Path, tmp_path: Path) -> None:
    exe = shutil.which("pdflatex")
    if exe is None:
        pytest.skip("pdflatex is not installed (scripts/install.sh installs texlive-latex-base/-recommended)")
    out = tmp_path / tex.parent.name
    out.mkdir()
    res = subprocess.run(
        [
            exe,
            "-interaction=nonstopmode",
            "-halt-on-error",
            "-no-shell-escape",
            f"-output-directory={out}",
            str(tex),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = (out / "report.log").read_text(errors="replace")
    assert res.returncode == 0, [ln for ln in log.splitlines() if ln.startswith("!")] or res.stdout[-2000:]
    pdf = (out / "report.pdf").read_bytes()
    pages = re.search(r"Output written on .*?report\.pdf \((\d+) pages?", log.replace("\n", ""))
    assert pdf.startswith(b"%PDF") and pdf.rstrip().endswith(b"%%EOF") and pages and int(pages.group(1)) >= 1
    assert "Missing character" not in log and "Undefined control sequence" not in log
    labels = set(re.findall(r"\\label\{([^}]*)\}", tex.read_text()))
    aux = (out / "report.aux").read_text()
    assert labels and all(f"\\newlabel{{{label}}}" in aux for label in labels)  # every table got its label


def test_every_generated_tex_compiles(hostile, grid_store, tmp_path, tmp_path_factory):
    _compile(hostile["tex"], tmp_path)
    grid = write_reports(grid_store, tmp_path_factory.mktemp("grid-tex"), formats=("tex",))["tex"]
    _compile(grid, tmp_path)
