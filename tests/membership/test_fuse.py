"""The fusion stage: fitted on dev labels only, out of fold, sign-constrained; the fused scorer applies it."""

import json

import numpy as np
import pytest

from fingerprint.core.config import ConfigError
from fingerprint.core.errors import FingerprintError
from fingerprint.embedding.features import Features
from fingerprint.evaluation.metrics import roc_auc
from fingerprint.membership.fuse import FuseConfig, NonNegLR, fused_scores, group_columns, load_fusion, run_fuse

SPACES = ("px64", "pn32")


def _profile(path, y, rng, signal=1.0, split="dev"):
    """A profile file whose px64 columns carry `signal` about y and whose pn32 columns are noise."""
    n = len(y)
    cols = {}
    for name in group_columns("px64") + group_columns("pn32"):
        informative = name.startswith("px64") and name.endswith(("_1", "_3"))
        cols[name] = rng.normal(size=n) + (signal * y if informative else 0.0)
    keys = [f"{'used' if v else 'not_used'}_{i:04d}" for i, v in enumerate(y)]
    labels = ["used" if v else "not_used" for v in y] if split == "dev" else ["unknown"] * n
    meta = {"kind": "profile", "columns": list(cols), "split": split, "spaces": list(SPACES)}
    Features(keys, ["real"] * n, labels, np.column_stack(list(cols.values())), None, meta).save(path)
    return keys


def _cfg(tmp_path, **kw):
    return FuseConfig(dev=tmp_path / "dev.npz", out=tmp_path / "fusion.json", spaces=SPACES, repeats=2, **kw)


def test_fit_is_out_of_fold_and_scores_apply(tmp_path):
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(60), np.zeros(60)].astype(int)
    _profile(tmp_path / "dev.npz", y, rng, signal=1.2)
    run_fuse(_cfg(tmp_path))
    model = load_fusion(tmp_path / "fusion.json")
    assert model["groups"][0] == "px64" and model["dev"]["oof_auc"] > 0.75
    assert all(w >= 0 for w in model["weights"])
    dev = fused_scores(model, tmp_path / "dev.npz")  # the dev images get their out-of-fold scores
    assert np.allclose(dev.score, model["dev"]["oof_scores"]) and "in_sample" in dev.components
    assert roc_auc(y, dev.components["in_sample"]) >= roc_auc(y, dev.score) - 1e-9
    yt = np.r_[np.ones(50), np.zeros(50)].astype(int)
    _profile(tmp_path / "test.npz", yt, rng, signal=1.2, split="test")
    test = fused_scores(model, tmp_path / "test.npz")
    assert not test.components and roc_auc(yt, test.score) > 0.75
    cal = model["calibration"]
    assert cal["rule"] == "kappa" and cal["scale"] == "robust" and cal["on"] == "out-of-fold dev scores"


def test_shuffled_labels_give_chance_out_of_fold(tmp_path):
    rng = np.random.default_rng(3)
    y = rng.permutation(np.r_[np.ones(80), np.zeros(80)].astype(int))
    _profile(tmp_path / "dev.npz", y, rng, signal=0.0)  # every column is noise
    run_fuse(_cfg(tmp_path, nonneg=False, C=(100.0,), min_gain=0.0))
    model = json.loads((tmp_path / "fusion.json").read_text())
    in_sample = fused_scores(model, tmp_path / "dev.npz").components["in_sample"]
    assert abs(model["dev"]["oof_auc"] - 0.5) < 0.12
    assert roc_auc(y, in_sample) > model["dev"]["oof_auc"] + 0.05  # the fit itself does see its labels


def test_sign_constraint_never_uses_a_feature_against_its_meaning():
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(100), np.zeros(100)]
    X = np.column_stack([y + rng.normal(size=200), -y + rng.normal(size=200)])  # the second is anti-oriented
    w = NonNegLR(1.0).fit(X, y).coef_[0]
    assert w[0] > 0.3 and w[1] == 0.0


def test_calibration_off_and_fixed_rule(tmp_path):
    rng = np.random.default_rng(2)
    y = np.r_[np.ones(40), np.zeros(40)].astype(int)
    _profile(tmp_path / "dev.npz", y, rng)
    run_fuse(_cfg(tmp_path, calibrated=False))
    assert not any(":cal_" in c for c in load_fusion(tmp_path / "fusion.json")["columns"])
    run_fuse(_cfg(tmp_path, fixed="px64:ngen_1", force=True))
    model = load_fusion(tmp_path / "fusion.json")
    assert model["columns"] == ["px64:ngen_1"] and model["C"] is None


def test_errors_name_fields_and_files(tmp_path):
    with pytest.raises(ConfigError, match=r"fuse\.anchor must be among fuse\.spaces"):
        FuseConfig(dev=tmp_path / "d.npz", out=tmp_path / "f.json", spaces=("pn32",))
    with pytest.raises(ConfigError, match=r"fuse\.max_groups must be >= 1"):
        FuseConfig(dev=tmp_path / "d.npz", out=tmp_path / "f.json", max_groups=0)
    rng = np.random.default_rng(0)
    _profile(tmp_path / "dev.npz", np.r_[np.ones(20), np.zeros(20)].astype(int), rng)
    with pytest.raises(ConfigError, match=r"fuse\.spaces k32x: the dev profile has no column"):
        run_fuse(FuseConfig(dev=tmp_path / "dev.npz", out=tmp_path / "f.json", spaces=("px64", "k32x")))
    (tmp_path / "f.json").write_text("{}")
    with pytest.raises(FingerprintError, match="not a fusion model"):
        load_fusion(tmp_path / "f.json")
