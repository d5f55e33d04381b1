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
    from ptq3d.reports.tables import to_csv, to_latex, to_markdown
    from ptq3d.results.read import load_results

    results = load_results(store_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    render = {
        "csv": lambda: to_csv(results),
        "md": lambda: to_markdown(results, stage, metrics),
        "tex": lambda: to_latex(results, stage, metrics),
        "html": lambda: to_html(results, stage, title, metrics),
    }
    paths = {}
    for fmt in formats:
        path = out / f"report.{fmt}"
        path.write_text(render[fmt](), encoding="utf-8")
        paths[fmt] = path
    return paths
