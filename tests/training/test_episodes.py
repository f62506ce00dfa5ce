"""Episodes: dev split, balanced query batches, support sampling, memory-bank supports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fingerprint.core.errors import FingerprintError
from fingerprint.data.pack import pack
from fingerprint.data.stream import StreamConfig, make_loader
from fingerprint.training.episodes import (
    BalancedQueries,
    Bank,
    SupportSampler,
    bank_support_fn,
    dev_reals,
    nearest,
    pair_targets,
    split_dev,
)


def make_dev(root: Path, n_gen: int = 24, n_used: int = 8, n_not: int = 8, size: int = 32, seed: int = 0) -> Path:
    """A 2023 dev-layout folder where the "generator" made noisy near-copies of the used images."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size

    def blobs() -> np.ndarray:
        a = np.zeros((size, size))
        for _ in range(4):
            cx, cy = rng.uniform(0.2, 0.8, 2)
            s = rng.uniform(0.05, 0.2)
            a += rng.uniform(0.3, 1) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
        return a / a.max()

    def save(a: np.ndarray, p: Path) -> None:
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8), "L").save(p)

    used = [blobs() for _ in range(n_used)]
    for i, a in enumerate(used):
        save(a, root / "used" / f"used_{i + 1:04d}.png")
    for i in range(n_not):
        save(blobs(), root / "not_used" / f"not_used_{i + 1:04d}.png")
    for i in range(n_gen):
        save(used[i % n_used] + rng.normal(0, 0.05, (size, size)), root / "generated" / f"generated_{i + 1:04d}.png")
    return root


def pack_dev(tmp: Path, max_count: int = 4, **kw) -> Path:
    make_dev(tmp / "dev", **kw)
    pack(tmp / "dev", tmp / "shards", image_size=kw.get("size", 32), max_count=max_count, seed=0)
    return tmp / "shards"


@pytest.fixture(scope="module")
def dev_shards(tmp_path_factory):
    return pack_dev(tmp_path_factory.mktemp("episodes"))


def test_dev_reals_reads_keys_and_labels(dev_shards):
    keys, labels = dev_reals(dev_shards)
    assert keys == sorted([f"used_{i:04d}" for i in range(1, 9)] + [f"not_used_{i:04d}" for i in range(1, 9)])
    assert labels == ["used" if k.startswith("used") else "not_used" for k in keys]


def test_split_dev_is_stratified_seeded_and_disjoint():
    keys = [f"u{i}" for i in range(20)] + [f"n{i}" for i in range(10)]
    labels = ["used"] * 20 + ["not_used"] * 10
    tr, va = split_dev(keys, labels, 0.2, seed=3)
    assert sorted(tr + va) == sorted(keys) and not set(tr) & set(va)
    assert sum(k.startswith("u") for k in va) == 4 and sum(k.startswith("n") for k in va) == 2
    assert (tr, va) == split_dev(keys, labels, 0.2, seed=3)
    assert va != split_dev(keys, labels, 0.2, seed=4)[1]
    assert split_dev(keys, [1] * 20 + [0] * 10, 0.2, seed=3) == (tr, va)  # numeric labels too
    assert split_dev(keys, labels, 0.0)[1] == []
    # each class keeps at least one image on each side
    tr2, va2 = split_dev(["a", "b", "c", "d"], [1, 1, 0, 0], 0.01)
    assert len(va2) == 2 and len(tr2) == 2


def test_split_dev_errors():
    with pytest.raises(FingerprintError, match="no 'not_used' images"):
        split_dev(["a", "b"], ["used", "used"], 0.5)
    with pytest.raises(FingerprintError, match="only 1 'used'"):
        split_dev(["a", "b", "c"], ["used", "not_used", "not_used"], 0.5)
    with pytest.raises(FingerprintError, match="label 'unknown'"):
        split_dev(["a", "b"], ["used", "unknown"], 0.5)
    with pytest.raises(FingerprintError, match="val fraction"):
        split_dev(["a", "b"], ["used", "not_used"], 1.0)


def test_balanced_queries_from_the_stream(dev_shards):
    keys, labels = dev_reals(dev_shards)
    train_keys = keys[2:]  # leave two out: they must never appear
    cfg = StreamConfig(roles=("real",), batch_size=4, shuffle=True)
    batches = list(BalancedQueries(make_loader(dev_shards, cfg), train_keys, dict(zip(keys, labels)), 6, 5))
    assert len(batches) == 5  # 15 used needed from 7: the stream is read again
    for b in batches:
        assert b.image.shape == (6, 1, 32, 32) and b.label.tolist() == [1, 1, 1, 0, 0, 0]
        assert all(k.startswith("used") for k in b.key[:3]) and all(k.startswith("not_used") for k in b.key[3:])
        assert set(b.key) <= set(train_keys)


def test_balanced_queries_errors(dev_shards):
    keys, labels = dev_reals(dev_shards)
    only_used = [k for k in keys if k.startswith("used")]
    stream = make_loader(dev_shards, StreamConfig(roles=("real",), batch_size=4))
    with pytest.raises(
        FingerprintError, match=r"rank 0: its share .* holds no 'not_used' training images \(8 used / 0"
    ):
        list(BalancedQueries(stream, only_used, dict(zip(keys, labels)), 4, 2, where="rank 0"))
    with pytest.raises(FingerprintError, match="even number"):
        BalancedQueries([], keys, {}, 3, 1)


def unit(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_support_sampler_nearest_plus_random():
    pool = unit(30, 8)
    bank = Bank.build([f"g{i}" for i in range(30)], pool)
    q = unit(5, 8, seed=1)
    s = SupportSampler(30, k=6, k_random=2, seed=0)
    ids = s.sample(q, bank, epoch=0, step=0)
    exact = torch.topk(q @ pool.T, 4, dim=1).indices.numpy()
    assert ids.shape == (5, 6)
    np.testing.assert_array_equal(ids[:, :4], exact)
    for row in ids:
        assert len(set(row.tolist())) == 6  # random ones are new images
    np.testing.assert_array_equal(ids, s.sample(q, bank, epoch=0, step=0))  # seeded by (epoch, step, rank)
    assert not np.array_equal(ids[:, 4:], s.sample(q, bank, epoch=0, step=1)[:, 4:])
    sims, near = nearest(bank, q, 3)
    np.testing.assert_allclose(sims, torch.topk(q @ pool.T, 3, dim=1).values.numpy(), rtol=1e-5)


def test_support_sampler_pairs_and_checks():
    p = SupportSampler(10, k=4, mode="pairs", seed=0)
    ids = p.sample(None, None, epoch=1, step=2, n_queries=3)
    assert ids.shape == (3, 4) and all(len(set(r)) == 4 for r in ids.tolist()) and ids.max() < 10
    with pytest.raises(FingerprintError, match="K=8 is larger than the generated pool \\(5 images\\)"):
        SupportSampler(5, k=8)
    with pytest.raises(FingerprintError, match="random supports"):
        SupportSampler(10, k=4, k_random=5)
    with pytest.raises(FingerprintError, match="episode mode"):
        SupportSampler(10, k=4, mode="all")


def test_bank_support_fn_gathers_maps():
    emb = unit(12, 4)
    fmap = torch.arange(12 * 2 * 1 * 1, dtype=torch.float32).reshape(12, 2, 1, 1)
    bank = Bank.build([str(i) for i in range(12)], emb, fmap)
    seen = []
    fn = bank_support_fn(bank, lambda e: np.array([[3, 1], [0, 11]]), seen)
    s_emb, s_fmap = fn(unit(2, 4, seed=5))
    assert s_fmap.shape == (2, 2, 2, 1, 1) and torch.equal(s_fmap[1, 1], fmap[11])
    assert torch.equal(s_emb[0, 0], emb[3]) and len(seen) == 1
    assert pair_targets(torch.tensor([1.0, 0.0]), 3).tolist() == [[1, 1, 1], [0, 0, 0]]
