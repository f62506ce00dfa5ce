"""The scorer registry: declared inputs, the names everything reads, and a new scorer one registration away."""

import numpy as np
import pytest
from test_score import features_of, model  # noqa: F401  (the model fixture)

from fingerprint.cli import score as score_cli
from fingerprint.core.errors import FingerprintError
from fingerprint.evaluation.scorefiles import ScoreResult, read_scores
from fingerprint.membership.scorers import SCORERS, get_scorer, register, scorer_names, untrained_scorers
from fingerprint.tasks.configs import BASELINES, RunOptions
from fingerprint.tasks.pipeline import RUN_FILE_SCORER, RunPaths, score_config


def test_registered_scorers_declare_their_inputs():
    assert scorer_names()[:7] == ("fused", "relation", "dcr", "ssim", "emb_nn", "emb_topk", "seed_rule")
    assert get_scorer("fused").needs == {"profile", "fusion"} and get_scorer("fused").trained
    assert RUN_FILE_SCORER == "fused" and "fused" not in untrained_scorers()
    assert get_scorer("relation").needs == {"features", "model", "index"} and get_scorer("relation").saves_neighbours
    assert get_scorer("dcr").needs == {"pixels"} and get_scorer("seed_rule").pairwise
    assert set(untrained_scorers()) >= {"dcr", "ssim", "emb_nn", "emb_topk"} and "seed_rule" not in untrained_scorers()
    assert BASELINES == tuple(n for n in scorer_names() if n != "fused")
    with pytest.raises(FingerprintError, match="unknown scorer 'nope'"):
        get_scorer("nope")
    with pytest.raises(ValueError, match="needs one of pixels, features, profile"):
        register("bad", needs=("model",), help="x")


def test_the_pipeline_gives_each_scorer_what_it_declares(tmp_path):
    paths, opts = RunPaths(tmp_path), RunOptions()
    dcr = score_config("dcr", "dev", paths, opts)
    assert dcr.shards == paths.shards("dev") and dcr.features is None and dcr.calibrate_on == paths.shards("dev")
    rel = score_config("relation", "dev", paths, opts)  # threshold stored with the model (held-out validation)
    assert (rel.features, rel.index, rel.model, rel.calibrate_on) == (
        paths.features("dev"), paths.index("dev"), paths.model, None)  # fmt: skip
    fused = score_config("fused", "dev", paths, opts)  # threshold from out-of-fold dev scores, in the fusion
    assert (fused.profile, fused.fusion, fused.calibrate_on) == (paths.profile("dev"), paths.fusion, None)
    assert (fused.rule, fused.scale) == ("kappa", "robust")
    seed = score_config("seed_rule", "dev", paths, opts)
    assert seed.index is None and seed.model == paths.model


def test_a_new_scorer_is_one_registration_away(model, tmp_path):  # noqa: F811
    @register("emb_far", needs=("features",), help="minus the cosine to the farthest generated image")
    def emb_far(inputs, params):
        real, gen = inputs.split()
        return ScoreResult(real.keys.tolist(), -(real.embeddings @ gen.embeddings.T).min(axis=1).astype(np.float64))

    try:
        features_of(model).save(tmp_path / "f.npz")
        argv = ["--scorer", "emb_far", "--features", str(tmp_path / "f.npz"), "--out", str(tmp_path / "s.csv")]
        assert score_cli.main([*argv, "--calibrate-on", str(tmp_path / "f.npz")]) == 0
        assert len(read_scores(tmp_path / "s.csv").keys) == 6
    finally:
        SCORERS.pop("emb_far")
