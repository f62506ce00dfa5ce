"""The one command-line helper: every subcommand's flags come from its config dataclass.

`build_parser(command, ConfigClass)` turns each config field into a flag
(`image_size` -> `--image-size`; positional fields stay positional): bools
become `--x/--no-x`, tuples take comma-separated lists (or several
positional values), `X | None` fields default to None, and the field's help
and choices become the flag's. `parse_config` applies a `--config` TOML or
YAML file first (top-level keys plus a `[command]` table; keys are flag
names with dashes or underscores; flags on the command line override it;
an unknown key or a bad value names the file and the key), then builds the
config, which checks itself. `run_command` runs a command and turns a
user or environment error (our FingerprintError, an OSError such as a full
disk or a read-only folder, running out of memory) into one line
`fingerprint <command>: error: <file or flag>: <cause>` and exit code 2,
with `<command>.<field>` rewritten as the field's flag: the only place
fields are mapped to flags. `--debug` (per command, or `fingerprint --debug
<command>`) prints the traceback too. The pattern is
SSCD's `add_arguments` / `call_using_args`
(facebookresearch/sscd-copy-detection, sscd/lib/util.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm import tqdm

from fingerprint.core.config import FieldSpec, coerce, fields_of, load_config_file, values_from_mapping
from fingerprint.core.errors import FingerprintError, os_error_text
from fingerprint.core.logs import setup_logging
from fingerprint.data import urls

#: set to 1 to show tracebacks of every command (what --debug does)
DEBUG_ENV = "FINGERPRINT_DEBUG"


def _help(spec: FieldSpec) -> str:
    text = spec.help
    if spec.kind is bool or spec.required or spec.default in (None, False, ()):
        return text
    default = ",".join(map(str, spec.default)) if spec.many else spec.default
    return f"{text} (default: {default})"


def _converter(spec: FieldSpec, command: str) -> Callable[[str], Any]:
    """argparse `type` of a flag: the field's kind (a comma list for tuples), errors in argparse's words."""

    def convert(text: str) -> Any:
        try:
            return coerce(spec, text, where=f"fingerprint {command}", key=spec.flag)
        except FingerprintError as e:
            raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1]) from None

    return convert


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, command: str) -> None:
    """One argument per field of the config dataclass `cls`."""
    for spec in fields_of(cls):
        kw: dict[str, Any] = {"help": _help(spec)}
        if spec.positional:
            kw |= {"metavar": spec.metavar or spec.name.upper(), "type": spec.parse or spec.kind}
            nargs = "+" if spec.many else ("?" if spec.optional and not spec.required else None)
            parser.add_argument(spec.name, nargs=nargs, **kw)
        elif spec.kind is bool and not spec.many:
            default = None if spec.required else spec.default
            parser.add_argument(spec.flag, dest=spec.name, action=argparse.BooleanOptionalAction, default=default, **kw)
        else:
            scalar_choices = spec.choices if not spec.many else None
            default = None if spec.required else spec.default
            parser.add_argument(
                spec.flag,
                dest=spec.name,
                type=_converter(spec, command),
                choices=scalar_choices,
                default=default,
                required=spec.required,
                metavar=spec.metavar,
                **kw,
            )


def build_parser(command: str, cls: type, description: str | None = None) -> argparse.ArgumentParser:
    """The parser of `fingerprint <command>`: `--config` plus the fields of `cls`."""
    parser = argparse.ArgumentParser(prog=f"fingerprint {command}", description=description)
    parser.add_argument("--config", help="TOML or YAML file holding any of these flags (flags override it)")
    parser.add_argument("--debug", action="store_true", help="on an error, print the traceback too")
    network = parser.add_argument_group("network reads (http(s) shards and manifests)")
    network.add_argument(
        "--stall-timeout", type=int, metavar="SECONDS",
        help=f"abandon a transfer that sends nothing for this long (default {urls.DEFAULT_STALL_SECONDS}, or "
        f"${urls.STALL_ENV})",
    )  # fmt: skip
    network.add_argument(
        "--retries", type=int, metavar="N",
        help=f"retries of a stalled or failed transfer (default {urls.DEFAULT_RETRIES}, or ${urls.RETRIES_ENV})",
    )  # fmt: skip
    add_config_arguments(parser, cls, command)
    return parser


def apply_config_file(parser: argparse.ArgumentParser, cls: type, path: str) -> None:
    """Install a config file's values as the parser's defaults (its required flags then become optional)."""
    values = values_from_mapping(cls, load_config_file(path, cls.SECTION), path)
    for action in parser._actions:
        if action.dest in values:
            action.required = False
    parser.set_defaults(**values)


def parse_config(command: str, cls: type, argv: Sequence[str], description: str | None = None) -> Any:
    """The config `cls` from `argv` (and its `--config` file); argparse exits on a malformed command line."""
    parser = build_parser(command, cls, description)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        apply_config_file(parser, cls, known.config)
    ns = vars(parser.parse_args(argv))
    if ns.get("stall_timeout") is not None and ns["stall_timeout"] < 1:
        raise FingerprintError(f"--stall-timeout must be >= 1, got {ns['stall_timeout']}")
    if ns.get("retries") is not None and ns["retries"] < 0:
        raise FingerprintError(f"--retries must be >= 0, got {ns['retries']}")
    urls.set_network_limits(ns.get("stall_timeout"), ns.get("retries"))
    values = {}
    for spec in fields_of(cls):
        value = ns[spec.name]
        values[spec.name] = tuple(value) if spec.many and isinstance(value, list) else value
    return cls(**values)


def flags_in(message: str, cls: type) -> str:
    """`message` with every `<section>.<field>` of `cls` written as that field's flag."""
    section = re.escape(cls.SECTION)
    specs = {spec.name: spec for spec in fields_of(cls)}

    def flag(m: re.Match) -> str:
        spec = specs.get(m.group(1))
        return m.group(0) if spec is None else (spec.name.upper() if spec.positional else spec.flag)

    return re.sub(rf"\b{section}\.([a-z_][a-z0-9_]*)\b", flag, message)


def error_line(command: str, cls: type, e: BaseException, cfg: Any = None) -> str:
    """The one line a user or environment error becomes: `fingerprint <command>: error: <file or flag>: <cause>`."""
    if isinstance(e, OSError):
        where = e.filename if e.filename is not None else _output_of(cfg)
        text = f"{where}: {os_error_text(e)}" if where is not None else os_error_text(e)
    elif isinstance(e, MemoryError):
        text = f"out of memory{f' (writing {_output_of(cfg)})' if _output_of(cfg) else ''}: use smaller batches"
    else:
        text = flags_in(str(e), cls)
    return f"fingerprint {command}: error: " + " ".join(text.split())


def _output_of(cfg: Any) -> Path | None:
    """Where a command writes (its `out` or `run_dir`), to name in an OSError that carries no file name."""
    for name in ("out", "run_dir"):
        value = getattr(cfg, name, None)
        if value is not None:
            return value
    return None


def close_progress_bars() -> None:
    """End the progress bars an error interrupted, so the error starts its own line."""
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def debug_requested(argv: Sequence[str]) -> bool:
    """--debug on the command line (before a bare `--`), or FINGERPRINT_DEBUG=1."""
    flags = list(argv)[: list(argv).index("--")] if "--" in argv else list(argv)
    return "--debug" in flags or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_command(
    command: str, cls: type, run: Callable[[Any], int | None], argv: Sequence[str] | None, description: str | None
) -> int:
    """Parse `argv` into a `cls` config and `run` it; user and environment errors become one line and exit code 2.

    Programming errors (anything else) keep their traceback.
    """
    setup_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    if debug:
        logging.getLogger("fingerprint").setLevel(logging.DEBUG)
    argv = [a for a in argv if a != "--debug"]
    cfg = None
    try:
        cfg = parse_config(command, cls, argv, description)
        return int(run(cfg) or 0)
    except (FingerprintError, OSError, MemoryError) as e:
        close_progress_bars()
        if debug:
            traceback.print_exc()
        print(error_line(command, cls, e, cfg), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fingerprint {command}: interrupted", file=sys.stderr)
        return 130


def command(name: str, cls: type, run: Callable[[Any], int | None], description: str | None) -> Callable:
    """The `main(argv=None) -> int` of a subcommand module."""

    def main(argv: Sequence[str] | None = None) -> int:
        return run_command(name, cls, run, argv, description)

    main.__doc__ = f"`fingerprint {name}`: {description.splitlines()[0] if description else ''}"
    main.config = cls
    return main
