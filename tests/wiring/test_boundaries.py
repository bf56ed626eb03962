"""Boundary rules of the package, read from the source (no import needed):

* pure modules (no top-level Dagster import) never import a wiring module — the logic runs the same
  from a notebook, and a newcomer finds any asset's logic one hop away from its asset;
* no wiring module imports another domain's *assets* module (shared names come from ``names.py``
  and ``partitions.py``); only the automation layer (``sensors/``), ``definitions.py`` and the demo
  reach across domains for jobs;
* the module import graph has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "risk_assets"
TOP_LEVEL_CROSS_DOMAIN = {"definitions", "demo"}


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def _top_level_imports(tree: ast.Module, modules: set[str]) -> set[str]:
    """Modules imported at module level (imports inside functions are deliberate laziness, and
    ``if TYPE_CHECKING:`` blocks are not runtime imports). ``from package import submodule`` is an
    edge to the submodule."""
    found: set[str] = set()
    for stmt in tree.body:
        if isinstance(stmt, ast.Import):
            found.update(a.name for a in stmt.names)
        elif isinstance(stmt, ast.ImportFrom) and stmt.module:
            subs = {f"{stmt.module}.{a.name}" for a in stmt.names} & modules
            found.update(subs or {stmt.module})
    return found


def _graph() -> tuple[dict[str, set[str]], set[str]]:
    modules = _modules()
    imports = {name: _top_level_imports(tree, set(modules)) for name, tree in modules.items()}
    wiring = {n for n, imp in imports.items() if any(i == "dagster" or i.startswith("dagster") for i in imp)}
    edges = {n: {i for i in imp if i in modules and i != n} for n, imp in imports.items()}
    return edges, wiring


def test_pure_modules_never_import_wiring() -> None:
    edges, wiring = _graph()
    bad = sorted(f"{n} → {d}" for n, deps in edges.items() if n not in wiring for d in deps if d in wiring)
    assert not bad, bad


def test_no_domain_imports_another_domains_assets() -> None:
    edges, _ = _graph()
    bad = []
    for n, deps in edges.items():
        parts = n.split(".")
        if len(parts) < 2 or parts[1] in TOP_LEVEL_CROSS_DOMAIN or parts[1] == "sensors":
            continue
        for d in deps:
            dparts = d.split(".")
            if dparts[-1].endswith("assets") and dparts[1] != parts[1]:
                bad.append(f"{n} → {d}")
    assert not bad, bad


def test_the_import_graph_has_no_cycle() -> None:
    edges, _ = _graph()
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(n: str, path: list[str]) -> bool:
        state[n] = 1
        for d in sorted(edges.get(n, ())):
            if state.get(d) == 1:
                cycle.extend([*path, n, d])
                return True
            if d not in state and visit(d, [*path, n]):
                return True
        state[n] = 2
        return False

    for n in sorted(edges):
        if n not in state and visit(n, []):
            break
    assert not cycle, " → ".join(cycle)
