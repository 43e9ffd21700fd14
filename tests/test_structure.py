"""The package's shape: no import cycle between its modules, no module past 600 lines, and a
wheel that carries the schema documents."""

from __future__ import annotations

import ast
import zipfile
from pathlib import Path

import pytest
from helpers.stores import ROOT

PACKAGE = ROOT / "src" / "prebake"
MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports: every import statement, at the top, inside
    functions and in TYPE_CHECKING blocks alike. `from a import b` names module `a.b` where
    that is a module, else `a`; relative imports are resolved. An edge goes to the module named,
    not to the packages above it (importing `a.b` runs `a/__init__.py` first, but a package
    that re-exports its modules would otherwise be a cycle with each of them)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            graph[name].update(target for target in targets if target in modules)
        graph[name].discard(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert "prebake.build.builder" in graph and "prebake.errors" in graph
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Modules `start` imports, directly or through others."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in graph[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return seen


def test_errors_import_nothing_of_the_package() -> None:
    assert import_graph()["prebake.errors"] == set()


# The worker side of a build: the unit, and the resizers only it runs (Pillow, or torch on a device).
WORKER_SIDE = {"prebake.build.unit", "prebake.build.resizing"}


def test_the_worker_side_knows_no_executor() -> None:
    """Executors run `prebake.build.unit`; the unit knows neither them nor the orchestration."""
    graph = import_graph()
    assert "prebake.build.unit" in graph["prebake.build.pool"]
    assert "prebake.build.unit" in graph["prebake.build.dask"]
    above = {name for name in graph if name.startswith("prebake.build")} - WORKER_SIDE
    assert reachable(graph, "prebake.build.unit") & above == set()
    assert reachable(graph, "prebake.build.unit") & WORKER_SIDE == WORKER_SIDE - {
        "prebake.build.unit"
    }


def test_no_module_is_over_600_lines() -> None:
    lengths = {
        module_name(path): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")
    }
    assert {name: n for name, n in lengths.items() if n > MAX_LINES} == {}


def test_the_wheel_carries_the_schema_documents(project_wheel: Path) -> None:
    """`pip wheel` of the project holds the package and its schema documents (package data)."""
    names = set(zipfile.ZipFile(project_wheel).namelist())
    schemas = sorted(path.name for path in (PACKAGE / "schemas").glob("*.json"))
    assert schemas, "the package holds its schema documents"
    for schema in schemas:
        assert f"prebake/schemas/{schema}" in names
    assert "prebake/build/builder.py" in names and "prebake/py.typed" in names


@pytest.mark.parametrize("name", ["prebake", "prebake.reader", "prebake.verify"])
def test_public_names_import(name: str) -> None:
    module = __import__(name, fromlist=["*"])
    for attribute in getattr(module, "__all__", []):
        assert getattr(module, attribute) is not None
