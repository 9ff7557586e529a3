"""The package's layout: imports go one way, so no two modules import each other."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import ipytasks

PACKAGE = Path(ipytasks.__file__).parent


def _module_name(path: Path) -> tuple[str, list[str]]:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
        return ".".join(parts), parts
    return ".".join(parts), parts[:-1]


def _runtime_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run (those under ``if TYPE_CHECKING:`` only inform the type checker),
    ``importlib.import_module("ipytasks.x")`` included."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        if (isinstance(node, ast.Call) and ast.unparse(node.func).endswith("import_module")
                and node.args and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)):
            found.append(ast.Import(names=[ast.alias(node.args[0].value)]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module → the package's modules it imports (at the top or inside a function)."""
    paths = {_module_name(p)[0]: p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        _, package = _module_name(path)
        deps: set[str] = set()
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
                continue
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                deps.add(sub if sub in paths else module)
        graph[name] = {d for d in deps if d in paths and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []
    counter = itertools.count()

    def connect(v: str) -> None:
        index[v] = low[v] = next(counter)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in graph:
        if v not in index:
            connect(v)
    return found


def test_no_two_modules_import_each_other() -> None:
    """The dashboard gets its actions handed in, the records do not reach up to the API:
    every import goes one way."""
    assert cycles(import_graph()) == []


def test_the_cycle_check_sees_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


#: What the worker runtime may import, and only inside a function (where it is there).
WORKER_RUNTIME_EXTRAS = {"cloudpickle", "distributed", "matplotlib"}


def test_the_worker_runtime_imports_only_itself_and_the_standard_library() -> None:
    """``workers/`` runs where ipytasks is not installed (a worker process, a Dask worker):
    its modules import each other (relatively) and the standard library; cloudpickle,
    distributed and matplotlib only inside functions; nothing else of ipytasks."""
    import sys

    folder = PACKAGE / "workers"
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text())
        top_level = {id(node) for node in tree.body}
        for node in _runtime_imports(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1, (path.name, ast.unparse(node))
                assert node.module is None or (folder / f"{node.module}.py").exists()
                continue
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [
                a.name for a in node.names]
            for name in names:
                top = name.partition(".")[0]
                where = f"{path.name}: {ast.unparse(node)}"
                if top in WORKER_RUNTIME_EXTRAS:
                    assert id(node) not in top_level, where
                else:
                    assert top in sys.stdlib_module_names or top == "__future__", where


def test_a_cell_is_analysed_once_where_it_is_compiled() -> None:
    """Only cells.py analyses a cell's tree (its CompiledCell keeps the answer); the other
    callers of the analysis read ``cell.names`` (dependencies.py analyses a --map EXPR,
    which is no cell)."""
    callers = {}
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "namespace" and path.name == "analysis.py":
            continue
        tree = ast.parse(path.read_text())
        calls = [ast.unparse(node) for node in ast.walk(tree) if isinstance(node, ast.Call)
                 and ast.unparse(node.func) in ("analyze", "analysis.analyze")]
        if calls:
            callers[_module_name(path)[0]] = calls
    assert callers == {
        "ipytasks.cells": ["analyze(tree)"],
        "ipytasks.dependencies": ["analyze(_expression_module(expr))"],
    }
