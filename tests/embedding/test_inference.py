"""Relation inference shared by validation and scoring: pair logits, pooling, the relation scorer."""

import numpy as np
import pytest
import torch
from test_score import SIZE, features_of

from fingerprint.core.errors import FingerprintError
from fingerprint.embedding import inference as sc
from fingerprint.embedding.index import build_index, load_index, save_index
from fingerprint.embedding.model_io import build_model
from fingerprint.embedding.models import ModelConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(ModelConfig(image_size=SIZE, embed_dim=16)).eval()


def test_relation_scores_equal_bruteforce(model):
    f = features_of(model)
    real, gen = f.select(role="real"), f.select(role="generated")
    k = 5
    res = sc.relation_scores(model, real, gen, k=k, batch_size=4)
    assert res.keys == real.keys.tolist()
    sims = real.embeddings @ gen.embeddings.T
    rows = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    assert (res.neighbour_keys == gen.keys[rows]).all()
    with torch.no_grad():
        q = torch.from_numpy(real.fmaps.astype(np.float32))
        s = torch.from_numpy(gen.fmaps.astype(np.float32)[rows])
        logits = model.relate(q, s)
        want = torch.sigmoid(model.pool(logits)).numpy()
    np.testing.assert_allclose(res.score, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.pair_scores, torch.sigmoid(logits).numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.components["nn_sim"], sims.max(axis=1), atol=1e-5)
    np.testing.assert_allclose(res.components["mean_topk_sim"], np.sort(sims, axis=1)[:, -k:].mean(axis=1), atol=1e-5)
    assert (res.score > 0).all() and (res.score < 1).all()


def test_saved_index_in_another_order_and_approximate_fill(model, tmp_path):
    f = features_of(model, n_gen=80)
    real, gen = f.select(role="real"), f.select(role="generated")
    ref = sc.relation_scores(model, real, gen, k=4)
    perm = np.random.default_rng(0).permutation(len(gen))
    save_index(build_index(gen.embeddings[perm]), tmp_path / "g.faiss", gen.keys[perm].tolist())
    idx, keys = load_index(tmp_path / "g.faiss")
    res = sc.relation_scores(model, real, gen, idx, k=4, index_keys=keys)
    assert (res.neighbour_keys == ref.neighbour_keys).all()
    np.testing.assert_allclose(res.score, ref.score, rtol=1e-6)
    with pytest.raises(FingerprintError, match="not among the generated"):
        sc.relation_scores(model, real, gen, idx, k=4, index_keys=[k + "x" for k in keys])


def test_relation_needs_fmaps(model):
    f = features_of(model)
    real = f.select(role="real")
    real.fmaps = None
    with pytest.raises(FingerprintError, match=r"embed.fmaps"):
        sc.relation_scores(model, real, f.select(role="generated"))


def test_relation_logits_take_every_support_source(model):
    """Exported float16 maps (numpy), live maps (a tensor) and a support function give the same pair logits."""
    f = features_of(model)
    real, gen = f.select(role="real"), f.select(role="generated")
    rows = np.random.default_rng(0).integers(0, len(gen), size=(len(real), 3))
    from_numpy = sc.relation_logits(model, real.fmaps, gen.fmaps, rows, batch_size=2)
    gen_maps = torch.from_numpy(gen.fmaps.astype(np.float32))
    real_maps = torch.from_numpy(real.fmaps.astype(np.float32))
    from_tensor = sc.relation_logits(model, real_maps, gen_maps, rows, batch_size=2)
    from_fn = sc.relation_logits(model, real.fmaps, lambda r: gen_maps[torch.as_tensor(r)], rows, batch_size=2)
    np.testing.assert_array_equal(from_numpy, from_tensor)
    np.testing.assert_array_equal(from_numpy, from_fn)
    with torch.no_grad():
        want = model.relate(real_maps, gen_maps[torch.as_tensor(rows)])
    np.testing.assert_allclose(from_numpy, want.numpy(), rtol=1e-4, atol=1e-4)  # one batch vs batches of 2
    np.testing.assert_array_equal(sc.pooled_logits(model, from_numpy), from_numpy.max(axis=1))  # pool = max


def test_relation_logits_keep_the_models_mode(model):
    f = features_of(model)
    rows = np.zeros((6, 2), dtype=np.int64)
    model.train()
    try:
        train_mode = sc.relation_logits(model, f.fmaps[:6], f.fmaps, rows)
        assert model.training  # restored
    finally:
        model.eval()
    np.testing.assert_array_equal(train_mode, sc.relation_logits(model, f.fmaps[:6], f.fmaps, rows))
