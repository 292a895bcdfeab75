"""No import cycles: between modules under shoal/, and between its top-level packages.

The graph is read from the source with ``ast`` at test time: every ``import`` and
``from ... import`` counts, at module level or inside a function (a function-level
import is a cycle postponed, not removed); imports under ``if TYPE_CHECKING:`` do not
(they never run). ``from pkg import name`` counts as an import of ``pkg.name`` when that
is a module, else of ``pkg``. Importing ``a.b.c`` also runs ``a/__init__`` and
``a/b/__init__``, but package ``__init__`` files here are docstrings or re-exports, so
only the named module is counted.

Packages: the allowed directions are ``PACKAGE_ORDER`` (a package may import only
packages listed before it, and the top-level modules it names). Command modules
(``*/cli.py``, ``shoal/cli.py``) are composition roots: they wire stages together (e.g.
``shoal serve`` plugs the jobs extension into the server) and are left out of the package
check, not the module check.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHOAL = ROOT / "shoal"

# Lower layers first. A package may import a package listed before it, never one after.
PACKAGE_ORDER = [
    "shoal", "shoal.errors", "shoal.yaml_models", "shoal.ids", "shoal.cache_dirs", "shoal.config", "shoal.devices",
    "shoal.samples", "shoal.artifacts", "shoal.graphs",
    "shoal.store",
    "shoal.spec",
    "shoal.family",
    "shoal.vision",
    "shoal.server",
    "shoal.trace",
    "shoal.pack",
    "shoal.capacity",
    "shoal.jobs",
    "shoal.deploy",
    "shoal.loadtest",
]
ALLOWED_PACKAGE_EDGES: set[tuple[str, str]] = set()  # (importer, imported) against PACKAGE_ORDER: keep empty


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in SHOAL.rglob("*.py")}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, this: str, is_package: bool, modules: dict[str, Path]) -> set[str]:
    found: set[str] = set()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("shoal") and (target := resolve(alias.name)):
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = this.split(".") if is_package else this.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.startswith("shoal"):
                for alias in node.names:
                    target = resolve(f"{source}.{alias.name}") if f"{source}.{alias.name}" in modules else resolve(
                        source)
                    if target:
                        found.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(this)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: _imports(ast.parse(path.read_text()), name, path.name == "__init__.py", modules)
            for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    import sys

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return sorted(out)


def _path(graph: dict[str, set[str]], comp: list[str]) -> str:
    """One concrete loop through the component, to say where to cut."""
    members = set(comp)
    start = comp[0]
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    loop = [start]
                    while v != start:
                        loop.append(v)
                        v = prev[v]
                    return " -> ".join([start, *reversed(loop[1:]), start])
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return ", ".join(comp)


def test_no_module_cycles() -> None:
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(_path(graph, c) for c in found)


def package_of(module: str) -> str:
    """The entry of PACKAGE_ORDER a module belongs to (its top-level package or module)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def _is_command(module: str) -> bool:
    return module in ("shoal.cli", "shoal.build_cli", "shoal.capacity_cli", "shoal.__init__", "shoal") or \
        module.endswith(".cli") or module.endswith(".__main__")


def test_packages_import_only_lower_layers() -> None:
    rank = {name: i for i, name in enumerate(PACKAGE_ORDER)}
    graph = import_graph()
    wrong = []
    for module, targets in graph.items():
        if _is_command(module):
            continue
        src = package_of(module)
        for target in targets:
            dst = package_of(target)
            if src == dst or (src, dst) in ALLOWED_PACKAGE_EDGES:
                continue
            assert src in rank, f"{src} is not in PACKAGE_ORDER: place it among the layers"
            assert dst in rank, f"{dst} is not in PACKAGE_ORDER: place it among the layers"
            if rank[dst] > rank[src]:
                wrong.append(f"{module} imports {target} ({src} is below {dst} in PACKAGE_ORDER)")
    assert not wrong, "imports against the layer order:\n" + "\n".join(sorted(wrong))


def test_the_store_commands_import_no_later_stage() -> None:
    """`shoal models synth` is the trace stage's: its command module adds it to the store's group."""
    graph = import_graph()
    store = [m for m in graph if m.startswith("shoal.store")]
    assert [(m, t) for m in store for t in graph[m] if t.startswith("shoal.trace")] == []


def test_the_graph_sees_function_level_imports_and_skips_type_checking() -> None:
    graph = import_graph()
    assert "shoal.server.grpc.server" in graph["shoal.server.process"]  # imported inside running()
    assert "shoal.server.runtime" not in graph["shoal.server.process"]  # only under TYPE_CHECKING
    assert all(targets <= set(graph) for targets in graph.values())
    edges: dict[str, int] = defaultdict(int)
    for targets in graph.values():
        for t in targets:
            edges[t] += 1
    assert edges["shoal.errors"] > 10
