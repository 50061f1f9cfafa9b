"""The house rules that keep the code simple, checked on the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

import hat

PACKAGE = Path(hat.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The hat modules a file imports anywhere in it (functions included; not under
    ``if TYPE_CHECKING``): ``from hat.x import y`` counts ``hat.x.y`` when that is a module."""
    tree = ast.parse(path.read_text())
    skip = {
        id(node)
        for top in ast.walk(tree)
        if isinstance(top, ast.If) and "TYPE_CHECKING" in ast.unparse(top.test)
        for node in ast.walk(top)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "hat")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "hat":
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return found & known


def test_hat_has_no_import_cycle() -> None:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    graph = {name: imported_modules(path, known) - {name} for name, path in files.items()}
    # a module of a subpackage importing that subpackage's __init__ (``from hat.data import x``
    # inside hat/data/) is what packages do; every other edge must keep the graph acyclic
    for name, deps in graph.items():
        graph[name] = {d for d in deps if d == "hat" or not name.startswith(d + ".")}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep) :] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_only_the_registry_asks_which_kind_a_model_is() -> None:
    asking = [
        f"{path.relative_to(PACKAGE.parent)}:{n}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "registry.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "model_type ==" in line or "model_type !=" in line
    ]
    assert not asking, asking
