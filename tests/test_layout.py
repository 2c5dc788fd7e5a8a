"""The package's shape: no import cycle (not even through a function-level import), products
that do not lean on each other, small modules and functions, one public API."""

from __future__ import annotations

import ast
from pathlib import Path

import distinct_counter
from distinct_counter import api

PACKAGE = Path(distinct_counter.__file__).parent
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if "migrations" in parts:
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``path`` imports, wherever the import statement stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in known:
                    found.add(sub)
                elif node.module in known:
                    found.add(node.module)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, set(mods)) - {name} for name, path in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle() -> None:
    edges = graph()
    assert "distinct_counter.counting.stale" in edges["distinct_counter.counting.deltas"]
    assert find_cycle(edges) is None


def test_products_do_not_import_each_other() -> None:
    """The router and the cache stand alone; the counters use neither."""
    edges = graph()
    products = ("counting", "routing", "cache")
    for name, targets in edges.items():
        mine = next((p for p in products if name.startswith(f"distinct_counter.{p}")), None)
        if mine is None:
            continue
        others = {
            t
            for t in targets
            for p in products
            if p != mine and t.startswith(f"distinct_counter.{p}")
        }
        assert not others, f"{name} imports {others}"


def test_library_code_never_imports_the_testing_helpers() -> None:
    for name, targets in graph().items():
        if not name.startswith("distinct_counter.testing"):
            assert not {t for t in targets if t.startswith("distinct_counter.testing")}, name


def test_modules_and_functions_are_small() -> None:
    too_long = []
    for name, path in modules().items():
        source = path.read_text()
        if source.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{name}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert not too_long


def test_the_package_reexports_exactly_the_public_api() -> None:
    assert distinct_counter._API == set(api.__all__)
    for name in api.__all__:
        assert getattr(distinct_counter, name) is getattr(api, name)
    for name in ("Counted", "_private", "__wrapped__"):
        assert not hasattr(distinct_counter, name)
