"""The evaluate stage: score files and run files against a truth file, at the sidecar's threshold."""

import json

import numpy as np
import pytest
from test_metrics import P, S, Y

from fingerprint.cli import evaluate as evaluate_cli
from fingerprint.core.errors import FingerprintError
from fingerprint.evaluation.evaluate import EvaluateConfig, run_evaluate
from fingerprint.evaluation.scorefiles import write_scores


def _truth(tmp_path):
    t = tmp_path / "truth.csv"
    t.write_text("figure_id,label\n" + "".join(f"k{i},{int(y)}\n" for i, y in enumerate(Y)))
    return t


def test_evaluate_cli(tmp_path, capsys):
    t = _truth(tmp_path)
    keys = [f"k{i}" for i in range(8)]
    write_scores(tmp_path / "good.csv", keys, S, P, meta={"threshold": 0.65})
    (tmp_path / "run.csv").write_text("".join(f"{k},{p}\n" for k, p in zip(keys, P)))
    out = tmp_path / "m.json"
    rc = evaluate_cli.main(
        [str(tmp_path / "good.csv"), str(tmp_path / "run.csv"), "--truth", str(t), "--out", str(out), "--n-boot", "50"]
    )
    assert rc == 0
    table = capsys.readouterr().out
    assert "good" in table and "run" in table
    res = json.loads(out.read_text())
    assert res["scorers"]["good"]["roc_auc"]["value"] == pytest.approx(14 / 16)
    assert res["scorers"]["good"]["threshold"] == 0.65
    assert res["scorers"]["run"]["roc_auc"]["value"] is None
    assert res["scorers"]["run"]["f1"]["value"] == pytest.approx(0.75)
    # the output exists: refused without --force
    assert evaluate_cli.main([str(tmp_path / "good.csv"), "--truth", str(t), "--out", str(out)]) == 2


def test_evaluate_cli_missing_key(tmp_path, capsys):
    t = _truth(tmp_path)
    write_scores(tmp_path / "s.csv", [f"x{i}" for i in range(8)], S, P)
    assert evaluate_cli.main([str(tmp_path / "s.csv"), "--truth", str(t)]) == 2
    err = capsys.readouterr().err
    assert "not in" in err and err.count("\n") == 1


def test_run_evaluate_library_entry(tmp_path):
    t = _truth(tmp_path)
    keys = [f"k{i}" for i in range(8)]
    write_scores(tmp_path / "a.csv", keys, S, P, meta={"threshold": 0.65})
    write_scores(tmp_path / "sub" / "a.csv", keys, S, P)
    results = run_evaluate(EvaluateConfig(scores=(tmp_path / "a.csv",), truth=t, n_boot=0))
    assert list(results) == ["a"] and results["a"]["threshold"] == 0.65 and results["a"]["n"] == 8
    assert results["a"]["confusion_matrix"] == {"tn": 3, "fp": 1, "fn": 1, "tp": 3}
    assert np.isclose(results["a"]["roc_auc"]["value"], 14 / 16)
    with pytest.raises(FingerprintError, match="another input is also named 'a'"):
        run_evaluate(EvaluateConfig(scores=(tmp_path / "a.csv", tmp_path / "sub" / "a.csv"), truth=t, n_boot=0))
    with pytest.raises(FingerprintError, match=r"evaluate.n_boot must be >= 0"):
        EvaluateConfig(scores=(tmp_path / "a.csv",), truth=t, n_boot=-1)
    out = tmp_path / "m.json"
    run_evaluate(EvaluateConfig(scores=(tmp_path / "a.csv",), truth=t, out=out, n_boot=0, split="dev"))
    doc = json.loads(out.read_text())
    assert list(doc) == ["split", "truth", "n_boot", "seed", "scorers"] and doc["split"] == "dev"
