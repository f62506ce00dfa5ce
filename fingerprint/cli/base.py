"""Shared plumbing for subcommands: argparse + config file + one-line errors.

Each subcommand module defines `add_arguments(parser)` and `run(args)`; its
`main(argv)` is `run_command(NAME, add_arguments, run, argv)`. Any flag can be
given in a TOML or YAML file passed with `--config`; flags on the command line
override it. Keys are the flag names, with dashes or underscores; a table
named after the subcommand (e.g. `[train]`) overrides top-level keys.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from fingerprint.utils import FingerprintError, setup_logging

log = logging.getLogger("fingerprint")


def load_config(path: str | Path, command: str) -> dict[str, Any]:
    """Read a TOML or YAML config file into a flat {key: value} for `command`."""
    path = Path(path)
    if not path.is_file():
        raise FingerprintError(f"{path}: config file not found")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise FingerprintError(f"{path}: config must be .toml, .yaml or .yml")
    except FingerprintError:
        raise
    except Exception as e:  # tomllib.TOMLDecodeError / yaml.YAMLError
        raise FingerprintError(f"{path}: cannot parse config ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise FingerprintError(f"{path}: config must be a table of flag = value")
    flat = {k: v for k, v in data.items() if not isinstance(v, dict)}
    section = data.get(command)
    if isinstance(section, dict):
        flat.update(section)
    return flat


def apply_config(parser: argparse.ArgumentParser, config: dict[str, Any], path: str, command: str) -> None:
    """Validate config keys against the parser and install them as defaults."""
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    defaults = {}
    for key, value in config.items():
        dest = key.replace("-", "_")
        action = actions.get(dest)
        if action is None:
            raise FingerprintError(f"{path}: unknown key '{key}' for 'fingerprint {command}'")
        value = _coerce(action, value, key, path)
        if action.choices is not None and value not in action.choices:
            raise FingerprintError(
                f"{path}: bad value {value!r} for '{key}' (choose from {', '.join(map(str, action.choices))})"
            )
        defaults[dest] = value
        if action.required:
            action.required = False
    parser.set_defaults(**defaults)


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(action: argparse.Action, value: Any, key: str, path: str) -> Any:
    """Give a config value the type its flag would: switches take booleans, typed flags their type."""
    bad = FingerprintError(f"{path}: bad value {value!r} for '{key}'")
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if not isinstance(value, bool):
            raise bad
        return value
    if value is None or action.type is None or action.type is str:
        return value
    if isinstance(value, (list, tuple)) and action.nargs not in (None, "?"):
        return [_coerce_one(action, v, bad) for v in value]
    return _coerce_one(action, value, bad)


def _coerce_one(action: argparse.Action, value: Any, bad: FingerprintError) -> Any:
    if action.type is int and (isinstance(value, bool) or (isinstance(value, float) and not value.is_integer())):
        raise bad
    try:
        return action.type(value if isinstance(value, str) or action.type in (int, float) else str(value))
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        raise bad from None


def build_parser(command: str, add_arguments: Callable[[argparse.ArgumentParser], None], description: str | None):
    parser = argparse.ArgumentParser(prog=f"fingerprint {command}", description=description)
    parser.add_argument("--config", help="TOML or YAML file holding any of these flags (flags override it)")
    add_arguments(parser)
    return parser


def run_command(
    command: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int | None],
    argv: Sequence[str] | None,
    description: str | None = None,
) -> int:
    """Parse `argv` (with an optional config file) and run; user errors become one line and exit 2."""
    setup_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(command, add_arguments, description)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    try:
        if known.config:
            apply_config(parser, load_config(known.config, command), known.config, command)
        args = parser.parse_args(argv)
        rc = run(args)
        return int(rc or 0)
    except FingerprintError as e:
        print(f"fingerprint {command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fingerprint {command}: interrupted", file=sys.stderr)
        return 130
