"""Out-of-core features: per-shard parts, the set marker, loading as Features, galleries read through memory maps."""

from __future__ import annotations

import numpy as np
import pytest

from fingerprint.core.errors import FingerprintError
from fingerprint.embedding.features import (
    SET_FILE,
    ArrayGallery,
    Features,
    FeatureStore,
    complete_parts,
    finish_store,
    merge,
    part_paths,
    write_part,
)
from fingerprint.embedding.index import exact_search, exact_topk


def random_features(n: int, seed: int, *, start: int = 0, dim: int = 8) -> Features:
    """n rows, roles mixed, unit embeddings, small fp16 maps; keys gen_/real_ numbered from `start`."""
    rng = np.random.default_rng(seed)
    roles = np.where(rng.random(n) < 0.3, "real", "generated")
    keys = [f"{'real' if r == 'real' else 'gen'}_{start + i:04d}" for i, r in enumerate(roles)]
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.where(roles == "real", "used", "unknown")
    return Features(keys, roles, labels, emb, rng.random((n, 3, 2, 2)).astype(np.float16))


@pytest.fixture
def store(tmp_path):
    """Three parts (one without generated rows) and the set marker."""
    parts = [random_features(9, 0), random_features(7, 1, start=100), random_features(4, 2, start=200)]
    parts[2] = parts[2].select(role="real")
    rec = {"model_sha256": "abc", "image_size": 32, "fmaps": True}
    for i, p in enumerate(parts):
        write_part(tmp_path / "f", f"shard-{i:06d}", p, {**rec, "shard": f"s/shard-{i:06d}.tar"})
    assert not (tmp_path / "f" / SET_FILE).exists()  # the set is complete only when finished
    meta = {"image_size": 32, "fmaps": True, "model_sha256": "abc", "shards": "s"}
    finish_store(tmp_path / "f", [f"shard-{i:06d}" for i in range(3)], meta)
    return tmp_path / "f", parts, meta


def test_parts_load_as_one_sorted_features(store):
    folder, parts, meta = store
    whole, _ = merge(parts)
    got = Features.load(folder)
    assert got.keys.tolist() == whole.keys.tolist() == sorted(whole.keys.tolist())
    np.testing.assert_array_equal(got.embeddings, whole.embeddings)
    np.testing.assert_array_equal(got.fmaps, whole.fmaps)
    assert got.roles.tolist() == whole.roles.tolist() and got.meta == meta
    assert Features.load(folder, fmaps=False).fmaps is None
    st = FeatureStore.open(folder)
    real = st.load(role="real")
    assert real.keys.tolist() == whole.select(role="real").keys.tolist() and set(real.roles) == {"real"}
    keys, roles, labels = st.rows()
    assert keys.tolist() == whole.keys.tolist() and roles.tolist() == whole.roles.tolist()
    assert len(st) == len(whole) and st.count("generated") == int((whole.roles == "generated").sum())
    emb = np.load(part_paths(folder, "shard-000000")["emb"], mmap_mode="r")
    assert isinstance(emb, np.memmap) and emb.dtype == np.float32  # memory-mappable .npy


def test_gallery_reads_the_generated_rows_from_the_parts(store):
    folder, parts, _ = store
    gallery = FeatureStore.open(folder).gallery()
    gen = [p.select(role="generated") for p in parts]
    order = [p.take(np.argsort(p.keys)) for p in gen if len(p)]  # store order: parts by name, then key
    keys = np.concatenate([p.keys for p in order])
    assert len(gallery) == len(keys) and gallery.dim == 8 and gallery.channels == 3
    rows = np.array([[len(keys) - 1, 0], [3, 9]])
    assert gallery.keys_at(rows).tolist() == keys[rows].tolist()
    emb = np.concatenate([p.embeddings for p in order])
    np.testing.assert_array_equal(gallery.embeddings_at(rows), emb[rows])
    np.testing.assert_array_equal(gallery.fmaps_at(rows), np.concatenate([p.fmaps for p in order])[rows])
    starts = [s for s, _ in gallery.chunks()]
    assert starts == [0, len(order[0])] and np.array_equal(np.concatenate([c for _, c in gallery.chunks()]), emb)
    q = np.random.default_rng(5).standard_normal((4, 8)).astype(np.float32)
    sims, ids = exact_topk(gallery, q, 5)
    ref_sims, ref_ids = exact_search(emb, q, 5)
    assert np.array_equal(ids, ref_ids) and np.allclose(sims, ref_sims, atol=1e-6)
    assert np.array_equal(exact_topk(ArrayGallery(emb), q, 5)[1], ref_ids)
    with pytest.raises(FingerprintError, match="out of range"):
        gallery.keys_at(np.array([len(keys)]))


def test_unfinished_or_incomplete_sets_are_refused(tmp_path):
    rec = {"model_sha256": "abc", "image_size": 32, "fmaps": False}
    write_part(tmp_path / "f", "shard-000000", random_features(5, 0), rec)
    (tmp_path / "f" / "parts" / "shard-000001.emb.npy").write_bytes(b"half")  # arrays without their JSON
    assert set(complete_parts(tmp_path / "f")) == {"shard-000000"}
    with pytest.raises(FingerprintError, match=r"no features.json \(an unfinished 'fingerprint embed'"):
        Features.load(tmp_path / "f")
    with pytest.raises(FingerprintError, match=r"1 shard\(s\) not embedded \(first: shard-000001\)"):
        finish_store(tmp_path / "f", ["shard-000000", "shard-000001"], {})
