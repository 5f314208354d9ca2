"""The architecture, checked statically: module size, import cycles, and provider packages that
nothing else reaches into. Parses envkit/ with ``ast`` (imports nothing of it), so it is fast and
sees in-function imports as well as module-level ones."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "envkit"
MAX_LINES = 550
PROVIDER_PACKAGES = ("envkit.providers.local", "envkit.providers.aws")
# Where get_provider picks a provider by name: the one place allowed to import them.
PROVIDER_DOOR = "envkit.providers"

# Modules whose violations would be expected failures while a rework is under way: none now.
# Add one (with the reason) only for work that lands in pieces; remove it when it has landed.
PENDING_MODULES: frozenset[str] = frozenset()


def _pending(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in PENDING_MODULES)


def _judge(problems: dict[str, str], what: str) -> None:
    """Fail on problems outside the pending work; xfail (naming them) when only those remain.

    ``problems`` maps what is wrong (a module, or a cycle ``a -> b -> a``) to a description; it
    is pending when one of the modules it names is.
    """
    hard = {m: p for m, p in problems.items() if not any(map(_pending, m.split(" -> ")))}
    assert not hard, f"{what}:\n" + "\n".join(f"  {m}: {p}" for m, p in sorted(hard.items()))
    if problems:
        pytest.xfail(
            f"{what}, in work still under way:\n"
            + "\n".join(f"  {m}: {p}" for m, p in sorted(problems.items()))
        )


@cache
def modules() -> dict[str, Path]:
    """Every module of envkit/ by dotted name (a package by its ``__init__``)."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST, *, type_checking: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth; those under ``if TYPE_CHECKING:`` only when asked."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node) and not type_checking:
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The envkit modules an import statement loads (``from a import b``: ``a.b`` when that is
    a module, else ``a``)."""
    known = modules()
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module if known[module].name == "__init__.py" else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        names = [f"{base}.{alias.name}" for alias in node.names]
        names = [n if n in known else base for n in names]
    # Names outside envkit/ (a dependency, the stacks/ program mapped into the wheel) are skipped.
    yield from (name for name in names if name in known and name != module)


@cache
def imports(*, type_checking: bool) -> dict[str, frozenset[str]]:
    """module -> the envkit modules it imports, at module level or inside functions."""
    graph = {}
    for module, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        graph[module] = frozenset(
            target
            for node in _import_nodes(tree, type_checking=type_checking)
            for target in _targets(module, node)
        )
    return graph


def cycles(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """One concrete cycle per strongly connected component of ``graph`` (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_path_through(sorted(c)[0], c, graph) for c in components]


def _path_through(start: str, component: set[str], graph: dict[str, frozenset[str]]) -> list[str]:
    """A shortest cycle from ``start`` back to itself inside ``component`` (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & component):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start]
                if nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    return [start]


def test_the_checker_sees_in_function_imports_and_skips_type_checking() -> None:
    graph = imports(type_checking=False)
    assert "envkit.spec_files" in graph["envkit.settings"]
    assert "envkit.providers.local.provider" in graph["envkit.providers"]  # inside get_provider
    assert "envkit.spec" not in graph["envkit.providers"]  # under if TYPE_CHECKING
    assert cycles({"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"})}) == [
        ["a", "b", "c", "a"]
    ]


def test_no_module_is_oversized() -> None:
    sizes = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in modules().items()}
    _judge(
        {m: f"{n} lines" for m, n in sizes.items() if n > MAX_LINES},
        f"modules over {MAX_LINES} lines (split them by concern)",
    )


def test_no_import_cycles() -> None:
    found = cycles(imports(type_checking=False))
    _judge(
        {" -> ".join(cycle): "a cycle" for cycle in found},
        "import cycles (in-function imports count; TYPE_CHECKING ones do not)",
    )


@pytest.mark.parametrize("package", PROVIDER_PACKAGES)
def test_nothing_reaches_into_a_provider_package(package: str) -> None:
    problems = {}
    for module, targets in imports(type_checking=True).items():
        if module in (package, PROVIDER_DOOR) or module.startswith(package + "."):
            continue
        inside = sorted(t for t in targets if t.startswith(package + "."))
        if inside:
            problems[module] = "imports " + ", ".join(inside)
    _judge(problems, f"modules importing {package} internals (use the Provider protocol)")
