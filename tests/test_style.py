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
