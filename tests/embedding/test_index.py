"""FAISS index: exact top-k vs numpy, IVF recall and nlist cap, save/load with keys, the index command."""

import json

import numpy as np
import pytest

from fingerprint.cli import index as index_cli
from fingerprint.core.errors import FingerprintError
from fingerprint.embedding import index as fx
from fingerprint.embedding.features import Features


def unit(n, d, seed):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_topk_equals_numpy_bruteforce():
    x, q = unit(500, 24, 0), unit(40, 24, 1)
    idx = fx.build_index(x)
    sims, ids = fx.search(idx, q, 7)
    brute = q @ x.T
    want = np.argsort(-brute, axis=1, kind="stable")[:, :7]
    assert (ids == want).all()
    np.testing.assert_allclose(sims, np.take_along_axis(brute, want, axis=1), rtol=1e-5, atol=1e-6)
    assert sims.dtype == np.float32 and ids.dtype == np.int64


def test_queries_are_normalised_and_k_capped():
    x = unit(5, 8, 0)
    sims, ids = fx.search(fx.build_index(x * 3.0), x * 7.0, 10)
    assert ids.shape == (5, 5)
    assert (ids[:, 0] == np.arange(5)).all()
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)


def test_ivf_recall_and_other_factories():
    x, q = unit(2000, 16, 2), unit(50, 16, 3)
    ivf = fx.build_index(x, "IVF32,Flat", nprobe=4)
    r = fx.recall_at_k(ivf, x, q, 10)
    assert 0.0 < r < 1.0  # 4 of 32 lists on random vectors misses neighbours
    assert fx.recall_at_k(fx.build_index(x, "IVF32,Flat", nprobe=32), x, q, 10) == pytest.approx(1.0)
    assert fx.recall_at_k(fx.build_index(x), x, q, 10) == 1.0
    hnsw = fx.build_index(x, "HNSW16")
    assert fx.recall_at_k(hnsw, x, q, 10) > 0.8
    assert fx.build_index(x, "IVF8,PQ4x4").ntotal == 2000  # 4-bit PQ: 16 centroids per sub-quantizer, fast to train


def test_ivf_nlist_cap_and_errors():
    assert fx.cap_factory("IVF64,Flat", 100) == "IVF2,Flat"
    assert fx.cap_factory("IVF2,Flat", 100) == "IVF2,Flat"
    assert fx.cap_factory("HNSW32", 10) == "HNSW32"
    with pytest.raises(FingerprintError, match="at least 39"):
        fx.build_index(unit(20, 8, 0), "IVF4,Flat")
    with pytest.raises(FingerprintError, match="bad index factory"):
        fx.build_index(unit(20, 8, 0), "NotAnIndex")
    with pytest.raises(FingerprintError, match="cannot train"):
        fx.build_index(unit(100, 8, 0), "IVF2,PQ4")  # 100 points < 256 PQ centroids
    with pytest.raises(FingerprintError, match="NaN"):
        fx.build_index(np.full((3, 4), np.nan))


def test_ivf_is_seeded():
    x, q = unit(800, 16, 4), unit(20, 16, 5)
    a = fx.search(fx.build_index(x, "IVF8,Flat", seed=1, nprobe=1), q, 5)[1]
    b = fx.search(fx.build_index(x, "IVF8,Flat", seed=1, nprobe=1), q, 5)[1]
    assert (a == b).all()


def test_save_load_roundtrip(tmp_path):
    x, q = unit(300, 8, 6), unit(10, 8, 7)
    keys = [f"generated_{i:05d}" for i in range(300)]
    for factory in ("Flat", "IVF4,Flat"):
        idx = fx.build_index(x, factory)
        path = fx.save_index(idx, tmp_path / f"{factory[:3]}.faiss", keys, meta={"factory": factory})
        loaded, lkeys = fx.load_index(path)
        assert lkeys == keys
        assert fx.read_index_meta(path)["factory"] == factory
        assert (fx.search(loaded, q, 5)[1] == fx.search(idx, q, 5)[1]).all()
    with pytest.raises(FingerprintError, match="keys for an index"):
        fx.save_index(idx, tmp_path / "bad.faiss", keys[:3])
    side = tmp_path / "Fla.json"
    meta = json.loads(side.read_text())
    meta["keys"] = keys[:10]
    side.write_text(json.dumps(meta))
    with pytest.raises(FingerprintError, match="stale sidecar"):
        fx.load_index(tmp_path / "Fla.faiss")
    (tmp_path / "junk.faiss").write_bytes(b"junk")
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(FingerprintError, match="not a readable FAISS index"):
        fx.load_index(tmp_path / "junk.faiss")


def test_index_command(tmp_path):
    n_gen, n_real = 120, 6
    emb = unit(n_gen + n_real, 8, 8)
    keys = [f"generated_{i:04d}" for i in range(n_gen)] + [f"used_{i:04d}" for i in range(n_real)]
    roles = ["generated"] * n_gen + ["real"] * n_real
    Features(keys, roles, ["unknown"] * n_gen + ["used"] * n_real, emb).save(tmp_path / "f.npz")
    out = tmp_path / "index" / "generated.faiss"
    log = tmp_path / "log.jsonl"
    argv = [
        "--features",
        str(tmp_path / "f.npz"),
        "--out",
        str(out),
        "--index-factory",
        "IVF16,Flat",
        "--nprobe",
        "1",
        "--threads",
        "1",
        "--log",
        str(log),
    ]
    assert index_cli.main(argv) == 0
    meta = fx.read_index_meta(out)
    assert meta["factory"] == "IVF3,Flat"  # 120 // 39
    assert meta["keys"] == keys[:n_gen]
    assert 0.0 < meta["recall"]["value"] <= 1.0 and meta["recall"]["queries"] == n_gen + n_real
    assert json.loads(log.read_text())["stage"] == "index"
    assert index_cli.main(argv) == 2  # exists
    assert index_cli.main([*argv, "--force", "--index-factory", "Flat"]) == 0
    assert fx.read_index_meta(out)["recall"]["value"] == 1.0


def test_approximate_index_gaps_are_filled_exactly():
    # two tight clusters of 40; IVF2 probing 1 list finds only 40 of the 50 asked for
    rng = np.random.default_rng(0)
    centres = np.eye(8, dtype=np.float32)[:2]
    gen = np.concatenate([c + 0.01 * rng.standard_normal((40, 8)) for c in centres]).astype(np.float32)
    real = centres + 0.01 * rng.standard_normal((2, 8)).astype(np.float32)
    ivf = fx.build_index(gen, "IVF2,Flat", nprobe=1)
    assert (fx.search(ivf, real, 50)[1] < 0).any()
    sims, rows = fx.neighbours(real, gen, ivf, k=50)
    want_sims, want_rows = fx.exact_search(gen, real, 50)
    assert (rows == want_rows).all()
    np.testing.assert_allclose(sims, want_sims)


def test_run_index_library_entry(tmp_path):
    emb = unit(50, 8, 3)
    keys = [f"generated_{i:04d}" for i in range(40)] + [f"used_{i:04d}" for i in range(10)]
    Features(keys, ["generated"] * 40 + ["real"] * 10, ["unknown"] * 40 + ["used"] * 10, emb).save(tmp_path / "f.npz")
    meta = fx.run_index(fx.IndexConfig(features=tmp_path / "f.npz", out=tmp_path / "i.faiss", recall_k=64))
    assert meta["factory"] == "Flat" and meta["recall"] == {"k": 40, "queries": 0, "value": 1.0, "exact": True}
    index, saved = fx.load_index(tmp_path / "i.faiss")
    assert saved == keys[:40] and index.ntotal == 40
    with pytest.raises(FingerprintError, match=r"i.faiss: already exists \(use index.force"):
        fx.run_index(fx.IndexConfig(features=tmp_path / "f.npz", out=tmp_path / "i.faiss"))
    with pytest.raises(FingerprintError, match=r"index.recall_k must be >= 1"):
        fx.IndexConfig(features=tmp_path / "f.npz", out=tmp_path / "j.faiss", recall_k=0)
    Features(keys[40:], ["real"] * 10, ["used"] * 10, emb[40:]).save(tmp_path / "real.npz")
    with pytest.raises(FingerprintError, match="no generated images to index"):
        fx.run_index(fx.IndexConfig(features=tmp_path / "real.npz", out=tmp_path / "k.faiss"))


def _store(folder, n_parts=3, n_gen=300, n_real=5, dim=16, seed=0):
    """A features folder of random unit vectors in `n_parts` parts; returns (folder, gen emb in store order)."""
    from fingerprint.embedding.features import finish_store, write_part

    rng = np.random.default_rng(seed)
    gen_rows = []
    for p in range(n_parts):
        keys = [f"generated_{p}_{i:04d}" for i in range(n_gen)] + [f"real_{p}_{i:02d}" for i in range(n_real)]
        emb = unit(n_gen + n_real, dim, seed + p)
        order = rng.permutation(len(keys))  # parts sort their rows themselves
        roles = np.array(["generated"] * n_gen + ["real"] * n_real)
        labels = np.array(["unknown"] * n_gen + ["used"] * n_real)
        feats = Features(np.array(keys)[order], roles[order], labels[order], emb[order])
        write_part(folder, f"shard-{p:06d}", feats, {"model_sha256": "m", "image_size": 32, "fmaps": False})
        gen_rows.append(emb[:n_gen])  # generated keys sort in this order already
    finish_store(folder, [f"shard-{p:06d}" for p in range(n_parts)], {"model_sha256": "m", "fmaps": False})
    return folder, np.concatenate(gen_rows)


def test_ivfpq_from_a_features_folder_part_by_part(tmp_path):
    """Trained on a seeded sample, filled part by part; ids are the folder's generated rows; recall reported;
    PQ similarities re-ranked exactly; a sidecar without a key list."""
    from fingerprint.embedding.features import FeatureStore

    folder, gen = _store(tmp_path / "f")
    cfg = fx.IndexConfig(features=folder, out=tmp_path / "i.faiss", index_factory="IVF8,PQ4", train_size=400,
                         nprobe=8, recall_queries=50, threads=1)  # fmt: skip
    meta = fx.run_index(cfg)
    assert meta["factory"] == "IVF8,PQ4" and meta["gpus"] == 0 and meta["recall"]["queries"] == 50
    assert 0.2 < meta["recall"]["value"] <= meta["recall"]["refined"] <= 1.0 and meta["recall"]["refine"] == 4
    assert set(meta["seconds"]) == {"train", "add", "recall"}
    side = fx.read_index_meta(tmp_path / "i.faiss")
    assert side["keys"] is None and side["ids"] == "features" and side["ntotal"] == 900
    store = FeatureStore.open(folder)
    assert side["features_signature"] == store.signature()
    index, keys = fx.load_index(tmp_path / "i.faiss")
    assert keys is None and index.ntotal == len(gen)
    q = gen[[5, 333, 700]] + 0.01 * unit(3, 16, 9)
    sims, rows = fx.neighbours(q, store.gallery(), index, k=5)
    assert rows[:, 0].tolist() == [5, 333, 700]  # ids are store rows
    exact = np.einsum("qd,qkd->qk", fx.as_unit(q), gen[rows])
    np.testing.assert_allclose(sims, exact, atol=1e-5)  # re-ranked by exact cosine
    assert (np.diff(sims, axis=1) <= 1e-7).all()
    flat = fx.run_index(fx.IndexConfig(features=folder, out=tmp_path / "flat.faiss"))
    assert flat["recall"]["exact"]
    index, _ = fx.load_index(tmp_path / "flat.faiss")
    np.testing.assert_array_equal(fx.search(index, q, 7)[1], fx.exact_search(gen, q, 7)[1])
    sample = fx.training_sample(store.gallery(), 100, seed=3)
    assert sample.shape == (100, 16) and np.allclose(sample, fx.training_sample(store.gallery(), 100, seed=3))
