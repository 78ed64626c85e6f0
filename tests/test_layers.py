"""The import graph of the project's packages (STYLE.md): layers never import upward, and no two
modules need each other, counting imports inside functions and the package inits an import runs."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Each package may import only those below it: data_shards and foundation do not know each other,
# nor do pretext and finetune; cmrfm, the command line, sits on top.
MAY_IMPORT = {
    "cmrfm_io": set(),
    "data_shards": {"cmrfm_io"},
    "foundation": {"cmrfm_io"},
    "pretext": {"cmrfm_io", "data_shards", "foundation"},
    "finetune": {"cmrfm_io", "data_shards", "foundation"},
    "cmrfm": {"cmrfm_io", "data_shards", "foundation", "pretext", "finetune"},
}


def modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the project's packages."""
    found = {}
    for package in MAY_IMPORT:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules that importing ``name`` may run: every import in the file (at the top,
    in functions, but not under ``if TYPE_CHECKING``), with the package inits above each one."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = name.split(".")
                base = base[: len(base) - child.level + is_package] if child.level else []
                module = ".".join([*base, child.module] if child.module else base)
                found.update([module, *(f"{module}.{alias.name}" for alias in child.names)])
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    with_inits = set(found)
    for module in found:
        parts = module.split(".")
        with_inits.update(".".join(parts[:k]) for k in range(1, len(parts)))
    own_inits = {".".join(name.split(".")[:k]) for k in range(1, name.count(".") + 1)}
    return {m for m in with_inits if m in known and m != name and m not in own_inits}


def upward(graph: dict[str, set[str]]) -> list[str]:
    """``a -> b`` for each import of a package its layer may not import."""
    return sorted(
        f"{name} -> {target}"
        for name, targets in graph.items()
        for target in targets
        if (a := name.split(".")[0]) != (b := target.split(".")[0]) and b not in MAY_IMPORT[a]
    )


def circle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle (its modules, the first repeated at the end), or [] when there is none."""
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        return list(error.args[1])
    return []


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def test_the_graph_sees_the_project(graph: dict[str, set[str]]) -> None:
    assert len(graph) > 100
    assert "foundation.names" in graph["foundation.released"]
    assert "cmrfm.predict" in graph["cmrfm.cli.predict"]  # an import inside a function counts


def test_no_layer_imports_upward(graph: dict[str, set[str]]) -> None:
    assert upward(graph) == []


def test_no_import_circle(graph: dict[str, set[str]]) -> None:
    assert circle(graph) == []


def test_a_circle_and_an_upward_import_would_be_seen(tmp_path: Path) -> None:
    # A relative import inside a function, as the stream/views circle was, and a lazy import of
    # the command line from the data layer.
    path = tmp_path / "views.py"
    path.write_text("def f():\n    from .stream import x\n    from cmrfm.cli import main\n")
    known = {"data_shards.stream": path, "cmrfm.cli": path, "data_shards.views": path}
    found = imported("data_shards.views", path, known)
    assert found == {"data_shards.stream", "cmrfm.cli"}
    graph = {"data_shards.views": found, "data_shards.stream": {"data_shards.views"}}
    assert upward(graph) == ["data_shards.views -> cmrfm.cli"]
    assert set(circle(graph)) == {"data_shards.views", "data_shards.stream"}
