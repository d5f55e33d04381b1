"""Comparison tables (rows methods; columns metrics grouped by protocol and scheme) as CSV, Markdown, LaTeX.

In every column the best method is bold and the second underlined, using each metric's direction; the FP
reference row is shown but not ranked. A "±" follows a value averaged over several calibration seeds (the
standard error over seeds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ptq3d.results.read import Results, scheme_bits
from ptq3d.results.records import FP_METHOD, FP_SCHEME


@dataclass
class TableCell:
    value: float
    se: float | None = None
    mark: str | None = None  # "best" | "second" | None


@dataclass
class Table:
    """A method x (protocol, scheme, metric) table for one model. columns: (protocol, scheme, metric);
    rows: (label, is_reference, [TableCell per column])."""

    model: str
    columns: list[tuple[str, str, str]]
    directions: dict[str, bool | None]
    rows: list[tuple[str, bool, list[TableCell]]] = field(default_factory=list)
    stage: str = "fake"

    def groups(self, level: int) -> list[tuple[tuple[str, ...], int]]:
        """Runs of equal column prefixes of length level+1: [(prefix, span)]."""
        out: list[tuple[tuple[str, ...], int]] = []
        for col in self.columns:
            key = col[: level + 1]
            if out and out[-1][0] == key:
                out[-1] = (key, out[-1][1] + 1)
            else:
                out.append((key, 1))
        return out


def fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    a = abs(v)
    if a != 0 and (a < 1e-3 or a >= 1e5):
        return f"{v:.2e}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 10:
        return f"{v:.2f}"
    return f"{v:.3f}" if a >= 0.1 or a == 0 else f"{v:.4f}"


def _order_schemes(schemes: list[str]) -> list[str]:
    # most bits first (w8a8, w4a8, w4a4), ties keep config order
    return sorted(schemes, key=lambda s: (-sum(scheme_bits(s)), schemes.index(s)))


def build_tables(results: Results, stage: str = "fake", metrics: list[str] | None = None) -> list[Table]:
    """One Table per model. metrics: restrict to these (default: every metric with a direction)."""
    summ = results.summary(stage)
    if not len(summ):
        return []
    metrics = metrics or results.directed_metrics()
    directions = {m: results.higher_is_better(m) for m in metrics}
    tables = []
    for model, msum in summ.groupby("model_label", sort=False):
        protocols = list(dict.fromkeys(msum["protocol"]))
        schemes = _order_schemes([s for s in dict.fromkeys(msum["scheme"]) if s != FP_SCHEME])
        if not schemes:
            schemes = [FP_SCHEME]
        present = set(msum["metric"])
        cols = [(p, s, m) for p in protocols for s in schemes for m in metrics if m in present]
        table = Table(str(model), cols, directions, stage=stage)
        builders = [b for b in dict.fromkeys(msum.loc[msum["method"] != FP_METHOD, "calib_builder"]) if b]
        multi_builder = len(builders) > 1
        ref = msum[msum["method"] == FP_METHOD]
        lookup: dict[tuple, Any] = {}
        for r in msum.itertuples(index=False):
            lookup[(r.method_label, r.calib_builder, r.protocol, r.scheme, r.metric)] = r
        if len(ref):
            label = str(ref["method_label"].iloc[0])
            cells = []
            for p, _s, m in cols:
                r = lookup.get((label, "", p, FP_SCHEME, m))
                cells.append(TableCell(r.value if r is not None else math.nan))
            table.rows.append((label, True, cells))
        variants = list(
            dict.fromkeys(
                (r.method_label, r.calib_builder)
                for r in msum.itertuples(index=False)
                if r.method != FP_METHOD
            )
        )
        for label, builder in variants:
            cells = []
            for p, s, m in cols:
                r = lookup.get((label, builder, p, s, m))
                if r is None:
                    cells.append(TableCell(math.nan))
                else:
                    se = r.se_seeds if r.n_seeds > 1 and math.isfinite(r.se_seeds) else None
                    cells.append(TableCell(float(r.value), se))
            name = f"{label} ({builder})" if multi_builder and builder else str(label)
            table.rows.append((name, False, cells))
        _mark_best(table)
        tables.append(table)
    return tables


def _shown(v: float) -> float:
    """The value as printed: ranks are decided on what the reader sees, so equal-looking values tie."""
    try:
        return float(fmt(v))
    except ValueError:
        return v


def _mark_best(table: Table) -> None:
    for j, (_p, _s, m) in enumerate(table.columns):
        hib = table.directions.get(m)
        if hib is None:
            continue
        vals = sorted(
            {_shown(c[j].value) for _, is_ref, c in table.rows if not is_ref and math.isfinite(c[j].value)},
            reverse=bool(hib),
        )
        for _, is_ref, cells in table.rows:
            if is_ref or not math.isfinite(cells[j].value):
                continue
            v = _shown(cells[j].value)
            if len(vals) > 1 and v == vals[0]:
                cells[j].mark = "best"
            elif len(vals) > 2 and v == vals[1]:
                cells[j].mark = "second"


def arrow(hib: bool | None) -> str:
    return "" if hib is None else ("↑" if hib else "↓")


# --- CSV ------------------------------------------------------------------------------------------------


def to_csv(results: Results) -> str:
    """One row per cell and metric (stage fp/fake/real, aggregated over scenes), with the cell's costs.
    Failed cells get one row with an empty metric and the reason."""
    cells = results.cells.set_index("cell_id") if len(results.cells) else pd.DataFrame()
    cost_cols = [
        "calib_time_s",
        "calib_peak_bytes",
        "latency_ms",
        "latency_backend",
        "speedup",
        "model_bytes",
    ]
    rows = []
    for r in results.metrics.itertuples(index=False):
        c = cells.loc[r.cell_id]
        rows.append(
            {
                "cell_id": r.cell_id,
                "status": "ok",
                "model": r.model_label,
                "method": r.method_label,
                "scheme": r.scheme,
                "protocol": r.protocol,
                "calib_builder": r.calib_builder,
                "calib_seed": r.calib_seed,
                "stage": r.stage,
                "metric": r.metric,
                "value": r.value,
                "stderr_scenes": r.stderr,
                "n_scenes": r.n_scenes,
                "fp_value": r.fp_value,
                "retained": r.retained,
                "higher_is_better": r.higher_is_better,
                **{k: c[k] for k in cost_cols},
                "reason": "",
            }
        )
    if len(results.cells):
        for c in results.cells[results.cells["status"] != "ok"].itertuples(index=False):
            rows.append(
                {
                    "cell_id": c.cell_id,
                    "status": c.status,
                    "model": c.model_label,
                    "method": c.method_label,
                    "scheme": c.scheme,
                    "protocol": c.protocol,
                    "calib_builder": c.calib_builder,
                    "calib_seed": c.calib_seed,
                    "reason": c.reason,
                }
            )
    return pd.DataFrame(rows).to_csv(index=False)


# --- Markdown -------------------------------------------------------------------------------------------


def md_escape(s: str) -> str:
    return (
        str(s)
        .replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("|", "\\|")
        .replace("*", "\\*")
    )


def _md_cell(c: TableCell) -> str:
    s = fmt(c.value) + (f" ± {fmt(c.se)}" if c.se is not None else "")
    if c.mark == "best":
        return f"**{s}**"
    if c.mark == "second":
        return f"<u>{s}</u>"
    return s


def table_to_markdown(table: Table) -> str:
    header = ["Method"] + [
        f"{md_escape(p)} · {md_escape(s)} · {md_escape(m)} {arrow(table.directions.get(m))}".strip()
        for p, s, m in table.columns
    ]
    lines = [
        f"**{md_escape(table.model)}** (stage: {table.stage})",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] + ["---:"] * len(table.columns)) + "|",
    ]
    for label, is_ref, cells in table.rows:
        name = f"*{md_escape(label)}*" if is_ref else md_escape(label)
        lines.append("| " + " | ".join([name] + [_md_cell(c) for c in cells]) + " |")
    return "\n".join(lines) + "\n"


def to_markdown(results: Results, stage: str = "fake", metrics: list[str] | None = None) -> str:
    from ptq3d.reports.leaderboard import leaderboard, leaderboard_to_markdown

    parts = ["# ptq3d results", "", "## Leaderboard (accuracy retained vs FP)", ""]
    parts.append(leaderboard_to_markdown(leaderboard(results, stage)))
    parts += ["", "## Metrics", ""]
    for t in build_tables(results, stage, metrics):
        parts.append(table_to_markdown(t))
    failed = results.cells[results.cells["status"] != "ok"] if len(results.cells) else results.cells
    if len(failed):
        parts += [
            "## Failed cells",
            "",
            "| Model | Method | Scheme | Protocol | Seed | Reason |",
            "|---|---|---|---|---|---|",
        ]
        for c in failed.itertuples(index=False):
            parts.append(
                f"| {md_escape(c.model_label)} | {md_escape(c.method_label)} | {md_escape(c.scheme)} | "
                f"{md_escape(c.protocol)} | {'' if pd.isna(c.calib_seed) else int(c.calib_seed)} | {md_escape(c.reason)} |"
            )
    return "\n".join(parts) + "\n"


# --- LaTeX ----------------------------------------------------------------------------------------------

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
}


def tex_escape(s: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(s))


def _tex_cell(c: TableCell) -> str:
    s = fmt(c.value).replace("–", "--")
    if c.se is not None:
        s += r"{\scriptsize$\pm$" + fmt(c.se) + "}"
    if c.mark == "best":
        return r"\textbf{" + s + "}"
    if c.mark == "second":
        return r"\underline{" + s + "}"
    return s


def table_to_latex(table: Table, caption: str | None = None) -> str:
    """A booktabs tabular: protocol and scheme header rows with cmidrules, metric names with arrows."""
    n = len(table.columns)
    out = [
        r"% needs \usepackage{booktabs}",
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{l" + "c" * n + "}",
        r"\toprule",
    ]
    for level in (0, 1):
        spans = table.groups(level)
        cells, rules, col = [], [], 2
        for key, span in spans:
            cells.append(rf"\multicolumn{{{span}}}{{c}}{{{tex_escape(key[-1])}}}")
            rules.append(rf"\cmidrule(lr){{{col}-{col + span - 1}}}")
            col += span
        out.append(" & " + " & ".join(cells) + r" \\")
        out.append("".join(rules))
    heads = []
    for _p, _s, m in table.columns:
        hib = table.directions.get(m)
        heads.append(tex_escape(m) + ("" if hib is None else (r" $\uparrow$" if hib else r" $\downarrow$")))
    out.append("Method & " + " & ".join(heads) + r" \\")
    out.append(r"\midrule")
    for i, (label, is_ref, cells) in enumerate(table.rows):
        out.append(tex_escape(label) + " & " + " & ".join(_tex_cell(c) for c in cells) + r" \\")
        if is_ref and i + 1 < len(table.rows):
            out.append(r"\midrule")
    out += [r"\bottomrule", r"\end{tabular}"]
    cap = caption or f"{table.model}: metrics by protocol and scheme (best bold, second underlined)."
    out += [r"\caption{" + tex_escape(cap) + "}", r"\end{table}"]
    return "\n".join(out) + "\n"


def to_latex(results: Results, stage: str = "fake", metrics: list[str] | None = None) -> str:
    return "\n".join(table_to_latex(t) for t in build_tables(results, stage, metrics))
