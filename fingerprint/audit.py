"""Dataset-level membership audit: "was this candidate collection used to train the generator?".

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

The stage (`run_audit(AuditConfig)`, `fingerprint audit`) meets requirements
1-3 by construction: the candidate, the reference and the held-out labelled dev
images are scored by ONE call of one registered scorer against ONE generated
pool (`imagesets.score_together`), so a reference drawn from the dev split
(`reference="dev-not-used"`) is re-scored against the audited pool, never
taken from the dev split's score files; no registered scorer has a term
computed from other real images (`reference_calibrated` is the symmetric form
for one that would); and an image the scorer's model was trained on is
refused as candidate or reference, or left out of the dev images, by content
hash against the model's training shards (`imagesets.training_hashes`). When
it trains its own model, the audit holds a seeded share of the dev split out
of the training shards, so those images can serve as reference and as the
labelled images of the fraction estimate.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from scipy import stats

from fingerprint.config import check_fields, command_line, exists_error, fail, option
from fingerprint.distributed import seed_everything, set_threads
from fingerprint.imagesets import (
    Members,
    TogetherScores,
    content_ids,
    dev_items,
    is_shard_folder,
    members,
    pack_collection,
    pack_items,
    score_together,
    stratified_holdout,
    train_model,
    training_hashes,
)
from fingerprint.scorers import get_scorer, scorer_names
from fingerprint.utils import FingerprintError, JsonlLogger, output_folder, sha256_bytes, write_json, write_text

log = logging.getLogger(__name__)

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


# -- repeated audits -----------------------------------------------------------------------------


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


# -- power ---------------------------------------------------------------------------------------


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


# -- calibration under the null ------------------------------------------------------------------

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


# -- symmetric reference calibration ---------------------------------------------------------------


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


# -- the audit stage (`fingerprint audit`) ---------------------------------------------------------

#: `AuditConfig.reference` value: the --dev not-used images that the scorer's model never trained on
REFERENCE_FROM_DEV = "dev-not-used"
#: fewer held-out labelled dev images than this per class: the fraction is reported as a lower bound only
MIN_DEV_PER_CLASS = 5
FORMAT = "fingerprint-audit/1"


#: the audit's scorer unless told. The run file's scorer (`fused`) is fitted per data set on profiles of a
#: labelled dev split against that split's own pool, which an audit of one collection against one pool does not
#: have; `relation` is the trained scorer an audit can apply as it is (docs/audit.md measures the others).
AUDIT_SCORER = "relation"


def audit_scorers() -> tuple[str, ...]:
    """The registered scorers an audit can apply: those that read pixels or features (not a fitted profile)."""
    return tuple(n for n in scorer_names() if "profile" not in get_scorer(n).needs)


def default_scorer() -> str:
    """The scorer an audit uses unless told (`AUDIT_SCORER`)."""
    return AUDIT_SCORER


@dataclass(kw_only=True)
class AuditConfig:
    """Options of the audit stage (`fingerprint audit`)."""

    SECTION = "audit"

    candidate: Path = option(help="candidate collection: a folder of images or a shard folder (its real images)")
    reference: str = option(
        help="comparable real images known not to be in training: a folder, a shard folder, or "
        f"'{REFERENCE_FROM_DEV}' (the audit.dev not-used images the scorer's model did not train on)"
    )
    generated: Path = option(help="the audited model's generated images: a folder or a shard folder")
    out: Path = option(help="audit folder to write (audit.json, audit_scores.csv, shards/, features/, report)")
    scorer: str | None = option(
        None, choices=audit_scorers, help=f"registered membership scorer (default: {AUDIT_SCORER})"
    )
    model: Path | None = option(None, help="trained model folder (feature scorers); default: RUN/model with audit.run")
    run: Path | None = option(None, help="run folder of 'fingerprint run': its model, and its shards/dev as audit.dev")
    dev: Path | None = option(
        None,
        help="labelled images of the audited generator (2023 dev layout folder, or shards): held-out ones give the "
        "fraction used; without a model, a model is trained on the rest",
    )
    holdout: float = option(
        0.5, min=0, help="when the audit trains its model on audit.dev: share of used and not-used images held out"
    )
    alpha: float = option(0.01, help="significance level of the verdict and of the power curve")
    correction: str = option("holm", choices=CORRECTIONS, help="multiple-testing correction over the audit log")
    audit_log: Path | None = option(
        None, help="JSON-lines log of repeated audits, corrected together (default: this audit alone)"
    )
    name: str | None = option(None, help="this audit's name in the log (default: the candidate folder's name)")
    method: str = option("auto", choices=METHODS, help="p-value of the U test: exact, permutation, asymptotic")
    n_permutations: int = option(9999, min=99, help="permutations when the permutation test is used")
    n_boot: int = option(2000, min=100, help="bootstrap resamples for the AUC and fraction intervals")
    ci: float = option(0.95, help="confidence level of the intervals")
    power_reps: int = option(400, min=10, help="resampled audits per candidate size on the power curve")
    target_power: float = option(0.8, help="power at which the needed candidate size is reported")
    k: int = option(8, min=1, help="generated neighbours per real image (scorers that use k)")
    batch_size: int = option(64, min=1, help="images per forward pass")
    pixel_size: int = option(64, min=8, help="pixel scorers: side images are compared at")
    ssim_candidates: int = option(64, min=0, help="ssim: exact SSIM on the M nearest generated by pixel L2 (0 = all)")
    image_size: int = option(256, min=8, help="side images are packed at")
    model_image_size: int | None = option(None, min=32, help="model input side when the audit trains its model")
    epochs: int | None = option(None, min=1, help="training epochs when the audit trains its model")
    train_config: Path | None = option(None, help="TOML/YAML train config when the audit trains its model")
    index_factory: str = option("Flat", help="FAISS index over the generated embeddings")
    trust_model: bool = option(
        False, help="skip the check (by content hash) that no candidate or reference image is in the model's training"
    )
    report: bool = option(True, help="write report.html with the audit section")
    threads: int | None = option(None, min=1, help="torch/FAISS CPU threads")
    seed: int = option(0, help="seed of the bootstrap, permutations, power curve, held-out split and training")
    force: bool = option(False, help="replace an existing audit in the output folder")

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("alpha", "ci", "target_power"):
            if not 0 < getattr(self, name) < 1:
                raise fail(self, name, f"must be between 0 and 1, got {getattr(self, name)}")
        if self.holdout >= 1:
            raise fail(self, "holdout", f"must be below 1, got {self.holdout}")
        if self.reference == REFERENCE_FROM_DEV and self.dev is None and self.run is None:
            raise fail(self, "reference", f"{REFERENCE_FROM_DEV} needs audit.dev (or audit.run)")

    @property
    def dev_source(self) -> Path | None:
        return self.dev if self.dev is not None else (Path(self.run) / "shards" / "dev" if self.run else None)


def run_audit(cfg: AuditConfig) -> dict:
    """Audit "the candidate collection was used to train the generator"; write audit.json and audit_scores.csv."""
    out = Path(cfg.out)
    if (out / "audit.json").exists() and not cfg.force:
        raise exists_error(cfg, out / "audit.json")
    with output_folder(out):
        seed_everything(cfg.seed)
        set_threads(cfg.threads)
        t0 = time.perf_counter()
        name = cfg.scorer or default_scorer()
        scorer = get_scorer(name)
        shards = _pack_inputs(cfg, out)
        model = _audit_model(cfg, scorer, out)
        groups, provenance = audit_groups(cfg, shards, model)
        params = {"k": cfg.k, "batch_size": cfg.batch_size, "pixel_size": cfg.pixel_size,
                  "ssim_candidates": cfg.ssim_candidates}  # fmt: skip
        scores = score_together(
            name, groups, shards["generated"], out, model=model, params=params, index_factory=cfg.index_factory,
            seed=cfg.seed, threads=cfg.threads,
        )  # fmt: skip
        summary = audit_summary(cfg, name, scores, provenance)
        rows = "".join(f"{k},{g},{s!r}\n" for k, g, s in zip(scores.keys, scores.groups, scores.scores.tolist()))
        write_text(out / "audit_scores.csv", "key,group,score\n" + rows)
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        write_json(out / "audit.json", summary)
        JsonlLogger(out / "log.jsonl").log(stage="audit", seconds=summary["seconds"], pvalue=summary["test"]["pvalue"])
        log.info("audit: %s", summary["verdict"])
        if cfg.report:
            from fingerprint.report import ReportConfig, run_report

            run_report(ReportConfig(run_dir=out, seed=cfg.seed, force=True))
        return summary


def _pack_inputs(cfg: AuditConfig, out: Path) -> dict[str, Path]:
    """Each input as a shard folder (folders are packed under out/shards/)."""
    kw = {"image_size": cfg.image_size, "seed": cfg.seed}
    d = out / "shards"
    shards = {
        "candidate": pack_collection(cfg.candidate, d / "candidate", role="real", label="unknown", **kw),
        "generated": pack_collection(cfg.generated, d / "generated", role="generated", label="unknown", **kw),
    }
    if cfg.reference != REFERENCE_FROM_DEV:
        shards["reference"] = pack_collection(Path(cfg.reference), d / "reference", role="real", label="not_used", **kw)
    dev = cfg.dev_source
    if dev is not None:
        shards["dev"] = dev if is_shard_folder(dev) else pack_items(dev_items(dev, generated=False), d / "dev", **kw)
    return shards


def _audit_model(cfg: AuditConfig, scorer, out: Path) -> Path | None:
    """The model the scorer's features come from: given, the run's, or trained here with images held out."""
    if "features" not in scorer.needs:
        return None
    if cfg.model is not None:
        return Path(cfg.model)
    if cfg.run is not None:
        return Path(cfg.run) / "model"
    if cfg.dev is None:
        raise fail(
            cfg, "scorer", f"{scorer.name} reads a trained model's features: give audit.model, audit.run or audit.dev"
        )
    items = dev_items(Path(cfg.dev), generated=False)
    held = stratified_holdout([f.stem for f, *_ in items], [lab for *_, lab in items], cfg.holdout, cfg.seed)
    log.info("audit: training a model on %s with %d of its %d real images held out", cfg.dev, len(held), len(items))
    return train_model(
        Path(cfg.dev), out / "model", out, exclude=held, train_config=cfg.train_config, image_size=cfg.image_size,
        seed=cfg.seed, threads=cfg.threads, epochs=cfg.epochs, model_image_size=cfg.model_image_size,
    )  # fmt: skip


def audit_groups(cfg: AuditConfig, shards: dict[str, Path], model: Path | None) -> tuple[dict[str, Members], dict]:
    """candidate, reference and the held-out dev used / not-used images, with what the model has seen left out.

    The scorer's model must not have been fitted on any image whose score the
    test compares (exchangeability requirement 1): a candidate or reference
    image found, by content hash, among the real images of the model's
    training shards is an error; for `reference=dev-not-used` and the dev
    images, such images are left out (counted in the provenance).
    """
    seen: set[str] = set()
    provenance: dict[str, Any] = {"checked_against_training": False, "model": None if model is None else str(model)}
    if model is not None and not cfg.trust_model:
        seen, where = training_hashes(model)
        provenance |= {"checked_against_training": True, "model_training_shards": str(where)}
    cand = members(shards["candidate"])
    _refuse_seen(cand, seen, "candidate", cfg.candidate)
    cand_ids = set().union(*(content_ids(r) for r in cand.records))

    def fresh(r: dict) -> bool:
        return not (content_ids(r) & (seen | cand_ids))

    groups = {"candidate": cand}
    if cfg.reference == REFERENCE_FROM_DEV:
        groups["reference"] = members(shards["dev"], label="not_used", keep=fresh)
        if not groups["reference"].keys:
            raise FingerprintError(
                f"{cfg.dev_source}: none of its not-used images is held out of the model's training "
                f"({provenance.get('model_training_shards')}); let the audit train its model on audit.dev, "
                "or give audit.reference as a folder"
            )
    else:
        groups["reference"] = members(shards["reference"])
        _refuse_seen(groups["reference"], seen, "reference", cfg.reference)
        _refuse_seen(groups["reference"], cand_ids, "reference", cfg.reference, what="the candidate collection")
    if "dev" in shards:
        labels = ("used",) if cfg.reference == REFERENCE_FROM_DEV else ("used", "not_used")
        for label in labels:
            groups[f"dev_{label}"] = members(shards["dev"], label=label, keep=fresh)
        all_dev = members(shards["dev"])
        provenance["dev_left_out_seen_by_model"] = sum(bool(content_ids(r) & seen) for r in all_dev.records)
    provenance["reference"] = REFERENCE_FROM_DEV if cfg.reference == REFERENCE_FROM_DEV else str(cfg.reference)
    return {g: m for g, m in groups.items() if m.keys}, provenance


def _refuse_seen(m: Members, seen: set[str], group: str, source, what: str = "the model's training shards") -> None:
    bad = [r["key"] for r in m.records if content_ids(r) & seen]
    if bad:
        raise FingerprintError(
            f"{source}: {len(bad)} {group} image(s) (first: {bad[0]}) are also in {what}: "
            "their scores would not be comparable (use a model not trained on them, or other images)"
        )


def _fraction_inputs(scores: TogetherScores, reference_from_dev: bool) -> tuple[dict, str | None]:
    """dev used / not-used scores for `fraction_used`, or none (lower bound) with the reason."""
    used = scores.of("dev_used")
    if len(used) < MIN_DEV_PER_CLASS:
        return {}, f"fewer than {MIN_DEV_PER_CLASS} held-out labelled used images: lower bound only"
    if reference_from_dev:
        return {"dev_used": used}, None  # the reference doubles as the dev not-used images (resampled jointly)
    not_used = scores.of("dev_not_used")
    if len(not_used) < MIN_DEV_PER_CLASS:
        return {}, f"fewer than {MIN_DEV_PER_CLASS} held-out labelled not-used images: lower bound only"
    return {"dev_used": used, "dev_not_used": not_used}, None


def _run_test(cfg: AuditConfig, cand: np.ndarray, ref: np.ndarray, dev: dict) -> tuple[AuditResult, str | None]:
    kw = {"method": cfg.method, "n_permutations": cfg.n_permutations, "n_boot": cfg.n_boot, "ci": cfg.ci}
    try:
        return audit(cand, ref, **dev, **kw, seed=cfg.seed), None
    except FingerprintError as e:
        if not dev or "not identifiable" not in str(e):
            raise
        return audit(cand, ref, **kw, seed=cfg.seed), str(e).removeprefix("audit: ") + ": lower bound only"


def audit_summary(cfg: AuditConfig, scorer: str, scores: TogetherScores, provenance: dict) -> dict:
    """The test, effect, fraction, power, correction over the log and the verdict (the content of audit.json)."""
    cand, ref = scores.of("candidate"), scores.of("reference")
    dev, why_bound = _fraction_inputs(scores, cfg.reference == REFERENCE_FROM_DEV)
    result, not_identifiable = _run_test(cfg, cand, ref, dev)
    power = power_curve(cand, ref, alpha=cfg.alpha, target_power=cfg.target_power, n_rep=cfg.power_reps, seed=cfg.seed)
    if not math.isfinite(power["n_required_noether"]):
        power["n_required_noether"] = None
    name = cfg.name or Path(cfg.candidate).name
    record = {"name": name, "id": _audit_id(cfg, scorer), "scorer": scorer, "pvalue": result.pvalue,
              "n_candidate": len(cand), "n_reference": len(ref)}  # fmt: skip
    correction = log_and_correct(cfg, record)
    d = result.to_dict()
    summary = {
        "format": FORMAT,
        "name": name,
        "verdict": verdict(result, correction, power),
        "used": bool(correction["reject"]),
        "scorer": {"name": scorer, "default": cfg.scorer is None, "help": get_scorer(scorer).help},
        "test": {
            "name": "one-sided Mann-Whitney U (candidate > reference)",
            "statistic": d["statistic"],
            "pvalue": d["pvalue"],
            "method": d["method"],
            "alpha": cfg.alpha,
        },  # fmt: skip
        "effect": {
            "auc": d["auc"],
            "low": d["auc_low"],
            "high": d["auc_high"],
            "ci": cfg.ci,
            "interval": "BCa bootstrap, candidate and reference resampled separately",
        },  # fmt: skip
        "fraction": d["fraction"] | {"why_bound": not_identifiable or why_bound if d["fraction"]["bound"] else None},
        "power": power,
        "correction": correction,
        "n": {g: int(np.sum(np.asarray(scores.groups) == g)) for g in dict.fromkeys(scores.groups)},
        "conditions": scores.conditions | provenance,
        "inputs": {
            "candidate": str(cfg.candidate),
            "reference": str(cfg.reference),
            "generated": str(cfg.generated),
            "dev": None if cfg.dev_source is None else str(cfg.dev_source),
        },  # fmt: skip
        "seed": cfg.seed,
        "command": command_line(cfg),
    }
    return summary


def _audit_id(cfg: AuditConfig, scorer: str) -> str:
    """What makes two log entries the same audit: the inputs, scorer, test options and seed (not out/force)."""
    same = replace(cfg, out=Path("."), force=False, report=True, audit_log=None, scorer=scorer, threads=None)
    return sha256_bytes(command_line(same).encode())[:16]


def log_and_correct(cfg: AuditConfig, record: dict) -> dict:
    """Add this audit to the log (a re-run of the same audit replaces its entry) and correct over the log.

    Holm bounds the chance of any false "used" among the logged audits; BH/BY
    the expected share of false ones among the "used" verdicts. A growing log
    can withdraw an earlier Holm verdict, so each verdict is stored with the
    log size it was made at (`m`).
    """
    entries = []
    if cfg.audit_log is not None and Path(cfg.audit_log).is_file():
        for n, line in enumerate(Path(cfg.audit_log).read_text().splitlines(), 1):
            if line.strip():
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError:
                    raise FingerprintError(f"{cfg.audit_log}: line {n} is not JSON") from None
    entries = [e for e in entries if e.get("id") != record["id"]] + [record]
    bad = [e.get("name") for e in entries if not isinstance(e.get("pvalue"), (int, float))]
    if bad:
        raise FingerprintError(f"{cfg.audit_log}: an entry ({bad[0]}) has no p-value")
    corrected = correct_audits([e["pvalue"] for e in entries], alpha=cfg.alpha, method=cfg.correction)
    for e, adj, rej in zip(entries, corrected["adjusted"], corrected["reject"]):
        e["adjusted_at_m"] = {"m": len(entries), "adjusted": float(adj), "reject": bool(rej)}
    if cfg.audit_log is not None:
        write_text(cfg.audit_log, "".join(json.dumps(e) + "\n" for e in entries))
    return {
        "method": cfg.correction, "alpha": cfg.alpha, "m": len(entries),
        "log": None if cfg.audit_log is None else str(cfg.audit_log),
        "adjusted_pvalue": float(corrected["adjusted"][-1]), "reject": bool(corrected["reject"][-1]),
        "audits": [{k: e.get(k) for k in ("name", "scorer", "pvalue")} | e["adjusted_at_m"] for e in entries],
    }  # fmt: skip


def verdict(result: AuditResult, correction: dict, power: dict) -> str:
    """One line: used or not shown, p (raw and adjusted), effect and fraction with intervals, or the n needed."""
    adj = f"{correction['method']}-adjusted over {correction['m']} audit(s) {correction['adjusted_pvalue']:.2g}"
    p = f"one-sided Mann-Whitney U p = {result.pvalue:.2g}, {adj}"
    effect = f"AUC {result.auc:.3f} [{result.auc_low:.3f}, {result.auc_high:.3f}]"
    f = result.fraction
    frac = f"{'at least ' if f.bound else ''}{f.fraction:.2f} [{f.low:.2f}, {f.high:.2f}] of the candidate used"
    if correction["reject"]:
        used = "USED: the candidate collection scores higher than the reference"
        return f"{used} ({p} <= {correction['alpha']}); {effect}; {frac}"
    need = power["n_required"]
    more = (
        f"at this effect about {need} candidate images would reach p < {power['alpha']} with "
        f"{power['target_power']:.0%} power"
        if need is not None
        else f"at this effect no candidate size up to {max(power['n'])} reaches p < {power['alpha']} reliably"
    )
    shown = f"NOT SHOWN: no evidence at alpha {correction['alpha']} that the candidate collection was used"
    return f"{shown} ({p}); {effect}; {more}"
