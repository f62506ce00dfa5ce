"""The statistics of attribution: retrieval, pair scores, aggregation and the calibrated "none" decision.

The question of the ImageCLEFmedical GANs 2025 subtask 2: several named real
subsets, each used to train its own generator, and a mixed pool of generated
images. The evidence is the one membership scoring already computes, turned
around: nearest real neighbours of a generated image rather than nearest
generated neighbours of a real image.

1. Retrieval. Each generated image queries each subset's real images for its k
   nearest (exact inner-product FAISS search over unit-norm embeddings, one
   index per subset, so every subset always has k candidates and no subset is
   crowded out of one global top-k by a larger or more typical one).
2. Pair score. Any "higher = closer" score of a (generated, real) pair: the
   cosine from the search (default), or a re-scoring of the k candidates with
   negated pixel distance, SSIM, or the learned difference function's pair
   probability (`rescore`); retrieval by embedding, decision by the better
   pair function, as in copy detection (Pizzi et al., SSCD, CVPR 2022).
3. Aggregation per subset: the max (nearest-neighbour evidence, as GAN-Leaks,
   Chen et al. CCS 2020: a generator that memorised one image of the subset) or
   the mean of the top m (less swayed by one chance look-alike).
4. Decision. The subset with the highest aggregate score; its score and its
   margin over the runner-up come with it. "none" when the best score is not
   above a threshold t calibrated on a null: the best aggregate score of each
   generated image against real images known to be in no subset (held-out
   reals of the same population), split into pseudo-subsets of the real
   subsets' sizes and scored with the same pair score and aggregation. t is
   the conformal (1 - alpha) quantile of these null scores (rank
   ceil((n + 1)(1 - alpha)); Lei et al. JASA 2018), so a generated image that
   owes nothing to any subset is attributed to one with probability about
   alpha. The best of several subsets is a maximum, which grows with the
   number of reals searched: with fewer null reals than subset reals (ratio
   rho < 1) the level is raised to (1 - alpha)^rho (the max of N iid scores has
   CDF F^N; approximate, as pair scores of one generated image are correlated).
   With a labelled dev pool instead, the null of an image is its best score
   over the subsets that did not make it (`null_from_truth`; rho = (S-1)/S).
   `threshold=None` forces a subset for every image (when every generated
   image is known to come from one of the subsets).

Metrics when the truth is known: scikit-learn's confusion matrix (subsets,
then "none"), accuracy, balanced accuracy, Cohen's kappa (the 2025 metric), and
the chance levels to compare accuracy with (majority share, and kappa's
expected agreement).

The stage that applies them is `fingerprint.tasks.attribute`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import faiss
import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
)

from fingerprint.core.errors import FingerprintError
from fingerprint.embedding.index import MIN_POINTS_PER_CENTROID, build_index, neighbours

#: The label of a generated image attributed to no subset.
NONE = "none"


#: Aggregations of the k pair scores of one (generated image, subset).
AGGREGATIONS = ("max", "topm")


#: pair_score(gen_rows (P,), real_rows (P,)) -> (P,) "higher = closer" scores.
PairScore = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Evidence:
    """Per-subset neighbours of each generated image: scores and real rows (G, S, k), best first."""

    subsets: tuple[str, ...]
    scores: np.ndarray
    rows: np.ndarray


def _unit(x, what: str) -> np.ndarray:
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    if x.ndim != 2 or len(x) == 0 or not np.isfinite(x).all():
        raise FingerprintError(
            f"attribute: {what} embeddings must be a non-empty finite 2-D array, got shape {x.shape}"
        )
    faiss.normalize_L2(x)
    return x


def _subsets(labels: np.ndarray, subsets: Sequence[str] | None) -> tuple[str, ...]:
    names = tuple(sorted(set(labels.tolist()))) if subsets is None else tuple(str(s) for s in subsets)
    if NONE in names:
        raise FingerprintError(f"attribute: {NONE!r} is reserved for 'no subset' and cannot name a subset")
    empty = [s for s in names if not (labels == s).any()]
    if empty or not names:
        raise FingerprintError(f"attribute: subsets without real images: {', '.join(empty) or '(none given)'}")
    return names


def subset_neighbours(
    gen_emb,
    real_emb,
    real_subset: Sequence[str],
    *,
    k: int = 8,
    subsets: Sequence[str] | None = None,
    index_factory: str = "Flat",
    seed: int = 0,
) -> Evidence:
    """Top-k cosine neighbours of every generated image within each subset (one FAISS index per subset).

    `real_subset[i]` names the subset of real row i; rows of other names (not
    in `subsets`) are ignored. k is capped at the smallest subset's size.
    Returned rows index `real_emb`. The indexes are `fingerprint.embedding.index`
    ones (`index_factory`, exact "Flat" by default; an IVF factory falls back
    to Flat for a subset too small to train it), and `index.neighbours`
    fills whatever an approximate index misses with exact search.
    """
    g, r = _unit(gen_emb, "generated"), _unit(real_emb, "real")
    labels = np.asarray(real_subset, dtype=str)
    if len(labels) != len(r) or g.shape[1] != r.shape[1]:
        raise FingerprintError(
            f"attribute: {len(labels)} subset labels for {len(r)} reals, dims {g.shape[1]} vs {r.shape[1]}"
        )
    names = _subsets(labels, subsets)
    members = [np.flatnonzero(labels == s) for s in names]
    k = min(int(k), *(len(m) for m in members))
    if k < 1:
        raise FingerprintError(f"attribute: k must be >= 1, got {k}")
    scores = np.empty((len(g), len(names), k), dtype=np.float32)
    rows = np.empty((len(g), len(names), k), dtype=np.int64)
    for j, idx in enumerate(members):
        factory = index_factory if len(idx) >= MIN_POINTS_PER_CENTROID else "Flat"
        index = build_index(r[idx], factory, seed=seed)
        scores[:, j], ids = neighbours(g, r[idx], index, k=k)
        rows[:, j] = idx[ids]
    return Evidence(names, scores, rows)


def rescore(evidence: Evidence, pair_score: PairScore) -> Evidence:
    """The same candidates scored by another pair function (higher = closer), re-sorted best first."""
    gen_rows = np.broadcast_to(np.arange(len(evidence.rows))[:, None, None], evidence.rows.shape)
    s = np.asarray(pair_score(gen_rows.reshape(-1), evidence.rows.reshape(-1)), dtype=np.float64)
    if s.shape != (evidence.rows.size,) or not np.isfinite(s).all():
        raise FingerprintError(
            f"attribute: the pair score returned shape {s.shape} or non-finite values for {evidence.rows.size} pairs"
        )
    s = s.reshape(evidence.rows.shape)
    order = np.argsort(-s, axis=-1, kind="stable")
    return replace(evidence, scores=np.take_along_axis(s, order, -1), rows=np.take_along_axis(evidence.rows, order, -1))


def aggregate(scores: np.ndarray, how: str = "max", m: int = 3) -> np.ndarray:
    """(G, S, k) pair scores -> (G, S) subset scores: the max, or the mean of the top m."""
    if how not in AGGREGATIONS:
        raise FingerprintError(f"attribute: unknown aggregation {how!r} (choose from {', '.join(AGGREGATIONS)})")
    scores = np.asarray(scores, dtype=np.float64)
    if how == "max":
        return scores.max(axis=-1)
    if not 1 <= m <= scores.shape[-1]:
        raise FingerprintError(f"attribute: top-m mean needs 1 <= m <= k = {scores.shape[-1]}, got m={m}")
    return -np.sort(-scores, axis=-1)[..., :m].mean(axis=-1)


def null_best_scores(
    gen_emb,
    null_emb,
    subset_sizes: Sequence[int],
    *,
    k: int = 8,
    how: str = "max",
    m: int = 3,
    pair_score: PairScore | None = None,
    seed: int = 0,
    index_factory: str = "Flat",
) -> tuple[np.ndarray, float]:
    """(best pseudo-subset score of each generated image against reals in no subset, size ratio rho).

    The null reals are split at random (seeded) into pseudo-subsets of the real
    subsets' sizes, scaled down when there are fewer null reals than subset
    reals (rho = null reals used / subset reals, else 1). `pair_score` gets rows
    of `null_emb`, like `rescore`.
    """
    sizes = np.asarray(subset_sizes, dtype=np.int64)
    n0, total = len(null_emb), int(sizes.sum())
    scale = min(1.0, n0 / total)
    take = np.maximum(1, np.floor(sizes * scale).astype(np.int64))
    if take.sum() > n0:
        raise FingerprintError(f"attribute: {n0} null reals cannot form {len(sizes)} pseudo-subsets")
    perm = np.random.default_rng(seed).permutation(n0)
    labels = np.full(n0, "", dtype=object)
    names = [f"null{j}" for j in range(len(sizes))]
    for name, part in zip(names, np.split(perm[: take.sum()], np.cumsum(take)[:-1])):
        labels[part] = name
    ev = subset_neighbours(gen_emb, null_emb, labels.astype(str), k=k, subsets=names, index_factory=index_factory)
    if pair_score is not None:
        ev = rescore(ev, pair_score)
    return aggregate(ev.scores, how, m).max(axis=1), float(take.sum() / total)


def null_from_truth(subset_scores: np.ndarray, source: Sequence[int]) -> tuple[np.ndarray, float]:
    """Null from a labelled pool: each image's best score over the subsets that did not make it; rho = (S-1)/S."""
    s = np.asarray(subset_scores, dtype=np.float64)
    src = np.asarray(source, dtype=np.int64)
    if s.ndim != 2 or s.shape[1] < 2 or src.shape != (len(s),) or ((src < 0) | (src >= s.shape[1])).any():
        raise FingerprintError("attribute: null_from_truth needs (G, S>=2) scores and one source column per image")
    others = s.copy()
    others[np.arange(len(s)), src] = -np.inf
    return others.max(axis=1), (s.shape[1] - 1) / s.shape[1]


def none_threshold(null_best: np.ndarray, alpha: float = 0.05, size_ratio: float = 1.0) -> float:
    """The conformal (1 - alpha)^size_ratio quantile of null best scores: above it, a subset is named."""
    x = np.sort(np.asarray(null_best, dtype=np.float64))
    if x.ndim != 1 or len(x) == 0 or not np.isfinite(x).all():
        raise FingerprintError("attribute: null scores must be a non-empty finite 1-D array")
    if not 0 < alpha < 1 or not 0 < size_ratio <= 1:
        raise FingerprintError(f"attribute: need 0 < alpha < 1 and 0 < size_ratio <= 1, got {alpha}, {size_ratio}")
    level = (1.0 - alpha) ** size_ratio
    rank = math.ceil((len(x) + 1) * level)
    return float(x[min(rank, len(x)) - 1])


@dataclass(frozen=True)
class Attribution:
    """Per generated image: label (a subset or "none"), best subset score, margin over the runner-up."""

    labels: np.ndarray
    scores: np.ndarray
    margins: np.ndarray
    subset_scores: np.ndarray
    subsets: tuple[str, ...]
    threshold: float | None
    evidence: Evidence | None = None  # the neighbours the scores came from (attribute_embeddings)


def attribute(subset_scores: np.ndarray, subsets: Sequence[str], *, threshold: float | None = None) -> Attribution:
    """The best subset of each generated image, or "none" where its score is not above `threshold`."""
    s = np.asarray(subset_scores, dtype=np.float64)
    names = tuple(str(x) for x in subsets)
    if s.ndim != 2 or s.shape[1] != len(names) or len(s) == 0:
        raise FingerprintError(f"attribute: subset scores of shape {s.shape} for {len(names)} subsets")
    best = s.argmax(axis=1)
    top = s[np.arange(len(s)), best]
    second = np.sort(s, axis=1)[:, -2] if s.shape[1] > 1 else np.full(len(s), -np.inf)
    labels = np.asarray(names, dtype=object)[best]
    if threshold is not None:
        labels[top <= threshold] = NONE
    return Attribution(labels.astype(str), top, top - second, s, names, threshold)


def attribute_embeddings(
    gen_emb,
    real_emb,
    real_subset: Sequence[str],
    *,
    null_emb=None,
    k: int = 8,
    how: str = "max",
    m: int = 3,
    alpha: float = 0.05,
    pair_score: PairScore | None = None,
    null_pair_score: PairScore | None = None,
    seed: int = 0,
    index_factory: str = "Flat",
) -> Attribution:
    """The whole rule on embeddings: retrieval, optional re-scoring, aggregation, null threshold (None: no "none")."""
    ev = subset_neighbours(gen_emb, real_emb, real_subset, k=k, index_factory=index_factory, seed=seed)
    if pair_score is not None:
        ev = rescore(ev, pair_score)
    scores = aggregate(ev.scores, how, m)
    threshold = None
    if null_emb is not None:
        labels = np.asarray(real_subset, dtype=str)
        sizes = [int((labels == s).sum()) for s in ev.subsets]
        null, rho = null_best_scores(
            gen_emb, null_emb, sizes, k=ev.scores.shape[-1], how=how, m=m, pair_score=null_pair_score, seed=seed,
            index_factory=index_factory,
        )  # fmt: skip
        threshold = none_threshold(null, alpha, rho)
    return replace(attribute(scores, ev.subsets, threshold=threshold), evidence=ev)


def attribution_rows(ids: Sequence[str], result: Attribution) -> list[tuple[str, str, float]]:
    """(image id, subset label or "none", score) per generated image, in the given order (subtask-2 style)."""
    if len(ids) != len(result.labels):
        raise FingerprintError(f"attribute: {len(ids)} ids for {len(result.labels)} attributed images")
    return [(str(i), str(lab), float(s)) for i, lab, s in zip(ids, result.labels, result.scores)]


def attribution_metrics(truth: Sequence[str], predicted: Sequence[str], subsets: Sequence[str]) -> dict:
    """Confusion matrix (rows truth, columns predicted; subsets then "none"), accuracy, kappa, chance levels."""
    t, p = np.asarray(truth, dtype=str), np.asarray(predicted, dtype=str)
    labels = [str(s) for s in subsets] + [NONE]
    unknown = sorted((set(t.tolist()) | set(p.tolist())) - set(labels))
    if t.shape != p.shape or len(t) == 0 or unknown:
        raise FingerprintError(
            f"attribute: {len(t)} truths for {len(p)} predictions; unknown labels: {', '.join(unknown)}"
        )
    share_t = np.array([(t == c).mean() for c in labels])
    share_p = np.array([(p == c).mean() for c in labels])
    cm = confusion_matrix(t, p, labels=labels)
    present = cm.sum(axis=1) > 0
    return {
        "labels": labels,
        "confusion_matrix": cm.tolist(),
        "accuracy": float(accuracy_score(t, p)),
        "balanced_accuracy": float(balanced_accuracy_score(t, p)) if present.sum() > 1 else None,
        "kappa": float(cohen_kappa_score(t, p, labels=labels)),
        "chance_majority": float(share_t.max()),
        "chance_expected": float(share_t @ share_p),
        "n": len(t),
    }
