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
    config = { percdamp = 0.01 }      # the method's config dataclass fields

    [[protocols]]                     # REQUIRED (or: protocols = ["synthetic-smoke"])
    name = "synthetic-smoke"          # a registered protocol (`ptq3d ls protocols`)
    root = "/data/co3d"               # data root; not needed by synthetic protocols
    limit = 2                         # first N scenes only
    metrics = ["pose.auc@30"]         # default: the protocol's metrics
    alignment = "pi3"                 # AlignmentPolicy preset (vggt, pi3, cut3r, quantvggt); default policy if unset
    alignment_options = { max_points = 4096 }  # policy fields overriding the preset

    [calibration]                     # REQUIRED when a method calibrates
    protocol = "synthetic-heldout"    # scenes drawn from this protocol (keep it disjoint from evaluation)
    root = ""
    builders = ["random"]             # or builder = "random" (`ptq3d ls builders`)
    num_scenes = 4
    seeds = [0, 1, 2]                 # or seed = 0; each seed is one cell (mean +- s.e. over seeds)
    limit = 0                         # cap the candidate pool (0 = all)

    [eval]
    scope = "aggregator"              # "aggregator" | "all"
    real_backend = "auto"             # "auto" (triton on a GPU, else emulated) | "emulated" | "triton" | "none"
    bench = true
    bench_warmup = 1
    bench_repeats = 3
    device = "auto"                   # "auto" | "cpu" | "cuda" | "cuda:N"
    outlier_stats = true
    threads = 0                       # torch intra-op threads per worker (0 = leave as is)

    [ray]                             # only read by `ptq3d run --executor ray` (see ptq3d.harness.ray_executor)
    address = ""                      # cluster to join; empty = start a local instance (--address overrides)
    num_cpus = 1                      # resource request of one cell; num_gpus = "auto" | N; memory_gb = N
    max_retries = 2                   # a cell whose worker dies is resubmitted this many times, then failed
    cache = "auto"                    # "auto" | "shared" | "object-store" (how FP predictions are shared)
    shared_cache_dir = ""             # a directory every node sees (cache = "shared")

Loading validates every key: unknown keys, wrong types and unknown names raise ConfigError naming the file, the
key and the allowed values. See ptq3d/harness/examples/ for complete files.
"""

from __future__ import annotations

import itertools
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
_METHOD_KEYS = {"name": str, "label": str, "config": dict}
_PROTOCOL_KEYS = {
    "name": str,
    "root": str,
    "limit": int,
    "metrics": list,
    "alignment": str,
    "alignment_options": dict,
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
}
_EVAL_KEYS = {f.name: type(f.default) for f in fields(EvalOptions)}
_TOP_KEYS = ("run", "models", "methods", "protocols", "calibration", "eval", "ray")


@dataclass
class CalibrationConfig:
    protocol: str | None = None
    root: str | None = None
    builders: list[str] = field(default_factory=lambda: ["random"])
    num_scenes: int = 4
    seeds: list[int] = field(default_factory=lambda: [0])
    limit: int | None = None


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

    def cells(self) -> list[CellSpec]:
        return expand(self)


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
    if raw_methods == "all":
        methods = [MethodRef("*all*")]
    else:
        for i, m in enumerate(_entries(src, "methods", raw_methods)):
            where = f"[[methods]][{i}]"
            _check_table(src, where, m, _METHOD_KEYS)
            if "name" not in m:
                raise ConfigError(f"{src}: {where}: missing required key 'name'")
            methods.append(MethodRef(m["name"], m.get("label", ""), dict(m.get("config", {}))))
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
        protocols.append(
            ProtocolRef(
                p["name"],
                root,
                p.get("limit"),
                metrics,
                p.get("alignment"),
                dict(p.get("alignment_options", {})),
            )
        )

    cal = _check_table(src, "[calibration]", data.get("calibration", {}), _CALIB_KEYS)
    for a, b in (("builder", "builders"), ("seed", "seeds")):
        if a in cal and b in cal:
            raise ConfigError(f"{src}: [calibration]: give '{a}' or '{b}', not both")
    cal_root = _path(base_dir, cal.get("root"))
    if cal_root is not None and not Path(cal_root).exists():
        raise ConfigError(f"{src}: [calibration].root = {cal['root']!r}: no such directory ({cal_root})")
    calibration = CalibrationConfig(
        protocol=cal.get("protocol"),
        root=cal_root,
        builders=_str_list(src, "[calibration].builders", cal.get("builders", cal.get("builder", "random"))),
        num_scenes=int(cal.get("num_scenes", 4)),
        seeds=_int_list(src, "[calibration].seeds", cal.get("seeds", cal.get("seed", 0))),
        limit=cal.get("limit") or None,
    )
    if calibration.num_scenes < 1:
        raise ConfigError(f"{src}: [calibration].num_scenes = {calibration.num_scenes}: must be >= 1")

    ev = _check_table(src, "[eval]", data.get("eval", {}), _EVAL_KEYS)
    if "scope" in ev:
        _choice(src, "[eval].scope", ev["scope"], SCOPES)
    if "real_backend" in ev:
        _choice(src, "[eval].real_backend", ev["real_backend"], REAL_BACKENDS)
    if "device" in ev and not (
        ev["device"] in ("auto", "cpu", "cuda") or str(ev["device"]).startswith("cuda:")
    ):
        raise ConfigError(
            f"{src}: [eval].device = {ev['device']!r}: allowed values are auto, cpu, cuda, cuda:N"
        )
    for k in ("bench_warmup", "bench_repeats", "threads"):
        if k in ev and ev[k] < 0:
            raise ConfigError(f"{src}: [eval].{k} = {ev[k]}: must be >= 0")
    options = EvalOptions(**ev)

    schemes = _str_list(src, "[run].schemes", run["schemes"]) if "schemes" in run else []
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
    )


def load_config(path: str | Path, check: bool = True) -> RunConfig:
    """Read, parse and validate a TOML run configuration (names checked against the registries if check)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file '{p}' does not exist")
    text = p.read_text()
    return loads_config(text, source=str(p), base_dir=p.parent, check=check)


def loads_config(
    text: str, source: str = "<config>", base_dir: Path | None = None, check: bool = True
) -> RunConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    cfg = parse_config(data, source, base_dir)
    cfg.text = text
    if check:
        check_names(cfg)
    return cfg


def check_names(cfg: RunConfig) -> None:
    """Check every model, method, scheme, protocol, metric and builder name against the components, and each
    method config against its dataclass. Also resolves methods = "all"."""
    from ptq3d.harness.components import get_components

    src = cfg.source
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
        known("method", f"[[methods]][{i}].name", m.name, methods)
        try:
            comp.check_method_config(m.name, m.config)
        except UserError as exc:
            raise ConfigError(f"{src}: [[methods]][{i}].config: {exc}") from None
    schemes = comp.list_schemes()
    for i, s in enumerate(cfg.schemes):
        try:
            comp.check_scheme(s)
        except UserError:
            known("scheme", f"[run].schemes[{i}]", s, schemes)
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
    cal = cfg.calibration
    needs = [
        m
        for m in cfg.methods
        if m.name != FP_METHOD and comp.method_needs_calibration(m.name, m.config, None)
    ]
    if needs:
        if not cal.protocol:
            raise ConfigError(
                f"{src}: [calibration].protocol is required: method '{needs[0].name}' calibrates "
                f"(known protocols: {', '.join(protocols)})"
            )
        known("protocol", "[calibration].protocol", cal.protocol, protocols)
        if cal.root is None and comp.protocol_needs_root(cal.protocol):
            raise ConfigError(f"{src}: [calibration]: protocol '{cal.protocol}' needs a data 'root'")
        for i, b in enumerate(cal.builders):
            known("calibration builder", f"[calibration].builders[{i}]", b, comp.list_calibration_builders())


# --- the grid -------------------------------------------------------------------------------------------


def expand(cfg: RunConfig) -> list[CellSpec]:
    """All cells, in order model > protocol > (FP reference) > method > scheme > builder > seed.

    Methods whose results depend on calibration data get every builder x seed. The others get one cell per
    scheme, still with a calibration set (first builder, first seed) when [calibration] names a protocol:
    methods may use it for diagnostics (per-block error) or optional statistics."""
    from ptq3d.harness.components import get_components

    comp = get_components(cfg.components)
    cal = cfg.calibration
    cells: list[CellSpec] = []
    seen: set[str] = set()

    def add(spec: CellSpec) -> None:
        if spec.cell_id not in seen:
            seen.add(spec.cell_id)
            cells.append(spec)

    methods = [m for m in cfg.methods if m.name != "*all*"]
    for model, protocol in itertools.product(cfg.models, cfg.protocols):
        if cfg.reference or any(m.name == FP_METHOD for m in methods):
            fp = next((m for m in methods if m.name == FP_METHOD), MethodRef(FP_METHOD, "FP"))
            add(CellSpec(model, fp, FP_SCHEME, protocol, None, cfg.eval, cfg.components))
        for method in methods:
            if method.name == FP_METHOD:
                continue
            for scheme in cfg.schemes:
                if not comp.method_needs_calibration(method.name, method.config, scheme):
                    ref = None
                    if cal.protocol:
                        ref = CalibRef(
                            cal.builders[0], cal.protocol, cal.root, cal.num_scenes, cal.seeds[0], cal.limit
                        )
                    add(CellSpec(model, method, scheme, protocol, ref, cfg.eval, cfg.components))
                    continue
                for builder, seed in itertools.product(cal.builders, cal.seeds):
                    ref = CalibRef(builder, cal.protocol or "", cal.root, cal.num_scenes, seed, cal.limit)
                    add(CellSpec(model, method, scheme, protocol, ref, cfg.eval, cfg.components))
    return cells
