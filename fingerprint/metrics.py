"""Membership metrics with bootstrap intervals, threshold calibration and truth files.

The one place where ROC-AUC, the other metrics and decision thresholds are
computed (training validation, compare, cluster, report and the benchmark
builder call it). Every metric is a scikit-learn function
(precision_recall_fscore_support, roc_curve, ...); this module only decides
what to do where a metric is undefined (one class in the truth: reported as
None) and how to resample (stratified bootstrap, Efron & Tibshirani 1993).
"used" (1) is the positive class, as in the official 2023 F1. Thresholds
are max-F1 or Youden's J (Youden 1950) on labelled scores.
"""

from __future__ import annotations

import csv
import logging
import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn import config_context
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    auc,
    cohen_kappa_score,
    confusion_matrix,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_curve,
)

from fingerprint.utils import FingerprintError
from fingerprint.vocab import METRICS, SCORE_METRICS, THRESHOLD_RULES

log = logging.getLogger(__name__)


def _none_if_nan(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def roc_points(
    y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) of the ROC curve (scikit-learn's roc_curve, intermediate points dropped)."""
    fpr, tpr, _ = roc_curve(np.asarray(y_true), np.asarray(scores, dtype=np.float64))
    return fpr, tpr


def roc_auc(y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve; NaN when the labels hold one class only."""
    if len(np.unique(np.asarray(y_true))) != 2:
        return float("nan")
    return float(auc(*roc_points(y_true, scores)))


def _tpr_at(fpr: np.ndarray, tpr: np.ndarray, max_fprs: Sequence[float]) -> list[float]:
    return [float(tpr[fpr <= m + 1e-12].max()) for m in max_fprs]


def point_metrics(y_true: np.ndarray, scores: np.ndarray | None, y_pred: np.ndarray) -> dict[str, float | None]:
    """Every metric in METRICS for one sample; None where it is undefined.

    Five scikit-learn calls cover all nine metrics (this runs once per
    bootstrap resample): precision/recall/F1 of both classes (specificity is
    the negative class's recall), accuracy, kappa, and one ROC curve for the
    AUC and the TPR at low FPR.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    both = bool(y_true.min() != y_true.max())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        prec, rec, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=[0, 1], zero_division=np.nan)
        out: dict[str, float | None] = {
            "f1": _none_if_nan(f1[1]),
            "accuracy": float(accuracy_score(y_true, y_pred)),
            "precision": _none_if_nan(prec[1]),
            "recall": _none_if_nan(rec[1]),
            "specificity": _none_if_nan(rec[0]),
            "kappa": _none_if_nan(cohen_kappa_score(y_true, y_pred, labels=[0, 1])),
        }
        if scores is not None and both:
            fpr, tpr = roc_points(y_true, scores)
            out["roc_auc"] = float(auc(fpr, tpr))
            out["tpr_at_1fpr"], out["tpr_at_5fpr"] = _tpr_at(fpr, tpr, (0.01, 0.05))
        else:
            out.update({m: None for m in SCORE_METRICS})
    return {m: out[m] for m in METRICS}


def _check_inputs(y_true, scores, y_pred, threshold):
    y_true = np.asarray(y_true)
    if y_true.ndim != 1 or len(y_true) == 0:
        raise FingerprintError("evaluate: y_true must be a non-empty 1-D array")
    if not np.isin(y_true, (0, 1)).all():
        raise FingerprintError("evaluate: y_true must hold only 0 (not used) and 1 (used)")
    y_true = y_true.astype(np.int64)
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != y_true.shape:
            raise FingerprintError(f"evaluate: {len(scores)} scores for {len(y_true)} labels")
        if not np.isfinite(scores).all():
            raise FingerprintError("evaluate: scores contain NaN or infinity")
    if y_pred is None:
        if scores is None or threshold is None:
            raise FingerprintError("evaluate: give y_pred, or scores and a threshold")
        y_pred = (scores >= threshold).astype(np.int64)
    y_pred = np.asarray(y_pred)
    if y_pred.shape != y_true.shape:
        raise FingerprintError(f"evaluate: {len(y_pred)} predictions for {len(y_true)} labels")
    if not np.isin(y_pred, (0, 1)).all():
        raise FingerprintError("evaluate: predictions must hold only 0 and 1")
    return y_true, scores, y_pred.astype(np.int64)


def evaluate(
    y_true: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray | None,
    y_pred: Sequence[int] | np.ndarray | None = None,
    *,
    threshold: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict:
    """Every metric with a stratified bootstrap interval.

    `y_pred` defaults to `scores >= threshold`. `scores` may be None (a run file
    holds labels only): ROC-AUC and TPR@FPR are then None. The bootstrap
    resamples used and not-used images separately (the test set's class sizes
    are fixed by design), so every resample has both classes; `n_boot=0` gives
    no interval (ci_low/ci_high None). Same inputs + seed = same dict.
    """
    y_true, scores, y_pred = _check_inputs(y_true, scores, y_pred, threshold)
    point = point_metrics(y_true, scores, y_pred)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel())

    boot = {m: [] for m in METRICS}
    if n_boot > 0:
        with config_context(skip_parameter_validation=True, assume_finite=True):
            _bootstrap(boot, y_true, scores, y_pred, n_boot, seed)
    alpha = (1.0 - ci) / 2.0
    out: dict = {"n": int(len(y_true)), "n_pos": int(y_true.sum()), "threshold": _none_if_nan(threshold)}
    for m in METRICS:
        lo = hi = None
        if point[m] is not None and len(boot[m]) > 0:
            lo, hi = (float(v) for v in np.quantile(np.asarray(boot[m]), [alpha, 1.0 - alpha]))
        out[m] = {"value": point[m], "ci_low": lo, "ci_high": hi}
    out["confusion_matrix"] = {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    out["n_boot"] = int(n_boot)
    out["ci"] = ci
    return out


def _bootstrap(
    boot: dict[str, list], y_true: np.ndarray, scores: np.ndarray | None, y_pred: np.ndarray, n_boot: int, seed: int
) -> None:
    """Stratified resamples (used and not-used drawn separately): every resample has both classes."""
    rng = np.random.default_rng(seed)
    groups = [g for g in (np.flatnonzero(y_true == c) for c in (0, 1)) if len(g)]
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        vals = point_metrics(y_true[idx], None if scores is None else scores[idx], y_pred[idx])
        for m, v in vals.items():
            if v is not None:
                boot[m].append(v)


def calibrate_threshold(
    y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, rule: str = "max_f1"
) -> float:
    """Decision threshold (predict used when score >= threshold) from labelled scores.

    `max_f1` (the default: F1 on "used" is the official 2023 metric) picks the
    threshold with the best F1; `youden` maximises TPR - FPR (balanced errors,
    better for accuracy and kappa). Ties go to the highest threshold. The value
    returned is the midpoint between the chosen score and the next lower one,
    so it separates the same calibration images but does not sit on one.
    """
    if rule not in THRESHOLD_RULES:
        raise FingerprintError(f"calibrate: unknown rule {rule!r} (choose from {', '.join(THRESHOLD_RULES)})")
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1 or len(y) == 0:
        raise FingerprintError(f"calibrate: {len(s)} scores for {len(y)} labels")
    if not np.isin(y, (0, 1)).all():
        raise FingerprintError("calibrate: labels must be 0 (not used) and 1 (used)")
    if len(np.unique(y)) < 2:
        raise FingerprintError("calibrate: the calibration set needs both used and not-used images")
    if not np.isfinite(s).all():
        raise FingerprintError("calibrate: scores contain NaN or infinity")
    y = y.astype(np.int64)
    if rule == "max_f1":
        precision, recall, thresholds = precision_recall_curve(y, s)
        precision, recall = precision[:-1], recall[:-1]
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        best = np.flatnonzero(f1 >= f1.max() - 1e-12)
        chosen = float(thresholds[best].max())
    else:
        fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
        finite = np.isfinite(thresholds)
        j = np.where(finite, tpr - fpr, -np.inf)
        best = np.flatnonzero(j >= j.max() - 1e-12)
        chosen = float(thresholds[best].max())
    lower = s[s < chosen]
    return float((chosen + lower.max()) / 2.0) if len(lower) else chosen


def read_truth(path: str | Path) -> dict[str, int]:
    """Read a truth file (`figure_id,label` header, 1 = used) into {key: 0|1}."""
    path = Path(path)
    if not path.is_file():
        raise FingerprintError(f"{path}: truth file not found")
    truth: dict[str, int] = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["figure_id", "label"]:
            raise FingerprintError(f"{path}: line 1: expected header 'figure_id,label'")
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != 2:
                raise FingerprintError(f"{path}: line {lineno}: expected 2 fields, got {len(row)}")
            key, label = row[0].strip(), row[1].strip()
            if label not in ("0", "1"):
                raise FingerprintError(f"{path}: line {lineno}: label must be 0 or 1, got {label!r}")
            if key in truth:
                raise FingerprintError(f"{path}: line {lineno}: figure_id {key!r} appears twice")
            truth[key] = int(label)
    if not truth:
        raise FingerprintError(f"{path}: truth file has no rows")
    return truth


def align_truth(
    keys: Sequence[str], truth: dict[str, int], *, source: str = "scores", truth_path: str = "truth"
) -> np.ndarray:
    """Truth labels in the order of `keys`; a clear error for keys on one side only."""
    missing = [k for k in keys if k not in truth]
    if missing:
        raise FingerprintError(f"{source}: {len(missing)} key(s) not in {truth_path} (first: {', '.join(missing[:3])})")
    keyset = set(keys)
    unscored = [k for k in truth if k not in keyset]
    if unscored:
        raise FingerprintError(
            f"{source}: {len(unscored)} key(s) of {truth_path} have no score (first: {', '.join(unscored[:3])})"
        )
    return np.array([truth[k] for k in keys], dtype=np.int64)


def format_table(results: dict[str, dict], metrics: Sequence[str] = METRICS) -> str:
    """A plain-text table, one row per scorer: value [ci_low, ci_high] per metric."""

    def cell(d):
        if d["value"] is None:
            return "n/a"
        if d["ci_low"] is None:
            return f"{d['value']:.3f}"
        return f"{d['value']:.3f} [{d['ci_low']:.3f},{d['ci_high']:.3f}]"

    header = ["scorer", *metrics, "tn/fp/fn/tp"]
    rows = [header]
    for name, res in results.items():
        cm = res["confusion_matrix"]
        rows.append([name, *(cell(res[m]) for m in metrics), f"{cm['tn']}/{cm['fp']}/{cm['fn']}/{cm['tp']}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
