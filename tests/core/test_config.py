"""The config convention: fields with help/choices/bounds, errors naming fields, files, the equivalent command line."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from fingerprint.cli import COMMANDS
from fingerprint.cli.options import parse_config
from fingerprint.core.config import (
    ConfigError,
    check_fields,
    coerce,
    command_line,
    config_from_file,
    fields_of,
    flag_name,
    load_config_file,
    option,
    spec_of,
    to_argv,
    values_from_mapping,
)
from fingerprint.core.errors import FingerprintError
from fingerprint.embedding.embed import EmbedConfig
from fingerprint.membership.score import ScoreConfig
from fingerprint.membership.scorers import scorer_names
from fingerprint.training.train import TrainConfig


@dataclass(kw_only=True)
class Demo:
    SECTION = "demo"

    src: Path = option(positional=True, help="input")
    k: int = option(4, min=1, help="neighbours")
    rule: str = option("max_f1", choices=("max_f1", "youden"), help="rule")
    names: tuple[str, ...] = option(("a",), help="names")
    size: int = option(8, parse=lambda t: int(t.rstrip("k")) * 1024 if t.endswith("k") else int(t), help="size")
    fast: bool = option(False, help="go fast")
    slow: bool = option(True, help="go slow")
    ratio: float | None = option(None, help="ratio")

    def __post_init__(self) -> None:
        check_fields(self)


def test_fields_carry_help_choices_bounds_and_kinds():
    specs = {s.name: s for s in fields_of(Demo)}
    assert specs["k"].help == "neighbours" and specs["k"].min == 1 and specs["k"].kind is int
    assert specs["rule"].choices == ("max_f1", "youden") and specs["src"].required and specs["src"].positional
    assert specs["names"].many and specs["names"].kind is str and specs["ratio"].optional
    assert flag_name("image_size") == "--image-size" and spec_of(Demo, "fast").flag == "--fast"
    assert spec_of(ScoreConfig, "scorer").choices == scorer_names()  # read from the registry when used


def test_every_command_config_field_has_help():
    for name, (module, _) in COMMANDS.items():
        cls = importlib.import_module(module).main.config
        assert cls.SECTION == name
        for spec in fields_of(cls):
            assert spec.help, f"{name}: {spec.name} has no help"


def test_errors_name_section_and_field():
    with pytest.raises(ConfigError, match=r"^demo\.k must be >= 1, got 0$"):
        Demo(src=Path("s"), k=0)
    with pytest.raises(ConfigError, match=r"demo\.rule must be one of max_f1, youden, got 'best'"):
        Demo(src=Path("s"), rule="best")
    with pytest.raises(ConfigError, match=r"score\.k must be >= 1, got 0"):
        ScoreConfig(out=Path("o"), features=Path("f"), model=Path("m"), k=0)
    with pytest.raises(ConfigError, match=r"score\.scorer relation needs score\.features"):
        ScoreConfig(out=Path("o"))
    with pytest.raises(ConfigError, match=r"train\.queries must be even"):
        TrainConfig(shards=Path("s"), out=Path("o"), queries=5)


def test_coerce_values_from_text_and_files():
    spec = spec_of(Demo, "names")
    assert coerce(spec, "x, y,", where="f", key="names") == ("x", "y") and coerce(spec, ["z"], where="f", key="n") == (
        "z",
    )
    assert coerce(spec_of(Demo, "size"), "2k", where="f", key="size") == 2048
    assert coerce(spec_of(Demo, "fast"), "yes", where="f", key="fast") is True
    with pytest.raises(FingerprintError, match=r"^f: bad value 'x' for 'k'$"):
        coerce(spec_of(Demo, "k"), "x", where="f", key="k")
    with pytest.raises(FingerprintError, match=r"choose from max_f1, youden"):
        coerce(spec_of(Demo, "rule"), "best", where="f", key="rule")


def test_config_files(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('k = 7\n[demo]\nrule = "youden"\n[train]\nk = 9\n')
    assert load_config_file(f, "demo") == {"k": 7, "rule": "youden"}
    assert values_from_mapping(Demo, {"k": "3", "fast": "on"}, "f") == {"k": 3, "fast": True}
    with pytest.raises(FingerprintError, match=r"^f: unknown key 'nope' for 'fingerprint demo'$"):
        values_from_mapping(Demo, {"nope": 1}, "f")
    cfg = config_from_file(Demo, f, src=Path("s"), k=2)  # given values beat the file
    assert cfg.k == 2 and cfg.rule == "youden"
    assert config_from_file(Demo, None, src=Path("s")).k == 4
    with pytest.raises(FingerprintError, match="config file not found"):
        load_config_file(tmp_path / "none.toml", "demo")
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(FingerprintError, match=r"must be \.toml, \.yaml or \.yml"):
        load_config_file(tmp_path / "c.json", "demo")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(FingerprintError, match="must be a table"):
        load_config_file(tmp_path / "list.yaml", "demo")
    (tmp_path / "empty.yaml").write_text("")
    assert load_config_file(tmp_path / "empty.yaml", "demo") == {}


def test_to_argv_round_trips_through_the_command_line():
    cfg = Demo(src=Path("in dir"), k=2, names=("a", "b"), fast=True, slow=False, ratio=0.1)
    argv = to_argv(cfg)
    assert argv[0] == "in dir" and "--k" in argv and "--no-slow" in argv and "--rule" not in argv
    assert parse_config("demo", Demo, argv) == cfg
    assert command_line(cfg).startswith("fingerprint demo 'in dir' --k 2")
    score = ScoreConfig(out=Path("o.csv"), features=Path("f.npz"), model=Path("m"), threshold=0.1 + 0.2)
    line = to_argv(score)
    assert line[line.index("--threshold") + 1] == repr(0.1 + 0.2)  # floats exactly as passed
    assert parse_config("score", ScoreConfig, line) == score
    embed = EmbedConfig(model=Path("m"), shards=Path("s"), out=Path("o"), fmaps=True)
    assert to_argv(embed) == ["--model", "m", "--shards", "s", "--out", "o", "--fmaps"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_are_refused_naming_the_field(value):
    """NaN passes every comparison and infinity every lower bound: both are refused for any float field."""
    for name in ("lr", "clip_grad", "warmup", "weight_decay", "val_fraction"):
        with pytest.raises(ConfigError, match=rf"train\.{name} must be a finite number"):
            TrainConfig(shards=Path("s"), out=Path("o"), **{name: value})


def test_unknown_tables_are_refused_naming_them(tmp_path):
    from fingerprint.core.config import SECTIONS

    f = tmp_path / "c.toml"
    f.write_text("k = 3\n[rnu]\nepochs = 2\n")
    with pytest.raises(FingerprintError, match=r"c.toml: unknown table '\[rnu\]'"):
        load_config_file(f, "score")
    f.write_text("k = 3\n[train]\nepochs = 2\n[score]\nk = 5\n")  # another command's table is that command's
    assert load_config_file(f, "score") == {"k": 5}
    sections = {importlib.import_module(module).main.config.SECTION for module, _ in COMMANDS.values()}
    assert sections <= set(SECTIONS), sections - set(SECTIONS)
