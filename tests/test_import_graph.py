"""The package's import graph has no circle, function-level (lazy) imports included.

A lazy import inside a function hides a circle from Python (the import runs after both modules
are loaded) but not from a reader: two modules that need each other are one module in two files.
The graph is read from the source with ``ast`` (nothing is imported), so the test runs on a core
install too. Imports under ``if TYPE_CHECKING:`` are left out: they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "selectllm_local"


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, here: str, is_pkg: bool) -> list[tuple[str, list[str]]]:
    """What this file imports at run time: (module, names taken from it), relative forms resolved."""
    found: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")
                anchor = anchor if is_pkg else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((base, [alias.name for alias in node.names]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (a name that is not a module is dropped)."""
    modules = _module_names()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[name] = set()
        for base, names in _imports(tree, name, path.name == "__init__.py"):
            # ``from pkg import sub`` needs the submodule, not the package's own code (a
            # parent package's __init__ runs first on any import and is not an edge here).
            subs = {f"{base}.{n}" for n in names if f"{base}.{n}" in modules}
            graph[name] |= subs
            if base in modules and (not names or len(subs) < len(names)):
                graph[name].add(base)
        graph[name].discard(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
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
    return found


def test_the_cycle_finder_sees_a_lazy_circle() -> None:
    source = "def f():\n    from pkg import b\n"
    edges = _imports(ast.parse(source), "pkg.a", is_pkg=False)
    assert ("pkg", ["b"]) in edges
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    typed = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import b\n"
    assert ("pkg", ["b"]) not in _imports(ast.parse(typed), "pkg.a", is_pkg=False)


def test_the_package_has_no_import_circle() -> None:
    graph = import_graph()
    assert len(graph) > 50, "the package was not found"
    found = cycles(graph)
    assert not found, "import circles (lazy imports included):\n" + "\n".join(
        " <-> ".join(c) for c in found
    )
