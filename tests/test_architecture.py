"""The layout the architecture asks for, checked on the source: module sizes, the
package root, and no import cycle between xtec modules (imports inside functions
count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import xtec

PACKAGE = Path(xtec.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of the package that ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_cycle_finder_sees_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_past_600_lines():
    long = {name: n for name, path in _modules().items()
            if (n := len(path.read_text().splitlines())) > 600}
    assert long == {}


def test_package_root_holds_few_modules():
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root) <= 12, root


def test_lower_layers_do_not_import_higher_ones():
    """Data flows io -> preprocess -> mixture/spatial -> pipeline -> results/cli."""
    graph = import_graph()
    order = ["xtec.io", "xtec.preprocess", "xtec.mixture", "xtec.spatial", "xtec.pipeline",
             "xtec.results", "xtec.cli"]
    rank = {stage: i for i, stage in enumerate(order)}

    def stage(name):
        return next((s for s in order if name == s or name.startswith(s + ".")), None)

    wrong = [(a, b) for a, deps in graph.items() for b in deps
             if stage(a) and stage(b) and rank[stage(b)] > rank[stage(a)]]
    assert wrong == []


def test_public_api_resolves():
    """Every name ``xtec`` promises (``from xtec import ...``) imports."""
    for name in xtec.__all__:
        assert getattr(xtec, name) is not None, name
