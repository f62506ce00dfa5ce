"""The command layer: the dispatcher, --help, one-line errors and --debug, and that the library never imports it."""

import errno
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import fingerprint
from fingerprint.cli import COMMANDS, main
from fingerprint.cli.options import run_command
from fingerprint.core.config import option
from fingerprint.core.errors import FingerprintError

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
    code = (
        "import sys, fingerprint.tasks.pipeline; assert not [m for m in sys.modules if m.startswith('fingerprint.cli')]"
    )
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


@dataclass(kw_only=True)
class _Cfg:
    SECTION = "echo"

    out: Path = option(help="output")
    k: int = option(1, min=1, help="a bound")


def _raises(exc: BaseException):
    def run(cfg):
        raise exc

    return run


@pytest.mark.parametrize(
    "exc, line",
    [
        (
            OSError(errno.ENOSPC, "No space left on device"),
            "fingerprint echo: error: o.bin: No space left on device (ENOSPC)",
        ),
        (
            PermissionError(errno.EACCES, "Permission denied", "/x/y"),
            "fingerprint echo: error: /x/y: Permission denied (EACCES)",
        ),
        (FingerprintError("a.txt: bad\nthing"), "fingerprint echo: error: a.txt: bad thing"),
        (MemoryError(), "fingerprint echo: error: out of memory (writing o.bin): use smaller batches"),
    ],
)
def test_user_and_environment_errors_are_one_line_exit_2(exc, line, capsys):
    """An OSError without a file name names the command's output; messages are joined to one line."""
    assert run_command("echo", _Cfg, _raises(exc), ["--out", "o.bin"], None) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [line]


def test_debug_shows_the_traceback(capsys, monkeypatch):
    exc = FingerprintError("a.txt: bad")
    assert run_command("echo", _Cfg, _raises(exc), ["--out", "o", "--debug"], None) == 2
    err = capsys.readouterr().err
    assert (
        "Traceback (most recent call last)" in err
        and err.strip().splitlines()[-1] == "fingerprint echo: error: a.txt: bad"
    )
    monkeypatch.setenv("FINGERPRINT_DEBUG", "1")
    assert run_command("echo", _Cfg, _raises(exc), ["--out", "o"], None) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.delenv("FINGERPRINT_DEBUG")
    with pytest.raises(ZeroDivisionError):  # a programming error keeps its traceback
        run_command("echo", _Cfg, lambda cfg: 1 / 0, ["--out", "o"], None)


def test_global_debug_flag_reaches_the_command(tmp_path, capsys):
    assert main(["--debug", "validate", str(tmp_path / "missing.csv")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "fingerprint validate: error: " in err and "run file not found" in err
    assert main(["validate", str(tmp_path / "missing.csv")]) == 2
    assert "Traceback" not in capsys.readouterr().err
