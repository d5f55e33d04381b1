"""The package rooms and their one-way doors: walks every import in ptq3d (module level and inside functions)
and checks that each package imports only the packages below it, and that no two modules import each other
in a cycle at import time."""

from __future__ import annotations

import ast
from pathlib import Path

import ptq3d

ROOT = Path(ptq3d.__file__).parent

# package -> the packages it may import (besides itself and the top-level helper modules errors, typed_config)
ALLOWED = {
    "kernels": set(),
    "models": set(),
    "datasets": {"models"},
    "metrics": {"datasets", "models"},
    "quant": {"kernels"},
    "calibration": {"quant", "kernels", "datasets", "models"},
    "methods": {"calibration", "quant", "kernels", "datasets", "models"},
    "results": set(),
    "reports": {"results"},
    "harness": {"results", "reports", "methods", "calibration", "quant", "kernels", "datasets", "metrics", "models"},
}
TOP_LEVEL_HELPERS = {"errors", "typed_config"}


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (ROOT / parts[1]).is_dir() else None


def _imports(path: Path, top_level_only: bool) -> list[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    for n in nodes:
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("ptq3d"):
            out.append(n.module)
        elif isinstance(n, ast.Import):
            out += [a.name for a in n.names if a.name.startswith("ptq3d")]
    return out


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def test_every_package_imports_only_the_packages_below_it():
    bad = []
    for path in ROOT.rglob("*.py"):
        src = _package(_module_name(path))
        if src is None:
            continue
        assert src in ALLOWED, f"new package ptq3d.{src}: add it to ALLOWED with its place in the layering"
        for mod in _imports(path, top_level_only=False):
            dst = _package(mod)
            if dst is None:
                top = mod.split(".")[1] if "." in mod else ""
                if top and top not in TOP_LEVEL_HELPERS:
                    bad.append(f"{path.relative_to(ROOT.parent)} imports {mod}")
            elif dst != src and dst not in ALLOWED[src]:
                bad.append(f"{path.relative_to(ROOT.parent)} ({src}) imports {mod} ({dst})")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_layering_is_acyclic():
    seen, stack = set(), set()

    def visit(p):
        assert p not in stack, f"package cycle through {p}"
        if p in seen:
            return
        stack.add(p)
        for q in ALLOWED[p]:
            visit(q)
        stack.discard(p)
        seen.add(p)

    for p in ALLOWED:
        visit(p)


def test_no_module_import_cycle_at_import_time():
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for mod in _imports(path, top_level_only=True):
            # `from ptq3d.x import y` may name a submodule y; either way it runs ptq3d.x
            deps.add(mod if mod in modules else mod.rsplit(".", 1)[0])
        graph[name] = {d for d in deps if d in modules and d != name and not name.startswith(d + ".")}
    state: dict[str, int] = {}

    def visit(m, trail):
        if state.get(m) == 2:
            return
        assert state.get(m) != 1, "import cycle: " + " -> ".join([*trail, m])
        state[m] = 1
        for d in sorted(graph[m]):
            if not m.startswith(d + ".") and not (d.count(".") < m.count(".") and m.startswith(d)):
                visit(d, [*trail, m])
        state[m] = 2

    for m in sorted(graph):
        visit(m, [])
