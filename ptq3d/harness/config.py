"""Run configuration: a TOML file naming models, methods, schemes, protocols, calibration and seeds, whose lists
expand into a grid of cells (model x protocol x method x scheme x calibration builder x seed).

Schema (every key optional unless marked; relative paths are relative to the config file)::

    [run]
    name = "my-sweep"                 # default: the file's stem; names the default output dir
    output_dir = "ptq3d-runs/my-sweep"  # store (results.sqlite) and reports/ go here
    cache_dir = ""                    # FP-prediction cache; default <output_dir>/cache
    schemes = ["w8a8", "w4a8"]        # REQUIRED unless only the FP reference runs
    reference = true                  # add one FP reference cell per model x protocol
    components = "real"               # "real" or "package.module:attr" (tests use fakes)

    [[models]]                        # REQUIRED (or: models = ["vggt-tiny", ...])
    name = "vggt-tiny"                # a registered model (`ptq3d ls models`)
    weights = "ckpt.safetensors"      # default: the model's bundled weights, else seeded random init
    label = "VGGT-tiny"               # shown in tables
    init_seed = 0                     # random-init seed when there are no weights
    options = {}                      # extra keyword arguments for the model loader

    [[methods]]                       # REQUIRED (or: methods = ["rtn", "gptq"], or methods = "all")
    name = "gptq"                     # a registered method (`ptq3d ls methods`); "fp" = the reference
    label = "GPTQ (damp 0.01)"        # distinguishes two configs of one method
    preset = "paper"                  # "paper" (default) or a preset the method declares, e.g. "code"
    config = { percdamp = 0.01 }      # the method's config dataclass fields (over the preset's values)
    plan = "plans/budget-4.5.toml"    # a mixed-precision plan (`ptq3d sensitivity --budget`) on every scheme;
                                      # its content is part of the cell id, its name shows in the row label
    scope = "all"                     # this method's quantization scope (default: the method's own, else [eval])
    schemes = ["w4a16"]               # this method's schemes instead of [run].schemes (e.g. a weight-only method)
    calibration = { builder = "nfds", num_scenes = 20, frames = 10, seeds = [0, 1], options = { num_clusters = 5 } }
                                      # overrides [calibration] for this method (same keys as [calibration])

    [[protocols]]                     # REQUIRED (or: protocols = ["synthetic-smoke"])
    name = "synthetic-smoke"          # a registered protocol (`ptq3d ls protocols`)
    root = "/data/co3d"               # data root; not needed by synthetic protocols
    limit = 2                         # first N scenes only
    metrics = ["pose.auc@30"]         # default: the protocol's metrics
    alignment = "pi3"                 # AlignmentPolicy preset (vggt, pi3, cut3r, quantvggt); default policy if unset
    alignment_options = { max_points = 4096 }  # policy fields overriding the preset

    [calibration]                     # REQUIRED when a method calibrates (the protocol, at least)
    protocol = "synthetic-heldout"    # scenes drawn from this protocol (keep it disjoint from evaluation)
    root = ""
    builder = "random"                # `ptq3d ls builders`; builders = [...] crosses each with every method
    num_scenes = 4
    frames = 4                        # first N frames of each calibration scene (default: all)
    seeds = [0, 1, 2]                 # or seed = 0; each seed is one cell (mean +- s.e. over seeds)
    limit = 0                         # cap the candidate pool (0 = all)
    options = {}                      # the builder's options (e.g. nfds: filter, num_clusters)

    [eval]
    scope = "aggregator"              # "aggregator" | "all"
    real_backend = "auto"             # "auto" (triton on a GPU, else emulated) | "emulated" | "triton" | "none"
    bench = true
    bench_warmup = 1
    bench_repeats = 3
    device = "auto"                   # "auto" | "cpu" | "cuda" | "cuda:N"
    outlier_stats = true
    threads = 0                       # torch intra-op threads per worker (0 = leave as is)
    precision = "fp32"                # "fp32" | "bf16-autocast" (the papers' GPU eval: bf16, heads in fp32)

    [sensitivity]                     # optional: per-block task sensitivity of each model after the grid
    schemes = ["w4a4"]                # (ptq3d sensitivity), written to <output_dir>/sensitivity/ and shown as a
    num_scenes = 2                    # heatmap in the HTML report; scenes from [calibration].protocol
    granularity = "block"             # "block" | "site"; scope = "aggregator"; estimates = true (Fisher, GN)
    budget = 4.5                      # optional: also write a mixed-precision plan for this mean weight-bit budget

    [ray]                             # only read by `ptq3d run --executor ray` (see ptq3d.harness.ray_executor)
    address = ""                      # cluster to join; empty = start a local instance (--address overrides)
    num_cpus = 1                      # resource request of one cell; num_gpus = "auto" | N; memory_gb = N
    max_retries = 2                   # a cell whose worker dies is resubmitted this many times, then failed
    cache = "auto"                    # "auto" | "shared" | "object-store" (how FP predictions are shared)
    shared_cache_dir = ""             # a directory every node sees (cache = "shared")

Loading validates every key: unknown keys, wrong types, out-of-range values and unknown names raise ConfigError
(one line) naming the file, the key and the allowed values. Schemes are normalised ("W8A8 " is "w8a8") and
de-duplicated. See ptq3d/harness/examples/ for complete files.

Each method's settings, per key, come from the first of: its [[methods]] entry (`scope`, `calibration`), the
run's [calibration] / [eval] tables where the TOML sets the key, the method's own defaults for its preset
(`CALIBRATION_DEFAULTS` of its config class, see ptq3d/methods/registry.py), the built-in defaults (random
builder, 4 scenes, seed 0, aggregator scope). Its config: the preset's values, then `epochs` of its calibration
defaults, then the entry's `config`; each cell records the resolved config, preset, scope and calibration.

`components = "module:attr"` is resolved without importing anything (a config file is not code): it must name a
registered name, a `ptq3d.components` entry point, or a Components subclass of an already imported module,
unless the caller allows imports (`ptq3d validate/run --allow-imports`; the Python API allows them).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ptq3d.errors import ConfigError, UserError
from ptq3d.results.records import (
    FP_METHOD,
    FP_SCHEME,
    CalibRef,
    CellSpec,
    EvalOptions,
    MethodRef,
    ModelRef,
    ProtocolRef,
)

SCOPES = ("aggregator", "all")
REAL_BACKENDS = ("auto", "emulated", "triton", "none")

_RUN_KEYS = {
    "name": str,
    "output_dir": str,
    "cache_dir": str,
    "schemes": list,
    "reference": bool,
    "components": str,
}
_MODEL_KEYS = {"name": str, "weights": str, "label": str, "init_seed": int, "options": dict}
_METHOD_KEYS = {
    "name": str,
    "label": str,
    "config": dict,
    "preset": str,
    "scope": str,
    "calibration": dict,
    "plan": str,
    "schemes": list,
}
_PROTOCOL_KEYS = {
    "name": str,
    "root": str,
    "limit": int,
    "metrics": list,
    "alignment": str,
    "alignment_options": dict,
    "scenes": list,
}
_CALIB_KEYS = {
    "protocol": str,
    "root": str,
    "builder": str,
    "builders": list,
    "num_scenes": int,
    "seed": int,
    "seeds": list,
    "limit": int,
    "frames": int,
    "options": dict,
}
_EVAL_KEYS = {f.name: type(f.default) for f in fields(EvalOptions)}
_TOP_KEYS = ("run", "models", "methods", "protocols", "calibration", "eval", "ray", "sensitivity")
_SENSITIVITY_KEYS = {
    "schemes": list,
    "num_scenes": int,
    "seed": int,
    "granularity": str,
    "scope": str,
    "estimates": bool,
    "budget": float,
    "high_bits": int,
}
MAX_CONFIG_BYTES = 1 << 20  # a run config is a page of TOML; anything this big is a mistake
MAX_SEED = 2**32 - 1  # numpy and torch seeds


@dataclass
class CalibrationConfig:
    """[calibration] (or a method's inline calibration table). explicit: the keys the TOML set (builders,
    num_scenes, frames, seeds, limit, options, protocol): only those override a method's own defaults."""

    protocol: str | None = None
    root: str | None = None
    builders: list[str] = field(default_factory=lambda: ["random"])
    num_scenes: int = 4
    seeds: list[int] = field(default_factory=lambda: [0])
    limit: int | None = None
    frames: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    explicit: frozenset[str] = frozenset()


@dataclass
class MethodSettings:
    """What a [[methods]] entry sets beyond its MethodRef: scope (None = not set), its inline calibration and its
    own schemes (None = the run's)."""

    scope: str | None = None
    calibration: CalibrationConfig | None = None
    schemes: list[str] | None = None


@dataclass
class MethodPlan:
    """A method resolved for the grid: its MethodRef (config = preset values, then calibration-default epochs,
    then the user's keys), its scope and its calibration settings."""

    ref: MethodRef
    scope: str
    calibration: CalibrationConfig
    schemes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SensitivityOptions:
    """The optional [sensitivity] table: after the grid, `ptq3d run` measures each model's per-block task
    sensitivity (ptq3d.calibration.sensitivity.block_sensitivity) at each scheme on `num_scenes` scenes of the
    [calibration] protocol (random builder, `seed`), writes <output_dir>/sensitivity/<model>/<scheme>/ and the
    HTML report shows the heatmap. budget: also write a mixed-precision plan for that average weight-bit budget."""

    schemes: tuple[str, ...] = ("w4a4",)
    num_scenes: int = 2
    seed: int = 0
    granularity: str = "block"
    scope: str = "aggregator"
    estimates: bool = True
    budget: float | None = None
    high_bits: int = 8


@dataclass
class RunConfig:
    """A validated run configuration (see the module docstring for the TOML schema)."""

    name: str
    output_dir: str
    cache_dir: str
    schemes: list[str]
    models: list[ModelRef]
    methods: list[MethodRef]
    protocols: list[ProtocolRef]
    calibration: CalibrationConfig
    eval: EvalOptions
    reference: bool = True
    components: str = "real"
    source: str = "<config>"
    text: str = ""
    ray: Any = None  # RayOptions of the [ray] table (parsed without importing ray)
    method_settings: dict[str, MethodSettings] = field(default_factory=dict)  # by method label (display)
    eval_explicit: frozenset[str] = frozenset()  # [eval] keys the TOML set
    allow_imports: bool = True
    # (calibration protocol, root, limit) -> fingerprint of its definition and files; filled by
    # ptq3d.harness.identity.prepare and carried into every CalibRef (part of the cell id)
    calibration_data_hashes: dict[tuple, str] = field(default_factory=dict)
    sensitivity: SensitivityOptions | None = None

    def cells(self) -> list[CellSpec]:
        return expand(self)

    def plans(self) -> list[MethodPlan]:
        """Every method (FP excluded) with its resolved config, scope and calibration."""
        from ptq3d.harness.components import get_components

        comp = get_components(self.components)
        return [
            plan_method(self, comp, i, m)
            for i, m in enumerate(self.methods)
            if m.name not in (FP_METHOD, "*all*")
        ]


# --- parsing helpers ------------------------------------------------------------------------------------


def _type_name(t: type) -> str:
    return {
        str: "a string",
        int: "an integer",
        bool: "true/false",
        list: "a list",
        dict: "a table",
        float: "a number",
    }[t]


def _check_table(src: str, where: str, table: Any, allowed: dict[str, type]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{src}: {where} must be a table, got {type(table).__name__}")
    for key, value in table.items():
        if key not in allowed:
            import difflib

            close = difflib.get_close_matches(key, list(allowed), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{src}: {where}: unknown key '{key}'{hint} (allowed: {', '.join(allowed)})")
        want = allowed[key]
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise ConfigError(f"{src}: {where}.{key} = {value!r}: expected {_type_name(want)}")
    return table


def _choice(src: str, where: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{src}: {where} = {value!r}: allowed values are {', '.join(allowed)}")


def _str_list(src: str, where: str, value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or not value:
        raise ConfigError(f"{src}: {where} = {value!r}: expected a non-empty list of strings")
    return list(value)


def _int_list(src: str, where: str, value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise ConfigError(f"{src}: {where} = {value!r}: expected a non-empty list of integers")
    return list(value)


def _seeds(src: str, where: str, value: Any) -> list[int]:
    seeds = _int_list(src, where, value)
    for s in seeds:
        if not 0 <= s <= MAX_SEED:
            raise ConfigError(f"{src}: {where} = {value!r}: seed {s} is not in 0..{MAX_SEED}")
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise ConfigError(f"{src}: {where} = {value!r}: seed {dup[0]} is listed twice")
    return seeds


def _at_least(src: str, where: str, value: Any, low: int, meaning: str = "") -> None:
    if value < low:
        raise ConfigError(f"{src}: {where} = {value}: must be >= {low}{meaning}")


def _check_plain(src: str, where: str, value: Any, depth: int = 0) -> None:
    """Builder and model options are plain TOML values: finite numbers, at most 8 tables deep."""
    if depth > 8:
        raise ConfigError(f"{src}: {where}: nested more than 8 levels deep")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{src}: {where} = {value!r}: must be a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_plain(src, f"{where}.{k}", v, depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_plain(src, f"{where}[{i}]", v, depth + 1)


def _parse_calibration(src: str, where: str, cal: Any, base_dir: Path | None) -> CalibrationConfig:
    """[calibration] or a method's inline `calibration = {...}`, range-checked, with the keys it sets."""
    cal = _check_table(src, where, cal, _CALIB_KEYS)
    for a, b in (("builder", "builders"), ("seed", "seeds")):
        if a in cal and b in cal:
            raise ConfigError(f"{src}: {where}: give '{a}' or '{b}', not both")
    if "root" in cal and "protocol" not in cal:
        raise ConfigError(
            f"{src}: {where}.root = {cal['root']!r}: give the 'protocol' it is the data root of"
        )
    root = _path(base_dir, cal.get("root"))
    if root is not None and not Path(root).exists():
        raise ConfigError(f"{src}: {where}.root = {cal['root']!r}: no such directory ({root})")
    for key in ("num_scenes", "frames"):
        if key in cal:
            _at_least(src, f"{where}.{key}", cal[key], 1)
    if "limit" in cal:
        _at_least(src, f"{where}.limit", cal["limit"], 0, " (0 = the whole pool)")
    options = dict(cal.get("options", {}))
    _check_plain(src, f"{where}.options", options)
    explicit = {k for k in cal if k not in ("builder", "seed", "root")}
    explicit |= {"builders"} if "builder" in cal else set()
    explicit |= {"seeds"} if "seed" in cal else set()
    return CalibrationConfig(
        protocol=cal.get("protocol"),
        root=root,
        builders=_str_list(src, f"{where}.builders", cal.get("builders", cal.get("builder", "random"))),
        num_scenes=int(cal.get("num_scenes", 4)),
        seeds=_seeds(src, f"{where}.seeds", cal.get("seeds", cal.get("seed", 0))),
        limit=cal.get("limit") or None,
        frames=cal.get("frames"),
        options=options,
        explicit=frozenset(explicit),
    )


def normalise_scheme(scheme: str) -> str:
    """'W8A8', ' w8a8 ' and 'w8 a8' -> 'w8a8' (whitespace removed, lower case)."""
    return "".join(str(scheme).split()).lower()


def _schemes(src: str, value: Any, key: str = "[run].schemes") -> list[str]:
    out: list[str] = []
    for i, s in enumerate(_str_list(src, key, value)):
        n = normalise_scheme(s)
        if not n:
            raise ConfigError(f"{src}: {key}[{i}] = {s!r}: empty scheme name")
        if n not in out:  # one scheme however it is spelled: one cell
            out.append(n)
    return out


def _path(base: Path | None, value: str | None) -> str | None:
    if not value:
        return None
    p = Path(value).expanduser()
    if base is not None and not p.is_absolute():
        p = base / p
    return str(p)


def _entries(src: str, key: str, value: Any) -> list[dict[str, Any]]:
    """[[key]] tables or a list of names (shorthand) -> list of tables."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{src}: '{key}' must be a non-empty list of names or [[{key}]] tables")
    return [{"name": v} if isinstance(v, str) else v for v in value]


# --- loading --------------------------------------------------------------------------------------------


def parse_config(data: dict[str, Any], source: str = "<config>", base_dir: Path | None = None) -> RunConfig:
    """Validate the structure of a parsed TOML dict and build a RunConfig (names are checked by check_names)."""
    # the [ray] table's parser lives with the Ray executor (it imports no ray); imported here so that reading a
    # config does not pull in the executors and the runner
    from ptq3d.harness.ray_executor import parse_ray_options

    src = source
    for key in data:
        if key not in _TOP_KEYS:
            import difflib

            close = difflib.get_close_matches(key, _TOP_KEYS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{src}: unknown top-level key '{key}'{hint} (allowed: {', '.join(_TOP_KEYS)})")
    run = _check_table(src, "[run]", data.get("run", {}), _RUN_KEYS)
    name = run.get("name") or (Path(source).stem if source and not source.startswith("<") else "run")
    output_dir = _path(base_dir, run.get("output_dir")) or str(Path("ptq3d-runs") / name)
    cache_dir = _path(base_dir, run.get("cache_dir")) or str(Path(output_dir) / "cache")

    if "models" not in data:
        raise ConfigError(
            f"{src}: missing required key 'models' (a list of [[models]] tables or model names)"
        )
    models = []
    for i, m in enumerate(_entries(src, "models", data["models"])):
        where = f"[[models]][{i}]"
        _check_table(src, where, m, _MODEL_KEYS)
        if "name" not in m:
            raise ConfigError(f"{src}: {where}: missing required key 'name'")
        weights = _path(base_dir, m.get("weights"))
        if weights is not None and not Path(weights).is_file():
            raise ConfigError(f"{src}: {where}.weights = {m['weights']!r}: no such file ({weights})")
        if "init_seed" in m and not 0 <= m["init_seed"] <= MAX_SEED:
            raise ConfigError(f"{src}: {where}.init_seed = {m['init_seed']}: must be in 0..{MAX_SEED}")
        _check_plain(src, f"{where}.options", m.get("options", {}))
        models.append(
            ModelRef(
                m["name"], weights, m.get("label", ""), int(m.get("init_seed", 0)), dict(m.get("options", {}))
            )
        )

    if "methods" not in data:
        raise ConfigError(
            f"{src}: missing required key 'methods' (a list of [[methods]] tables, names, or \"all\")"
        )
    raw_methods = data["methods"]
    methods: list[MethodRef] = []
    settings: dict[str, MethodSettings] = {}
    if raw_methods == "all":
        methods = [MethodRef("*all*")]
    else:
        for i, m in enumerate(_entries(src, "methods", raw_methods)):
            where = f"[[methods]][{i}]"
            _check_table(src, where, m, _METHOD_KEYS)
            if "name" not in m:
                raise ConfigError(f"{src}: {where}: missing required key 'name'")
            if "scope" in m:
                _choice(src, f"{where}.scope", m["scope"], SCOPES)
            preset = m.get("preset", "paper")
            if not preset.strip():
                raise ConfigError(f"{src}: {where}.preset = {preset!r}: empty preset name")
            label = m.get("label", "")
            if preset != "paper" and preset not in (label or m["name"]):
                label = f"{label or m['name']} ({preset})"  # the preset is part of what a row shows
            _check_plain(src, f"{where}.config", m.get("config", {}))
            plan = None
            if "plan" in m:
                from ptq3d.quant.plan import PrecisionPlan

                plan_path = _path(base_dir, m["plan"])
                try:
                    plan = PrecisionPlan.load(plan_path).to_dict()
                except ConfigError as exc:
                    raise ConfigError(f"{src}: {where}.plan = {m['plan']!r}: {exc}") from None
            ref = MethodRef(m["name"], label, dict(m.get("config", {})), preset, plan=plan)
            cal = m.get("calibration")
            settings[ref.display] = MethodSettings(
                m.get("scope"),
                None if cal is None else _parse_calibration(src, f"{where}.calibration", cal, base_dir),
                _schemes(src, m["schemes"], f"{where}.schemes") if "schemes" in m else None,
            )
            methods.append(ref)
    labels = [m.display for m in methods]
    dup = {x for x in labels if labels.count(x) > 1}
    if dup:
        raise ConfigError(
            f"{src}: [[methods]]: label {sorted(dup)[0]!r} is used twice; give each variant a 'label'"
        )

    if "protocols" not in data:
        raise ConfigError(
            f"{src}: missing required key 'protocols' (a list of [[protocols]] tables or names)"
        )
    protocols = []
    for i, p in enumerate(_entries(src, "protocols", data["protocols"])):
        where = f"[[protocols]][{i}]"
        _check_table(src, where, p, _PROTOCOL_KEYS)
        if "name" not in p:
            raise ConfigError(f"{src}: {where}: missing required key 'name'")
        root = _path(base_dir, p.get("root"))
        if root is not None and not Path(root).exists():
            raise ConfigError(f"{src}: {where}.root = {p['root']!r}: no such directory ({root})")
        if "limit" in p and p["limit"] < 1:
            raise ConfigError(f"{src}: {where}.limit = {p['limit']}: must be >= 1")
        metrics = tuple(_str_list(src, f"{where}.metrics", p["metrics"])) if "metrics" in p else None
        scenes = tuple(_str_list(src, f"{where}.scenes", p["scenes"])) if "scenes" in p else None
        protocols.append(
            ProtocolRef(
                p["name"],
                root,
                p.get("limit"),
                metrics,
                p.get("alignment"),
                dict(p.get("alignment_options", {})),
                scenes=scenes,
            )
        )

    calibration = _parse_calibration(src, "[calibration]", data.get("calibration", {}), base_dir)

    ev = _check_table(src, "[eval]", data.get("eval", {}), _EVAL_KEYS)
    if "scope" in ev:
        _choice(src, "[eval].scope", ev["scope"], SCOPES)
    if "real_backend" in ev:
        _choice(src, "[eval].real_backend", ev["real_backend"], REAL_BACKENDS)
    if "precision" in ev:
        _choice(src, "[eval].precision", ev["precision"], ("fp32", "bf16-autocast"))
    if "device" in ev and not (
        ev["device"] in ("auto", "cpu", "cuda") or str(ev["device"]).startswith("cuda:")
    ):
        raise ConfigError(
            f"{src}: [eval].device = {ev['device']!r}: allowed values are auto, cpu, cuda, cuda:N"
        )
    for k in ("bench_warmup", "threads"):
        if k in ev:
            _at_least(src, f"[eval].{k}", ev[k], 0)
    if "bench_repeats" in ev:
        _at_least(src, "[eval].bench_repeats", ev["bench_repeats"], 1, " (a latency needs one timing)")
    options = EvalOptions(**ev)
    sensitivity = _parse_sensitivity(src, data["sensitivity"]) if "sensitivity" in data else None
    if sensitivity is not None and not calibration.protocol:
        raise ConfigError(f"{src}: [sensitivity] needs [calibration].protocol (its scenes are measured)")

    schemes = _schemes(src, run["schemes"]) if "schemes" in run else []
    only_fp = all(m.name == FP_METHOD for m in methods)
    if not schemes and not only_fp:
        raise ConfigError(f'{src}: [run].schemes is required (e.g. schemes = ["w8a8", "w4a8"])')
    return RunConfig(
        name=name,
        output_dir=output_dir,
        cache_dir=cache_dir,
        schemes=schemes,
        models=models,
        methods=methods,
        protocols=protocols,
        calibration=calibration,
        eval=options,
        reference=bool(run.get("reference", True)),
        components=run.get("components", "real"),
        source=source,
        ray=parse_ray_options(data.get("ray", {}), src, base_dir),
        method_settings=settings,
        eval_explicit=frozenset(ev),
        sensitivity=sensitivity,
    )


def _parse_sensitivity(src: str, table: Any) -> SensitivityOptions:
    t = _check_table(src, "[sensitivity]", table, _SENSITIVITY_KEYS)
    if "granularity" in t:
        _choice(src, "[sensitivity].granularity", t["granularity"], ("block", "site"))
    if "scope" in t:
        _choice(src, "[sensitivity].scope", t["scope"], SCOPES)
    if "num_scenes" in t:
        _at_least(src, "[sensitivity].num_scenes", t["num_scenes"], 1)
    if "seed" in t and not 0 <= t["seed"] <= MAX_SEED:
        raise ConfigError(f"{src}: [sensitivity].seed = {t['seed']}: must be in 0..{MAX_SEED}")
    if "budget" in t and not (math.isfinite(t["budget"]) and 2 <= t["budget"] <= 8):
        raise ConfigError(
            f"{src}: [sensitivity].budget = {t['budget']}: an average weight-bit budget in 2..8"
        )
    schemes = _schemes(src, t["schemes"], "[sensitivity].schemes") if "schemes" in t else None
    return SensitivityOptions(
        schemes=tuple(schemes) if schemes else SensitivityOptions.schemes,
        num_scenes=int(t.get("num_scenes", 2)),
        seed=int(t.get("seed", 0)),
        granularity=t.get("granularity", "block"),
        scope=t.get("scope", "aggregator"),
        estimates=bool(t.get("estimates", True)),
        budget=None if "budget" not in t else float(t["budget"]),
        high_bits=int(t.get("high_bits", 8)),
    )


def load_config(path: str | Path, check: bool = True, allow_imports: bool = True) -> RunConfig:
    """Read, parse and validate a TOML run configuration (names checked against the registries if check).
    allow_imports: let `components = "module:attr"` import its module (the CLI passes --allow-imports)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file '{p}' does not exist")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{p}: {p.stat().st_size} bytes is too big for a run configuration (max {MAX_CONFIG_BYTES})"
        )
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{p}: not UTF-8 text (byte {exc.start}: {exc.reason}); TOML files are UTF-8"
        ) from None
    return loads_config(text, source=str(p), base_dir=p.parent, check=check, allow_imports=allow_imports)


def loads_config(
    text: str,
    source: str = "<config>",
    base_dir: Path | None = None,
    check: bool = True,
    allow_imports: bool = True,
) -> RunConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid TOML: nested too deeply") from None
    cfg = parse_config(data, source, base_dir)
    cfg.text = text
    cfg.allow_imports = allow_imports
    if check:
        check_names(cfg)
    return cfg


def check_names(cfg: RunConfig) -> None:
    """Check every model, method, preset, scheme, protocol, metric and builder name against the components,
    each method config against its dataclass and each builder's options. Also resolves methods = "all"."""
    from ptq3d.harness.components import check_components_allowed, get_components

    src = cfg.source
    try:
        check_components_allowed(cfg.components, cfg.allow_imports)
    except UserError as exc:
        raise ConfigError(f"{src}: [run].components: {exc}") from None
    comp = get_components(cfg.components)

    def known(kind: str, where: str, name: str, names: list[str]) -> None:
        if name not in names:
            from ptq3d.errors import unknown_name_error

            raise ConfigError(f"{src}: {where}: {unknown_name_error(kind, name, names)}")

    models = comp.list_models()
    for i, m in enumerate(cfg.models):
        known("model", f"[[models]][{i}].name", m.name, models)
    if len(cfg.methods) == 1 and cfg.methods[0].name == "*all*":
        cfg.methods = [MethodRef(n) for n in comp.list_methods()]
    methods = comp.list_methods() + [FP_METHOD]
    for i, m in enumerate(cfg.methods):
        if m.name not in methods:
            try:  # a plugin that failed to load: its own error, not "unknown method"
                comp.check_method_config(m.name, {})
            except UserError as exc:
                raise ConfigError(f"{src}: [[methods]][{i}].name: {exc}") from None
        known("method", f"[[methods]][{i}].name", m.name, methods)
    schemes = comp.list_schemes()
    for i, s in enumerate(cfg.schemes):
        try:
            comp.check_scheme(s)
        except UserError as exc:
            if s not in schemes and "unknown scheme" in str(exc):
                known("scheme", f"[run].schemes[{i}]", s, schemes)
            raise ConfigError(f"{src}: [run].schemes[{i}] = {s!r}: {exc}") from None
    for i, s in enumerate(cfg.sensitivity.schemes if cfg.sensitivity is not None else ()):
        try:
            comp.check_scheme(s)
        except UserError as exc:
            raise ConfigError(f"{src}: [sensitivity].schemes[{i}] = {s!r}: {exc}") from None
    protocols = comp.list_protocols()
    metrics = comp.list_metrics()
    for i, p in enumerate(cfg.protocols):
        known("protocol", f"[[protocols]][{i}].name", p.name, protocols)
        if p.root is None and comp.protocol_needs_root(p.name):
            raise ConfigError(f"{src}: [[protocols]][{i}]: protocol '{p.name}' needs a data 'root'")
        for m in p.metrics or ():
            known("metric", f"[[protocols]][{i}].metrics", m, metrics)
        try:
            comp.check_alignment(p)
        except UserError as exc:
            raise ConfigError(f"{src}: [[protocols]][{i}].alignment: {exc}") from None
        try:
            problems = comp.check_protocol_data(p)
        except UserError as exc:
            raise ConfigError(f"{src}: [[protocols]][{i}]: {exc}") from None
        if problems:
            more = f"; ... and {len(problems) - 3} more" if len(problems) > 3 else ""
            raise ConfigError(f"{src}: [[protocols]][{i}]: " + "; ".join(problems[:3]) + more)
    if cfg.calibration.protocol:
        known("protocol", "[calibration].protocol", cfg.calibration.protocol, protocols)
    builders = comp.list_calibration_builders()
    for i, m in enumerate(cfg.methods):
        if m.name == FP_METHOD:
            continue
        where = f"[[methods]][{i}]"
        plan = plan_method(cfg, comp, i, m)  # checks the preset and the config
        own = cfg.method_settings.get(m.display, MethodSettings()).calibration
        cwhere = (
            f"{where}.calibration" if own is not None and own.explicit & {"protocol"} else "[calibration]"
        )
        for k, s in enumerate(cfg.method_settings.get(m.display, MethodSettings()).schemes or []):
            try:
                comp.check_scheme(s)
            except UserError as exc:
                raise ConfigError(f"{src}: {where}.schemes[{k}] = {s!r}: {exc}") from None
        if plan.ref.plan is not None:
            for model in cfg.models:
                try:
                    comp.check_plan(model, plan.ref.plan, plan.scope)
                except UserError as exc:
                    raise ConfigError(f"{src}: {where}.plan ({m.display}): {exc}") from None
        if not any(comp.method_needs_calibration(m.name, plan.ref.config, s) for s in plan.schemes or [None]):
            continue
        cal = plan.calibration
        if not cal.protocol:
            raise ConfigError(
                f"{src}: [calibration].protocol is required: method '{m.name}' calibrates "
                f"(known protocols: {', '.join(protocols)})"
            )
        known("protocol", f"{cwhere}.protocol", cal.protocol, protocols)
        if cal.root is None and comp.protocol_needs_root(cal.protocol):
            raise ConfigError(f"{src}: {cwhere}: protocol '{cal.protocol}' needs a data 'root'")
        frames = comp.protocol_frames(cal.protocol)
        if cal.frames is not None and frames is not None and cal.frames > frames:
            raise ConfigError(
                f"{src}: {where} ({m.display}): calibration frames = {cal.frames} but protocol "
                f"'{cal.protocol}' has {frames} frames per scene"
            )
        for j, b in enumerate(cal.builders):
            known("calibration builder", f"{where} ({m.display}) calibration builders[{j}]", b, builders)
            try:
                comp.check_builder_options(b, cal.options)
            except UserError as exc:
                raise ConfigError(f"{src}: {where} ({m.display}) calibration options: {exc}") from None


# --- the grid -------------------------------------------------------------------------------------------

# the keys of a method's CALIBRATION_DEFAULTS the harness reads, and where each lands
_CAL_DEFAULT_KEYS = (
    "builder",
    "builders",
    "num_scenes",
    "frames",
    "seeds",
    "limit",
    "options",
    "builder_options",
)


def plan_method(cfg: RunConfig, comp: Any, index: int, ref: MethodRef) -> MethodPlan:
    """Resolve one method's config, scope and calibration (precedence in the module docstring)."""
    src, where = cfg.source, f"[[methods]][{index}]"
    try:
        presets = comp.method_presets(ref.name)
        if ref.preset not in presets:
            from ptq3d.errors import unknown_name_error

            raise unknown_name_error(f"preset of method '{ref.name}'", ref.preset, presets)
        defaults = dict(comp.method_calibration_defaults(ref.name, ref.preset))
    except UserError as exc:
        raise ConfigError(f"{src}: {where}.preset ({ref.display}): {exc}") from None
    unknown = set(defaults) - set(_CAL_DEFAULT_KEYS) - {"epochs", "scope"}
    if unknown:
        raise ConfigError(
            f"{src}: {where}: method '{ref.name}' preset '{ref.preset}': its CALIBRATION_DEFAULTS has unknown "
            f"keys {sorted(unknown)}"
        )
    extra = {"epochs": defaults["epochs"]} if "epochs" in defaults else {}
    try:
        config = comp.resolve_method_config(ref.name, ref.preset, dict(ref.config), extra)
    except UserError as exc:
        raise ConfigError(f"{src}: {where}.config ({ref.display}): {exc}") from None
    own = cfg.method_settings.get(ref.display, MethodSettings())
    glob = cfg.calibration
    mine = own.calibration or CalibrationConfig()
    if "builder_options" in defaults:
        defaults["options"] = defaults.pop("builder_options")
    if "builder" in defaults:
        defaults["builders"] = [defaults.pop("builder")]

    def pick(key: str) -> Any:
        if key in mine.explicit:
            return getattr(mine, key)
        if key in glob.explicit:
            return getattr(glob, key)
        if key in defaults:
            return defaults[key]
        return getattr(CalibrationConfig(), key)

    builders = list(pick("builders"))
    options: dict[str, Any] = {}
    if defaults.get("builders") == builders[:1]:  # the method's own builder options go with its own builder
        options.update(defaults.get("options", {}))
    for layer in (glob, mine):
        if "options" in layer.explicit:
            options.update(layer.options)
    protocol, root = (mine.protocol, mine.root) if "protocol" in mine.explicit else (glob.protocol, glob.root)
    calibration = CalibrationConfig(
        protocol=protocol,
        root=root,
        builders=builders,
        num_scenes=int(pick("num_scenes")),
        seeds=list(pick("seeds")),
        limit=pick("limit") or None,
        frames=pick("frames"),
        options=options,
        explicit=mine.explicit | glob.explicit,
    )
    if own.scope is not None:
        scope = own.scope
    elif "scope" in cfg.eval_explicit:
        scope = cfg.eval.scope
    else:
        scope = defaults.get("scope", cfg.eval.scope)
    if scope not in SCOPES:
        raise ConfigError(
            f"{src}: {where} ({ref.display}): scope {scope!r}: allowed values are {', '.join(SCOPES)}"
        )
    schemes = own.schemes if own.schemes is not None else list(cfg.schemes)
    return MethodPlan(dataclasses.replace(ref, config=config), scope, calibration, schemes)


def expand(cfg: RunConfig) -> list[CellSpec]:
    """All cells, in order model > protocol > (FP reference) > method > scheme > builder > seed.

    Each method runs with its own plan (plan_method): its scope, builder(s), calibration size, frames and
    seeds. Methods whose results depend on calibration data get each of their builders x seeds (one builder,
    unless a builders list asks for an ablation). The others get one cell per scheme, still with a calibration
    set (first builder, first seed) when a calibration protocol is named: methods may use it for diagnostics
    (per-block error) or optional statistics."""
    from ptq3d.harness.components import get_components

    comp = get_components(cfg.components)
    cells: list[CellSpec] = []
    seen: set[str] = set()

    def add(spec: CellSpec) -> None:
        if spec.cell_id not in seen:
            seen.add(spec.cell_id)
            cells.append(spec)

    methods = [m for m in cfg.methods if m.name != "*all*"]
    plans = [plan_method(cfg, comp, i, m) for i, m in enumerate(methods) if m.name != FP_METHOD]

    def calib(cal: CalibrationConfig, builder: str, seed: int) -> CalibRef:
        return CalibRef(
            builder,
            cal.protocol or "",
            cal.root,
            cal.num_scenes,
            seed,
            cal.limit,
            cal.frames,
            dict(cal.options),
            cfg.calibration_data_hashes.get((cal.protocol, cal.root, cal.limit), ""),
        )

    for model, protocol in itertools.product(cfg.models, cfg.protocols):
        if cfg.reference or any(m.name == FP_METHOD for m in methods):
            fp = next((m for m in methods if m.name == FP_METHOD), MethodRef(FP_METHOD, "FP"))
            add(CellSpec(model, fp, FP_SCHEME, protocol, None, cfg.eval, cfg.components))
        for plan in plans:
            method, cal = plan.ref, plan.calibration
            options = dataclasses.replace(cfg.eval, scope=plan.scope)
            for scheme in plan.schemes:
                if not comp.method_needs_calibration(method.name, method.config, scheme):
                    ref = calib(cal, cal.builders[0], cal.seeds[0]) if cal.protocol else None
                    add(CellSpec(model, method, scheme, protocol, ref, options, cfg.components))
                    continue
                for builder, seed in itertools.product(cal.builders, cal.seeds):
                    add(
                        CellSpec(
                            model,
                            method,
                            scheme,
                            protocol,
                            calib(cal, builder, seed),
                            options,
                            cfg.components,
                        )
                    )
    return cells
