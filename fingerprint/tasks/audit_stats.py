"""The statistics of the dataset-level membership audit: one calibrated test per candidate collection.

Per-image membership scores (any scorer, higher = more likely used) are pooled
over a collection into one calibrated test, an effect size, an estimate of how
many images were used, a power curve, and corrections for repeated audits.

The test
--------
One-sided Mann-Whitney U (Wilcoxon rank-sum; Mann & Whitney 1947) of the
candidate's scores against the scores of a reference collection of comparable
real images known not to be in training. H0: the candidate was not used, so its
images and the reference images are one population; H1: candidate scores are
stochastically larger. U counts the (candidate, reference) pairs the candidate
wins, ties counting one half. `scipy.stats.mannwhitneyu` gives the p-value:
exact (no ties, small samples), a seeded Monte-Carlo permutation test (ties and
small samples; exact under ties, p >= 1/(n_permutations+1)), or the normal
approximation with tie and continuity corrections (otherwise).

Why its assumptions hold. The null distribution of U is the permutation
distribution of the ranks: it is exact whenever the N = n1 + n2 pooled scores are
*exchangeable* under H0 (Lehmann 1975, ch. 1), independence is not needed. The
scores of different images are in fact dependent (they share one generated pool
and, for calibrated scores, one another), so exchangeability is the property to
guarantee, and it holds when each image's score is the same symmetric function of
that image and of things that do not depend on which images are candidates:

1. One scorer for every image, fitted on other data. A scorer trained or tuned on
   some of the pooled images (e.g. reference = the dev `not_used` images that the
   relation network, a comparator or a threshold was fitted on) scores those in
   sample: use out-of-fold scores for them, or a scorer fitted without them.
2. One generated pool for every image, the generator's output under audit. Scoring
   the reference against another pool (e.g. the dev split's 500 generated images
   while the candidate faces the test split's 2,000) shifts every score: max-SSIM
   and nearest distances depend on the pool size. Same preprocessing, same k.
3. Any term computed from other real images (GAN-Leaks-style reference
   calibration log d_ref - log d_gen, Chen et al. CCS 2020; per-split
   standardisation; rank transforms) is computed ONCE over the pooled candidate +
   reference images, each image against all the others (leave-one-out), as
   `reference_calibrated` does. Calibrating each collection against itself makes
   d_ref depend on the collection's size and breaks H0 (the tests show a
   false-positive rate near 1 at alpha 0.05 for 50 candidates vs 150 references).
4. The reference is drawn from the candidate's population (same modality, site,
   protocol). The test detects "scores higher than the reference's": a candidate
   from another hospital that the generator's training data resembles would also
   be rejected. A rejection says "used, or closer to the training distribution
   than the reference", which only a comparable reference narrows to "used".

Effect size: AUC = U / (n1 n2) = P(candidate > reference) + P(tie)/2, the
common-language effect size (McGraw & Wong 1992; Hanley & McNeil 1982), with a
seeded stratified BCa bootstrap interval (`scipy.stats.bootstrap`, candidate
and reference resampled separately; Efron & Tibshirani 1993). The interval
reflects the sampling of images only, not of the generated pool.

Fraction used: if a share pi of the candidate was used, its score distribution
is the mixture pi F_used + (1 - pi) F_not, so (linearity of P(X > Y) in the
mixture) AUC_c = 0.5 + pi (AUC_u - 0.5), where AUC_u is the scorer's used vs
not-used AUC measured on a labelled dev split (out-of-fold scores for a trained
scorer; scored against the same generated pool). pi = (AUC_c - 0.5) / (AUC_u -
0.5), clipped to [0, 1], with a percentile bootstrap interval resampling
candidate, reference and dev. This method-of-moments estimator needs no density
model; the alternative, Storey's pi0 (Storey 2002) on per-image empirical
p-values, assumes used images have p-values near 0 and underestimates pi when
used and not-used scores overlap (per-image AUC ~0.8 here). Without dev labels
AUC_u <= 1 gives a lower bound, pi >= 2 AUC_c - 1.

Repeated audits: Holm (1979) step-down for family-wise error, and
Benjamini-Hochberg (1995) / Benjamini-Yekutieli (2001) for false discovery
rate (`scipy.stats.false_discovery_control`), over an audit log of p-values.

Power: the share of seeded resampled audits of n candidate images (drawn with
replacement from the observed candidate scores, against a reference resampled
at its own size) that reach p <= alpha, and Noether's (1987) normal
approximation, power = Phi(|AUC - 0.5| / sqrt((n + m + 1) / (12 n m)) - z).

The stage that applies these statistics is `fingerprint.tasks.audit`."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import faiss
import numpy as np
from scipy import stats

from fingerprint.core.errors import FingerprintError

#: p-value methods of `membership_test`.
METHODS = ("auto", "exact", "permutation", "asymptotic")


#: Multiple-testing corrections of `adjust_pvalues`.
CORRECTIONS = ("holm", "bh", "by")


#: "auto" uses the exact null distribution without ties up to this many pairs n1 * n2.
EXACT_MAX_PAIRS = 10_000


#: "auto" uses the permutation test with ties when the smaller sample is below this.
PERMUTATION_BELOW = 20


def _scores(x, what: str) -> np.ndarray:
    """A non-empty, finite 1-D float64 array, or a one-line error naming `what`."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 or len(a) == 0:
        raise FingerprintError(f"audit: {what} scores must be a non-empty 1-D array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise FingerprintError(f"audit: {what} scores contain NaN or infinity")
    return a


def auc(candidate, reference, axis: int = -1):
    """U / (n1 n2) = P(candidate > reference) + P(tie) / 2, vectorised along `axis` (midranks handle ties)."""
    c = np.moveaxis(np.asarray(candidate, dtype=np.float64), axis, -1)
    r = np.moveaxis(np.asarray(reference, dtype=np.float64), axis, -1)
    n1, n2 = c.shape[-1], r.shape[-1]
    lead = np.broadcast_shapes(c.shape[:-1], r.shape[:-1])
    pooled = np.concatenate([np.broadcast_to(c, lead + (n1,)), np.broadcast_to(r, lead + (n2,))], axis=-1)
    u = stats.rankdata(pooled, axis=-1)[..., :n1].sum(axis=-1) - n1 * (n1 + 1) / 2.0
    return u / (n1 * n2)


def choose_method(candidate: np.ndarray, reference: np.ndarray, method: str = "auto") -> str:
    """The p-value method "auto" resolves to (see module doc); other names pass through, checked."""
    if method not in METHODS:
        raise FingerprintError(f"audit: unknown method {method!r} (choose from {', '.join(METHODS)})")
    if method != "auto":
        return method
    n1, n2 = len(candidate), len(reference)
    ties = len(np.unique(np.concatenate([candidate, reference]))) < n1 + n2
    if not ties and n1 * n2 <= EXACT_MAX_PAIRS:
        return "exact"
    if ties and min(n1, n2) < PERMUTATION_BELOW:
        return "permutation"
    return "asymptotic"


def membership_test(
    candidate, reference, *, method: str = "auto", n_permutations: int = 9999, seed: int = 0
) -> tuple[float, float, str]:
    """One-sided Mann-Whitney U test, candidate > reference: (U of the candidate, p-value, method used).

    `scipy.stats.mannwhitneyu`; "exact" ignores ties (do not force it on tied
    scores), "permutation" is a seeded Monte-Carlo permutation test.
    """
    c, r = _scores(candidate, "candidate"), _scores(reference, "reference")
    chosen = choose_method(c, r, method)
    how = chosen
    if chosen == "permutation":
        how = stats.PermutationMethod(n_resamples=int(n_permutations), rng=np.random.default_rng(seed))
    res = stats.mannwhitneyu(c, r, alternative="greater", method=how)
    return float(res.statistic), float(res.pvalue), chosen


def _bootstrap_ci(samples: tuple, statistic, *, n_boot: int, ci: float, seed: int, method: str) -> tuple[float, float]:
    """A seeded bootstrap interval over independent samples; a degenerate BCa (constant replicates) -> percentile."""
    kw = {"paired": False, "vectorized": True, "n_resamples": int(n_boot), "confidence_level": ci}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap(samples, statistic, method=method, rng=np.random.default_rng(seed), **kw)
        low, high = res.confidence_interval
        if method != "percentile" and not (np.isfinite(low) and np.isfinite(high)):
            res = stats.bootstrap(samples, statistic, method="percentile", rng=np.random.default_rng(seed), **kw)
            low, high = res.confidence_interval
    return float(low), float(high)


@dataclass(frozen=True)
class FractionEstimate:
    """Estimated share of the candidate that was used, with its bootstrap interval.

    `bound` is True when no dev split measured AUC_u (taken as 1): `fraction`
    is then a lower bound, 2 AUC_c - 1 clipped, and so is `low`.
    """

    fraction: float
    low: float
    high: float
    ci: float
    auc_candidate: float
    auc_used: float
    bound: bool


def _fraction(auc_c, auc_u):
    return np.clip((auc_c - 0.5) / np.maximum(auc_u - 0.5, 1e-12), 0.0, 1.0)


def fraction_used(
    candidate,
    reference,
    dev_used=None,
    dev_not_used=None,
    *,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    min_separation: float = 0.05,
) -> FractionEstimate:
    """pi = (AUC_c - 0.5) / (AUC_u - 0.5) clipped to [0, 1], percentile bootstrap interval (module doc).

    AUC_u = AUC(dev_used vs dev_not_used). `dev_not_used=None` reuses the
    reference as the dev not-used images (resampled once, jointly);
    `dev_used=None` gives the lower bound (AUC_u = 1). A dev AUC_u below
    0.5 + min_separation is refused: the fraction is then not identifiable.
    """
    c, r = _scores(candidate, "candidate"), _scores(reference, "reference")
    if dev_used is None:
        samples, stat_u = (c, r), (lambda *s: 1.0)
    else:
        u = _scores(dev_used, "dev used")
        n = None if dev_not_used is None else _scores(dev_not_used, "dev not-used")
        samples = (c, r, u) if n is None else (c, r, u, n)

        def stat_u(c_, r_, u_, n_=None):
            return auc(u_, r_ if n_ is None else n_)

    auc_c, auc_u = float(auc(c, r)), float(stat_u(*samples))
    if auc_u < 0.5 + min_separation:
        raise FingerprintError(
            f"audit: the dev scores separate used from not-used too weakly (AUC {auc_u:.3f}): "
            "the fraction used is not identifiable"
        )

    def statistic(*s, axis=-1):
        s = [np.moveaxis(x, axis, -1) for x in s]
        return _fraction(auc(s[0], s[1]), stat_u(*s))

    low, high = _bootstrap_ci(samples, statistic, n_boot=n_boot, ci=ci, seed=seed, method="percentile")
    pi = float(_fraction(auc_c, auc_u))
    return FractionEstimate(pi, low, high, ci, auc_c, auc_u, bound=dev_used is None)


@dataclass(frozen=True)
class AuditResult:
    """One audit: the U test, the AUC effect size with its interval, and the fraction used."""

    n_candidate: int
    n_reference: int
    statistic: float
    pvalue: float
    method: str
    auc: float
    auc_low: float
    auc_high: float
    ci: float
    fraction: FractionEstimate

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (the fraction nested)."""
        return asdict(self)


def audit(
    candidate,
    reference,
    *,
    dev_used=None,
    dev_not_used=None,
    method: str = "auto",
    n_permutations: int = 9999,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> AuditResult:
    """Test "the candidate was used" and measure how strongly: U, p-value, AUC [CI], fraction used [CI].

    Scores must satisfy the exchangeability requirements of the module doc.
    Same inputs and seed, same result.
    """
    c, r = _scores(candidate, "candidate"), _scores(reference, "reference")
    u, p, chosen = membership_test(c, r, method=method, n_permutations=n_permutations, seed=seed)
    low, high = _bootstrap_ci((c, r), auc, n_boot=n_boot, ci=ci, seed=seed, method="BCa")
    frac = fraction_used(c, r, dev_used, dev_not_used, n_boot=n_boot, ci=ci, seed=seed)
    return AuditResult(len(c), len(r), u, p, chosen, float(auc(c, r)), low, high, ci, frac)


def adjust_pvalues(pvalues: Sequence[float] | np.ndarray, method: str = "holm") -> np.ndarray:
    """Adjusted p-values (same order): Holm step-down (FWER), or BH / BY (FDR, scipy)."""
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1 or len(p) == 0 or not np.isfinite(p).all() or ((p < 0) | (p > 1)).any():
        raise FingerprintError("audit: p-values must be a non-empty 1-D array of numbers in [0, 1]")
    if method not in CORRECTIONS:
        raise FingerprintError(f"audit: unknown correction {method!r} (choose from {', '.join(CORRECTIONS)})")
    if method in ("bh", "by"):
        return stats.false_discovery_control(p, method=method)
    order = np.argsort(p, kind="stable")
    m = len(p)
    stepped = np.minimum(np.maximum.accumulate((m - np.arange(m)) * p[order]), 1.0)
    out = np.empty(m)
    out[order] = stepped
    return out


def correct_audits(log_pvalues: Sequence[float] | np.ndarray, *, alpha: float = 0.05, method: str = "holm") -> dict:
    """Adjust an audit log of p-values (one per audit, the newest last) and decide each at `alpha`.

    Holm controls the chance of any false "used" over the log; BH the expected
    share of false ones among the "used" verdicts. Adding audits to the log can
    only raise Holm-adjusted p-values, so an earlier verdict may be withdrawn:
    report verdicts with the log size they were made at.
    """
    adjusted = adjust_pvalues(log_pvalues, method)
    return {"method": method, "alpha": alpha, "m": len(adjusted), "adjusted": adjusted, "reject": adjusted <= alpha}


def noether_power(effect_auc: float, n_candidate, n_reference: int, *, alpha: float = 0.01) -> np.ndarray:
    """Noether's (1987) approximate power of the one-sided U test at `alpha`, vectorised over n_candidate."""
    n = np.asarray(n_candidate, dtype=np.float64)
    sd0 = np.sqrt((n + n_reference + 1) / (12.0 * n * n_reference))
    return stats.norm.cdf((effect_auc - 0.5) / sd0 - stats.norm.isf(alpha))


def noether_n(effect_auc: float, n_reference: int, *, alpha: float = 0.01, power: float = 0.8) -> float:
    """Smallest candidate size with Noether power >= `power` against `n_reference` (inf if no size suffices)."""
    k = (stats.norm.isf(alpha) + stats.norm.ppf(power)) ** 2
    denom = 12.0 * n_reference * (effect_auc - 0.5) ** 2 - k
    if effect_auc <= 0.5 or denom <= 0:
        return math.inf
    return float(math.ceil(k * (n_reference + 1) / denom))


def power_curve(
    candidate,
    reference,
    n_grid: Sequence[int] | None = None,
    *,
    alpha: float = 0.01,
    target_power: float = 0.8,
    n_rep: int = 400,
    seed: int = 0,
) -> dict:
    """Power of the audit against the candidate size n, at the observed effect (data for the report's plot).

    For each n: `n_rep` seeded audits of n scores drawn with replacement from
    the candidate against len(reference) drawn from the reference (asymptotic
    U test, vectorised), power = share with p <= alpha, and Noether's curve.
    `n_required` is the first grid n reaching `target_power` (None if none).
    """
    c, r = _scores(candidate, "candidate"), _scores(reference, "reference")
    effect = float(auc(c, r))
    if n_grid is None:
        n_grid = np.unique(np.geomspace(5, max(200, 4 * len(c)), 16).round().astype(int))
    n_grid = np.asarray(n_grid, dtype=int)
    if n_grid.ndim != 1 or len(n_grid) == 0 or (n_grid < 2).any():
        raise FingerprintError("audit: the power grid must be candidate sizes >= 2")
    rng = np.random.default_rng(seed)
    power = np.empty(len(n_grid))
    for i, n in enumerate(n_grid):
        cs = rng.choice(c, size=(n_rep, n))
        rs = rng.choice(r, size=(n_rep, len(r)))
        p = stats.mannwhitneyu(cs, rs, axis=1, alternative="greater", method="asymptotic").pvalue
        power[i] = np.mean(p <= alpha)
    reached = np.flatnonzero(power >= target_power)
    return {
        "n": n_grid.tolist(),
        "power": power.tolist(),
        "power_se": np.sqrt(power * (1 - power) / n_rep).tolist(),
        "power_noether": noether_power(effect, n_grid, len(r), alpha=alpha).tolist(),
        "auc": effect,
        "alpha": alpha,
        "target_power": target_power,
        "n_reference": len(r),
        "n_rep": n_rep,
        "n_required": int(n_grid[reached[0]]) if len(reached) else None,
        "n_required_noether": noether_n(effect, len(r), alpha=alpha, power=target_power),
    }


NullCase = Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]


def split_null(null_scores, n_candidate: int, n_reference: int | None = None) -> NullCase:
    """A null case maker: a random disjoint candidate / reference split of scores of not-used images.

    Only for scores that do not depend on the split (no calibration over the
    pool); otherwise re-score each split inside your own NullCase.
    """
    s = _scores(null_scores, "null")
    n_reference = len(s) - n_candidate if n_reference is None else n_reference
    if n_candidate < 1 or n_reference < 1 or n_candidate + n_reference > len(s):
        raise FingerprintError(f"audit: cannot split {len(s)} null scores into {n_candidate} + {n_reference}")

    def make(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        idx = rng.permutation(len(s))
        return s[idx[:n_candidate]], s[idx[n_candidate : n_candidate + n_reference]]

    return make


def null_pvalues(
    make_case: NullCase, n_rep: int = 200, *, seed: int = 0, method: str = "auto", n_permutations: int = 9999
) -> np.ndarray:
    """p-values of `n_rep` seeded null audits; repetition i uses its own child generator of `seed`."""
    children = np.random.SeedSequence(seed).spawn(int(n_rep))
    out = np.empty(len(children))
    for i, child in enumerate(children):
        rng = np.random.default_rng(child)
        cand, ref = make_case(rng)
        rep_seed = int(child.generate_state(1)[0])
        out[i] = membership_test(cand, ref, method=method, n_permutations=n_permutations, seed=rep_seed)[1]
    return out


def calibration_summary(pvalues, *, alpha: float = 0.05, bins: int = 20) -> dict:
    """False-positive rate at `alpha` (exact binomial 95% CI), KS test against uniform, histogram data.

    Tied scores make U discrete, so null p-values are slightly sub-uniform
    (conservative); the KS p-value is then approximate.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    k = int(np.sum(p <= alpha))
    fpr_ci = stats.binomtest(k, len(p), alpha).proportion_ci(confidence_level=0.95)
    counts, edges = np.histogram(p, bins=bins, range=(0.0, 1.0))
    return {
        "n": len(p),
        "alpha": alpha,
        "fpr": k / len(p),
        "fpr_low": float(fpr_ci.low),
        "fpr_high": float(fpr_ci.high),
        "ks_pvalue": float(stats.kstest(p, "uniform").pvalue),
        "hist_counts": counts.tolist(),
        "hist_edges": edges.tolist(),
    }


def _kth_l2(index_vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """L2 distance from each query to its k-th nearest indexed vector (exact FAISS search)."""
    index = faiss.IndexFlatL2(index_vectors.shape[1])
    index.add(index_vectors)
    d2, _ = index.search(queries, k)
    return np.sqrt(np.maximum(d2[:, k - 1].astype(np.float64), 0.0))


def reference_calibrated(pool, generated, *, k: int = 1, eps: float = 1e-12) -> np.ndarray:
    """Calibrated membership score log d_ref - log d_gen of every pooled real image, computed symmetrically.

    `pool` (N, D): the candidate and reference images together (pixels or
    embeddings); `generated` (M, D). d_gen is the distance to the k-th nearest
    generated image, d_ref to the k-th nearest OTHER pooled image (the image
    itself, at distance 0, is skipped). Every image is scored by the same
    function of itself and the pooled set, so H0 exchangeability holds.
    """
    x = np.ascontiguousarray(pool, dtype=np.float32)
    g = np.ascontiguousarray(generated, dtype=np.float32)
    if x.ndim != 2 or g.ndim != 2 or x.shape[1] != g.shape[1]:
        raise FingerprintError(f"audit: pool {x.shape} and generated {g.shape} must be 2-D with one width")
    if not (1 <= k < len(x) and k <= len(g)):
        raise FingerprintError(f"audit: k={k} needs more than k pooled and at least k generated images")
    d_gen = _kth_l2(g, x, k)
    d_ref = _kth_l2(x, x, k + 1)
    return np.log(d_ref + eps) - np.log(d_gen + eps)
