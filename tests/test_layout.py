"""Writing a benchmark: synthetic samples are never near-copies of real images."""

import numpy as np
import pytest

from fingerprint.benchdata.layout import sample_checked
from fingerprint.utils import FingerprintError


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
    images, stats = sample_checked(Copier(real), 30, real, seed=1, max_correlation=0.9, batch=7)
    assert images.shape == (30, 8, 8) and stats["rejected"] > 0 and stats["drawn"] == 30 + stats["rejected"]
    assert not {im.tobytes() for im in images} & {r.tobytes() for r in real}
    assert stats["max_kept_correlation"] <= 0.9
    again, _ = sample_checked(Copier(real), 30, real, seed=1, max_correlation=0.9, batch=7)
    assert np.array_equal(images, again)  # seeded
    with pytest.raises(FingerprintError, match="keeps reproducing real images"):
        sample_checked(Copier(real), 30, real, seed=1, max_correlation=-1.0)
