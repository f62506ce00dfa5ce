"""The package's layering: every import (module level, inside functions, under TYPE_CHECKING) runs one way.

core <- data, evaluation, imaging <- embedding <- training <- membership <- analysis <- report <- tasks <- cli,
and the benchmark builder (benchdata) imports only core, imaging and evaluation. No module imports
another of its own rank in another subpackage, and no import cycle exists among modules or subpackages.
"""

from __future__ import annotations

import ast
from pathlib import Path

import fingerprint

PACKAGE = Path(fingerprint.__file__).parent

#: subpackage -> rank; a module may import its own subpackage and those of a strictly lower rank
RANKS = {
    "core": 0,
    "data": 1,
    "evaluation": 1,
    "imaging": 1,
    "embedding": 2,
    "training": 3,
    "membership": 4,
    "analysis": 5,
    "report": 6,
    "tasks": 7,
    "cli": 8,
    "api": 8,
    "__main__": 9,
}
#: the benchmark builder sits beside the detector, not on it
BENCHDATA_MAY_IMPORT = {"core", "imaging", "evaluation", "benchdata"}
#: the only packages that may import the benchmark builder
IMPORTS_BENCHDATA = {"tasks", "cli", "api", "benchdata"}


def module_names() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("fingerprint",) + path.relative_to(PACKAGE).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every fingerprint module `module` imports, wherever the import statement sits."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name, modules) if name.startswith("fingerprint") else None
            if target and target != module:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    modules = module_names()
    return {m: imports(m, p, modules) for m, p in modules.items()}


def layer(module: str) -> str | None:
    """The subpackage (or top-level module) a module belongs to; None for the package root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def violations(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(edges.items()):
        src = layer(module)
        for target in sorted(targets):
            dst = layer(target)
            if src is None or dst is None or src == dst:
                continue
            if src == "benchdata":
                ok = dst in BENCHDATA_MAY_IMPORT
            elif dst == "benchdata":
                ok = src in IMPORTS_BENCHDATA
            else:
                ok = RANKS[dst] < RANKS[src]
            if not ok:
                bad.append(f"{module} imports {target}")
    return bad


def test_every_module_belongs_to_a_ranked_subpackage():
    unknown = {layer(m) for m in graph()} - set(RANKS) - {"benchdata", None}
    assert not unknown, f"modules outside the layering: {sorted(unknown)}"


def test_imports_follow_the_layering():
    assert violations(graph()) == []


def test_no_import_cycle_among_modules():
    assert cycles(graph()) == []


def test_no_import_cycle_among_subpackages():
    packages: dict[str, set[str]] = {}
    for module, targets in graph().items():
        src = layer(module) or "fingerprint"
        packages.setdefault(src, set()).update(layer(t) or "fingerprint" for t in targets if layer(t) != src)
    assert cycles(packages) == []


def test_at_most_fifteen_modules_sit_directly_in_the_package():
    assert len(list(PACKAGE.glob("*.py"))) <= 15


def test_the_check_finds_a_cycle_and_an_upward_import():
    edges = {"fingerprint.core.a": {"fingerprint.tasks.b"}, "fingerprint.tasks.b": {"fingerprint.core.a"}}
    assert cycles(edges) == [["fingerprint.core.a", "fingerprint.tasks.b"]]
    assert violations(edges) == ["fingerprint.core.a imports fingerprint.tasks.b"]
    assert violations({"fingerprint.benchdata.x": {"fingerprint.membership.y"}}) == [
        "fingerprint.benchdata.x imports fingerprint.membership.y"
    ]


def test_imports_inside_functions_and_type_checking_blocks_count(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from fingerprint.tasks import pipeline\n"
        "def f():\n    from fingerprint.core.errors import FingerprintError\n"
    )
    modules = {"fingerprint.tasks.pipeline": path, "fingerprint.core.errors": path, "fingerprint.x.m": path}
    assert imports("fingerprint.x.m", path, modules) == {"fingerprint.tasks.pipeline", "fingerprint.core.errors"}
