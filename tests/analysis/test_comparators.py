"""Comparator models: scikit-learn pipelines, the seed's pair plan, and models saved with skops behind a sha256."""

import pickle

import numpy as np
import pytest
import skops.io as sio

from fingerprint.analysis import comparators
from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import sha256_file, write_json


def test_tampered_or_unverified_model_is_refused(tmp_path):
    pipe = comparators.make_model("logreg", seed=0, n_train=20)
    X = np.random.default_rng(0).normal(size=(20, 3))
    pipe.fit(X, np.arange(20) % 2)
    path = comparators.save_comparator(pipe, tmp_path / "m.skops", {"name": "cmp_logreg"})
    loaded, meta = comparators.load_comparator(path)
    np.testing.assert_allclose(loaded.predict_proba(X), pipe.predict_proba(X))
    assert meta["name"] == "cmp_logreg" and len(meta["sha256"]) == 64

    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(FingerprintError, match="does not match"):
        comparators.load_comparator(path)
    (tmp_path / "m.skops.json").unlink()
    with pytest.raises(FingerprintError, match="refusing"):
        comparators.load_comparator(path)


def test_every_comparator_fits_ranks_and_round_trips_through_skops(tmp_path):
    """Each comparator's fitted parts load with the fixed trusted list alone, and score as before."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 3)), np.arange(40) % 2
    X[:, 0] += y * 2.0
    for name in comparators.COMPARATORS:
        pipe = comparators.make_model(name, seed=0, n_train=40).fit(X, y)
        s = comparators.decision_scores(pipe, X)
        assert s.shape == (40,) and s[y == 1].mean() > s[y == 0].mean(), name
        path = comparators.save_comparator(pipe, tmp_path / f"{name}{comparators.MODEL_SUFFIX}", {"name": name})
        assert set(sio.get_untrusted_types(file=path)) <= set(comparators.TRUSTED), name
        loaded, _ = comparators.load_comparator(path)
        np.testing.assert_allclose(comparators.decision_scores(loaded, X), s)
    with pytest.raises(FingerprintError, match="unknown comparator"):
        comparators.make_model("xgboost", seed=0, n_train=4)
    cv = {
        "a": {"roc_auc": {"value": 0.6}, "f1": {"value": 0.5}},
        "b": {"roc_auc": {"value": 0.7}, "f1": {"value": 0.1}},
    }
    assert comparators.rank(cv) == ["b", "a"] and comparators.rank(cv, "f1") == ["a", "b"]
    plan = comparators.pair_plan(6, 10, 30, seed=0)
    assert plan.shape == (6, 5) and all(len(set(r)) == 5 for r in plan)


class Forged:
    """Stands for any type a forged model file could ask skops to build."""

    def __init__(self):
        self.payload = "x"


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _vouch(path, meta=None):
    """A forged sidecar: the right sha256 for whatever the file holds."""
    write_json(path.with_name(path.name + ".json"), {"name": "cmp_logreg", "sha256": sha256_file(path), **(meta or {})})


def test_a_forged_model_file_is_refused_whatever_its_sidecar_says(tmp_path):
    forged = tmp_path / "forged.skops"
    sio.dump({"model": Forged()}, forged)
    _vouch(forged)
    with pytest.raises(FingerprintError, match=r"refusing to load untrusted types .*Forged"):
        comparators.load_comparator(forged)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.skops"
    evil.write_bytes(pickle.dumps(Exploit(marker)))  # the old joblib/pickle format, with a payload
    _vouch(evil)
    with pytest.raises(FingerprintError, match="not a readable skops file"):
        comparators.load_comparator(evil)
    assert not marker.exists()
