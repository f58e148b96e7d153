"""The import graph: no circles, and dependencies point one way (text/audio -> data -> models ->
training/eval -> entry points); the library below its entry points never imports the generators.

Every import counts, at module level or inside a function (a lazy import is still a dependency);
only ``if TYPE_CHECKING:`` blocks are left out. The graph is read from the source with ``ast``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("granite_train", "data_prep")

# layer of each part of granite_train: a module may import its own layer and the ones below
LAYERS = {
    "granite_train.typed_config": 0,
    "granite_train.text": 0,
    "granite_train.audio": 0,
    "granite_train.speech_format": 1,
    "granite_train.data": 2,
    "granite_train.models": 3,
    "granite_train.training": 4,
    "granite_train.eval": 4,
    "granite_train.recipes": 5,
    "granite_train.demo": 6,
    "granite_train.finetune": 6,
    "granite_train.add_language": 6,
    "granite_train.workflows": 6,
    "granite_train.cli": 7,
}
ENTRY_POINTS = (
    "granite_train.recipes",
    "granite_train.demo",
    "granite_train.finetune",
    "granite_train.add_language",
    "granite_train.cli",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (``from pkg import mod`` names ``pkg.mod`` when it is one)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + [base]
                ).strip(".")
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return {m for m in found if m in known and m != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, name, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def _part(module: str) -> str | None:
    return max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)


def test_the_graph_reader_sees_lazy_imports_and_skips_type_checking(tmp_path):
    code = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.b\n"
        "def f():\n    from pkg import c\n    from . import d\n"
    )
    (tmp_path / "a.py").write_text(code)
    found = _imports(tmp_path / "a.py", "pkg.a", {"pkg.a", "pkg.b", "pkg.c", "pkg.d"})
    assert found == {"pkg.c", "pkg.d"}


def test_a_cycle_is_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles(graph):
    assert _cycles(graph) == []


def test_every_granite_train_module_has_a_layer(graph):
    unplaced = [m for m in graph if m.startswith("granite_train.") and _part(m) is None]
    assert unplaced == []


def test_dependencies_point_one_way(graph):
    upward = []
    for module, imports in graph.items():
        part = _part(module)
        if part is None:
            continue
        for target in imports:
            target_part = _part(target)
            if target_part is not None and LAYERS[target_part] > LAYERS[part]:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_the_library_below_its_entry_points_never_imports_the_generators(graph):
    below = [m for m in graph if m.startswith("granite_train.") and not m.startswith(ENTRY_POINTS)]
    offending = sorted(f"{m} -> {t}" for m in below for t in graph[m] if t.startswith("data_prep"))
    assert offending == []
