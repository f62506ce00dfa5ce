"""The one config convention: stage configs are dataclasses whose fields carry their help, choices and bounds.

Every stage entry function takes one config object (`run_embed(EmbedConfig)`,
`run_score(ScoreConfig)`, ...). A config field is declared with `option(...)`,
which stores its help text, choices, lower bound and (rarely) a custom
parser in the field's metadata; `check_fields` enforces choices and bounds,
and each config calls it from `__post_init__`, so an invalid config cannot be
built. Errors name the field as `<section>.<field>` (e.g. "score.k must be
>= 1, got 0"); the command-line layer (the `cli` subpackage) turns those names into
its flags. The pattern follows SSCD's `add_arguments` / `call_using_args`
(facebookresearch/sscd-copy-detection, sscd/lib/util.py), with the
dataclass, not a function signature, as the single source.

This module also reads TOML/YAML config files (top-level keys plus a
`[<section>]` table; keys are flag names with dashes or underscores) and
formats a config as its equivalent command line, which `run_pipeline` logs
for every stage it runs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tomllib
import types
import typing
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from fingerprint.core.errors import FingerprintError

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_SCALARS = (bool, int, float, str, Path)


class ConfigError(FingerprintError):
    """A config value out of range or of the wrong kind; the message names `<section>.<field>`."""


def option(
    default: Any = MISSING,
    *,
    help: str,
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
    min: float | None = None,
    positional: bool = False,
    metavar: str | None = None,
    parse: Callable[[str], Any] | None = None,
    required: bool = False,
) -> Any:
    """A dataclass field with its help text, `choices`, lower bound `min` and an optional string `parse`r.

    `choices` may be a function returning them (read when used, so a registry
    can grow after the config class is defined).
    `positional` fields are positional arguments on the command line. A field
    without a default is required; `required=True` marks an optional (None)
    field that the stage entry needs although the library functions below it
    do not (the command line then requires it).
    """
    meta = {"help": help, "choices": choices if choices is None or callable(choices) else tuple(choices), "min": min}
    meta |= {"positional": positional, "metavar": metavar, "parse": parse, "required": required}
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class FieldSpec:
    """What the CLI and the file reader need to know about one config field."""

    name: str
    kind: type  # bool, int, float, str or Path (the element type for tuples)
    optional: bool  # None is a valid value
    many: bool  # a tuple of `kind`
    default: Any  # MISSING when required
    help: str
    choices_from: tuple | Callable[[], Sequence[Any]] | None
    min: float | None
    positional: bool
    metavar: str | None
    parse: Callable[[str], Any] | None
    needed: bool  # option(required=True)

    @property
    def required(self) -> bool:
        return self.default is MISSING or self.needed

    @property
    def flag(self) -> str:
        return flag_name(self.name)

    @property
    def choices(self) -> tuple | None:
        """The allowed values (None: any)."""
        c = self.choices_from
        return tuple(c()) if callable(c) else c


def flag_name(name: str) -> str:
    """The command-line flag of a config field: `image_size` -> `--image-size`."""
    return "--" + name.replace("_", "-")


def section_of(cfg: Any) -> str:
    """The config's section name (its command), from the class attribute SECTION."""
    return getattr(cfg, "SECTION", type(cfg).__name__)


@functools.cache
def fields_of(cls: type) -> tuple[FieldSpec, ...]:
    """The FieldSpecs of a config dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        kind, optional, many = _kind(hints[f.name], cls, f.name)
        md = f.metadata
        default = f.default if f.default is not MISSING else MISSING
        if f.default_factory is not MISSING:
            default = f.default_factory()
        specs.append(
            FieldSpec(
                f.name,
                kind,
                optional,
                many,
                default,
                md.get("help", ""),
                md.get("choices"),
                md.get("min"),
                md.get("positional", False),
                md.get("metavar"),
                md.get("parse"),
                md.get("required", False),
            )
        )
    return tuple(specs)


def _kind(tp: Any, cls: type, name: str) -> tuple[type, bool, bool]:
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0] if len(args) == 1 else tp
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis and args[0] in _SCALARS:
            return args[0], optional, True
    if tp in _SCALARS:
        return tp, optional, False
    raise TypeError(f"{cls.__name__}.{name}: unsupported config field type {tp!r}")


def spec_of(cls: type, name: str) -> FieldSpec:
    for spec in fields_of(cls):
        if spec.name == name:
            return spec
    raise KeyError(name)


# ----------------------------------------------------------------------------- checks


def fail(cfg: Any, name: str, message: str) -> ConfigError:
    """A ConfigError `<section>.<name> <message>` (raise it)."""
    return ConfigError(f"{section_of(cfg)}.{name} {message}")


def exists_error(cfg: Any, path: str | Path) -> ConfigError:
    """`<path>: already exists (use <section>.force to replace it)` (raise it)."""
    return ConfigError(f"{path}: already exists (use {section_of(cfg)}.force to replace it)")


def require(cfg: Any, *names: str) -> None:
    """Raise `<section>.<name> must be given` for the first of `names` that is None."""
    for name in names:
        if getattr(cfg, name) is None:
            raise fail(cfg, name, "must be given")


def check_fields(cfg: Any) -> None:
    """Enforce every field's declared choices and lower bound, and finite floats (None passes where optional).

    NaN passes every comparison (`nan <= 0` is False) and infinity passes a
    lower bound, so both are refused here for every float field, naming it.
    """
    for spec in fields_of(type(cfg)):
        value = getattr(cfg, spec.name)
        if value is None:
            if not spec.optional:
                raise fail(cfg, spec.name, "must be given")
            continue
        values = value if spec.many else (value,)
        if spec.many and not isinstance(value, tuple):
            raise fail(cfg, spec.name, f"must be a tuple, got {type(value).__name__}")
        for v in values:
            if spec.kind is float and isinstance(v, (int, float)) and not math.isfinite(v):
                raise fail(cfg, spec.name, f"must be a finite number, got {v}")
            if spec.choices is not None and v not in spec.choices:
                allowed = ", ".join(map(str, spec.choices))
                raise fail(cfg, spec.name, f"must be one of {allowed}, got {v!r}")
            if spec.min is not None and v < spec.min:
                raise fail(cfg, spec.name, f"must be >= {spec.min:g}, got {v}")


# ----------------------------------------------------------------------------- values from text and files


def coerce(spec: FieldSpec, value: Any, *, where: str, key: str) -> Any:
    """A field value from a config-file (or command-line) value; `where: bad value ... for 'key'` on failure."""
    bad = FingerprintError(f"{where}: bad value {value!r} for '{key}'")
    if value is None:
        if spec.optional or spec.kind is bool:
            return value
        raise bad
    if spec.many:
        items = [s.strip() for s in value.split(",") if s.strip()] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise bad
        out = tuple(_coerce_one(spec, v, bad) for v in items)
    else:
        out = _coerce_one(spec, value, bad)
    for v in out if spec.many else (out,):
        if spec.choices is not None and v not in spec.choices:
            raise FingerprintError(
                f"{where}: bad value {value!r} for '{key}' (choose from {', '.join(map(str, spec.choices))})"
            )
    return out


def _coerce_one(spec: FieldSpec, value: Any, bad: FingerprintError) -> Any:
    kind = spec.kind
    if kind is bool:
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if not isinstance(value, bool):
            raise bad
        return value
    if spec.parse is not None and isinstance(value, str):
        try:
            return spec.parse(value)
        except (TypeError, ValueError):
            raise bad from None
    if kind is int and (isinstance(value, bool) or (isinstance(value, float) and not value.is_integer())):
        raise bad
    try:
        if kind in (int, float):
            return kind(value)
        return kind(str(value))
    except (TypeError, ValueError):
        raise bad from None


#: the tables a config file may hold: one per command (each command reads its own and ignores the others)
SECTIONS = ("synth", "pack", "inspect", "adapt", "pretrain", "train", "embed", "index", "profile", "fuse", "score",
            "compare", "cluster", "evaluate", "validate", "report", "run", "audit", "attribute", "demo")  # fmt: skip


def load_config_file(path: str | Path, section: str) -> dict[str, Any]:
    """Read a TOML or YAML config file into a flat {key: value}: top-level keys, then the `[section]` table.

    A table not named after a command (a misspelled `[rnu]`) is an error naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FingerprintError(f"{path}: config file not found")
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise FingerprintError(f"{path}: config must be .toml, .yaml or .yml")
    try:
        text = path.read_text()
        data = tomllib.loads(text) if suffix == ".toml" else (yaml.safe_load(text) or {})
    except (tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise FingerprintError(f"{path}: cannot parse config ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise FingerprintError(f"{path}: config must be a table of flag = value")
    unknown = [k for k, v in data.items() if isinstance(v, dict) and k not in SECTIONS]
    if unknown:
        raise FingerprintError(
            f"{path}: unknown table '[{unknown[0]}]' (tables are named after commands: {', '.join(SECTIONS)})"
        )
    flat = {k: v for k, v in data.items() if not isinstance(v, dict)}
    if isinstance(data.get(section), dict):
        flat.update(data[section])
    return flat


def values_from_mapping(cls: type, mapping: dict[str, Any], where: str) -> dict[str, Any]:
    """{field name: typed value} from a config file's {key: value}; unknown keys and bad values name `where`."""
    specs = {spec.name: spec for spec in fields_of(cls)}
    out = {}
    for key, value in mapping.items():
        spec = specs.get(str(key).replace("-", "_"))
        if spec is None:
            raise FingerprintError(f"{where}: unknown key '{key}' for 'fingerprint {cls.SECTION}'")
        out[spec.name] = coerce(spec, value, where=where, key=key)
    return out


def config_from_file(cls: type, path: str | Path | None, **given: Any) -> Any:
    """A `cls` from a config file's values (its `[cls.SECTION]` table too), with `given` values on top."""
    values = {} if path is None else values_from_mapping(cls, load_config_file(path, cls.SECTION), str(path))
    return cls(**{**values, **given})


# ----------------------------------------------------------------------------- the equivalent command line


def to_argv(cfg: Any) -> list[str]:
    """The command-line arguments that build `cfg`: positionals, then every field that differs from its default."""
    positional, flags = [], []
    for spec in fields_of(type(cfg)):
        value = getattr(cfg, spec.name)
        if spec.positional:
            if value is not None:
                positional += [_text(v) for v in value] if spec.many else [_text(value)]
            continue
        if not spec.required and value == spec.default:
            continue
        if spec.kind is bool and not spec.many:
            flags.append(spec.flag if value else "--no-" + spec.flag[2:])
        elif value is not None:
            flags += [spec.flag, ",".join(map(_text, value)) if spec.many else _text(value)]
    return positional + flags


def command_line(cfg: Any) -> str:
    """`fingerprint <section> <args>`, quoted where needed, for logs."""
    return " ".join(["fingerprint", section_of(cfg), *(_quote(a) for a in to_argv(cfg))])


def _text(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _quote(arg: str) -> str:
    return arg if arg and not any(c in arg for c in " \t'\"$\\") else "'" + arg.replace("'", "'\\''") + "'"
