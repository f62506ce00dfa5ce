"""Comparator features: embedding, similarity profile, relation pair scores and score-file columns."""

import numpy as np
import pytest
from test_compare import make_features

from fingerprint.analysis import compare_features
from fingerprint.core.errors import FingerprintError
from fingerprint.evaluation.scorefiles import write_scores


def test_profile_features_are_sorted_top_k_cosines():
    feats = make_features(n_real=10, n_gen=12)
    real = feats.select(role="real").embeddings
    gen = feats.select(role="generated").embeddings
    prof = compare_features.profile_features(real, gen, 5)
    exact = -np.sort(-(real @ gen.T), axis=1)[:, :5]
    np.testing.assert_allclose(prof, exact, atol=1e-5)


def test_relation_and_baseline_feature_sets(tmp_path):
    feats = make_features(n_real=8, n_gen=6)
    real = feats.select(role="real").keys
    rng = np.random.default_rng(0)
    pair = rng.random((8, 3)).astype(np.float32)
    np.savez(
        tmp_path / "neighbours.npz",
        keys=real,
        neighbour_keys=np.full((8, 3), "g"),
        neighbour_sims=pair,
        pair_scores=pair,
    )
    base = rng.normal(size=8)
    write_scores(tmp_path / "dcr.csv", list(real), base, (base > 0).astype(int))
    path = feats.save(tmp_path / "f.npz")
    split = compare_features.load_split(
        path, scores_dir=tmp_path, feature_sets=("relation", "baselines"), baselines=("dcr",)
    )
    fm = compare_features.build_features(split, ("relation", "baselines"), top_k=2, baselines=("dcr",))
    assert fm.columns == ["relation_0", "relation_1", "relation_2", "baseline_dcr"]
    np.testing.assert_allclose(fm.X[:, :3], -np.sort(-pair, axis=1), rtol=1e-6)
    np.testing.assert_allclose(fm.X[:, 3], base, rtol=1e-6)
    np.savez(tmp_path / "neighbours.npz", keys=real[:5], pair_scores=pair[:5])
    short = compare_features.load_split(path, scores_dir=tmp_path, feature_sets=("relation",))
    with pytest.raises(FingerprintError, match="lacks 3 real image"):
        compare_features.build_features(short, ("relation",), top_k=2)
