"""Downstream comparators: scikit-learn classifiers over exported features.

The seed's run 3 was a one-off notebook (an RBF SVM on concatenated real +
generated ResNet features, majority vote per real image). Here every
comparator is a scikit-learn Pipeline (scaling + model) over per-image feature
sets built from `fingerprint embed` and `fingerprint score` outputs:

- ``embedding``: the real image's unit-norm embedding;
- ``profile``: its top-k cosine similarities to the generated images of its
  own split (exact FAISS search), sorted descending;
- ``relation``: the relation scores of its support set (``scores/neighbours.npz``
  ``pair_scores``), sorted descending;
- ``baselines``: the baseline scores of ``scores/<baseline>.csv``.

Each comparator is evaluated by stratified repeated k-fold on the labelled
development set with `metrics.evaluate` (bootstrap intervals), ranked, then
refitted on the whole development set to score the test set. The seed's pair
mode (``seed-pairs``) stays available for comparison.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fingerprint.utils import (
    FingerprintError,
    atomic_path,
    is_main_process,
    read_json,
    sha256_file,
    write_json,
    write_text,
)

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
FEATURE_SETS = ("embedding", "profile", "relation", "baselines")
MODES = ("per-image", "seed-pairs", "both")
#: metrics aggregated over CV repeats (the keys of metrics.evaluate's dict).
METRICS = ("f1", "accuracy", "precision", "recall", "specificity", "roc_auc", "kappa", "tpr_at_1fpr", "tpr_at_5fpr")
LABEL_CODES = {"used": 1, "not_used": 0}


@dataclass
class SplitData:
    """One split's inputs: its exported features and, optionally, its score-stage outputs.

    `features` is a `fingerprint.embed.Features` (or anything with `keys`,
    `roles`, `labels`, `embeddings` arrays); `neighbours` holds the arrays of
    `scores/neighbours.npz` (`keys`, `pair_scores`); `baselines` maps a scorer
    name to `{key: score}` from `scores/<scorer>.csv`.
    """

    features: Any
    neighbours: dict[str, np.ndarray] | None = None
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    name: str = "split"


@dataclass
class FeatureMatrix:
    """Per-real-image feature rows with their keys and labels (1 used, 0 not used, -1 unknown)."""

    keys: np.ndarray
    X: np.ndarray
    y: np.ndarray
    columns: list[str]


@dataclass
class CompareConfig:
    """Options of `run_comparators` (the CLI flags of `fingerprint compare`)."""

    features: tuple[str, ...] = ("embedding", "profile")
    comparators: tuple[str, ...] = tuple(COMPARATORS)
    mode: str = "per-image"
    pair_comparators: tuple[str, ...] = ("svm_rbf",)
    baselines: tuple[str, ...] = ("dcr", "ssim", "emb_nn", "emb_topk")
    folds: int = 5
    repeats: int = 3
    top_k: int = 16
    max_pairs: int = 4000
    threshold_rule: str = "max_f1"
    rank_by: str = "roc_auc"
    n_boot: int = 1000
    n_jobs: int = 1
    seed: int = 0

    def check(self) -> None:
        """Raise FingerprintError for an option out of range."""
        bad = [f for f in self.features if f not in FEATURE_SETS]
        if bad or not self.features:
            raise FingerprintError(
                f"unknown feature set(s) {','.join(bad) or '(none)'}; choose from {','.join(FEATURE_SETS)}"
            )
        for names in (self.comparators, self.pair_comparators):
            bad = [c for c in names if c not in COMPARATORS]
            if bad:
                raise FingerprintError(f"unknown comparator(s) {','.join(bad)}; choose from {','.join(COMPARATORS)}")
        if self.mode not in MODES:
            raise FingerprintError(f"unknown mode {self.mode!r}; choose from {', '.join(MODES)}")
        if self.folds < 2 or self.repeats < 1:
            raise FingerprintError(f"need folds >= 2 and repeats >= 1 (got {self.folds} and {self.repeats})")
        if self.top_k < 1 or self.max_pairs < 1:
            raise FingerprintError("top-k and max-pairs must be >= 1")
        if self.threshold_rule not in ("max_f1", "youden"):
            raise FingerprintError(f"unknown threshold rule {self.threshold_rule!r}; choose from max_f1, youden")
        if self.rank_by not in METRICS:
            raise FingerprintError(f"unknown rank metric {self.rank_by!r}; choose from {', '.join(METRICS)}")
        if not 1 <= self.n_jobs <= 2:
            raise FingerprintError(f"n-jobs must be 1 or 2 (got {self.n_jobs})")

    def runs(self) -> list[tuple[str, str, str]]:
        """(scorer name, model, mode) for every comparator this config runs."""
        out = []
        if self.mode in ("per-image", "both"):
            out += [(f"cmp_{c}", c, "per-image") for c in self.comparators]
        if self.mode in ("seed-pairs", "both"):
            out += [(f"cmp_pairs_{c}", c, "seed-pairs") for c in self.pair_comparators]
        return out


# --------------------------------------------------------------------------- inputs


def _arrays(features: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    keys = np.asarray(features.keys).astype(str)
    roles = np.asarray(features.roles).astype(str)
    labels = np.asarray(features.labels).astype(str)
    emb = np.ascontiguousarray(np.asarray(features.embeddings, dtype=np.float32))
    if emb.ndim != 2 or not (len(keys) == len(roles) == len(labels) == len(emb)):
        raise FingerprintError("features: keys, roles, labels and embeddings must have one row per sample")
    return keys, roles, labels, emb


def load_split(
    features_path: str | Path,
    *,
    scores_dir: str | Path | None = None,
    feature_sets: Sequence[str] = ("embedding", "profile"),
    baselines: Sequence[str] = (),
    name: str | None = None,
) -> SplitData:
    """Load one split's feature file, plus `neighbours.npz` and baseline CSVs from `scores_dir` if the feature sets need them."""
    from fingerprint.embed import Features

    features_path = Path(features_path)
    if not features_path.is_file():
        raise FingerprintError(f"{features_path}: feature file not found")
    split = SplitData(Features.load(features_path, fmaps=False), name=name or features_path.stem)
    if "relation" in feature_sets or "baselines" in feature_sets:
        if scores_dir is None:
            raise FingerprintError(f"{features_path}: relation/baselines features need the split's scores folder")
        scores_dir = Path(scores_dir)
    if "relation" in feature_sets:
        split.neighbours = read_neighbours(scores_dir / "neighbours.npz")
    if "baselines" in feature_sets:
        if not baselines:
            raise FingerprintError("the baselines feature set needs at least one baseline name")
        for b in baselines:
            split.baselines[b] = read_score_map(scores_dir / f"{b}.csv")
    return split


def read_neighbours(path: str | Path) -> dict[str, np.ndarray]:
    """Read `scores/neighbours.npz` (no pickle) into a dict of arrays; one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise FingerprintError(f"{path}: neighbours file not found (written by 'fingerprint score')")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise FingerprintError(f"{path}: not a readable .npz ({e})") from None
    for k in ("keys", "pair_scores"):
        if k not in data:
            raise FingerprintError(f"{path}: missing array '{k}'")
    if data["pair_scores"].ndim != 2 or len(data["pair_scores"]) != len(data["keys"]):
        raise FingerprintError(f"{path}: pair_scores must be N x k with one row per key")
    return data


def read_score_map(path: str | Path) -> dict[str, float]:
    """Read a score file (`key,score,label`) into {key: score}."""
    from fingerprint.score import read_scores

    table = read_scores(path)
    return dict(zip(table.keys, table.scores.tolist()))


def _label_codes(labels: np.ndarray) -> np.ndarray:
    return np.array([LABEL_CODES.get(str(lab), -1) for lab in labels], dtype=int)


def profile_features(real_emb: np.ndarray, gen_emb: np.ndarray, k: int, *, seed: int = 0) -> np.ndarray:
    """Top-k cosine similarities of each real embedding to the generated ones, sorted descending (exact FAISS search)."""
    from fingerprint.index import build_index, search

    index = build_index(np.ascontiguousarray(gen_emb, dtype=np.float32), "Flat", seed=seed)
    sims, _ = search(index, np.ascontiguousarray(real_emb, dtype=np.float32), k)
    return -np.sort(-np.asarray(sims, dtype=np.float32), axis=1)


def build_features(
    split: SplitData, feature_sets: Sequence[str], *, top_k: int, baselines: Sequence[str] = (), seed: int = 0
) -> FeatureMatrix:
    """Feature rows for the real images of one split, columns in `FEATURE_SETS` order."""
    keys, roles, labels, emb = _arrays(split.features)
    real = roles == "real"
    if not real.any():
        raise FingerprintError(f"{split.name}: no real images in the features")
    rkeys = keys[real]
    blocks: list[np.ndarray] = []
    columns: list[str] = []
    if "embedding" in feature_sets:
        blocks.append(emb[real])
        columns += [f"emb_{i}" for i in range(emb.shape[1])]
    if "profile" in feature_sets:
        gen = roles == "generated"
        if gen.sum() < top_k:
            raise FingerprintError(
                f"{split.name}: profile features need >= {top_k} generated images (have {int(gen.sum())}); lower --top-k"
            )
        blocks.append(profile_features(emb[real], emb[gen], top_k, seed=seed))
        columns += [f"profile_{i}" for i in range(top_k)]
    if "relation" in feature_sets:
        if split.neighbours is None:
            raise FingerprintError(f"{split.name}: relation features need scores/neighbours.npz")
        nb_keys = np.asarray(split.neighbours["keys"]).astype(str)
        pos = {k: i for i, k in enumerate(nb_keys)}
        missing = [k for k in rkeys if k not in pos]
        if missing:
            raise FingerprintError(
                f"{split.name}: neighbours.npz lacks {len(missing)} real image(s), e.g. {missing[0]}"
            )
        ps = np.asarray(split.neighbours["pair_scores"], dtype=np.float32)[[pos[k] for k in rkeys]]
        blocks.append(-np.sort(-ps, axis=1))
        columns += [f"relation_{i}" for i in range(ps.shape[1])]
    if "baselines" in feature_sets:
        for b in baselines:
            smap = split.baselines.get(b)
            if smap is None:
                raise FingerprintError(f"{split.name}: no scores for baseline '{b}'")
            missing = [k for k in rkeys if k not in smap]
            if missing:
                raise FingerprintError(
                    f"{split.name}: scores/{b}.csv lacks {len(missing)} real image(s), e.g. {missing[0]}"
                )
            blocks.append(np.array([[smap[k]] for k in rkeys], dtype=np.float32))
            columns.append(f"baseline_{b}")
    X = np.concatenate(blocks, axis=1).astype(np.float64)
    if not np.all(np.isfinite(X)):
        raise FingerprintError(f"{split.name}: non-finite values in the comparator features")
    return FeatureMatrix(rkeys, X, _label_codes(labels[real]), columns)


# --------------------------------------------------------------------------- models


def make_model(name: str, *, seed: int, n_train: int, n_jobs: int = 1):
    """A fresh `Pipeline(StandardScaler, model)` for comparator `name`, seeded from `seed`."""
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

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
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

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
class _Task:
    """What one comparator trains on: per-image rows, or real + generated embeddings for pairs."""

    mode: str
    X: np.ndarray  # per-image features, or real embeddings in pair mode
    gen: np.ndarray | None  # generated embeddings of the same split (pair mode)
    max_pairs: int = 4000


def _fit_task(model: str, task: _Task, idx: np.ndarray, y: np.ndarray, *, seed: int, n_jobs: int):
    if task.mode == "per-image":
        pipe = make_model(model, seed=seed, n_train=len(idx), n_jobs=n_jobs)
        return _fit(pipe, task.X[idx], y[idx], n_jobs)
    plan = pair_plan(len(idx), len(task.gen), task.max_pairs, seed)
    Xp = pair_features(task.X[idx], task.gen, plan)
    pipe = make_model(model, seed=seed, n_train=len(Xp), n_jobs=n_jobs)
    return _fit(pipe, Xp, np.repeat(y[idx], plan.shape[1]), n_jobs)


def _score_task(pipe, task: _Task, idx: np.ndarray, *, seed: int, n_jobs: int = 1) -> np.ndarray:
    """Per-image scores; in pair mode the share of a real image's pairs voted 'used' (the seed's majority vote)."""
    from threadpoolctl import threadpool_limits

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


def _threshold(y: np.ndarray, s: np.ndarray, mode: str, rule: str) -> float:
    """Seed-pairs keeps the seed's majority vote (0.5); per-image comparators calibrate on held-out scores."""
    if mode == "seed-pairs":
        return 0.5
    from fingerprint.metrics import calibrate_threshold

    return float(calibrate_threshold(y, s, rule=rule))


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
    task: _Task,
    y: np.ndarray,
    *,
    folds: int = 5,
    repeats: int = 3,
    threshold_rule: str = "max_f1",
    n_boot: int = 1000,
    seed: int = 0,
    n_jobs: int = 1,
) -> CVResult:
    """Stratified repeated k-fold of one comparator.

    Each fold's labels come from a threshold calibrated on the other folds'
    out-of-fold scores, so no image's own label sets its threshold. The
    `n_boot` bootstrap resamples are spread over the repeats (see `aggregate`).
    """
    from sklearn.model_selection import RepeatedStratifiedKFold

    from fingerprint.metrics import evaluate

    t0 = time.perf_counter()
    n = len(y)
    counts = np.bincount(y, minlength=2)
    if counts.min() < folds:
        raise FingerprintError(
            f"development set has {counts[1]} used / {counts[0]} not_used labelled real images; need >= {folds} of each for {folds}-fold CV"
        )
    cv = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed % (2**32))
    oof = np.full((repeats, n), np.nan)
    fold_of = np.zeros((repeats, n), dtype=int)
    for i, (tr, te) in enumerate(cv.split(np.zeros(n), y)):
        r, f = divmod(i, folds)
        pipe = _fit_task(model, task, tr, y, seed=seed + i, n_jobs=n_jobs)
        oof[r, te] = _score_task(pipe, task, te, seed=seed + i, n_jobs=n_jobs)
        fold_of[r, te] = f
    pred = np.zeros((repeats, n), dtype=int)
    per_repeat = []
    boot_per_repeat = -(-n_boot // repeats) if n_boot > 0 else 0
    for r in range(repeats):
        for f in range(folds):
            te = fold_of[r] == f
            thr = _threshold(y[~te], oof[r, ~te], task.mode, threshold_rule)
            pred[r, te] = (oof[r, te] >= thr).astype(int)
        per_repeat.append(evaluate(y, oof[r], pred[r], n_boot=boot_per_repeat, seed=seed + r))
    threshold = _threshold(np.tile(y, repeats), oof.reshape(-1), task.mode, threshold_rule)
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
    """Save a fitted pipeline with joblib and a JSON sidecar (`<path>.json`) recording its sha256.

    `load_comparator` refuses a file whose bytes no longer match the sidecar,
    so a swapped or tampered pickle is never unpickled.
    """
    import joblib
    import sklearn

    path = Path(path)
    with atomic_path(path) as tmp:
        joblib.dump(pipe, tmp)
        digest = sha256_file(tmp)
    write_json(_sidecar(path), {**meta, "file": path.name, "sha256": digest, "sklearn": sklearn.__version__})
    return path


def load_comparator(path: str | Path) -> tuple[Any, dict]:
    """Load a pipeline saved by `save_comparator` after checking its sha256 against the sidecar."""
    import joblib

    path = Path(path)
    if not path.is_file():
        raise FingerprintError(f"{path}: comparator file not found")
    side = _sidecar(path)
    if not side.is_file():
        raise FingerprintError(f"{path}: no sidecar {side.name} with its sha256; refusing to load an unverified pickle")
    meta = read_json(side)
    expected = meta.get("sha256") if isinstance(meta, dict) else None
    if not expected:
        raise FingerprintError(f"{side}: no sha256 recorded; refusing to load {path.name}")
    actual = sha256_file(path)
    if actual != expected:
        raise FingerprintError(
            f"{path}: sha256 {actual[:12]}... does not match {side.name} ({expected[:12]}...); refusing to load"
        )
    return joblib.load(path), meta


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


# --------------------------------------------------------------------------- the stage


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _as_split(x: Any, name: str) -> SplitData:
    return x if isinstance(x, SplitData) else SplitData(x, name=name)


def _generated(split: SplitData) -> np.ndarray:
    _, roles, _, emb = _arrays(split.features)
    gen = emb[roles == "generated"]
    if len(gen) == 0:
        raise FingerprintError(f"{split.name}: seed-pairs mode needs generated images in the features")
    return gen


def run_comparators(
    dev: Any,
    test: Any | None = None,
    cfg: CompareConfig | None = None,
    *,
    out_dir: str | Path | None = None,
    force: bool = False,
) -> dict:
    """Cross-validate every configured comparator on `dev`, rank them, refit on all of `dev` and score `test`.

    `dev`/`test` are `SplitData` (or bare `Features`). With `out_dir` (a run
    folder) it writes `scores/cmp_<name>.csv` per comparator (test), and
    `compare/` holding `cv.json` (the returned dict), `ranking.md`, the fitted
    models (`models/cmp_<name>.joblib` + sha256 sidecar) and `run.csv`, the
    official run file of the best comparator. Returns a dict with `cv`
    (scorer -> evaluate-shaped dict over CV repeats), `ranking`, `best`,
    `thresholds` and, with a test split, `test` (scorer -> counts).
    """
    cfg = cfg or CompareConfig()
    cfg.check()
    dev = _as_split(dev, "dev")
    test = _as_split(test, "test") if test is not None else None
    runs = cfg.runs()
    if not runs:
        raise FingerprintError("no comparator selected")

    out_dir = Path(out_dir) if out_dir is not None else None
    if out_dir is not None:
        _check_outputs(out_dir, force)

    per_image = any(mode == "per-image" for _, _, mode in runs)
    pairs = any(mode == "seed-pairs" for _, _, mode in runs)
    dev_fm = (
        build_features(dev, cfg.features, top_k=cfg.top_k, baselines=cfg.baselines, seed=cfg.seed)
        if per_image
        else None
    )
    test_fm = (
        build_features(test, cfg.features, top_k=cfg.top_k, baselines=cfg.baselines, seed=cfg.seed)
        if per_image and test
        else None
    )
    if dev_fm is not None and test_fm is not None and dev_fm.columns != test_fm.columns:
        raise FingerprintError(
            f"dev and test feature columns differ ({len(dev_fm.columns)} vs {len(test_fm.columns)}): "
            "relation features need the same k in both neighbours.npz files"
        )
    dkeys, droles, dlabels, demb = _arrays(dev.features)
    dev_real = droles == "real"
    y_all = _label_codes(dlabels[dev_real])
    lab = y_all >= 0
    n_unknown = int((~lab).sum())
    if n_unknown:
        log.info("dev: %d real image(s) without a used/not_used label skipped", n_unknown)
    y = y_all[lab]
    dev_keys = dkeys[dev_real][lab]
    tasks = {}
    if per_image:
        tasks["per-image"] = _Task("per-image", dev_fm.X[lab], None)
    if pairs:
        tasks["seed-pairs"] = _Task(
            "seed-pairs", demb[dev_real][lab].astype(np.float64), _generated(dev).astype(np.float64), cfg.max_pairs
        )

    from tqdm import tqdm

    cv: dict[str, CVResult] = {}
    for name, model, mode in tqdm(runs, desc="compare: CV", disable=not is_main_process()):
        cv[name] = cross_validate(
            name,
            model,
            tasks[mode],
            y,
            folds=cfg.folds,
            repeats=cfg.repeats,
            threshold_rule=cfg.threshold_rule,
            n_boot=cfg.n_boot,
            seed=cfg.seed,
            n_jobs=cfg.n_jobs,
        )
        s = cv[name].summary
        log.info(
            "%s: CV roc_auc %s f1 %s (%.1f s)",
            name,
            _num(s["roc_auc"]["value"]),
            _num(s["f1"]["value"]),
            cv[name].seconds,
        )
    summaries = {n: r.summary for n, r in cv.items()}
    order = rank(summaries, cfg.rank_by)
    result: dict[str, Any] = {
        "stage": "compare",
        "config": dataclasses.asdict(cfg),
        "n_dev": int(len(y)),
        "n_dev_pos": int(y.sum()),
        "n_dev_unlabelled_skipped": n_unknown,
        "columns": dev_fm.columns if dev_fm is not None else [],
        "cv": summaries,
        "ranking": order,
        "best": order[0],
        "thresholds": {n: r.threshold for n, r in cv.items()},
        "seconds": {n: round(r.seconds, 3) for n, r in cv.items()},
        "oof": {
            "keys": [str(k) for k in dev_keys],
            "scores": {n: r.oof.mean(axis=0).round(6).tolist() for n, r in cv.items()},
        },
    }
    table = ranking_table(summaries, order)
    models: dict[str, tuple[Any, dict]] = {}
    test_out: dict[str, dict] = {}
    test_scores: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    if test is not None or out_dir is not None:
        full = np.arange(len(y))
        for name, model, mode in runs:
            pipe = _fit_task(model, tasks[mode], full, y, seed=cfg.seed, n_jobs=cfg.n_jobs)
            meta = {
                "name": name,
                "model": model,
                "mode": mode,
                "features": list(cfg.features),
                "columns": result["columns"],
                "threshold": cv[name].threshold,
                "threshold_rule": "majority" if mode == "seed-pairs" else cfg.threshold_rule,
                "seed": cfg.seed,
                "n_train": int(len(y)),
                "max_pairs": cfg.max_pairs,
            }
            models[name] = (pipe, meta)
            if test is not None:
                keys, s = _score_split(pipe, mode, test, test_fm, cfg)
                pred = (s >= cv[name].threshold).astype(int)
                test_scores[name] = (keys, s, pred)
                test_out[name] = {"n": int(len(keys)), "n_used": int(pred.sum()), "threshold": cv[name].threshold}
        result["test"] = test_out
    if out_dir is not None:
        _write_outputs(out_dir, result, table, models, test_scores, force)
    return result | {"table": table}


def _score_split(
    pipe, mode: str, test: SplitData, test_fm: FeatureMatrix | None, cfg: CompareConfig
) -> tuple[np.ndarray, np.ndarray]:
    if mode == "per-image":
        task = _Task("per-image", test_fm.X, None)
        return test_fm.keys, _score_task(pipe, task, np.arange(len(test_fm.X)), seed=cfg.seed, n_jobs=cfg.n_jobs)
    keys, roles, _, emb = _arrays(test.features)
    real = roles == "real"
    task = _Task("seed-pairs", emb[real].astype(np.float64), _generated(test).astype(np.float64), cfg.max_pairs)
    return keys[real], _score_task(pipe, task, np.arange(int(real.sum())), seed=cfg.seed, n_jobs=cfg.n_jobs)


def _check_outputs(out_dir: Path, force: bool) -> None:
    existing = [p for p in [out_dir / "compare", *sorted((out_dir / "scores").glob("cmp_*.csv"))] if p.exists()]
    if existing and not force:
        raise FingerprintError(f"{existing[0]}: already exists (use --force to replace it)")


def _write_outputs(out_dir: Path, result: dict, table: str, models: dict, test_scores: dict, force: bool) -> None:
    """Score files first, then the compare/ folder in one atomic rename (its cv.json marks the stage complete)."""
    from fingerprint.runfile import write_run_file
    from fingerprint.score import write_scores

    scores_dir = out_dir / "scores"
    if force:
        for old in sorted(scores_dir.glob("cmp_*.csv")):
            if old.stem not in test_scores:
                log.info("removing stale %s", old)
                old.unlink()
                old.with_suffix(".json").unlink(missing_ok=True)
    for name, (keys, s, pred) in test_scores.items():
        meta = {
            "scorer": name,
            "threshold": result["thresholds"][name],
            "rule": models[name][1]["threshold_rule"],
            "source": "compare",
            "calibrated_on": "dev (cross-validated out-of-fold scores)",
        }
        write_scores(scores_dir / f"{name}.csv", keys, s, pred, meta=meta)
    with atomic_path(out_dir / "compare") as tmp:
        tmp.mkdir(parents=True)
        for name, (pipe, meta) in models.items():
            save_comparator(pipe, tmp / "models" / f"{name}.joblib", meta)
        best = result["best"]
        if best in test_scores:
            keys, _, pred = test_scores[best]
            write_run_file(tmp / "run.csv", keys, pred)
        write_text(
            tmp / "ranking.md", f"# Comparators (CV on dev, ranked by {result['config']['rank_by']})\n\n{table}\n"
        )
        write_json(tmp / "cv.json", result)
    log.info("compare: wrote %s (best: %s)", out_dir / "compare", result["best"])
