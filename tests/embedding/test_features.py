"""Keyed features files: round trip without pickle, selection by role/label, merging by key, clear errors."""

import numpy as np
import pytest

from fingerprint.core.errors import FingerprintError
from fingerprint.embedding.features import Features, merge


def test_features_roundtrip_select_merge(tmp_path):
    f = Features(
        ["b", "a"], ["real", "generated"], ["used", "unknown"], np.eye(2, 3), np.ones((2, 4, 2, 2)), {"image_size": 32}
    )
    path = f.save(tmp_path / "f.npz")
    with np.load(path, allow_pickle=False) as z:
        assert set(z.files) == {"keys", "roles", "labels", "embeddings", "fmaps", "meta"}
    g = Features.load(path)
    assert g.keys.tolist() == ["b", "a"] and g.fmaps.dtype == np.float16 and g.meta == {"image_size": 32}
    assert Features.load(path, fmaps=False).fmaps is None
    assert g.select(role="real").keys.tolist() == ["b"]
    assert g.select(label=("used", "unknown")).keys.tolist() == ["b", "a"]
    assert g.rows_of(["a"]).tolist() == [1]
    merged, dupes = merge([g, g.take([1])])
    assert merged.keys.tolist() == ["a", "b"] and dupes == 1
    with pytest.raises(FingerprintError, match="not in the features"):
        g.rows_of(["zz"])
    with pytest.raises(FingerprintError, match="keys"):
        Features(["a"], ["real", "real"], ["used"], np.zeros((1, 2)))
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(FingerprintError, match="cannot read features"):
        Features.load(tmp_path / "bad.npz")
