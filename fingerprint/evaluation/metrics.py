"""Membership metrics with bootstrap intervals, threshold calibration and truth files.

The one place where ROC-AUC, the other metrics and decision thresholds are
computed (training validation, compare, cluster, report and the benchmark
builder call it). Every metric is a scikit-learn function
(precision_recall_fscore_support, roc_curve, ...); this module only decides
what to do where a metric is undefined (one class in the truth: reported as
None) and how to resample (stratified bootstrap, Efron & Tibshirani 1993).
"used" (1) is the positive class, as in the official 2023 F1.

Thresholds (`calibrate_threshold`): the default rule maximises Cohen's kappa
(the challenge's metric since 2025), averaged over bootstrap resamples of
the labelled scores so that one lucky gap between two scores does not decide
it (a smoothed argmax); `balanced_accuracy` is the same for (TPR + TNR) / 2;
`max_f1` (F1 on "used" rewards labelling everything used) and Youden's J
(Youden 1950; the unsmoothed twin of balanced accuracy) stay available. A
threshold can apply on the raw scores or on scores standardised within their
split (robust z or rank-gauss; `standardise`, `apply_threshold`): k-NN distances to a
pool of 500 and to one of 2,000 generated images differ systematically, so a
raw dev threshold applied to test labels almost everything one way, while a
standardised threshold carries roughly the share labelled used (an
assumption that holds when dev and test are similarly balanced, as in the
challenge).
"""

from __future__ import annotations

import csv
import logging
import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.stats import norm, rankdata
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

from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import text_lines
from fingerprint.core.vocab import METRICS, SCORE_METRICS, SCORE_SCALES, THRESHOLD_RULES

log = logging.getLogger(__name__)

#: the metrics tables lead with: a threshold cannot game them, or they reward useful labels
LEAD_METRICS = METRICS[:5]
#: bootstrap resamples that smooth the kappa and balanced-accuracy threshold rules
THRESHOLD_BOOT = 200
#: a run file labelling more than this share of the test reals one way is flagged when dev is balanced
LABEL_SHARE_LIMIT = 0.85


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

    Five scikit-learn calls cover all ten metrics (this runs once per
    bootstrap resample): precision/recall/F1 of both classes (specificity is
    the negative class's recall; balanced accuracy their mean), accuracy,
    kappa, and one ROC curve for the AUC and the TPR at low FPR.
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
        sens, spec = out["recall"], out["specificity"]
        out["balanced_accuracy"] = None if sens is None or spec is None else 0.5 * (sens + spec)
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
    y_true: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    rule: str = "kappa",
    *,
    n_boot: int = THRESHOLD_BOOT,
    seed: int = 0,
) -> float:
    """Decision threshold (predict used when score >= threshold) from labelled scores, by `rule`.

    `kappa` (the default) and `balanced_accuracy` maximise the mean of that
    metric over `n_boot` stratified bootstrap resamples of (y, scores) (0: the
    plain argmax); `max_f1` picks the best F1 on "used"; `youden` maximises
    TPR - FPR. Ties go to the highest threshold. The value returned is the
    midpoint between the chosen score and the next lower one, so it separates
    the same calibration images but does not sit on one. Scores fitted on these
    labels (a trained model's own training images) make any rule optimistic:
    give out-of-fold scores.
    """
    if rule not in THRESHOLD_RULES:
        raise FingerprintError(f"calibrate: unknown rule {rule!r} (choose from {', '.join(THRESHOLD_RULES)})")
    y, s = _check_calibration(y_true, scores)
    if rule in ("kappa", "balanced_accuracy"):
        return _smoothed_argmax(y, s, rule, n_boot, seed)
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


def _check_calibration(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
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
    return y.astype(np.int64), s


def threshold_curve(y: np.ndarray, s: np.ndarray, thresholds: np.ndarray, rule: str) -> np.ndarray:
    """Kappa or balanced accuracy of "used if s >= t" for every t in `thresholds` (vectorised, O(T log n))."""
    pos, neg = np.sort(s[y == 1]), np.sort(s[y == 0])
    n_pos, n_neg = float(len(pos)), float(len(neg))
    tp = n_pos - np.searchsorted(pos, thresholds, side="left")
    fp = n_neg - np.searchsorted(neg, thresholds, side="left")
    fn, tn = n_pos - tp, n_neg - fp
    if rule == "balanced_accuracy":
        return 0.5 * (tp / max(n_pos, 1.0) + tn / max(n_neg, 1.0))
    n = n_pos + n_neg
    po = (tp + tn) / n
    pe = ((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp)) / n**2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pe < 1 - 1e-12, (po - pe) / (1 - pe), 0.0)


def _smoothed_argmax(y: np.ndarray, s: np.ndarray, rule: str, n_boot: int, seed: int) -> float:
    """The candidate threshold (midpoints between distinct scores) with the best bootstrap-mean `rule` value."""
    u = np.unique(s)
    gap = float(u[-1] - u[0]) if len(u) > 1 else 1.0
    cands = np.r_[(u[1:] + u[:-1]) / 2.0, u[-1] + max(gap, 1.0)]  # "all used" is u[0] itself (see below)
    cands = np.r_[u[0], cands]
    total = threshold_curve(y, s, cands, rule).astype(np.float64)
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        groups = [np.flatnonzero(y == c) for c in (0, 1)]
        total = np.zeros(len(cands))
        for _ in range(n_boot):
            idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
            total += threshold_curve(y[idx], s[idx], cands, rule)
    best = np.flatnonzero(total >= total.max() - 1e-9 * max(1, n_boot))
    return float(cands[best.max()])


def standardise(scores: Sequence[float] | np.ndarray, how: str = "rank") -> np.ndarray:
    """One split's scores on a common scale: "rank" = rank-gauss (the normal quantile of the average rank, ties
    shared; immune to any monotone change of scale between splits and to point masses), "robust" = (s - median)
    / IQR (IQR falls back to the standard deviation, then 1)."""
    s = np.asarray(scores, dtype=np.float64)
    if len(s) == 0:
        return s
    if how == "rank":
        return norm.ppf((rankdata(s) - 0.5) / len(s))
    if how != "robust":
        raise FingerprintError(f"standardise: unknown method {how!r} (rank or robust)")
    q1, med, q3 = np.percentile(s, [25, 50, 75])
    scale = q3 - q1
    if not scale > 1e-12:
        scale = s.std() if s.std() > 1e-12 else 1.0
    return (s - med) / scale


def on_scale(scores: Sequence[float] | np.ndarray, scale: str) -> np.ndarray:
    """Scores on the threshold scale `scale` (vocab.SCORE_SCALES): standardised within this split, or raw."""
    if scale not in SCORE_SCALES:
        raise FingerprintError(f"unknown threshold scale {scale!r} (choose from {', '.join(SCORE_SCALES)})")
    s = np.asarray(scores, dtype=np.float64)
    return s if scale == "raw" else standardise(s, scale)


def apply_threshold(
    scores: Sequence[float] | np.ndarray, threshold: float, scale: str = "raw"
) -> tuple[np.ndarray, float]:
    """(labels 0/1, the same cut on the raw scores): "used" where the score on `scale` is >= threshold.

    The raw cut is a midpoint between the highest raw score labelled not used and the lowest labelled used,
    so `labels == (scores >= raw_cut)` on this split and a score file's threshold stays meaningful.
    """
    s = np.asarray(scores, dtype=np.float64)
    labels = (on_scale(s, scale) >= threshold).astype(np.int64)
    if scale == "raw" or len(s) == 0:
        return labels, float(threshold)
    if labels.all():
        return labels, float(s.min())
    if not labels.any():
        return labels, float(np.nextafter(s.max(), np.inf))
    return labels, float((s[labels == 0].max() + s[labels == 1].min()) / 2.0)


def label_share_warning(
    share_used: float, n_dev: int, n_dev_used: int, *, limit: float = LABEL_SHARE_LIMIT
) -> str | None:
    """A warning when the labelled dev set is balanced but a run file labels more than `limit` of its reals one way."""
    if n_dev <= 0:
        return None
    balanced = abs(n_dev_used / n_dev - 0.5) <= 0.1
    one_way = max(share_used, 1.0 - share_used)
    if balanced and one_way > limit:
        side = "used" if share_used >= 0.5 else "not used"
        return (
            f"{one_way:.0%} of the test reals are labelled {side} although the labelled dev set is balanced "
            f"({n_dev_used}/{n_dev} used): the threshold does not transfer, read the ROC-AUC, not the labels"
        )
    return None


def read_truth(path: str | Path) -> dict[str, int]:
    """Read a truth file (`figure_id,label` header, 1 = used) into {key: 0|1}.

    Read like id and run files (`utils.text_lines`: a byte-order mark, CRLF
    line ends and spaces around fields are accepted); blank lines are skipped.
    """
    path = Path(path)
    rows = list(csv.reader(text_lines(path, "truth file")))
    header = rows[0] if rows else None
    if header is None or [h.strip() for h in header[:2]] != ["figure_id", "label"] or len(header) != 2:
        found = ",".join(header) if header else "nothing"
        raise FingerprintError(f"{path}: line 1: expected the header 'figure_id,label', found {found!r}")
    truth: dict[str, int] = {}
    for lineno, row in enumerate(rows[1:], start=2):
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


def auc_margin(results: dict[str, dict], scorer: str, baselines: Sequence[str]) -> dict | None:
    """`scorer`'s ROC-AUC minus the best ROC-AUC among `baselines` in one evaluation ({scorer: evaluate dict})."""

    def auc(name: str) -> float | None:
        return (results.get(name, {}).get("roc_auc") or {}).get("value")

    mine, known = auc(scorer), [(auc(b), b) for b in baselines if auc(b) is not None]
    if mine is None or not known:
        return None
    best_auc, best = max(known)
    return {"scorer": scorer, "auc": mine, "baseline": best, "baseline_auc": best_auc, "margin": mine - best_auc}


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
