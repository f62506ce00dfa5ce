"""Metrics on fixed vectors against hand-computed values; bootstrap, calibration, truth files, evaluate CLI."""

import json

import numpy as np
import pytest

from fingerprint import metrics
from fingerprint.cli import evaluate as evaluate_cli
from fingerprint.score import write_scores
from fingerprint.utils import FingerprintError

# tp=3 fn=1 fp=1 tn=3
Y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
P = np.array([1, 1, 1, 0, 1, 0, 0, 0])
S = np.array([0.9, 0.8, 0.7, 0.3, 0.6, 0.2, 0.1, 0.4])


def test_point_metrics_hand_computed():
    r = metrics.evaluate(Y, S, P, n_boot=0)
    assert r["confusion_matrix"] == {"tn": 3, "fp": 1, "fn": 1, "tp": 3}
    for m in ("f1", "accuracy", "precision", "recall", "specificity"):
        assert r[m]["value"] == pytest.approx(0.75), m
    # po = 0.75, pe = 0.5*0.5 + 0.5*0.5 = 0.5 -> kappa = (0.75-0.5)/(1-0.5)
    assert r["kappa"]["value"] == pytest.approx(0.5)
    # 14 of the 16 (pos, neg) pairs are ordered correctly
    assert r["roc_auc"]["value"] == pytest.approx(14 / 16)
    # no negative scores above 0.7: 3 of 4 positives at FPR 0; next FPR step is 0.25
    assert r["tpr_at_1fpr"]["value"] == pytest.approx(0.75)
    assert r["tpr_at_5fpr"]["value"] == pytest.approx(0.75)
    assert r["n"] == 8 and r["n_pos"] == 4 and r["threshold"] is None
    assert r["f1"]["ci_low"] is None and r["n_boot"] == 0


def test_threshold_gives_predictions():
    r = metrics.evaluate(Y, S, threshold=0.65, n_boot=0)
    assert r["confusion_matrix"] == {"tn": 4, "fp": 0, "fn": 1, "tp": 3}
    assert r["threshold"] == 0.65
    assert r["precision"]["value"] == 1.0 and r["recall"]["value"] == 0.75


def test_bootstrap_seeded_and_brackets_value():
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(40), np.zeros(40)].astype(int)
    s = rng.normal(size=80) + y
    p = (s > 0.5).astype(int)
    a = metrics.evaluate(y, s, p, n_boot=40, seed=3)
    b = metrics.evaluate(y, s, p, n_boot=40, seed=3)
    c = metrics.evaluate(y, s, p, n_boot=40, seed=4)
    assert a == b
    assert a["roc_auc"] != c["roc_auc"]
    for m in metrics.METRICS:
        assert a[m]["ci_low"] <= a[m]["value"] <= a[m]["ci_high"], m
        assert a[m]["ci_low"] < a[m]["ci_high"], m


def test_single_class_truth_reports_null_auc():
    y = np.ones(6, dtype=int)
    r = metrics.evaluate(y, np.linspace(0, 1, 6), np.array([1, 1, 1, 0, 0, 0]), n_boot=20)
    assert r["roc_auc"] == {"value": None, "ci_low": None, "ci_high": None}
    assert r["tpr_at_1fpr"]["value"] is None and r["specificity"]["value"] is None
    assert r["recall"]["value"] == 0.5


def test_labels_only_has_no_score_metrics():
    r = metrics.evaluate(Y, None, P, n_boot=10)
    assert r["roc_auc"]["value"] is None and r["f1"]["value"] == pytest.approx(0.75)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(FingerprintError, match="scores for"):
        metrics.evaluate(Y, S[:3], P)
    with pytest.raises(FingerprintError, match="only 0"):
        metrics.evaluate(Y * 2, S, P)
    with pytest.raises(FingerprintError, match="threshold"):
        metrics.evaluate(Y, S)


def test_calibrate_threshold_rules():
    # F1 at thresholds 0.7 -> 6/7 (best); Youden at 0.7 -> 0.75 (best); midpoint to the next score 0.6
    assert metrics.calibrate_threshold(Y, S, "max_f1") == pytest.approx(0.65)
    assert metrics.calibrate_threshold(Y, S, "youden") == pytest.approx(0.65)
    # a case where they differ
    y = np.array([1, 1, 0, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    # F1: t=0.6 -> 6/7 (best), t=0.8 -> 4/5; midpoint to 0.5
    assert metrics.calibrate_threshold(y, s, "max_f1") == pytest.approx(0.55)
    # Youden: t=0.8 -> 2/3 - 0 and t=0.6 -> 1 - 1/3 tie; the higher wins; midpoint to 0.7
    assert metrics.calibrate_threshold(y, s, "youden") == pytest.approx(0.75)
    with pytest.raises(FingerprintError, match="both used and not-used"):
        metrics.calibrate_threshold(np.ones(3), [0.1, 0.2, 0.3])
    with pytest.raises(FingerprintError, match="unknown rule"):
        metrics.calibrate_threshold(Y, S, "best")


def test_calibrated_threshold_reproduces_best_f1():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    s = rng.normal(size=50) + y
    t = metrics.calibrate_threshold(y, s)
    best = max(metrics.evaluate(y, s, threshold=c, n_boot=0)["f1"]["value"] for c in np.unique(s))
    assert metrics.evaluate(y, s, threshold=t, n_boot=0)["f1"]["value"] == pytest.approx(best)


def test_read_truth_and_align(tmp_path):
    p = tmp_path / "truth.csv"
    p.write_text("figure_id,label\na,1\nb,0\n")
    truth = metrics.read_truth(p)
    assert truth == {"a": 1, "b": 0}
    assert metrics.align_truth(["b", "a"], truth).tolist() == [0, 1]
    with pytest.raises(FingerprintError, match="not in"):
        metrics.align_truth(["a", "b", "c"], truth)
    with pytest.raises(FingerprintError, match="have no score"):
        metrics.align_truth(["a"], truth)
    p.write_text("figure_id,label\na,2\n")
    with pytest.raises(FingerprintError, match="line 2"):
        metrics.read_truth(p)
    p.write_text("a,1\n")
    with pytest.raises(FingerprintError, match="header"):
        metrics.read_truth(p)


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
