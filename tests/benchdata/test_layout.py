"""Writing a benchmark: synthetic samples are never near-copies of real images."""

import numpy as np
import pytest

from fingerprint.benchdata.layout import sample_checked, traceability
from fingerprint.core.errors import FingerprintError


class Copier:
    """A generator that returns a real image every third draw, else noise."""

    def __init__(self, real: np.ndarray):
        self.real = real

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        out = rng.integers(0, 256, (n, *self.real.shape[1:]), dtype=np.uint8)
        copy = rng.random(n) < 1 / 3
        out[copy] = self.real[rng.integers(0, len(self.real), int(copy.sum()))]
        return out


def test_near_copies_are_redrawn():
    real = np.random.default_rng(0).integers(0, 256, (5, 8, 8), dtype=np.uint8)
    images, stats, sources = sample_checked(Copier(real), 30, real, seed=1, max_correlation=0.9, batch=7)
    assert images.shape == (30, 8, 8) and stats["rejected"] > 0 and stats["drawn"] == 30 + stats["rejected"]
    assert not {im.tobytes() for im in images} & {r.tobytes() for r in real}
    assert stats["max_kept_correlation"] <= 0.9
    again, _, _ = sample_checked(Copier(real), 30, real, seed=1, max_correlation=0.9, batch=7)
    assert np.array_equal(images, again)  # seeded
    with pytest.raises(FingerprintError, match="keeps reproducing real images"):
        sample_checked(Copier(real), 30, real, seed=1, max_correlation=-1.0)
    assert sources is None  # Copier does not report its sources


class SourcedCopier(Copier):
    """Copier that reports each sample's source: the copied image, else a training image chosen per sample."""

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        out = rng.integers(0, 256, (n, *self.real.shape[1:]), dtype=np.uint8)
        self.last_sources = rng.integers(0, len(self.real), n)
        copy = rng.random(n) < 1 / 3
        out[copy] = self.real[self.last_sources[copy]]
        return out


def test_kept_samples_keep_their_sources_and_traceability_counts_them():
    real = np.random.default_rng(0).integers(0, 256, (5, 8, 8), dtype=np.uint8)
    images, stats, sources = sample_checked(SourcedCopier(real), 30, real, seed=1, max_correlation=0.9, batch=7)
    assert stats["rejected"] > 0 and sources.shape == (30,)
    again = SourcedCopier(real)  # replay the draws: the kept samples' sources are those of the kept draws
    rng, kept = np.random.default_rng([1, 0x5A3]), []
    while len(kept) < 30:
        imgs = again.draw(min(7, 30 - len(kept)), rng)
        kept += [s for im, s in zip(imgs, again.last_sources) if not any((im == r).all() for r in real)]
    assert sources.tolist() == kept[:30]
    used = {"dev": np.arange(3), "test": np.array([3, 4])}
    t = traceability({"dev": np.array([0, 0, 3]), "test": np.array([4])}, used)
    assert t["dev"] == {"traced_used": 0.3333, "auc_traced_only": 0.6667, "samples_per_traced_used": 2.0}
    assert t["test"]["traced_used"] == 0.5 and t["test"]["auc_traced_only"] == 0.75
    assert traceability({"dev": None, "test": np.array([1])}, {"dev": np.arange(1), "test": np.arange(2)}) is None
