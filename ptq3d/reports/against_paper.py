"""Our numbers next to the published ones: `ptq3d report --against-paper NAME [RUN]`.

NAME is a paper config of ptq3d/harness/examples/papers/ (e.g. `quantvggt_table1_co3d`); beside each config, a
CSV of the same stem holds the published values, one per table cell, with the columns

    paper, table, row, method, model, scheme, protocol, column, metric, value, unit, source

`row` / `column` are the paper's labels; `method`, `model`, `scheme`, `protocol`, `metric` the ptq3d names a
cell of the run has (method "fp" = the FP reference row, whatever its scheme); `value` is quoted exactly as
printed; `unit` says how it maps to ptq3d's unit: "percent" (AUC 89.5 = 0.895), "fraction", or "as-reported"
(the same unit as the ptq3d metric on that protocol, e.g. metres on 7-Scenes, millimetres on DTU); `source`
says where the number was read. A published value no cell of the run measured shows as missing, never as 0;
a run with no cell matching any published value is refused in one line.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ptq3d.errors import UserError, unknown_name_error
from ptq3d.results.read import Results
from ptq3d.results.records import FP_METHOD

# the data files live beside the paper configs (read as files: reports never import the harness)
PAPERS_DIR = Path(__file__).resolve().parents[1] / "harness" / "examples" / "papers"
COLUMNS = (
    "paper",
    "table",
    "row",
    "method",
    "model",
    "scheme",
    "protocol",
    "column",
    "metric",
    "value",
    "unit",
    "source",
)
UNIT_SCALE = {"percent": 0.01, "fraction": 1.0, "as-reported": 1.0}  # published value x scale = ptq3d units
FP_SCHEME_LABEL = "fp"


@dataclass(frozen=True)
class PublishedValue:
    """One published table cell (see the module docstring); `printed` is the value as the paper prints it."""

    paper: str
    table: str
    row: str
    method: str
    model: str
    scheme: str
    protocol: str
    column: str
    metric: str
    printed: str
    unit: str
    source: str

    @property
    def value(self) -> float:
        """The published value in ptq3d's unit for the metric."""
        return float(self.printed) * UNIT_SCALE[self.unit]


def paper_names(papers_dir: Path = PAPERS_DIR) -> list[str]:
    """The paper configs that have published values beside them."""
    return sorted(p.stem for p in papers_dir.glob("*.csv") if (papers_dir / f"{p.stem}.toml").is_file())


def load_published(name: str, papers_dir: Path = PAPERS_DIR) -> list[PublishedValue]:
    """The published values of paper config `name` (one-line UserError on an unknown name or a bad file)."""
    path = papers_dir / f"{name}.csv"
    if not path.is_file():
        raise unknown_name_error("paper config (--against-paper)", name, paper_names(papers_dir))
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise UserError(f"{path}: header {reader.fieldnames} != expected {list(COLUMNS)}")
        out = []
        for line, rec in enumerate(reader, start=2):
            if rec["unit"] not in UNIT_SCALE:
                raise UserError(
                    f"{path}:{line}: unit {rec['unit']!r}: allowed values are {', '.join(UNIT_SCALE)}"
                )
            try:
                number = float(rec["value"])
            except ValueError:
                raise UserError(f"{path}:{line}: value {rec['value']!r} is not a number") from None
            if not math.isfinite(number):
                raise UserError(f"{path}:{line}: value {rec['value']!r} is not finite")
            fields = {k: rec[k] for k in COLUMNS if k != "value"}
            out.append(PublishedValue(printed=rec["value"], **fields))
    return out


def against_paper(
    results: Results, name: str, stage: str = "fake", papers_dir: Path = PAPERS_DIR
) -> pd.DataFrame:
    """One row per published value (and per matching variant of the run, e.g. two presets of one method):
    the published value in ptq3d units, ours (the quantized `stage`, FP stage for the reference row, mean over
    calibration seeds), ours - published, and our label. `ours` is NaN where the run has no such cell."""
    published = load_published(name, papers_dir)
    if not published:
        raise UserError(
            f"{papers_dir / (name + '.csv')}: no published values (the paper's table could not be read)"
        )
    summary = results.summary(stage)
    rows = []
    matched = 0
    for pv in published:
        sel = summary[
            (summary["model"] == pv.model)
            & (summary["method"] == pv.method)
            & (summary["protocol"] == pv.protocol)
            & (summary["metric"] == pv.metric)
        ]
        if pv.method != FP_METHOD:
            sel = sel[sel["scheme"] == pv.scheme]
        base = {
            "table": pv.table,
            "row": pv.row,
            "scheme": pv.scheme,
            "protocol": pv.protocol,
            "column": pv.column,
            "printed": pv.printed,
            "published": pv.value,
        }
        if not len(sel):
            rows.append({**base, "ours": math.nan, "diff": math.nan, "ours_label": ""})
            continue
        matched += 1
        for _, r in sel.iterrows():
            ours = float(r["value"])
            label = r["method_label"] or r["method"]
            rows.append({**base, "ours": ours, "diff": ours - pv.value, "ours_label": label})
    if not matched:
        raise UserError(
            f"{results.path}: no cell matches any published value of '{name}' (it publishes "
            f"{sorted({p.model for p in published})} on {sorted({p.protocol for p in published})}; "
            f"run ptq3d/harness/examples/papers/{name}.toml)"
        )
    return pd.DataFrame(rows)


def against_paper_to_text(table: pd.DataFrame, name: str) -> str:
    """A plain-text table: published (as printed and in ptq3d units), ours, ours - published; '-' = not run."""

    def num(x: float) -> str:
        return "-" if not math.isfinite(x) else f"{x:.4f}"

    shown = table.assign(
        published=table["published"].map(num),
        ours=table["ours"].map(num),
        diff=table["diff"].map(lambda x: "-" if not math.isfinite(x) else f"{x:+.4f}"),
    )
    n = int(table["ours"].map(math.isfinite).sum())
    head = f"{name}: {n} of {len(table)} published values measured (diff = ours - published, in ptq3d units)"
    return head + "\n" + shown.to_string(index=False)
