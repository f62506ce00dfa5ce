"""`fingerprint demo --task audit|attribute` end to end on tiny builds (cached data folders are reused)."""

import json

import pytest

from fingerprint.cli import main as cli

TINY = ["--level", "tiny", "--epochs", "1", "--image-size", "32", "--k", "4", "--batch-size", "32"]


@pytest.mark.slow
def test_demo_audit(tiny_audit_build, tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli(["demo", "--task", "audit", "--data-dir", str(tiny_audit_build), "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    names = [f"{case}-{scorer}" for case in ("used", "not_used", "partial") for scorer in ("fused", "ssim")]
    for name in names:
        assert (
            f"{name}: " in printed and (out / name / "audit.json").is_file() and (out / name / "report.html").is_file()
        )
    log = [json.loads(line) for line in (out / "audits.jsonl").read_text().splitlines()]
    assert [e["name"] for e in log] == names  # one log, corrected together
    last = json.loads((out / "partial-ssim" / "audit.json").read_text())["correction"]
    assert last["m"] == 6 and last["method"] == "holm"
    # the default (fused) audits share one fusion, fitted once with half of the dev split held out
    models = {json.loads((out / n / "audit.json").read_text())["conditions"]["model"] for n in names[::2]}
    assert models == {str(out / "used-fused" / "model")}


@pytest.mark.slow
def test_demo_attribute(tiny_subsets_build, tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli(["demo", "--task", "attribute", "--data-dir", str(tiny_subsets_build), "--out", str(out), *TINY]) == 0
    assert "accuracy" in capsys.readouterr().out
    a = json.loads((out / "attribution.json").read_text())
    assert a["metrics"]["n"] == 120 and "Attribution to subsets" in (out / "report.html").read_text()
