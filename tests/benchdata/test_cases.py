"""Benchmark data for the collection-level commands: audit cases and subsets with their own generators."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from fingerprint.benchdata.cases import NONE, case_fraction, select_audit_case
from fingerprint.cli import main as cli
from fingerprint.core.errors import FingerprintError
from fingerprint.evaluation.metrics import read_truth


def _truth(path):
    return {r["figure_id"]: int(r["label"]) for r in csv.DictReader(open(path))}


def test_audit_case_layout(tiny_audit_build):
    b = tiny_audit_build
    case = json.loads((b / "audit" / "case.json").read_text())
    assert case["case"] == "not_used" and case["n_used"] == 0 and case["benchmark"] == ".."
    cand = sorted(p.stem for p in (b / "audit" / "candidate").glob("*.png"))
    ref = sorted(p.stem for p in (b / "audit" / "reference").glob("*.png"))
    assert len(cand) == 20 and len(ref) == 40 and not set(cand) & set(ref)
    test_truth = read_truth(b / "test_truth.csv")
    assert all(test_truth[k] == 0 for k in cand + ref)  # not-used case: nothing of the candidate was used
    assert _truth(b / "audit" / "candidate_truth.csv") == {k: 0 for k in cand}
    # the files are the test images themselves, ids unchanged
    a = np.asarray(Image.open(b / "audit" / "candidate" / f"{cand[0]}.png"))
    assert (a == np.asarray(Image.open(b / "test" / "real_unknown_1" / f"{cand[0]}.png"))).all()
    info = json.loads((b / "synth.json").read_text())
    assert info["audit"]["n_candidate"] == 20 and info["counts"]["test"]["used"] == 20
    assert info["counts"]["test"]["not_used"] == 60  # one build serves every case: n_c + n_r not used


def test_select_used_and_partial_cases(tiny_audit_build, tmp_path):
    b = tiny_audit_build
    test_truth = read_truth(b / "test_truth.csv")
    used = _truth(b / "audit-used" / "candidate_truth.csv")
    assert len(used) == 10 and set(used.values()) == {1} and all(test_truth[k] == 1 for k in used)
    rec = select_audit_case(b, tmp_path / "p", case="partial", fraction=0.3, n_candidate=10, n_reference=20, seed=4)
    part = _truth(tmp_path / "p" / "candidate_truth.csv")
    assert rec["n_used"] == 3 and sum(part.values()) == 3 and len(part) == 10
    ref = {p.stem for p in (tmp_path / "p" / "reference").glob("*.png")}
    assert len(ref) == 20 and not ref & set(part) and all(test_truth[k] == 0 for k in ref)
    again = select_audit_case(b, tmp_path / "q", case="partial", fraction=0.3, n_candidate=10, n_reference=20, seed=4)
    assert again == rec | {"benchmark": again["benchmark"]}
    assert _truth(tmp_path / "q" / "candidate_truth.csv") == part  # same seed, same case
    with pytest.raises(FingerprintError, match="cannot give a candidate"):
        select_audit_case(b, tmp_path / "r", case="used", n_candidate=21, n_reference=5)
    with pytest.raises(FingerprintError, match="already exists"):
        select_audit_case(b, tmp_path / "p", case="used", n_candidate=5, n_reference=5)


def test_case_fraction_rules():
    assert case_fraction("used", None) == 1.0 and case_fraction("not_used", None) == 0.0
    assert case_fraction("partial", None) == 0.5 and case_fraction("partial", 0.25) == 0.25
    with pytest.raises(FingerprintError, match="strictly between"):
        case_fraction("partial", 1.0)
    with pytest.raises(FingerprintError, match="contradicts"):
        case_fraction("used", 0.5)
    with pytest.raises(FingerprintError, match="unknown audit case"):
        case_fraction("maybe", None)


def test_subsets_layout_and_truth(tiny_subsets_build):
    b = tiny_subsets_build
    info = json.loads((b / "synth.json").read_text())
    names = info["subsets"]["names"]
    assert names == ["subset1", "subset2", "subset3"]
    for n in names:
        assert len(list((b / "subsets" / n).glob(f"{n}_*.png"))) == 16
    assert len(list((b / "null").glob("null_*.png"))) == 48
    truth = list(csv.DictReader(open(b / "generated_truth.csv")))
    gen = sorted(p.stem for p in (b / "generated").glob("*.png"))
    assert sorted(r["figure_id"] for r in truth) == gen and len(gen) == 120
    counts = {s: sum(r["subset"] == s for r in truth) for s in [*names, NONE]}
    assert counts == {"subset1": 30, "subset2": 30, "subset3": 30, NONE: 30}
    assert {p.name for p in (b / "dev").iterdir()} == {"generated", "used", "not_used"}
    # each generator really learned its own subset: the nearest real image by pixels is in the right subset far
    # more often than chance (1/3); measured 0.889 at seed 0 (0.37 with 150 instead of 300 tiny epochs)
    assert info["difficulty"]["pixel_nn_attribution_accuracy"] >= 0.6
    assert info["generators"]["subset1"]["epochs"] == 300


def test_synth_cli_audit_case_and_conflicts(tmp_path, capsys):
    out = tmp_path / "case"
    argv = ["synth", str(out), "--level", "tiny", "--audit-case", "partial", "--audit-fraction", "0.4",
            "--candidate", "5", "--reference", "6", "--no-progress"]  # fmt: skip
    assert cli(argv) == 0
    assert "partial case, candidate 5 (2 used), reference 6" in capsys.readouterr().out
    assert sum(_truth(out / "audit" / "candidate_truth.csv").values()) == 2
    bad = ["synth", str(tmp_path / "x"), "--level", "tiny", "--audit-case", "used", "--subsets", "3"]
    assert cli(bad) == 2
    assert "--audit-case and --subsets build different benchmarks" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
