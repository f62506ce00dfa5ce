"""The pooled calibrated profile and the fusion applied to it: exact leave-one-out columns, symmetry, calibration."""

import faiss
import numpy as np
import pytest
import torch

from fingerprint.core.errors import FingerprintError
from fingerprint.evaluation.metrics import standardise
from fingerprint.membership import pooled as P
from fingerprint.membership.spaces import EPS
from fingerprint.tasks import audit_stats as S
from fingerprint.training.adapt import Metric

#: a fusion over one raw-pixel space: distance to the pool and the calibrated term, rank-standardised
MODEL = {"columns": ["px16:ngen_1", "px16:cal_1", "px16:cal_3"], "weights": [0.5, 1.0, 0.5], "intercept": 0.1,
         "standardise": "rank"}  # fmt: skip


@pytest.fixture(autouse=True)
def one_faiss_thread():
    """Tiny exact searches: OpenMP start-up would dominate (and the machine is shared)."""
    n = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(n)


def _images(rng, n, side=16):
    return torch.from_numpy(rng.random((n, 1, side, side), dtype=np.float32))


def test_columns_are_exact_leave_one_out_distances():
    rng = np.random.default_rng(0)
    real, gen = _images(rng, 12), _images(rng, 9)
    n_pool = 9  # rows 9-11 are measured against the pool without entering it
    cols = P.pooled_profile({16: real}, {16: gen}, n_pool, ["px16"])
    r, g = real.reshape(12, -1).double().numpy(), gen.reshape(9, -1).double().numpy()
    d_gen = np.sort(np.linalg.norm(r[:, None] - g[None], axis=2), axis=1)
    d_ref = np.linalg.norm(r[:, None] - r[None, :n_pool], axis=2)
    d_ref[np.arange(n_pool), np.arange(n_pool)] = np.inf  # each pooled image without itself
    d_ref = np.sort(d_ref, axis=1)
    np.testing.assert_allclose(cols["px16:ngen_3"], -np.log(d_gen[:, 2] + EPS), atol=1e-4)
    np.testing.assert_allclose(cols["px16:ref_1"], np.log(d_ref[:, 0] + EPS), atol=1e-4)
    np.testing.assert_allclose(cols["px16:cal_5"], np.log(d_ref[:, 4] + EPS) - np.log(d_gen[:, 4] + EPS), atol=1e-4)


def test_the_pooled_scores_do_not_depend_on_the_order_of_the_pool():
    """Which pooled images are 'candidate' and which 'reference' (their order) changes no image's fused score."""
    rng = np.random.default_rng(1)
    real, gen = _images(rng, 30), _images(rng, 40)
    perm = np.r_[rng.permutation(25), np.arange(25, 30)]
    a = P.pooled_fused(MODEL, P.pooled_profile({16: real}, {16: gen}, 25, ["px16", "pn16"]), 25)
    b = P.pooled_fused(MODEL, P.pooled_profile({16: real[perm]}, {16: gen}, 25, ["px16", "pn16"]), 25)
    np.testing.assert_allclose(b, a[perm], atol=1e-9)


def test_standardise_on_pool_reproduces_the_pool_and_places_later_rows():
    rng = np.random.default_rng(2)
    v = rng.normal(size=40)
    for how in ("rank", "robust"):
        out = P.standardise_on_pool(v, 30, how)
        np.testing.assert_allclose(out[:30], standardise(v[:30], how))
        np.testing.assert_allclose(P.standardise_on_pool(v[:30], 30, how), out[:30])  # later rows change nothing
    out = P.standardise_on_pool(np.r_[np.arange(10.0), -5.0, 4.5, 99.0], 10, "rank")
    assert out[10] < out[0] and out[4] < out[11] < out[5] and out[9] < out[12]
    with pytest.raises(FingerprintError, match="unknown method"):
        P.standardise_on_pool(v, 30, "minmax")


def test_fusion_columns_outside_the_pooled_spaces_are_refused():
    assert P.fusion_spaces({"columns": ["px64:cal_1", "al64:ngen_1", "px64:ngen_1"]}) == ["px64", "al64"]
    with pytest.raises(FingerprintError, match="cannot compute"):
        P.fusion_spaces({"columns": ["emb:cal_1"]})
    with pytest.raises(FingerprintError, match="cannot compute"):
        P.fusion_spaces({"columns": ["relation"]})


def _null_world(rng, n_train=40, n_gen=60, d=12):
    """Training images of a 'generator' (its pool: noisy copies of them) and a fresh population of the same law."""
    train = rng.random((n_train, 1, d, d), dtype=np.float32)
    gen = train[rng.integers(0, n_train, n_gen)] + 0.08 * rng.standard_normal((n_gen, 1, d, d), dtype=np.float32)
    return torch.from_numpy(train), torch.from_numpy(gen.astype(np.float32))


def _fused_p(cand, ref, gen, pooled: bool) -> float:
    model = {**MODEL, "columns": ["px12:ngen_1", "px12:cal_1", "px12:cal_3"]}
    if pooled:
        x = torch.cat([cand, ref])
        s = P.pooled_fused(model, P.pooled_profile({12: x}, {12: gen}, len(x), ["px12"]), len(x))
        sc, sr = s[: len(cand)], s[len(cand) :]
    else:  # each collection's calibration term measured against itself: what the pooled form avoids
        sc = P.pooled_profile({12: cand}, {12: gen}, len(cand), ["px12"])["px12:cal_1"]
        sr = P.pooled_profile({12: ref}, {12: gen}, len(ref), ["px12"])["px12:cal_1"]
    return S.membership_test(sc, sr)[1]


def test_null_fpr_of_the_pooled_fused_score_is_nominal_and_per_collection_calibration_breaks_it():
    """H0: candidate (20) and reference (40) are fresh images of one population, re-drawn and re-scored 200 times
    (pooled profile + pooled standardisation each time): FPR at alpha 0.05 stays nominal; measuring each
    collection's distance to other reals within itself (a smaller collection has farther neighbours) does not."""
    rng = np.random.default_rng(3)
    _, gen = _null_world(rng)
    p_pooled, p_split = [], []
    for _ in range(200):
        fresh = torch.from_numpy(rng.random((60, 1, 12, 12), dtype=np.float32))
        p_pooled.append(_fused_p(fresh[:20], fresh[20:], gen, pooled=True))
        p_split.append(_fused_p(fresh[:20], fresh[20:], gen, pooled=False))
    cal = S.calibration_summary(p_pooled, alpha=0.05)
    assert cal["fpr_low"] <= 0.05 <= cal["fpr_high"] and 0.02 <= cal["fpr"] <= 0.09, cal["fpr"]
    assert S.calibration_summary(p_split, alpha=0.05)["fpr"] > 0.3  # measured 0.455


def test_a_used_collection_scores_higher_than_fresh_images():
    rng = np.random.default_rng(4)
    train, gen = _null_world(rng)
    fresh = torch.from_numpy(rng.random((40, 1, 12, 12), dtype=np.float32))
    assert _fused_p(train[:20], fresh, gen, pooled=True) < 1e-3


def test_bad_pool_is_refused():
    rng = np.random.default_rng(5)
    with pytest.raises(FingerprintError, match="at least 2 pooled"):
        P.pooled_profile({16: _images(rng, 4)}, {16: _images(rng, 4)}, 1, ["px16"])
    with pytest.raises(FingerprintError, match="not computed on a pooled set"):
        P.pooled_profile({16: _images(rng, 4)}, {16: _images(rng, 4)}, 4, ["emb"])


def test_metric_space_measures_each_image_in_its_own_fold_metric():
    """k32x: with an identity metric the columns are the normalised-pixel ones; a row whose fold metric is a
    different projection is measured in that one (pool and generated images transformed alike)."""
    rng = np.random.default_rng(6)
    real, gen = _images(rng, 10, 8), _images(rng, 12, 8)
    eye = np.eye(64)
    metric = Metric(np.zeros(64), np.stack([2.0 * eye, eye]), {}, {"size": 8})  # fold 0: doubled distances
    full = P.pooled_profile({8: real}, {8: gen}, 10, ["k32x", "pn8"], metric=metric)
    np.testing.assert_allclose(full["k32x:cal_3"], full["pn8:cal_3"], atol=1e-5)
    folds = np.array([0] * 5 + [1] * 5)
    mixed = P.pooled_profile({8: real}, {8: gen}, 10, ["k32x"], metric=metric, folds=folds)
    np.testing.assert_allclose(mixed["k32x:ngen_1"][:5], full["k32x:ngen_1"][:5] - np.log(2.0), atol=1e-4)
    np.testing.assert_allclose(mixed["k32x:ngen_1"][5:], full["k32x:ngen_1"][5:], atol=1e-6)
    np.testing.assert_allclose(mixed["k32x:cal_1"], full["k32x:cal_1"], atol=1e-4)  # a scale cancels in cal
