"""The [sensitivity] stage of `ptq3d run`: each model's per-block task sensitivity after the grid.

For every model x scheme of the run's [sensitivity] table: draw `num_scenes` scenes of the [calibration] protocol
(random builder, the table's seed), run ptq3d.calibration.sensitivity.block_sensitivity on the FP model, and write
<output_dir>/sensitivity/<model>/<scheme>/: what `ptq3d sensitivity` writes (`write_table`: sensitivity.json and
.csv, sensitivity.png, plan.toml with a budget) and key.json. key.json holds what the numbers depend on (model weights hash, scheme, calibration hash, options, format);
an existing directory with the same key is reused (a rerun resumes), one with another key is recomputed, so a
table is never stale. The HTML report (ptq3d.reports.sensitivity) shows every sensitivity.json under the run.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from ptq3d.harness.config import RunConfig
from ptq3d.results.records import CalibRef, ProtocolRef

KEY_FILE = "key.json"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "model"


def sensitivity_dir(cfg: RunConfig, model_name: str, scheme: str) -> Path:
    return Path(cfg.output_dir) / "sensitivity" / _slug(model_name) / _slug(scheme)


def write_table(table: Any, out: Path, plan: Any = None) -> list[Path]:
    """Write a SensitivityTable into `out`: plan.toml (a PrecisionPlan, also recorded in the table),
    sensitivity.json, sensitivity.csv and the units x tasks heatmap sensitivity.png. Returns the paths."""
    from ptq3d.reports.sensitivity import load, save_heatmap_png

    out.mkdir(parents=True, exist_ok=True)
    written = []
    if plan is not None:
        table.plan = plan.to_dict()
        written.append(plan.save(out / "plan.toml"))
    written.append(table.save_json(out / "sensitivity.json"))
    written.append(table.save_csv(out / "sensitivity.csv"))
    written.append(save_heatmap_png(load(out / "sensitivity.json"), out / "sensitivity.png"))
    return written


def run_sensitivity(cfg: RunConfig, log=print) -> list[Path]:
    """Measure (or reuse) every model x scheme of cfg.sensitivity; returns the sensitivity.json paths. Only the
    real components have GeometryModels to measure; with others the stage says so and does nothing."""
    opts = cfg.sensitivity
    if opts is None:
        return []
    if cfg.components != "real":
        log(f"sensitivity: skipped (components '{cfg.components}' have no GeometryModel to measure)")
        return []
    from ptq3d.calibration.sensitivity import SensitivityTable, block_sensitivity, plan_for_budget
    from ptq3d.harness.components import get_components
    from ptq3d.harness.fpcache import atomic_write

    comp = get_components("real")
    cal = cfg.calibration
    pool = comp.load_scenes(ProtocolRef(cal.protocol, cal.root, cal.limit))
    written: list[Path] = []
    for ref in cfg.models:
        model = comp.load_model(ref, "cpu")
        calib_ref = CalibRef(
            "random", cal.protocol, cal.root, opts.num_scenes, opts.seed, cal.limit, cal.frames
        )
        calibration = comp.build_calibration(calib_ref, pool, model=model)
        for scheme in opts.schemes:
            out = sensitivity_dir(cfg, ref.display, scheme)
            key: dict[str, Any] = {
                "model": ref.name,
                "weights_sha256": comp.model_hash(model),
                "scheme": scheme,
                "calibration_hash": calibration.hash,
                "options": {
                    k: getattr(opts, k) for k in ("granularity", "scope", "estimates", "budget", "high_bits")
                },
                "format": "ptq3d.sensitivity-stage/1",
            }
            kpath = out / KEY_FILE
            if kpath.is_file() and (out / "sensitivity.json").is_file():
                try:
                    same = json.loads(kpath.read_text()) == key
                except json.JSONDecodeError:
                    same = False
                if same:
                    SensitivityTable.load_json(out / "sensitivity.json")  # readable, else this raises
                    log(f"sensitivity: {ref.display} {scheme}: reused {out}")
                    written.append(out / "sensitivity.json")
                    continue
                kpath.unlink()  # stale: recompute, and never leave the old key beside new numbers
            t0 = time.perf_counter()
            table = block_sensitivity(
                model,
                calibration,
                scheme,
                opts.scope,
                opts.granularity,
                estimates=opts.estimates,
                seed=opts.seed,
            )
            plan = None
            if opts.budget is not None:
                plan = plan_for_budget(table, model, scheme, opts.budget, opts.high_bits)
            write_table(table, out, plan)
            written.append(out / "sensitivity.json")
            atomic_write(kpath, json.dumps(key, indent=1).encode())
            log(f"sensitivity: {ref.display} {scheme}: {time.perf_counter() - t0:.1f} s -> {out}")
    return written
