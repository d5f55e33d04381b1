"""Paper-ready metric tables (LaTeX booktabs, Markdown, HTML share one layout) and the CSV of every value.

Layout (the seed papers'): one table per model x protocol x group of tasks, methods as rows grouped by scheme
(FP on top, then W8A8 / W4A8 / W4A4 blocks, most bits first), columns the task's metrics under the papers'
names (AUC@30, RRA@30, AbsRel, delta<1.25, Acc., Comp., N.C., ...) with arrows (higher / lower is better) and
one fixed number of decimals per metric; at most MAX_VALUE_COLUMNS value columns per table (tasks are packed,
a larger task is split). Within each scheme block the best value is bold and the second underlined (Markdown:
italic), ranked by the value as printed and by the metric's direction; NaN never ranks; FP is not ranked; a
column whose FP value is degenerate (0) is marked with a dagger and not ranked. A value averaged over several
calibration seeds carries "± standard error over seeds".

Escaping: `tex_escape` (every LaTeX special, newlines, characters outside Latin-1), `md_escape` (newlines,
pipes, emphasis and link syntax, raw HTML, `javascript:`-style schemes) so user labels are text in every medium.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ptq3d.results.read import Results, scheme_bits
from ptq3d.results.records import FP_METHOD, FP_SCHEME
from ptq3d.results.tasks import PAPER_COLUMNS, TASK_TITLES, TASKS, decimals, paper_name, task_of

MAX_VALUE_COLUMNS = 8  # plus Scheme and Method: at most 10 columns per table


@dataclass
class TableCell:
    value: float
    se: float | None = None
    mark: str | None = None  # "best" | "second" | None


@dataclass
class PaperTable:
    """One table: `columns` are metric names, grouped under `tasks`; `reference` is the FP row (label, cells)
    or None; `blocks` are (scheme, [(method label, cells)]) in display order."""

    model: str
    protocol: str
    tasks: list[tuple[str, int]]  # (task, number of its columns), in column order
    columns: list[str]
    directions: dict[str, bool | None]
    decimals: dict[str, int]
    degenerate: set[str]
    stage: str
    n_scenes: int
    n_seeds: int
    reference: tuple[str, list[TableCell]] | None = None
    blocks: list[tuple[str, list[tuple[str, list[TableCell]]]]] = field(default_factory=list)
    label: str = ""

    def fmt(self, metric: str, v: float | None) -> str:
        if v is None or not math.isfinite(v):
            return "NaN" if v is not None and math.isnan(v) else "–"
        return f"{v:.{self.decimals[metric]}f}"

    @property
    def caption(self) -> str:
        tasks = ", ".join(TASK_TITLES.get(t, t) for t, _ in self.tasks)
        seeds = f"; ± standard error over {self.n_seeds} calibration seeds" if self.n_seeds > 1 else ""
        dag = "; † FP value 0 (degenerate): not ranked, in no score" if self.degenerate else ""
        return (
            f"{self.model} on {self.protocol} ({self.n_scenes} scenes), {tasks}; quantized stage {self.stage}. "
            f"Best per scheme in bold, second underlined{seeds}{dag}."
        )


def _order_schemes(schemes: list[str]) -> list[str]:
    # most bits first (w8a8, w4a8, w4a4), ties keep config order
    return sorted(schemes, key=lambda s: (-sum(scheme_bits(s)), schemes.index(s)))


def _table_metrics(present: list[str], chosen: list[str] | None) -> list[tuple[str, list[str]]]:
    """[(task, metrics)] in task order: the chosen metrics, or every present directed metric of the task with
    the papers' columns first, in the papers' order."""
    out = []
    groups = list(TASKS) + sorted({task_of(m) or "other" for m in present} - set(TASKS))
    for task in groups:
        have = [m for m in present if (task_of(m) or "other") == task]
        if chosen is not None:
            cols = [m for m in chosen if m in have]
        else:
            paper = [m for m in PAPER_COLUMNS.get(task, ()) if m in have]
            cols = paper + [m for m in have if m not in paper]
        if cols:
            out.append((task, cols))
    return out


def _pack(groups: list[tuple[str, list[str]]]) -> list[list[tuple[str, list[str]]]]:
    """Pack task groups into tables of at most MAX_VALUE_COLUMNS columns (a larger task is split)."""
    tables: list[list[tuple[str, list[str]]]] = []
    cur: list[tuple[str, list[str]]] = []
    for task, cols in groups:
        for i in range(0, len(cols), MAX_VALUE_COLUMNS):
            chunk = cols[i : i + MAX_VALUE_COLUMNS]
            if sum(len(c) for _, c in cur) + len(chunk) > MAX_VALUE_COLUMNS:
                tables.append(cur)
                cur = []
            cur.append((task, chunk))
    if cur:
        tables.append(cur)
    return tables


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(s).lower()).strip("-")[:40] or "x"


def build_tables(results: Results, stage: str = "fake", metrics: list[str] | None = None) -> list[PaperTable]:
    """Paper tables for every model x protocol (see the module docstring). metrics: restrict and order the
    columns (default: the papers' columns per task)."""
    summ = results.summary(stage)
    if not len(summ):
        return []
    tables, labels = [], set()
    for (model, protocol), msum in summ.groupby(["model_label", "protocol"], sort=False):
        present = [m for m in dict.fromkeys(msum["metric"]) if results.higher_is_better(m) is not None]
        fp_rows = msum[msum["method"] == FP_METHOD]
        fp_value = dict(zip(fp_rows["metric"], fp_rows["value"], strict=True))
        m = results.metrics
        sel = m[(m["model_label"] == model) & (m["protocol"] == protocol)]
        n_scenes = int(sel["n_scenes"].max()) if len(sel) else 0
        schemes = _order_schemes([s for s in dict.fromkeys(msum["scheme"]) if s != FP_SCHEME])
        builders = {b for b in msum.loc[msum["method"] != FP_METHOD, "calib_builder"] if b}
        lookup = {
            (r.method_label, r.calib_builder, r.scheme, r.metric): r for r in msum.itertuples(index=False)
        }
        for packed in _pack(_table_metrics(present, metrics)):
            cols = [c for _, cs in packed for c in cs]
            dirs = {c: results.higher_is_better(c) for c in cols}
            units = {c: results.metric_info.get(c, {}).get("unit") for c in cols}
            t = PaperTable(
                str(model), str(protocol), [(task, len(cs)) for task, cs in packed], cols, dirs,
                {c: decimals(c, units[c]) for c in cols},
                {c for c in cols if fp_value.get(c) == 0}, stage, n_scenes,
                int(msum["n_seeds"].max()),
            )  # fmt: skip
            if len(fp_rows):
                label = str(fp_rows["method_label"].iloc[0])
                t.reference = (label, [TableCell(float(fp_value.get(c, math.nan))) for c in cols])
            for scheme in schemes:
                block = []
                variants = dict.fromkeys(
                    (r.method_label, r.calib_builder)
                    for r in msum.itertuples(index=False)
                    if r.method != FP_METHOD and r.scheme == scheme
                )
                for label, builder in variants:
                    cells = []
                    for c in cols:
                        r = lookup.get((label, builder, scheme, c))
                        if r is None:
                            cells.append(TableCell(math.nan))
                            continue
                        se = float(r.se_seeds) if r.n_seeds > 1 and math.isfinite(r.se_seeds) else None
                        cells.append(TableCell(float(r.value), se))
                    name = f"{label} ({builder})" if len(builders) > 1 and builder else str(label)
                    block.append((name, cells))
                _mark_best(t, block)
                t.blocks.append((scheme, block))
            base = f"tab:ptq3d-{_slug(model)}-{_slug(protocol)}-" + "-".join(task for task, _ in t.tasks)
            t.label, k = base, 2
            while t.label in labels:
                t.label, k = f"{base}-{k}", k + 1
            labels.add(t.label)
            tables.append(t)
    return tables


def _mark_best(table: PaperTable, block: list[tuple[str, list[TableCell]]]) -> None:
    """Bold the best and underline the second value of each column within one scheme block, by the value as
    printed (equal-looking values tie), skipping NaN and degenerate columns."""
    for j, metric in enumerate(table.columns):
        hib = table.directions.get(metric)
        if hib is None or metric in table.degenerate:
            continue
        shown = [
            float(table.fmt(metric, cells[j].value)) if math.isfinite(cells[j].value) else None
            for _, cells in block
        ]
        vals = sorted({v for v in shown if v is not None}, reverse=bool(hib))
        for (_, cells), v in zip(block, shown, strict=True):
            if v is None:
                continue
            if len(vals) > 1 and v == vals[0]:
                cells[j].mark = "best"
            elif len(vals) > 2 and v == vals[1]:
                cells[j].mark = "second"


def arrow(hib: bool | None) -> str:
    return "" if hib is None else ("↑" if hib else "↓")


def fmt(v: float | None) -> str:
    """A generic number format for values without a metric (block errors, outlier statistics)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    a = abs(v)
    if a != 0 and (a < 1e-3 or a >= 1e5):
        return f"{v:.2e}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 10:
        return f"{v:.2f}"
    return f"{v:.3f}"


# --- CSV ------------------------------------------------------------------------------------------------


def to_csv(results: Results) -> str:
    """One row per cell and metric (stage fp/fake/real, aggregated over scenes), with the cell's costs.
    Failed cells get one row with an empty metric, the failed stage and the reason."""
    cells = results.cells.set_index("cell_id") if len(results.cells) else pd.DataFrame()
    cost_cols = [
        "calib_time_s",
        "calib_peak_bytes",
        "latency_ms",
        "latency_fp_ms",
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
                "fp_degenerate": r.fp_degenerate,
                "higher_is_better": r.higher_is_better,
                **{k: c[k] for k in cost_cols},
                "failed_stage": "",
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
                    "failed_stage": c.failed_stage,
                    "reason": c.reason,
                }
            )
    return pd.DataFrame(rows).to_csv(index=False)


# --- Markdown -------------------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_|~]|<(?=[A-Za-z/!?]))")
_UNSAFE_SCHEME = re.compile(r"\b(javascript|vbscript|data|file)\s*:", re.IGNORECASE)


def md_escape(s: Any) -> str:
    """User text as plain Markdown text: one line (newlines, control characters and line separators become spaces); backslash, backtick, emphasis
    (* _ ~), the start of raw HTML ("<" before a letter, "/", "!" or "?") and cell separators (|) escaped; no link, image or reference can form ("](",
    "][", "]:", "![") and no entity ("&name;"); a script-capable URL scheme (javascript:, vbscript:, data:,
    file:) loses its colon's meaning."""
    # every control character and Unicode line separator (str.splitlines() breaks on \x1c-\x1e, \x85, \u2028...)
    text = re.sub(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+", " ", str(s))
    text = _MD_SPECIAL.sub(r"\\\1", text)
    text = re.sub(r"\](?=[(\[:])", r"\\]", text)
    text = re.sub(r"!(?=\[)", r"\\!", text)
    text = re.sub(r"&(?=#?\w+;)", r"\\&", text)
    return _UNSAFE_SCHEME.sub(lambda m: m.group(1) + "\\:", text)


def md_table(rows: list[dict[str, str]], align_right: bool = False) -> str:
    """A Markdown table of display strings (headers and cells escaped)."""
    cols = list(rows[0])
    sep = "|" + "|".join(("---:" if align_right and i else "---") for i, _ in enumerate(cols)) + "|"
    out = ["| " + " | ".join(md_escape(c) for c in cols) + " |", sep]
    out += ["| " + " | ".join(md_escape(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def _md_value(t: PaperTable, metric: str, c: TableCell) -> str:
    s = t.fmt(metric, c.value) + (f" ± {t.fmt(metric, c.se)}" if c.se is not None else "")
    return {"best": f"**{s}**", "second": f"_{s}_"}.get(c.mark or "", s)


def table_to_markdown(t: PaperTable) -> str:
    heads = ["Scheme", "Method"] + [
        f"{paper_name(c)} {arrow(t.directions.get(c))}".strip() + (" †" if c in t.degenerate else "")
        for c in t.columns
    ]
    lines = [
        md_escape(t.caption),
        "",
        "| " + " | ".join(md_escape(h) for h in heads) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * len(t.columns)) + "|",
    ]
    if t.reference:
        label, cells = t.reference
        lines.append("| FP | " + md_escape(label) + " | " + " | ".join(t.fmt(c, x.value) for c, x in zip(t.columns, cells, strict=True)) + " |")  # fmt: skip
    for scheme, block in t.blocks:
        for i, (label, cells) in enumerate(block):
            vals = [_md_value(t, c, x) for c, x in zip(t.columns, cells, strict=True)]
            lines.append(f"| {md_escape(scheme.upper()) if i == 0 else ''} | {md_escape(label)} | " + " | ".join(vals) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


def to_markdown(results: Results, stage: str = "fake", metrics: list[str] | None = None) -> str:
    from ptq3d.reports.leaderboard import leaderboard, leaderboard_to_markdown

    parts = ["# ptq3d results", "", "## Leaderboard (accuracy retained vs FP, worst task first)", ""]
    parts.append(leaderboard_to_markdown(leaderboard(results, stage)))
    parts += [
        "",
        "## Metrics",
        "",
        "Best per scheme in **bold**, second in _italics_ (Markdown has no underline).",
        "",
    ]
    for t in build_tables(results, stage, metrics):
        parts.append(table_to_markdown(t))
    failed = results.cells[results.cells["status"] != "ok"] if len(results.cells) else results.cells
    if len(failed):
        rows = [
            {
                "Model": str(c.model_label),
                "Method": str(c.method_label),
                "Scheme": str(c.scheme),
                "Protocol": str(c.protocol),
                "Seed": "" if pd.isna(c.calib_seed) else str(int(c.calib_seed)),
                "Stage": str(c.failed_stage or ""),
                "Reason": str(c.reason),
            }
            for c in failed.itertuples(index=False)
        ]
        parts += ["## Failed cells", "", md_table(rows), ""]
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
    "|": r"\textbar{}",
    '"': r"\texttt{\char34}",
    "`": r"\texttt{\char96}",
    "±": r"$\pm$",
    "×": r"$\times$",
    "·": r"$\cdot$",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
    "→": r"$\rightarrow$",
    "–": "--",
    "—": "---",
    "…": r"\dots{}",
    "δ": r"$\delta$",
    "μ": r"$\mu$",
    "†": r"$\dagger$",
    "◂": r"$\triangleleft$",
}


_NEEDS_T1 = "ÐÞðþ"  # Latin-1 letters that the default OT1 font encoding cannot typeset


def tex_escape(s: Any) -> str:
    """User text as LaTeX text: every special character escaped, any run of line breaks or control characters
    one space (a blank line would end a tabular row), accented Latin-1 letters kept (LaTeX reads UTF-8),
    anything else shown as its code point, so pdflatex with the default OT1 fonts meets no character it cannot
    typeset and needs no font generated on the fly."""
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", str(s))
    out = []
    for ch in text:
        if ch in _LATEX_SPECIAL:
            out.append(_LATEX_SPECIAL[ch])
        elif ord(ch) < 128 or (
            0xC0 <= ord(ch) <= 0xFF and unicodedata.category(ch) in ("Lu", "Ll") and ch not in _NEEDS_T1
        ):
            out.append(ch)
        else:
            out.append(f"[U+{ord(ch):04X}]")
    return "".join(out)


def _tex_metric(metric: str) -> str:
    name = paper_name(metric)
    m = re.fullmatch(r"delta<1\.25(?:\^(\d))?", name)
    if m:
        return r"$\delta<1.25" + (f"^{m.group(1)}" if m.group(1) else "") + "$"
    return tex_escape(name)


def _tex_value(t: PaperTable, metric: str, c: TableCell) -> str:
    s = t.fmt(metric, c.value).replace("–", "--")
    if c.se is not None:
        s += r"{\scriptsize$\pm$" + t.fmt(metric, c.se) + "}"
    return {"best": r"\textbf{" + s + "}", "second": r"\underline{" + s + "}"}.get(c.mark or "", s)


def table_to_latex(t: PaperTable) -> str:
    """One booktabs table (needs \\usepackage{booktabs}): task header with cmidrules, metric names with arrows,
    FP row, then one block per scheme separated by midrules; caption and label."""
    n = len(t.columns)
    out = [
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{" + tex_escape(t.caption) + "}",
        r"\label{" + t.label + "}",
        r"\begin{tabular}{ll" + "c" * n + "}",
        r"\toprule",
    ]
    spans, rules, col = [], [], 3
    for task, span in t.tasks:
        spans.append(rf"\multicolumn{{{span}}}{{c}}{{{tex_escape(TASK_TITLES.get(task, task))}}}")
        rules.append(rf"\cmidrule(lr){{{col}-{col + span - 1}}}")
        col += span
    out.append(" & & " + " & ".join(spans) + r" \\")
    out.append("".join(rules))
    heads = []
    for c in t.columns:
        hib = t.directions.get(c)
        heads.append(
            _tex_metric(c)
            + ("" if hib is None else (r" $\uparrow$" if hib else r" $\downarrow$"))
            + (r"$^\dagger$" if c in t.degenerate else "")
        )
    out.append("Scheme & Method & " + " & ".join(heads) + r" \\")
    out.append(r"\midrule")
    if t.reference:
        label, cells = t.reference
        vals = [t.fmt(c, x.value).replace("–", "--") for c, x in zip(t.columns, cells, strict=True)]
        out.append("FP & " + tex_escape(label) + " & " + " & ".join(vals) + r" \\")
    for scheme, block in t.blocks:
        if not block:
            continue
        out.append(r"\midrule")
        for i, (label, cells) in enumerate(block):
            vals = [_tex_value(t, c, x) for c, x in zip(t.columns, cells, strict=True)]
            out.append((tex_escape(scheme.upper()) if i == 0 else "") + " & " + tex_escape(label) + " & " + " & ".join(vals) + r" \\")  # fmt: skip
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


def leaderboard_to_latex(df: pd.DataFrame, title: str = "") -> str:
    """The leaderboard as one booktabs table: rank, method, scheme, then retained % vs FP: the worst task with its
    bootstrap interval, the mean, one column per task (± over seeds where there are several); speedup."""
    from ptq3d.reports.leaderboard import _flags, _label

    tasks = df.attrs.get("tasks", [])
    multi_model, multi_builder = _flags(df)

    def num(v: Any) -> float | None:
        return float(v) if isinstance(v, float | int) and math.isfinite(v) else None

    def pct(r: dict[str, Any], key: str) -> str:
        v = num(r.get(key))
        if v is None:
            return "NaN" if key in r and r.get("status") != "failed" else "--"
        se = num(r.get(f"{key.removesuffix('_pct')}_se_seeds"))
        return f"{v:.1f}" + (r"{\scriptsize$\pm$" + f"{se:.1f}" + "}" if se is not None else "")

    def ci(r: dict[str, Any]) -> str:
        lo, hi = num(r.get("score_lo")), num(r.get("score_hi"))
        return f"[{lo:.1f}, {hi:.1f}]" if lo is not None and hi is not None else "--"

    conf = f"{df.attrs.get('confidence', 0.95):.0%}".replace("%", r"\%")
    n_ret = 3 + len(tasks)
    heads = ["Rank", "Method", "Scheme", "Worst", f"{conf} CI", "Mean"]
    heads += [tex_escape(TASK_TITLES.get(t, t)) for t in tasks] + [r"Speedup $\uparrow$"]
    caption = (
        (title + ": " if title else "")
        + "leaderboard. Accuracy retained vs FP (%) per task on its primary metric; rows ranked by the worst task; "
        f"CI: {df.attrs.get('confidence', 0.95):.0%} paired bootstrap over scenes of the worst task; '=k' ranks are "
        "statistically tied; speedup = FP latency / quantized latency on the backend named in the report."
    )
    out = [
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{" + tex_escape(caption) + "}",
        r"\label{tab:ptq3d-leaderboard}",
        r"\begin{tabular}{lll" + "r" * (len(heads) - 3) + "}",
        r"\toprule",
        rf" & & & \multicolumn{{{n_ret}}}{{c}}{{Retained vs FP (\%) $\uparrow$}} & \\",
        rf"\cmidrule(lr){{4-{3 + n_ret}}}",
        " & ".join(heads) + r" \\",
        r"\midrule",
    ]
    for r in df.to_dict("records"):
        speed = num(r.get("speedup"))
        cells = [tex_escape(r.get("rank", "")), tex_escape(_label(r, multi_model, multi_builder)),
                 tex_escape(str(r.get("scheme", "")).upper()), pct(r, "score_pct"), ci(r), pct(r, "mean_pct")]  # fmt: skip
        cells += [pct(r, f"ret_{t}") for t in tasks] + [
            f"{speed:.2f}$\\times$" if speed is not None else "n/a"
        ]
        out.append(" & ".join(cells) + r" \\")
        if r.get("status") == "reference":
            out.append(r"\midrule")
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


PREAMBLE = r"""% ptq3d report tables. Each table environment can be pasted into a paper (needs \usepackage{booktabs}).
\documentclass[10pt]{article}
\usepackage[a4paper,landscape,margin=1.5cm]{geometry}
\usepackage{booktabs}
\setlength{\tabcolsep}{4pt}
\begin{document}
\small
"""


def to_latex(results: Results, stage: str = "fake", metrics: list[str] | None = None, title: str = "") -> str:
    """A compilable document: the leaderboard table, then every paper table (pdflatex; booktabs, geometry)."""
    from ptq3d.reports.leaderboard import leaderboard

    body = [leaderboard_to_latex(leaderboard(results, stage), title)]
    body += [table_to_latex(t) for t in build_tables(results, stage, metrics)]
    return PREAMBLE + "\n".join(body) + "\n\\end{document}\n"
