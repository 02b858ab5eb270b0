"""The package's arrows and sizes: cli -> engines -> components, nothing imports upward (not even inside a function),
the components import one another without a cycle, medseg.fundus stands on no other component, and no function is
longer than 80 lines."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medseg"
COMPONENTS = ("data", "fundus", "networks", "metrics", "inference", "tracking")
# a package may import from its own layer and those below: shared modules (utils, resources, losses) at 0
LAYERS = {"cli": 3, "__main__": 3, "engines": 2, **{name: 1 for name in COMPONENTS}}
MAX_FUNCTION_LINES = 80


def imported_packages(source: str) -> set[str]:
    """The medseg packages (``data``, ``cli``, ...) or top-level modules a module's source imports, at any depth
    of its code (lazy imports inside functions included)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("medseg"):
            parts = node.module.split(".")
            found.update([parts[1]] if len(parts) > 1 else (alias.name for alias in node.names))
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("medseg."))
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """``{package: the other packages it imports}`` over every module under ``root``."""
    graph = defaultdict(set)
    for path in root.rglob("*.py"):
        package = path.relative_to(root).parts[0].removesuffix(".py")
        graph[package] |= imported_packages(path.read_text()) - {package}
    return graph


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph``, as the packages along it, or ``None``."""
    visiting, done = [], set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return visiting[visiting.index(node):] + [node]
        if node in done:
            return None
        visiting.append(node)
        for target in sorted(graph.get(node, ())):
            if (cycle := visit(target)) is not None:
                return cycle
        visiting.pop()
        done.add(node)
        return None

    return next((cycle for node in sorted(graph) if (cycle := visit(node)) is not None), None)


def test_nothing_imports_upward():
    upward = [f"{package} imports {target}" for package, targets in import_graph(PACKAGE).items()
              for target in targets if LAYERS.get(target, 0) > LAYERS.get(package, 0)]
    assert not upward, upward


def test_the_components_import_one_another_without_a_cycle():
    graph = import_graph(PACKAGE)
    components = {package: graph[package] & set(COMPONENTS) for package in COMPONENTS}
    assert cycle_in(components) is None, cycle_in(components)


@pytest.mark.parametrize(("package", "forbidden"), [("fundus", set(COMPONENTS) - {"fundus"}), ("data", {"inference"})])
def test_the_domain_and_the_data_stand_apart_from_inference(package, forbidden):
    assert not import_graph(PACKAGE)[package] & forbidden


def test_no_function_is_longer_than_80_lines():
    long = [f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in PACKAGE.rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long


def test_the_checks_find_a_lazy_upward_import_and_a_cycle(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "reader.py").write_text("def read():\n    from medseg.inference.io import read_image\n")
    (tmp_path / "inference").mkdir()
    (tmp_path / "inference" / "io.py").write_text("from medseg.data import read_pixels\n")
    graph = import_graph(tmp_path)
    assert graph["data"] == {"inference"} and graph["inference"] == {"data"}
    assert cycle_in(graph) in (["data", "inference", "data"], ["inference", "data", "inference"])
    assert imported_packages("from medseg.engines import x") == {"engines"}
