"""Comparators: scikit-learn classifiers over per-image features, cross-validated, ranked, saved safely.

Every comparator is a `Pipeline(StandardScaler, model)` (scikit-learn). Each
is evaluated by stratified repeated k-fold on the labelled development set,
with each fold's threshold calibrated on the other folds' out-of-fold scores
(`metrics.calibrate_threshold`), so no image's own label sets its threshold;
metrics and bootstrap intervals come from `metrics.evaluate`. The seed's
run 3 (an RBF SVM on concatenated real + generated embeddings, majority vote
per real image) stays available as the `seed-pairs` task. Fitted models are
saved with skops (`skops.io`, no pickle) beside a sha256 sidecar; loading
checks the sha256 and then lets skops build only the types in `TRUSTED`, a
fixed list in this module, never the ones a file or its sidecar names, so a
forged model file cannot run code.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import sklearn
import skops.io as sio
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import RepeatedStratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from threadpoolctl import threadpool_limits

from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import atomic_path, read_json, sha256_file, write_json
from fingerprint.core.vocab import METRICS, SCORE_SCALES, THRESHOLD_RULES
from fingerprint.evaluation.metrics import calibrate_threshold, evaluate, on_scale

log = logging.getLogger(__name__)

#: comparator name -> short description (all wrapped in StandardScaler + model).
COMPARATORS: dict[str, str] = {
    "svm_linear": "linear SVM (SVC, C=1)",
    "svm_rbf": "RBF SVM (SVC, C=1, gamma=scale)",
    "logreg": "logistic regression (L2, C=1)",
    "random_forest": "random forest (300 trees)",
    "hist_gb": "histogram gradient boosting (100 iterations)",
    "knn": "k-nearest neighbours (k=15, distance-weighted)",
    "mlp": "MLP (one hidden layer of 64, L2 1e-3)",
}
#: per-image features, the seed's run-3 pair features with a majority vote, or both
MODES = ("per-image", "seed-pairs", "both")
#: saved comparator files
MODEL_SUFFIX = ".skops"
#: types skops may build beyond its own default-trusted scikit-learn/numpy types: the fitted parts of the
#: comparators above (checked by tests/test_comparators.py). Never taken from a file.
TRUSTED = (
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.tree._tree.Tree",
)


# --------------------------------------------------------------------------- models


def make_model(name: str, *, seed: int, n_train: int, n_jobs: int = 1):
    """A fresh `Pipeline(StandardScaler, model)` for comparator `name`, seeded from `seed`."""
    seed = int(seed) % (2**32)
    if name == "svm_linear":
        model = SVC(kernel="linear", C=1.0, random_state=seed)
    elif name == "svm_rbf":
        model = SVC(kernel="rbf", C=1.0, gamma="scale", random_state=seed)
    elif name == "logreg":
        model = LogisticRegression(C=1.0, max_iter=5000, random_state=seed)
    elif name == "random_forest":
        model = RandomForestClassifier(n_estimators=300, min_samples_leaf=2, random_state=seed, n_jobs=n_jobs)
    elif name == "hist_gb":
        # the default 20-sample leaves never split on a few dozen images
        leaf = max(2, min(20, n_train // 10))
        model = HistGradientBoostingClassifier(
            max_iter=100, learning_rate=0.1, min_samples_leaf=leaf, early_stopping=False, random_state=seed
        )
    elif name == "knn":
        model = KNeighborsClassifier(n_neighbors=max(1, min(15, n_train - 1)), weights="distance", n_jobs=n_jobs)
    elif name == "mlp":
        model = MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-3, max_iter=800, random_state=seed)
    else:
        raise FingerprintError(f"unknown comparator {name!r}; choose from {','.join(COMPARATORS)}")
    return Pipeline([("scale", StandardScaler()), ("model", model)])


def decision_scores(pipe, X: np.ndarray) -> np.ndarray:
    """Higher = more likely used: P(used) where the model has probabilities, else the decision function."""
    if hasattr(pipe, "predict_proba"):
        return pipe.predict_proba(X)[:, list(pipe.classes_).index(1)]
    return pipe.decision_function(X)


def _fit(pipe, X: np.ndarray, y: np.ndarray, n_jobs: int = 1):
    """Fit with OpenMP/BLAS threads capped at `n_jobs` (HistGradientBoosting would take every core)."""
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(limits=n_jobs):
        warnings.simplefilter("always", ConvergenceWarning)
        pipe.fit(X, y)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        log.debug("%s did not fully converge", type(pipe[-1]).__name__)
    return pipe


def pair_plan(n_real: int, n_gen: int, max_pairs: int, seed: int) -> np.ndarray:
    """Seed-pairs mode: which generated images (n_real x m indices) each real image is paired with.

    The seed paired every real image with every generated one (80,000 pairs on
    the 2023 dev set, 2,000,000 on test); here each real image gets the same
    m = min(n_gen, max(1, max_pairs // n_real)) generated partners drawn
    without replacement, so the pair classifier stays fast.
    """
    m = min(n_gen, max(1, max_pairs // max(1, n_real)))
    rng = np.random.default_rng(seed)
    return (
        np.stack([rng.choice(n_gen, size=m, replace=False) for _ in range(n_real)]) if n_real else np.zeros((0, m), int)
    )


def pair_features(real_emb: np.ndarray, gen_emb: np.ndarray, plan: np.ndarray) -> np.ndarray:
    """Concatenated [real | generated] embeddings for every planned pair, real-major order."""
    n_real, m = plan.shape
    return np.concatenate([np.repeat(real_emb, m, axis=0), gen_emb[plan.reshape(-1)]], axis=1).astype(np.float64)


@dataclass
class Task:
    """What one comparator trains on: per-image rows, or real + generated embeddings for pairs."""

    mode: str
    X: np.ndarray  # per-image features, or real embeddings in pair mode
    gen: np.ndarray | None  # generated embeddings of the same split (pair mode)
    max_pairs: int = 4000


def fit_task(model: str, task: Task, idx: np.ndarray, y: np.ndarray, *, seed: int, n_jobs: int):
    if task.mode == "per-image":
        pipe = make_model(model, seed=seed, n_train=len(idx), n_jobs=n_jobs)
        return _fit(pipe, task.X[idx], y[idx], n_jobs)
    plan = pair_plan(len(idx), len(task.gen), task.max_pairs, seed)
    Xp = pair_features(task.X[idx], task.gen, plan)
    pipe = make_model(model, seed=seed, n_train=len(Xp), n_jobs=n_jobs)
    return _fit(pipe, Xp, np.repeat(y[idx], plan.shape[1]), n_jobs)


def score_task(pipe, task: Task, idx: np.ndarray, *, seed: int, n_jobs: int = 1) -> np.ndarray:
    """Per-image scores; in pair mode the share of a real image's pairs voted 'used' (the seed's majority vote)."""
    with threadpool_limits(limits=n_jobs):
        if task.mode == "per-image":
            return decision_scores(pipe, task.X[idx])
        plan = pair_plan(len(idx), len(task.gen), task.max_pairs, seed + 1)
        votes = pipe.predict(pair_features(task.X[idx], task.gen, plan)).reshape(len(idx), plan.shape[1])
    return (votes == 1).mean(axis=1)


# --------------------------------------------------------------------------- evaluation


@dataclass
class CVResult:
    """Cross-validated results of one comparator on the labelled development set."""

    name: str
    oof: np.ndarray  # repeats x n out-of-fold scores
    pred: np.ndarray  # repeats x n out-of-fold labels (fold thresholds from the other folds)
    per_repeat: list[dict]  # metrics.evaluate dict per repeat
    summary: dict  # evaluate-shaped dict aggregated over repeats
    threshold: float  # calibrated on all out-of-fold scores (used for the test set)
    seconds: float


def _threshold(y: np.ndarray, s: np.ndarray, mode: str, rule: str, seed: int = 0) -> float:
    """Seed-pairs keeps the seed's majority vote (0.5); per-image comparators calibrate on held-out scores."""
    if mode == "seed-pairs":
        return 0.5
    return float(calibrate_threshold(y, s, rule=rule, seed=seed))


def aggregate(per_repeat: list[dict]) -> dict:
    """Combine per-repeat evaluate dicts: mean value and interval bounds, plus the spread over repeats.

    Every repeat scores each development image once (out of fold), so its
    bootstrap interval describes one cross-validated estimate; averaging the
    bounds over repeats keeps that width while the centre uses all repeats.
    """
    first = per_repeat[0]
    out: dict[str, Any] = {"n": first["n"], "n_pos": first["n_pos"], "repeats": len(per_repeat)}
    for m in METRICS:
        vals = [r[m]["value"] for r in per_repeat if r.get(m) and r[m]["value"] is not None]
        if not vals:
            out[m] = {"value": None, "ci_low": None, "ci_high": None, "std": None}
            continue
        lows = [r[m]["ci_low"] for r in per_repeat if r[m]["ci_low"] is not None]
        highs = [r[m]["ci_high"] for r in per_repeat if r[m]["ci_high"] is not None]
        out[m] = {
            "value": float(np.mean(vals)),
            "ci_low": float(np.mean(lows)) if lows else None,
            "ci_high": float(np.mean(highs)) if highs else None,
            "std": float(np.std(vals)),
        }
    cms = [r["confusion_matrix"] for r in per_repeat if r.get("confusion_matrix")]
    if cms:
        out["confusion_matrix"] = {k: float(np.mean([c[k] for c in cms])) for k in ("tn", "fp", "fn", "tp")}
    return out


def cross_validate(
    name: str,
    model: str,
    task: Task,
    y: np.ndarray,
    *,
    folds: int = 5,
    repeats: int = 3,
    threshold_rule: str = THRESHOLD_RULES[0],
    threshold_scale: str = SCORE_SCALES[0],
    n_boot: int = 1000,
    seed: int = 0,
    n_jobs: int = 1,
) -> CVResult:
    """Stratified repeated k-fold of one comparator.

    Each fold's labels come from a threshold calibrated on the other folds'
    out-of-fold scores, so no image's own label sets its threshold. The
    `n_boot` bootstrap resamples are spread over the repeats (see `aggregate`).
    """
    t0 = time.perf_counter()
    n = len(y)
    counts = np.bincount(y, minlength=2)
    if counts.min() < folds:
        raise FingerprintError(
            f"development set has {counts[1]} used / {counts[0]} not_used labelled real images; "
            f"need >= {folds} of each for {folds}-fold CV"
        )
    cv = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed % (2**32))
    oof = np.full((repeats, n), np.nan)
    fold_of = np.zeros((repeats, n), dtype=int)
    for i, (tr, te) in enumerate(cv.split(np.zeros(n), y)):
        r, f = divmod(i, folds)
        pipe = fit_task(model, task, tr, y, seed=seed + i, n_jobs=n_jobs)
        oof[r, te] = score_task(pipe, task, te, seed=seed + i, n_jobs=n_jobs)
        fold_of[r, te] = f
    pred = np.zeros((repeats, n), dtype=int)
    per_repeat = []
    boot_per_repeat = -(-n_boot // repeats) if n_boot > 0 else 0
    scale = "raw" if task.mode == "seed-pairs" else threshold_scale
    z = np.stack([on_scale(oof[r], scale) for r in range(repeats)])
    for r in range(repeats):
        for f in range(folds):
            te = fold_of[r] == f
            thr = _threshold(y[~te], z[r, ~te], task.mode, threshold_rule, seed)
            pred[r, te] = (z[r, te] >= thr).astype(int)
        per_repeat.append(evaluate(y, oof[r], pred[r], n_boot=boot_per_repeat, seed=seed + r))
    threshold = _threshold(np.tile(y, repeats), z.reshape(-1), task.mode, threshold_rule, seed)
    summary = aggregate(per_repeat)
    summary["threshold"] = threshold
    return CVResult(name, oof, pred, per_repeat, summary, threshold, time.perf_counter() - t0)


def rank(cv: dict[str, dict], metric: str = "roc_auc") -> list[str]:
    """Scorer names best first by `metric` (then F1, then name, so ties are deterministic)."""

    def key(name: str):
        d = cv[name]
        v = d.get(metric, {}).get("value")
        f1 = d.get("f1", {}).get("value")
        return (-(v if v is not None else -np.inf), -(f1 if f1 is not None else -np.inf), name)

    return sorted(cv, key=key)


def ranking_table(
    cv: dict[str, dict],
    order: Sequence[str],
    metrics: Sequence[str] = ("roc_auc", "f1", "accuracy", "kappa", "tpr_at_5fpr"),
) -> str:
    """A Markdown table of the ranked comparators: value [ci_low, ci_high] per metric."""

    def cell(d: dict | None) -> str:
        if not d or d.get("value") is None:
            return "-"
        if d.get("ci_low") is None:
            return f"{d['value']:.3f}"
        return f"{d['value']:.3f} [{d['ci_low']:.3f}, {d['ci_high']:.3f}]"

    head = "| rank | comparator | " + " | ".join(metrics) + " |"
    rule = "|---|---|" + "---|" * len(metrics)
    rows = [
        f"| {i} | {name} | " + " | ".join(cell(cv[name].get(m)) for m in metrics) + " |"
        for i, name in enumerate(order, 1)
    ]
    return "\n".join([head, rule, *rows])


# --------------------------------------------------------------------------- saved models


def save_comparator(pipe, path: str | Path, meta: dict) -> Path:
    """Save a fitted pipeline with skops and a JSON sidecar (`<path>.json`) recording its sha256."""
    path = Path(path)
    with atomic_path(path) as tmp:
        sio.dump(pipe, tmp)
        digest = sha256_file(tmp)
    write_json(_sidecar(path), {**meta, "file": path.name, "sha256": digest, "sklearn": sklearn.__version__})
    return path


def load_comparator(path: str | Path) -> tuple[Any, dict]:
    """Load a pipeline saved by `save_comparator`: the sha256 must match its sidecar, and only `TRUSTED` types load.

    The sha256 guards integrity (a damaged or swapped file); the fixed list of
    trusted types guards trust: a file that needs any other type (a forged
    one, whatever its sidecar says) is refused, naming the types.
    """
    path = Path(path)
    if not path.is_file():
        raise FingerprintError(f"{path}: comparator file not found")
    side = _sidecar(path)
    if not side.is_file():
        raise FingerprintError(f"{path}: no sidecar {side.name} with its sha256; refusing to load an unverified file")
    meta = read_json(side)
    expected = meta.get("sha256") if isinstance(meta, dict) else None
    if not expected:
        raise FingerprintError(f"{side}: no sha256 recorded; refusing to load {path.name}")
    actual = sha256_file(path)
    if actual != expected:
        raise FingerprintError(
            f"{path}: sha256 {actual[:12]}... does not match {side.name} ({expected[:12]}...); refusing to load"
        )
    try:
        untrusted = sorted(set(sio.get_untrusted_types(file=path)) - set(TRUSTED))
        if untrusted:
            raise FingerprintError(f"{path}: refusing to load untrusted types {', '.join(untrusted)}")
        return sio.load(path, trusted=list(TRUSTED)), meta
    except FingerprintError:
        raise
    except Exception as e:  # not a skops file, or one skops cannot read
        raise FingerprintError(f"{path}: not a readable skops file ({type(e).__name__}: {str(e)[:160]})") from e


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")
