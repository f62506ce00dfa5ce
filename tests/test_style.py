"""House rules that a linter does not check: library functions short enough to read at once."""

import ast
from pathlib import Path

import fingerprint

MAX_LINES = 80


def test_no_library_function_is_over_80_lines():
    long = []
    for path in sorted(Path(fingerprint.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_LINES:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({n} lines)")
    assert long == []


def test_pre_commit_runs_the_checks_of_ci():
    import yaml

    root = Path(__file__).resolve().parent.parent
    hooks = yaml.safe_load((root / ".pre-commit-config.yaml").read_text())["repos"][0]["hooks"]
    ci = (root / ".ci" / "run").read_text()
    entries = {h["entry"] for h in hooks}
    assert entries == {"ruff check", "ruff format --check"}
    assert all(f".venv/bin/{e} ." in ci for e in entries)


def test_every_subpackage_says_what_it_holds_and_may_import():
    for init in sorted(Path(fingerprint.__file__).parent.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert doc, f"{init}: no docstring"
        if init.parent.name not in ("cli",):
            assert "import" in doc, f"{init}: the docstring does not say what the package may import"
