"""The three layers, read from the source: maskformer_core <- pipeline <- flows, no cycles, no private calls.

Every module's run-time imports (module top and function bodies alike: a local import is still a
dependency; `if TYPE_CHECKING:` blocks are annotations only) are read with `ast`, so nothing is imported here. The rules (docs/ARCHITECTURE.md "Layers"):

- a module imports only its own layer or a lower one; maskformer_core imports none of the orchestration
  tools either (MLflow, Prefect, DVC, submitit);
- the project's modules form no import cycle;
- no module reaches into another module's private names (`from x import _y`, `x._y`).

The one exception is `pipeline/__main__.py`, the program's entry point, which composes the CLI of
pipeline/commands/ with flows/commands.py; nothing imports it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = {"maskformer_core": 0, "pipeline": 1, "flows": 2}
ENTRY_POINTS = {"pipeline.__main__"}
CORE_FORBIDDEN = ("mlflow", "prefect", "dvc", "submitit", "pipeline", "flows")


def _modules() -> dict[str, Path]:
    out = {}
    for package in LAYERS:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = _modules()


def _runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:` (annotations only: never imported at run time)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                todo.extend(child.orelse)
                continue
            todo.append(child)


def _imports(name: str, path: Path) -> list[tuple[str, int, list[str]]]:
    """(imported module, line, names taken from it) for every import statement of the module."""
    is_package = path.name == "__init__.py"
    out = []
    for node in _runtime_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.extend((alias.name, node.lineno, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = [a.name for a in node.names]
            submodules = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
            if submodules:
                out.extend((m, node.lineno, []) for m in submodules)
            rest = [n for n in names if f"{module}.{n}" not in MODULES]
            if rest or not submodules:
                out.append((module, node.lineno, rest))
    return out


def _project_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        for module, _line, _names in _imports(name, path):
            if module in MODULES and module != name:
                edges.setdefault(name, set()).add(module)
    return edges


def test_the_walk_sees_every_package() -> None:
    """The checks below read real modules (a broken walk would pass them vacuously)."""
    assert {"maskformer_core.models.build", "pipeline.grid", "pipeline.engine", "flows.study"} <= set(MODULES)
    edges = _project_edges()
    assert "pipeline.params" in edges["pipeline.grid"] and "pipeline.study" in edges["flows.study"]


def test_no_upward_import() -> None:
    bad = []
    for name, path in MODULES.items():
        if name in ENTRY_POINTS:
            continue
        layer = LAYERS[name.split(".")[0]]
        for module, line, _names in _imports(name, path):
            top = module.split(".")[0]
            if top in LAYERS and LAYERS[top] > layer:
                bad.append(f"{path.relative_to(REPO)}:{line}: {name} (layer {layer}) imports {module} (layer {LAYERS[top]})")
            elif name.startswith("maskformer_core") and top in CORE_FORBIDDEN:
                bad.append(f"{path.relative_to(REPO)}:{line}: maskformer_core imports {module}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle() -> None:
    edges = _project_edges()
    # A package's __init__ that re-exports its submodules is imported by them only through the package
    # path itself (Python initialises the package first); that pair is not a cycle between modules.
    for name in list(edges):
        edges[name] = {m for m in edges[name] if not name.startswith(m + ".")}
    cycles = _cycles(edges)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_private_cross_module_access() -> None:
    bad = []
    for name, path in MODULES.items():
        aliases: dict[str, str] = {}
        tree = ast.parse(path.read_text(), filename=str(path))
        for module, line, names in _imports(name, path):
            if module in MODULES and module != name:
                bad += [f"{path.relative_to(REPO)}:{line}: from {module} import {n}" for n in names
                        if n.startswith("_") and not n.startswith("__")]
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                for a in node.names:
                    if f"{node.module}.{a.name}" in MODULES:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname and a.name in MODULES:
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")
                    and aliases[node.value.id] != name):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value.id}.{node.attr} "
                           f"(private name of {aliases[node.value.id]})")
    assert not bad, "private names used across modules:\n" + "\n".join(sorted(set(bad)))


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_every_module_says_what_it_is_for(package: str) -> None:
    """STYLE.md: each file's first line says what it is for (a module docstring)."""
    missing = [str(p.relative_to(REPO)) for n, p in MODULES.items() if n.split(".")[0] == package
               and p.read_text().strip() and ast.get_docstring(ast.parse(p.read_text())) is None]
    assert not missing, f"modules without a docstring: {', '.join(missing)}"
