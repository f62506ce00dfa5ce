"""Metrics on fixed vectors against hand-computed values; ROC-AUC, bootstrap, calibration, truth files."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fingerprint.core.errors import FingerprintError
from fingerprint.evaluation import metrics

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
    t = metrics.calibrate_threshold(y, s, "max_f1")
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


def test_roc_auc_is_the_one_definition():
    assert metrics.roc_auc(Y, S) == pytest.approx(14 / 16) == roc_auc_score(Y, S)
    assert metrics.roc_auc(Y, S) == metrics.evaluate(Y, S, P, n_boot=0)["roc_auc"]["value"]
    assert np.isnan(metrics.roc_auc(np.ones(4), np.arange(4.0)))
    fpr, tpr = metrics.roc_points(Y, S)
    assert fpr[0] == 0 and tpr[-1] == 1 and len(fpr) == len(tpr)


def test_kappa_rule_picks_the_kappa_optimal_threshold():
    # a weak score on a balanced set: max-F1 labels every image used (kappa 0); the kappa rule finds the cut
    # that an exhaustive search of kappa finds, and labels few images used
    y = np.r_[np.ones(10), np.zeros(10)].astype(int)
    s = np.array([-2, -1, -1, 2, -4, 2, 0, 6, 6, 7, 2.5, 0.5, 3.5, 5.5, -1.5, 2.5, 0.5, 4.5, -2.5, -0.5])
    t = metrics.calibrate_threshold(y, s, "kappa", n_boot=0)
    grid = np.linspace(-5, 8, 521)
    best = metrics.threshold_curve(y, s, grid, "kappa").max()
    kappa = metrics.evaluate(y, s, threshold=t, n_boot=0)["kappa"]["value"]
    assert kappa == pytest.approx(best) and best == pytest.approx(0.3)
    f1_cut = metrics.calibrate_threshold(y, s, "max_f1")
    assert (s >= f1_cut).all() and metrics.evaluate(y, s, threshold=f1_cut, n_boot=0)["kappa"]["value"] == 0
    assert (s >= t).mean() == pytest.approx(0.15)
    smoothed = metrics.calibrate_threshold(y, s, "kappa", seed=1)  # bootstrap-smoothed, seeded
    assert smoothed == metrics.calibrate_threshold(y, s, "kappa", seed=1)
    assert metrics.evaluate(y, s, threshold=smoothed, n_boot=0)["kappa"]["value"] > 0.1


def test_threshold_curve_matches_sklearn():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 40)
    s = rng.normal(size=40) + y
    for t in (-0.5, 0.3, 1.2):
        r = metrics.evaluate(y, s, threshold=t, n_boot=0)
        k, b = (metrics.threshold_curve(y, s, np.array([t]), rule)[0] for rule in ("kappa", "balanced_accuracy"))
        assert k == pytest.approx(r["kappa"]["value"]) and b == pytest.approx(r["balanced_accuracy"]["value"])
        assert r["balanced_accuracy"]["value"] == pytest.approx((r["recall"]["value"] + r["specificity"]["value"]) / 2)


def test_thresholds_transfer_on_standardised_scores():
    dev = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    test = dev * 0.1 - 3  # another pool size: every score shifted and shrunk
    for scale in ("robust", "rank"):
        z = metrics.on_scale(dev, scale)
        t = (z[2] + z[3]) / 2  # labels the upper half of dev
        labels, cut = metrics.apply_threshold(test, t, scale)
        assert labels.tolist() == [0, 0, 0, 1, 1, 1] and ((test >= cut) == labels).all()
    labels, cut = metrics.apply_threshold(dev, 3.5, "raw")
    assert cut == 3.5 and labels.sum() == 3
    assert metrics.standardise(np.array([3.0, 1.0, 2.0]), "rank").argsort().tolist() == [1, 2, 0]


def test_label_share_warning_and_margin():
    assert metrics.label_share_warning(0.9, 160, 80) is not None and "90%" in metrics.label_share_warning(0.9, 160, 80)
    assert metrics.label_share_warning(0.1, 160, 80) is not None  # one way or the other
    assert metrics.label_share_warning(0.6, 160, 80) is None and metrics.label_share_warning(0.9, 100, 90) is None
    res = {n: {"roc_auc": {"value": v}} for n, v in (("fused", 0.9), ("ssim", 0.8), ("dcr", 0.7), ("relation", 0.95))}
    m = metrics.auc_margin(res, "fused", ("ssim", "dcr"))
    assert m["baseline"] == "ssim" and m["margin"] == pytest.approx(0.1)
