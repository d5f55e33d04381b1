"""Per-block (or per-site) quantization sensitivity per task, two cheap estimates of it, and a mixed-precision
plan for a bit budget (QVGGT's selective mixed precision, issue 22).

Measured sensitivity (`block_sensitivity`). For every unit u (a block of `model.blocks(scope)`, or with
granularity "site" one linear of a block) and task k in (camera, depth, points):

    s_k(u) = (1/N) sum_n ||y_k^u(x_n) - y_k(x_n)||_F / ||y_k(x_n)||_F

- y_k(x_n): `GeometryModel.task_outputs` of calibration scene n (a batch of one scene) with the FP model: camera
  [1, S, D] (VGGT: pose encoding, D = 9; Pi3: flattened camera-to-world, D = 12), depth [1, S, H, W],
  points [1, S, H, W, 3].
- y_k^u: the same with ONLY u quantized: each linear of u becomes a QuantLinear with round-to-nearest weights at
  its scheme's weight spec (absmax scales, no clipping: RTN's defaults) and its scheme's activation quantizer;
  static activation ranges are observed over the N scenes on FP block inputs, the linears of u before it already
  quantized (as `BlockData.calibrate_static_acts`). Everything else stays FP; the FP linears go back after each
  unit (no copy of the model). A head that never reads u's output gives exactly 0 (VGGT's DPT heads read only
  the aggregator layers in `dpt_intermediate_layer_idx`, the camera head only the last one).
- Cost: N task forwards per unit plus N for the reference, no gradients. On vggt-tiny-synthetic-sinks (8 blocks,
  32 linears; 4 scenes x 4 frames at 112 x 112; one torch thread on this project's 2-vCPU CPU, shared): 4.5 s
  per block table at W4A4, 20 s per site table, plus 2-3 s for the estimates' gradient pass.

Cheap estimates, per unit, from the same block loop:
- block output error (task-independent): rel_mse = ||h~ - h||^2 / ||h||^2 over the N scenes and
  sqnr_db = 10 log10(1 / rel_mse), h the output of u's block on its FP input, h~ the same with only u
  quantized (what `run_blockwise` records per block with propagate "fp").
- fisher_k, FGQ's second-order term (ptq3d.methods.fgq, step 1, loss "output_sum"): the diagonal Fisher of
  task k at the output of u's block l, F_k[l, c] = (1/N) sum_n sum_t (dL_k / dh_{l,t,c})^2 with L_k the sum of
  the task output, weights the block's output error: fisher_k(u) = 1/2 sum_c F_k[l, c] e_u[c], where
  e_u[c] = mean over scenes and tokens of (h~ - h)^2 in channel c (Delta L ~ 1/2 Delta h^T F Delta h, diagonal).
- gn_k (ours, not FGQ's): the same form with the Gauss-Newton diagonal of the relative output error instead of
  the gradient of the output sum: G_k[l, c] = (1/N) sum_n sum_t (d(v_n . y_k) / dh_{l,t,c})^2 / ||y_k||^2 with one
  Rademacher probe v_n per scene (E_v of the square is sum_o (dy_o/dh)^2, Hutchinson), so
  gn_k(u) = sum_c G_k[l, c] e_u[c] estimates s_k(u)^2 to first order, up to the diagonal approximation.
  Both: one forward with gradients and 2 x 3 backward passes per scene, on the FP model.
Rank correlations (`rank_correlations`): Spearman and Kendall tau-b (scipy.stats) of each estimate with the
measured s_k over the units, per task; None where either side is constant (e.g. a task no unit reaches).

`plan_for_budget` turns a table into a PrecisionPlan: the most sensitive units are raised to `high_bits` weights
while the parameter-weighted average weight bits stays within the budget.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from ptq3d.calibration.block_gradients import squared_block_output_grads
from ptq3d.calibration.blockwise import BlockData, QuantContext, capture_inputs, replace_module
from ptq3d.errors import ConfigError
from ptq3d.models.base import TASKS
from ptq3d.quant.plan import PrecisionPlan
from ptq3d.quant.qlinear import QuantLinear
from ptq3d.quant.spec import Scheme, get_scheme

if TYPE_CHECKING:
    from ptq3d.calibration.sets import CalibrationSet
    from ptq3d.models.base import GeometryModel

Granularity = Literal["block", "site"]
GRANULARITIES: tuple[str, ...] = ("block", "site")
ESTIMATES: tuple[str, ...] = ("block_rel_mse", "fisher", "gn")
FORMAT = "ptq3d.sensitivity/1"


@dataclass
class SensitivityTable:
    """What `block_sensitivity` measured.

    rows: one flat dict per unit in execution order: unit (block or site name), block, kind (frame / global /
    encoder / decoder), num_params (weight elements of the unit's linears), one column per task with the measured
    s_k, block_rel_mse, block_sqnr_db, fisher_<task>, gn_<task> (None when estimates were skipped).
    correlations: estimate -> task -> {"spearman": r, "kendall": tau} (None where undefined).
    time_s: {"measured", "estimates", "total"} wall seconds. calibration: CalibrationSet.describe().
    """

    model: str
    scheme: str
    scope: str
    granularity: str
    tasks: tuple[str, ...]
    rows: list[dict[str, Any]]
    correlations: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)
    time_s: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] | None = None

    def units(self) -> list[str]:
        return [r["unit"] for r in self.rows]

    def column(self, key: str) -> list[float]:
        return [r[key] for r in self.rows]

    def scores(self, task: str = "worst") -> dict[str, float]:
        """unit -> the score a plan ranks by: s_k for one task, or for "worst" max_k s_k(u) / max_u' s_k(u')
        (each task divided by its largest unit value, so a task with small absolute errors still counts; a task
        that no unit moves contributes 0)."""
        if task != "worst":
            if task not in self.tasks:
                raise ConfigError(
                    f"sensitivity task {task!r}: this table has {', '.join(self.tasks)} (or 'worst')"
                )
            return {r["unit"]: float(r[task]) for r in self.rows}
        top = {t: max((float(r[t]) for r in self.rows), default=0.0) for t in self.tasks}
        return {
            r["unit"]: max((float(r[t]) / top[t] if top[t] > 0 else 0.0) for t in self.tasks)
            for r in self.rows
        }

    def ranking(self, task: str = "worst") -> list[str]:
        """Units, most sensitive first. "worst" breaks ties (each task's top unit scores 1) by the mean
        normalised score over the tasks; remaining ties keep execution order."""
        s = self.scores(task)
        if task != "worst":
            return sorted(s, key=lambda u: -s[u])
        top = {t: max((float(r[t]) for r in self.rows), default=0.0) for t in self.tasks}
        mean = {
            r["unit"]: sum(float(r[t]) / top[t] for t in self.tasks if top[t] > 0) / len(self.tasks)
            for r in self.rows
        }
        return sorted(s, key=lambda u: (-s[u], -mean[u]))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["format"] = FORMAT
        d["tasks"] = list(self.tasks)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SensitivityTable:
        if d.get("format") != FORMAT:
            raise ConfigError(f"not a sensitivity table (format {d.get('format')!r}, expected {FORMAT!r})")
        keys = {f for f in cls.__dataclass_fields__}
        return cls(**{k: (tuple(v) if k == "tasks" else v) for k, v in d.items() if k in keys})

    def save_json(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(_json_safe(self.to_dict()), indent=1))
        return p

    @classmethod
    def load_json(cls, path: str | Path) -> SensitivityTable:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: no such sensitivity file (write one with `ptq3d sensitivity`)")
        return cls.from_dict(json.loads(p.read_text()))

    def save_csv(self, path: str | Path) -> Path:
        """One line per unit, the columns of `rows`."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        cols = list(self.rows[0]) if self.rows else ["unit"]
        with p.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            for r in self.rows:
                w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
        return p


def _json_safe(x: Any) -> Any:
    """inf / nan (an exact block has sqnr inf) -> None, so the JSON stays standard."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    return x


# --- measured sensitivity ----------------------------------------------------------------------------------


def _rel_err(q: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.detach().double()
    return float((q.detach().double() - ref).norm() / ref.norm().clamp_min(1e-30))


def _quantize_unit(
    model: GeometryModel, bd: BlockData, rels: list[str], scheme: Scheme, old: dict[str, nn.Module]
) -> None:
    """Swap the linears `rels` of bd's block for RTN QuantLinears (the unit's own scheme) and calibrate their
    static activation ranges in execution order; the replaced FP modules go into `old` by relative name as they
    are swapped, so a failure half-way can still be undone."""
    for rel in rels:
        lin = bd.module(rel)
        s = scheme.for_site(bd.site(rel), bd.block.name)
        s.weight.check_width(lin.in_features, f"the weight of {bd.site(rel)}")
        ql = QuantLinear.from_linear(lin, s.weight, s.act)
        old[rel] = replace_module(model.module, bd.site(rel), ql)
    bd.calibrate_static_acts([r for r in rels if isinstance(bd.module(r), QuantLinear)])


def _restore(model: GeometryModel, block_name: str, old: dict[str, nn.Module]) -> None:
    for rel, mod in old.items():
        replace_module(model.module, f"{block_name}.{rel}", mod)


@torch.no_grad()
def _measure(
    model: GeometryModel, calibration: CalibrationSet, scheme: Scheme, scope: str, granularity: str, tasks
) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """The block loop (module docstring): rows with the measured s_k and the block output error, and per unit
    the per-channel squared output error e_u [C] (float64) for the estimates."""
    blocks = model.blocks(scope)
    images = [s.as_batch(model.device) for s in calibration.samples]
    ref = []
    for x in images:
        out = model.task_outputs(x)
        missing = [t for t in tasks if t not in out]
        if missing:
            raise ConfigError(f"model '{model.name}' has no task output {', '.join(missing)}")
        ref.append({t: out[t].detach() for t in tasks})
    inputs, contexts = capture_inputs(model, calibration, scope)
    ctx = QuantContext(model, scope=scope, scheme=scheme, method_name="sensitivity")
    rows, err_c = [], {}
    for i, blk in enumerate(blocks):
        fp_out = [blk.forward(x, c) for x, c in zip(inputs, contexts, strict=True)]
        bd = BlockData(blk, i, inputs, contexts, fp_out, ctx)
        lins = bd.linears()
        units = [(blk.name, list(lins))] if granularity == "block" else [(bd.site(r), [r]) for r in lins]
        for unit, rels in units:
            old: dict[str, nn.Module] = {}
            try:
                _quantize_unit(model, bd, rels, scheme, old)
                q_out = bd.run()
                d2 = [(q - f).double().pow(2) for q, f in zip(q_out, fp_out, strict=True)]
                noise = sum(float(d.sum()) for d in d2)
                signal = sum(float(f.double().pow(2).sum()) for f in fp_out)
                err_c[unit] = torch.cat([d.reshape(-1, d.shape[-1]) for d in d2]).mean(dim=0).cpu()
                sens = {t: 0.0 for t in tasks}
                for x, r in zip(images, ref, strict=True):
                    out = model.task_outputs(x)
                    for t in tasks:
                        sens[t] += _rel_err(out[t], r[t]) / len(images)
            finally:
                _restore(model, blk.name, old)
            rel_mse = noise / signal if signal > 0 else math.nan
            rows.append(
                {
                    "unit": unit,
                    "block": blk.name,
                    "kind": blk.kind,
                    "num_params": int(sum(lins[r].weight.numel() for r in rels)),
                    **sens,
                    "block_rel_mse": rel_mse,
                    "block_sqnr_db": -10 * math.log10(rel_mse) if rel_mse > 0 else math.inf,
                }
            )
        inputs = fp_out
    return rows, err_c


# --- the cheap estimates' gradients ------------------------------------------------------------------------


def block_output_gradients(
    model: GeometryModel, calibration: CalibrationSet, scope: str, tasks=TASKS, seed: int = 0
) -> dict[str, dict[str, list[torch.Tensor]]]:
    """Squared gradients of the task losses w.r.t. every block output, summed over tokens, mean over scenes
    (ptq3d.calibration.block_gradients, the pass FGQ's Fisher uses).

    Returns {"fisher": {task: [F_k[l] per block, each [C_l] float64]}, "gn": {task: [G_k[l] ...]}} (module
    docstring: fisher from L_k = sum of the task output, as FGQ; gn from v . y_k / ||y_k|| with a Rademacher
    probe v seeded by seed + scene index). A block that a task never reads gets exact zeros.
    """

    def losses(y, _sample, n):
        gen = torch.Generator().manual_seed(seed + n)
        out = {}
        for t in tasks:
            probe = (torch.randint(0, 2, y[t].shape, generator=gen) * 2 - 1).to(y[t])
            out[f"fisher/{t}"] = y[t].sum()
            out[f"gn/{t}"] = (probe * y[t]).sum() / y[t].detach().norm().clamp_min(1e-30)
        return out

    try:
        grads = squared_block_output_grads(model, calibration.samples, scope, losses)
    except ConfigError as exc:
        raise ConfigError(f"sensitivity: {exc}") from None
    return {kind: {t: grads[f"{kind}/{t}"] for t in tasks} for kind in ("fisher", "gn")}


def rank_correlations(rows: list[dict[str, Any]], tasks) -> dict[str, dict[str, dict[str, float | None]]]:
    """estimate -> task -> {"spearman", "kendall"} of the estimate column against the measured task column
    (block_rel_mse is compared with every task); None where a side is constant or there are < 3 units."""
    from scipy.stats import kendalltau, spearmanr

    def corr(a, b):
        if (
            len(a) < 3
            or any(v is None or not math.isfinite(v) for v in a + b)
            or len(set(a)) < 2
            or len(set(b)) < 2
        ):
            return {"spearman": None, "kendall": None}
        return {"spearman": float(spearmanr(a, b).statistic), "kendall": float(kendalltau(a, b).statistic)}

    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for est in ESTIMATES:
        out[est] = {}
        for t in tasks:
            key = est if est == "block_rel_mse" else f"{est}_{t}"
            if any(r.get(key) is None for r in rows):
                continue
            out[est][t] = corr([float(r[key]) for r in rows], [float(r[t]) for r in rows])
    return {k: v for k, v in out.items() if v}


# --- the entry point ---------------------------------------------------------------------------------------


def block_sensitivity(
    model: GeometryModel,
    calibration: CalibrationSet,
    scheme: str | Scheme,
    scope: str = "aggregator",
    granularity: Granularity = "block",
    tasks: tuple[str, ...] = TASKS,
    estimates: bool = True,
    seed: int = 0,
) -> SensitivityTable:
    """Measured per-unit, per-task sensitivity with the cheap estimates and their rank correlations (module
    docstring). model: the FP GeometryModel (left unchanged). calibration: the scenes (each run as a batch of
    one). scheme: name or Scheme (a mixed scheme quantizes each unit at its plan's bits). granularity: "block" or
    "site". estimates: False skips the gradient pass (fisher_* / gn_* columns None). seed: the gn probes."""
    if granularity not in GRANULARITIES:
        raise ConfigError(f"sensitivity granularity {granularity!r}: use one of {', '.join(GRANULARITIES)}")
    tasks = tuple(tasks)
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks or len(set(tasks)) != len(tasks):
        raise ConfigError(f"sensitivity tasks {tasks!r}: choose distinct tasks among {', '.join(TASKS)}")
    if calibration is None or len(calibration) == 0:
        raise ConfigError("sensitivity needs a non-empty calibration set")
    scheme = get_scheme(scheme)
    blocks = model.blocks(scope)
    if not blocks:
        raise ConfigError(f"model '{model.name}' has no blocks in scope '{scope}'")
    was_training = model.module.training
    model.module.eval()
    t0 = time.perf_counter()
    try:
        rows, err_c = _measure(model, calibration, scheme, scope, granularity, tasks)
        t1 = time.perf_counter()
        if estimates:
            grads = block_output_gradients(model, calibration, scope, tasks, seed)
            index = {b.name: i for i, b in enumerate(blocks)}
            for r in rows:
                e, i = err_c[r["unit"]], index[r["block"]]
                r.update({f"fisher_{t}": 0.5 * float((grads["fisher"][t][i] * e).sum()) for t in tasks})
                r.update({f"gn_{t}": float((grads["gn"][t][i] * e).sum()) for t in tasks})
        else:
            for r in rows:
                r.update({f"{k}_{t}": None for k in ("fisher", "gn") for t in tasks})
        t2 = time.perf_counter()
    finally:
        model.module.train(was_training)
    return SensitivityTable(
        model=model.name,
        scheme=scheme.name,
        scope=scope,
        granularity=granularity,
        tasks=tasks,
        rows=rows,
        correlations=rank_correlations(rows, tasks),
        time_s={"measured": t1 - t0, "estimates": t2 - t1, "total": t2 - t0},
        calibration=calibration.describe(),
    )


# --- plan for a bit budget ---------------------------------------------------------------------------------


def plan_for_budget(
    table: SensitivityTable,
    model: GeometryModel,
    scheme: str | Scheme,
    budget_bits: float,
    high_bits: int = 8,
    task: str = "worst",
    name: str | None = None,
    high_act_bits: int | None = None,
) -> PrecisionPlan:
    """A PrecisionPlan raising the most sensitive units of `table` to `high_bits` weights (activations as the
    base) within an average weight-bit budget.

    Units are visited in `SensitivityTable.ranking(task)` order (decreasing score; see there and `scores`); a unit is
    raised when the parameter-weighted mean weight bits over all sites in scope, sum(numel * bits) /
    sum(numel), stays <= budget_bits with it, else skipped (a smaller unit further down may still fit); units
    with score 0 are never raised. The table's granularity decides whether the plan names blocks or sites.
    high_act_bits: also raise the units' activations ("w8a8" entries; 16 = FP). With None (entries "w<b>") a unit
    keeps the base activation quantizer, whose error the measured s_k includes: on vggt-tiny-synthetic-sinks at
    W4A4 (RTN, 4 held-out synthetic scenes, this 2-vCPU CPU) global_blocks.3 at w8 moved the depth error
    0.0515 -> 0.0497, at w8a8 -> 0.0127.
    plan.source records how it was made (budget, task, order of the raised units, their scores, the table's
    scheme and calibration hash, the resulting average)."""
    scheme = get_scheme(scheme)
    if scheme.is_mixed:
        raise ConfigError(f"plan_for_budget: scheme '{scheme.name}' already has a plan; pass its base scheme")
    base = scheme.weight.bits
    if not isinstance(high_bits, int) or not base < high_bits <= 8:
        raise ConfigError(f"plan high_bits={high_bits!r}: must be an integer in {base + 1}..8 (base W{base})")
    if high_act_bits is not None and (not isinstance(high_act_bits, int) or not 2 <= high_act_bits <= 16):
        raise ConfigError(f"plan high_act_bits={high_act_bits!r}: must be an integer in 2..16 (16 = FP)")
    base_act = 16 if scheme.act is None else scheme.act.bits
    if high_act_bits is not None and high_act_bits < base_act:
        raise ConfigError(
            f"plan high_act_bits={high_act_bits} would lower the activations of scheme '{scheme.name}' "
            f"(A{base_act}); leave it unset"
        )
    if not budget_bits >= base:
        raise ConfigError(
            f"plan budget {budget_bits} bits is below the base scheme's W{base}: nothing to raise"
        )
    numel, block_of = {}, {}
    for blk, lins in model.iter_block_sites(table.scope):
        for rel, lin in lins.items():
            numel[f"{blk.name}.{rel}"] = lin.weight.numel()
            block_of[f"{blk.name}.{rel}"] = blk.name
    total = sum(numel.values())
    unit_size: dict[str, int] = {}
    for site, n in numel.items():
        unit = block_of[site] if table.granularity == "block" else site
        unit_size[unit] = unit_size.get(unit, 0) + n
    unknown = [u for u in table.units() if u not in unit_size]
    if unknown:
        raise ConfigError(
            f"sensitivity table of '{table.model}' does not match this model: unknown unit(s) {', '.join(unknown[:3])}"
        )
    scores = table.scores(task)
    used = base * total
    raised: list[str] = []
    for unit in table.ranking(task):
        if scores[unit] <= 0:
            break
        extra = unit_size[unit] * (high_bits - base)
        if (used + extra) / total <= budget_bits + 1e-9:
            used += extra
            raised.append(unit)
    if not raised:
        smallest = min(unit_size.values())
        raise ConfigError(
            f"budget {budget_bits} bits raises no unit to W{high_bits}: the smallest unit needs "
            f"{base + smallest * (high_bits - base) / total:.4f} average bits"
        )
    entry = f"w{high_bits}" + ("" if high_act_bits is None else f"a{high_act_bits}")
    entries = {u: entry for u in raised}
    source = {
        "made_by": "ptq3d sensitivity",
        "model": table.model,
        "scheme": table.scheme,
        "scope": table.scope,
        "granularity": table.granularity,
        "task": task,
        "budget_bits": float(budget_bits),
        "high_bits": high_bits,
        "high_act_bits": high_act_bits if high_act_bits is not None else "base",
        "average_weight_bits": used / total,
        "order": raised,
        "scores": [scores[u] for u in raised],
        "calibration_hash": table.calibration.get("hash", ""),
    }
    plan = PrecisionPlan(
        name or f"sens-{task}-{budget_bits:g}b",
        blocks=entries if table.granularity == "block" else {},
        sites=entries if table.granularity == "site" else {},
        source=source,
    )
    avg = plan.average_weight_bits(model, table.scope, scheme)
    if abs(avg - used / total) > 1e-9:  # our count and the plan's own must agree
        raise AssertionError(f"plan average {avg} != counted {used / total}")
    return plan
