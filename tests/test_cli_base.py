"""Config-file plumbing of fingerprint.cli.base: TOML/YAML values apply, flags override, errors are one line."""

from __future__ import annotations

import argparse

import pytest

from fingerprint.cli.base import load_config, run_command
from fingerprint.utils import FingerprintError


def add_arguments(p):
    p.add_argument("src")
    p.add_argument("--max-count", type=int, default=10)
    p.add_argument("--encoding", choices=["png", "npy"], default="png")
    p.add_argument("--name", default="x")
    p.add_argument("--strict", action="store_true")
    p.add_argument("--seed", type=int, default=0)


def parse(argv):
    """Run the toy command and return the args it saw (or the exit code on error)."""
    seen = {}

    def run(args):
        seen.update(vars(args))
        return 0

    rc = run_command("pack", add_arguments, run, argv)
    return seen if rc == 0 else rc


TOML = """
max-count = 3
encoding = "npy"
strict = true
name = "top"
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
pack:
  name: section
  seed: 7
train:
  seed: 99
"""


@pytest.mark.parametrize("suffix,text", [(".toml", TOML), (".yaml", YAML), (".yml", YAML)])
def test_config_values_apply_and_section_overrides(tmp_path, suffix, text):
    cfg = tmp_path / f"c{suffix}"
    cfg.write_text(text)
    args = parse(["SRC", "--config", str(cfg)])
    assert args["max_count"] == 3 and args["encoding"] == "npy" and args["strict"] is True
    assert args["name"] == "section" and args["seed"] == 7  # [pack] beats top level, [train] ignored
    assert args["src"] == "SRC"


@pytest.mark.parametrize("suffix,text", [(".toml", TOML), (".yaml", YAML)])
def test_flags_override_config(tmp_path, suffix, text):
    cfg = tmp_path / f"c{suffix}"
    cfg.write_text(text)
    args = parse(
        ["SRC", "--config", str(cfg), "--max-count", "5", "--seed", "1", "--name", "flag", "--encoding", "png"]
    )
    assert args["max_count"] == 5 and args["seed"] == 1 and args["name"] == "flag" and args["encoding"] == "png"


def test_no_config_uses_parser_defaults():
    args = parse(["SRC"])
    assert args["max_count"] == 10 and args["strict"] is False and args["config"] is None


def test_positional_from_config(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('src = "from-config"\n')
    assert parse(["--config", str(cfg)])["src"] == "from-config"
    assert parse(["--config", str(cfg), "given"])["src"] == "given"


def test_string_values_are_converted_with_the_flag_type(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text('max-count: "12"\n')
    assert parse(["SRC", "--config", str(cfg)])["max_count"] == 12


@pytest.mark.parametrize(
    "text,message",
    [
        ("bogus = 1\n", "unknown key 'bogus' for 'fingerprint pack'"),
        ('max-count = "many"\n', "bad value 'many' for 'max-count'"),
        ('encoding = "gif"\n', "bad value 'gif' for 'encoding' (choose from png, npy)"),
        ("max-count = [\n", "cannot parse config"),
    ],
)
def test_bad_config_is_one_line_error(tmp_path, capsys, text, message):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    assert parse(["SRC", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fingerprint pack: error: ") and message in err and str(cfg) in err
    assert len(err.splitlines()) == 1


def test_load_config_errors(tmp_path):
    with pytest.raises(FingerprintError, match="config file not found"):
        load_config(tmp_path / "none.toml", "pack")
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(FingerprintError, match=r"must be \.toml, \.yaml or \.yml"):
        load_config(tmp_path / "c.json", "pack")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(FingerprintError, match="must be a table"):
        load_config(tmp_path / "list.yaml", "pack")
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(tmp_path / "empty.yaml", "pack") == {}


def test_real_command_reads_config(tmp_path):
    """The pack command's own parser takes its flags from a config file."""
    from fingerprint.cli import pack

    parser = argparse.ArgumentParser()
    pack.add_arguments(parser)
    dests = {a.dest for a in parser._actions}
    assert {"max_count", "max_size", "image_size", "encoding", "layout", "strict", "force", "seed"} <= dests
    from test_shards import SIZE, make_layout

    make_layout(tmp_path / "dev", "dev", n_gen=4, n_real=2)
    cfg = tmp_path / "pack.yaml"
    cfg.write_text(f"image-size: {SIZE}\nmax-count: 3\npack:\n  seed: 2\n  encoding: png\n")
    assert pack.main([str(tmp_path / "dev"), str(tmp_path / "out"), "--config", str(cfg), "--max-count", "5"]) == 0
    from fingerprint.shards import read_manifest

    man = read_manifest(tmp_path / "out")
    assert (man["max_count"], man["seed"], man["encoding"], man["image_size"]) == (5, 2, "png", SIZE)


def test_quoted_false_for_switch(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text('strict: "false"\n')
    assert parse(["SRC", "--config", str(cfg)])["strict"] is False


def test_float_for_int_flag_rejected(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("max-count = 3.5\n")
    assert parse(["SRC", "--config", str(cfg)]) == 2
