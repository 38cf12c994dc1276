"""The structure the build enforces beyond the import contracts: module size, and no import cycle at any level.

import-linter's ``acyclic_siblings`` contract sees cycles between siblings only; a
package's ``__init__`` importing a child that imports the package back is a cycle
it cannot see. This test looks at every module-to-module import of the real graph
(grimp, the graph import-linter itself uses), and shows on a throw-away package
that a parent/child cycle is caught.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grimp
import pytest

from tests.plugins.stack import ROOT

MAX_LINES = 400
SOURCES = ("src/maskserve", "frontend", "export", "benchmarks", "scripts")


def cycles(package: str) -> list[list[str]]:
    """Every set of modules of ``package`` that import each other, directly or not (Tarjan's SCC)."""
    graph = grimp.build_graph(package, include_external_packages=False, cache_dir=None)
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in edges.get(node, []):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for module in modules:
            if module not in index:
                visit(module)
    finally:
        sys.setrecursionlimit(limit)
    return found


def test_no_import_cycle_at_any_level():
    assert cycles("maskserve") == []


def test_a_cycle_between_a_package_and_its_child_is_caught(tmp_path, monkeypatch):
    package = tmp_path / "cyclic"
    (package / "inner").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "inner" / "__init__.py").write_text("from cyclic.inner.child import thing\n")
    (package / "inner" / "child.py").write_text("import cyclic.inner\n\nthing = 1\n")
    (package / "alone.py").write_text("import cyclic.inner.child\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cycles("cyclic") == [["cyclic.inner", "cyclic.inner.child"]]


def _sources() -> list[Path]:
    found: list[Path] = []
    for root in SOURCES:
        base = ROOT / root
        found += [p for p in base.rglob("*.py") if "migrations/versions" not in p.as_posix()]
    found += list((ROOT / "frontend" / "playground").glob("*.js"))
    return sorted({p.resolve() for p in found})


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_outside_the_tests_is_over_400_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines: split it by concern"
