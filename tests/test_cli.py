"""The command layer: the dispatcher, every command's --help, and that the library never imports it."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import fingerprint
from fingerprint.cli import COMMANDS, main

PACKAGE = Path(fingerprint.__file__).parent


def test_nothing_outside_the_cli_imports_it():
    pattern = re.compile(r"fingerprint\.cli|from fingerprint import cli")
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{n}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if "cli" not in path.relative_to(PACKAGE).parts[:1]
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_the_library_imports_without_the_cli():
    code = "import sys, fingerprint.pipeline; assert not [m for m in sys.modules if m.startswith('fingerprint.cli')]"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_dispatcher(capsys):
    assert main([]) == 2 and "commands:" in capsys.readouterr().out
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == fingerprint.__version__
    assert main(["frobnicate"]) == 2 and "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_help_with_seed_and_config(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and f"fingerprint {name}" in out and "--config" in out and "--seed" in out
