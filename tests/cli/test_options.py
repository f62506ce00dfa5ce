"""The command-line helper: flags generated from a config dataclass, --config files, errors in flag names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from test_shards import SIZE, make_layout

from fingerprint.cli import pack
from fingerprint.cli.options import build_parser, flags_in, parse_config, run_command
from fingerprint.core.config import check_fields, fail, option
from fingerprint.core.errors import FingerprintError
from fingerprint.data.shards import read_manifest


@dataclass(kw_only=True)
class ToyConfig:
    """A toy command: every kind of field the helper supports."""

    SECTION = "pack"

    src: Path = option(positional=True, help="input folder")
    max_count: int = option(10, min=1, help="samples per shard")
    encoding: str = option("png", choices=("png", "npy"), help="stored encoding")
    name: str = option("x", help="a name")
    strict: bool = option(False, help="fail on bad input")
    progress: bool = option(True, help="progress bars")
    ratio: float | None = option(None, help="an optional number")
    tags: tuple[str, ...] = option(("a", "b"), choices=("a", "b", "c"), help="comma-separated tags")
    out: Path | None = option(None, required=True, help="output folder")
    seed: int = option(0, help="random seed")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.name == "bad":
            raise fail(self, "name", "must not be 'bad'")


def parse(argv):
    """Run the toy command and return the config it saw (or the exit code on error)."""
    seen = {}

    def run(cfg):
        seen["cfg"] = cfg
        return 0

    rc = run_command("pack", ToyConfig, run, argv, "toy")
    return seen["cfg"] if rc == 0 else rc


TOML = """
max-count = 3
encoding = "npy"
strict = true
name = "top"
out = "O"
[pack]
name = "section"
seed = 7
[train]
seed = 99
"""

YAML = """
max_count: 3
encoding: npy
strict: true
name: top
out: O
pack:
  name: section
  seed: 7
train:
  seed: 99
"""


def test_help_lists_every_field_with_its_help_choices_and_default(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser("pack", ToyConfig, "toy").parse_args(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--max-count", "--encoding {png,npy}", "--strict, --no-strict", "--progress, --no-progress",
                 "--ratio", "--tags", "--out", "--config", "SRC"):  # fmt: skip
        assert flag in text, flag
    assert "samples per shard (default: 10)" in text and "comma-separated tags (default: a,b)" in text


def test_values_kinds_and_bools():
    cfg = parse(["S", "--out", "O", "--max-count", "4", "--strict", "--no-progress", "--ratio", "0.5", "--tags", "c,a"])
    assert cfg.src == Path("S") and cfg.out == Path("O") and cfg.max_count == 4 and cfg.ratio == 0.5
    assert cfg.strict is True and cfg.progress is False and cfg.tags == ("c", "a")
    defaults = parse(["S", "--out", "O"])
    assert defaults.max_count == 10 and defaults.strict is False and defaults.progress is True
    assert defaults.ratio is None and defaults.tags == ("a", "b")


@pytest.mark.parametrize("suffix,text", [(".toml", TOML), (".yaml", YAML), (".yml", YAML)])
def test_config_values_apply_and_section_overrides(tmp_path, suffix, text):
    cfg_file = tmp_path / f"c{suffix}"
    cfg_file.write_text(text)
    cfg = parse(["SRC", "--config", str(cfg_file)])
    assert cfg.max_count == 3 and cfg.encoding == "npy" and cfg.strict is True and cfg.out == Path("O")
    assert cfg.name == "section" and cfg.seed == 7  # [pack] beats top level, [train] ignored
    assert cfg.src == Path("SRC")


@pytest.mark.parametrize("suffix,text", [(".toml", TOML), (".yaml", YAML)])
def test_flags_override_config(tmp_path, suffix, text):
    cfg_file = tmp_path / f"c{suffix}"
    cfg_file.write_text(text)
    argv = ["SRC", "--config", str(cfg_file), "--max-count", "5", "--seed", "1", "--name", "flag", "--encoding", "png"]
    cfg = parse(argv + ["--no-strict"])
    assert cfg.max_count == 5 and cfg.seed == 1 and cfg.name == "flag" and cfg.encoding == "png"
    assert cfg.strict is False


def test_positional_and_required_from_config(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('src = "from-config"\nout = "O"\n')
    assert parse(["--config", str(cfg_file)]).src == Path("from-config")
    assert parse(["--config", str(cfg_file), "given"]).src == Path("given")


def test_string_values_are_converted_with_the_field_type(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text('max-count: "12"\ntags: "b,c"\nstrict: "false"\nout: O\n')
    cfg = parse(["SRC", "--config", str(cfg_file)])
    assert cfg.max_count == 12 and cfg.tags == ("b", "c") and cfg.strict is False


@pytest.mark.parametrize(
    "text,message",
    [
        ("bogus = 1\n", "unknown key 'bogus' for 'fingerprint pack'"),
        ('max-count = "many"\n', "bad value 'many' for 'max-count'"),
        ("max-count = 3.5\n", "bad value 3.5 for 'max-count'"),
        ('encoding = "gif"\n', "bad value 'gif' for 'encoding' (choose from png, npy)"),
        ('tags = ["a", "z"]\n', "bad value ['a', 'z'] for 'tags' (choose from a, b, c)"),
        ("max-count = [\n", "cannot parse config"),
    ],
)
def test_bad_config_is_one_line_error_naming_the_file_and_key(tmp_path, capsys, text, message):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(text if text.endswith("[\n") else text + 'out = "O"\n')
    assert parse(["SRC", "--config", str(cfg_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fingerprint pack: error: ") and message in err and str(cfg_file) in err
    assert len(err.splitlines()) == 1


def test_bad_value_names_the_field_as_its_flag(tmp_path, capsys):
    assert parse(["SRC", "--out", "O", "--max-count", "0"]) == 2
    assert "fingerprint pack: error: --max-count must be >= 1, got 0" in capsys.readouterr().err
    assert parse(["SRC", "--out", "O", "--name", "bad"]) == 2
    assert "error: --name must not be 'bad'" in capsys.readouterr().err
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('out = "O"\nmax-count = -2\n')
    assert parse(["SRC", "--config", str(cfg_file)]) == 2
    assert "--max-count must be >= 1, got -2" in capsys.readouterr().err


def test_bad_flags_exit_like_argparse(capsys):
    with pytest.raises(SystemExit) as e:
        parse_config("pack", ToyConfig, ["SRC"])
    assert e.value.code == 2 and "--out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config("pack", ToyConfig, ["SRC", "--out", "O", "--encoding", "gif"])
    with pytest.raises(SystemExit):
        parse_config("pack", ToyConfig, ["SRC", "--out", "O", "--tags", "a,z"])
    assert "choose from a, b, c" in capsys.readouterr().err


def test_flags_in_rewrites_only_this_commands_fields():
    msg = "pack.max_count must be >= 1; pack.src is missing; train.force is off; pack.nothing"
    assert flags_in(msg, ToyConfig) == "--max-count must be >= 1; SRC is missing; train.force is off; pack.nothing"


def test_real_command_reads_config(tmp_path):
    """The pack command takes its options from a config file, flags overriding it."""
    make_layout(tmp_path / "dev", "dev", n_gen=4, n_real=2)
    cfg_file = tmp_path / "pack.yaml"
    cfg_file.write_text(f"image-size: {SIZE}\nmax-count: 3\nmax-size: 1M\npack:\n  seed: 2\n  encoding: png\n")
    argv = [str(tmp_path / "dev"), str(tmp_path / "out"), "--config", str(cfg_file), "--max-count", "5"]
    assert pack.main(argv) == 0
    man = read_manifest(tmp_path / "out")
    assert (man["max_count"], man["seed"], man["encoding"], man["image_size"]) == (5, 2, "png", SIZE)
    assert man["max_size"] == 1 << 20


def test_library_errors_for_config_values():
    with pytest.raises(FingerprintError, match=r"pack.max_count must be >= 1, got 0"):
        ToyConfig(src=Path("s"), max_count=0)
