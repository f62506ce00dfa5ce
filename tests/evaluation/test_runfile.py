"""Run files: the organisers' samples, files we write, and the validate command."""

from pathlib import Path

import pytest

from fingerprint.cli import validate as validate_cli
from fingerprint.core.errors import FingerprintError
from fingerprint.evaluation import runfile

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "sample_runs"  # the challenge's official sample run files
EXPECTED = {
    "01_1_empty_line.csv": ("blank-line", 4),
    "01_2_wrong_format.csv": ("format", 4),
    "03_1_same_fig_id_more_than_once.csv": ("duplicate-id", 125),
    "04_2_score_int_greater_than_1.csv": ("label", 9),
    "04_3_score_int_smaller_than_0.csv": ("label", 18),
    "05_1_not_all_fig_ids_specified.csv": ("missing-ids", None),
}


def test_packaged_ids():
    ids = runfile.load_ids()
    assert len(ids) == 200 and ids[0] == "real_unknown_0001" and ids[-1] == "real_unknown_0200"


def test_samples_cover_every_file():
    names = {p.name for p in SAMPLES.glob("*.csv")}
    assert names == set(EXPECTED) | {p for p in names if p.endswith("_OK.csv")}
    assert any(n.endswith("_OK.csv") for n in names)


@pytest.mark.parametrize("name", ["00_1_OK.csv", "00_2_OK.csv"])
def test_ok_samples_are_valid(name):
    assert runfile.validate(SAMPLES / name) == []
    assert validate_cli.main([str(SAMPLES / name)]) == 0


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_broken_samples_name_rule_and_line(name):
    rule, line = EXPECTED[name]
    problems = runfile.validate(SAMPLES / name)
    assert len(problems) == 1, problems
    assert f"{rule}:" in problems[0]
    if line is not None:
        assert problems[0].startswith(f"line {line}: ")
    assert validate_cli.main([str(SAMPLES / name)]) == 1


def test_written_run_file_validates(tmp_path):
    ids = runfile.load_ids()
    path = runfile.write_run_file(tmp_path / "run.csv", ids, [i % 2 for i in range(len(ids))])
    assert runfile.validate(path) == []
    assert runfile.read_run_file(path)["real_unknown_0002"] == 1
    with pytest.raises(FingerprintError, match="must be 0 or 1"):
        runfile.write_run_file(tmp_path / "bad.csv", ["a"], [0.5])
    with pytest.raises(FingerprintError, match="more than once"):
        runfile.write_run_file(tmp_path / "bad.csv", ["a", "a"], [0, 1])
    assert not (tmp_path / "bad.csv").exists()


def test_other_rules(tmp_path):
    ids = ["a_1", "a_2"]
    p = tmp_path / "r.csv"
    cases = {
        "figure_id,label\na_1,0\na_2,1\n": "header",
        "a_1.png,0\na_2,1\n": "extension",
        "a_1,0\na_3,1\na_2,1\n": "unknown-id",
        "a_1,1.0\na_2,0\n": "label",
        "a_1,0.5\na_2,0\n": "label",
        "": "empty-file",
        "a_1 , 0\r\na_2,1": None,  # spaces and CRLF tolerated, no final newline needed
    }
    for text, rule in cases.items():
        p.write_text(text)
        problems = runfile.validate(p, ids)
        if rule is None:
            assert problems == [], (text, problems)
        else:
            assert any(f"{rule}:" in q for q in problems), (text, problems)
    p.write_bytes(b"a_1,0\n\xff\xfe,1\n")
    assert "encoding:" in runfile.validate(p, ids)[0]


def test_cli_ids_file_and_errors(tmp_path, capsys):
    ids = tmp_path / "ids.txt"
    ids.write_text("x\ny\n")
    run = tmp_path / "run.csv"
    run.write_text("x,1\ny,0\n")
    assert validate_cli.main([str(run), "--ids", str(ids)]) == 0
    run.write_text("x,1\n")
    assert validate_cli.main([str(run), "--ids", str(ids)]) == 1
    assert "missing-ids" in capsys.readouterr().out
    assert validate_cli.main([str(tmp_path / "nope.csv")]) == 2
    assert "run file not found" in capsys.readouterr().err
