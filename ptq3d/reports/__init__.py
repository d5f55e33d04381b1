"""Reports from a results store: CSV, Markdown, LaTeX, HTML, the leaderboard and the regression gate.

write_reports(store_path, out_dir) -> {"csv": path, "md": path, "tex": path, "html": path}
"""

from __future__ import annotations

from pathlib import Path

FORMATS = ("csv", "md", "tex", "html")


def write_reports(
    store_path: str | Path,
    out_dir: str | Path,
    formats: tuple[str, ...] = FORMATS,
    stage: str = "fake",
    metrics: list[str] | None = None,
    title: str = "ptq3d report",
) -> dict[str, Path]:
    """Write report.{csv,md,tex,html} for the store into out_dir; returns the paths written."""
    from ptq3d.reports.html import to_html
    from ptq3d.reports.sensitivity import sensitivity_markdown
    from ptq3d.reports.tables import to_csv, to_latex, to_markdown
    from ptq3d.results.read import load_results

    results = load_results(store_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    render = {
        "csv": lambda: to_csv(results),
        "md": lambda: to_markdown(results, stage, metrics) + sensitivity_markdown(Path(store_path).parent),
        "tex": lambda: to_latex(results, stage, metrics, title),
        "html": lambda: to_html(results, stage, title, metrics),
    }
    paths = {}
    for fmt in formats:
        path = out / f"report.{fmt}"
        _write_atomic(path, render[fmt]())
        paths[fmt] = path
    return paths


def _write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a failed write (a full disk) leaves no half report."""
    import os

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        from ptq3d.errors import UserError

        raise UserError(f"cannot write report '{path}': {exc.strerror or exc}") from None
