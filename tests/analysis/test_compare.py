"""The compare stage: CV finds a planted signal and not noise, outputs are complete and reproducible, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fingerprint.analysis import comparators, compare, compare_features
from fingerprint.analysis.compare import CompareConfig
from fingerprint.analysis.compare_features import SplitData
from fingerprint.cli import compare as cli_compare
from fingerprint.core.errors import FingerprintError
from fingerprint.embedding.features import Features
from fingerprint.evaluation.runfile import validate
from fingerprint.evaluation.scorefiles import read_scores

FAST = ("logreg", "svm_rbf", "knn")


def make_features(*, n_real=60, n_gen=40, dim=16, signal=True, seed=0, prefix="") -> Features:
    """Real images half used / half not used; with `signal`, generated images are noisy copies of used ones."""
    rng = np.random.default_rng(seed)
    y = np.arange(n_real) % 2
    real = rng.normal(size=(n_real, dim))
    if signal:
        src = real[y == 1][rng.integers(0, int(y.sum()), size=n_gen)]
        gen = src + 0.35 * rng.normal(size=(n_gen, dim))
    else:
        gen = rng.normal(size=(n_gen, dim))
    emb = np.concatenate([real, gen])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    keys = [f"{prefix}{'used' if v else 'not_used'}_{i:04d}" for i, v in enumerate(y)] + [
        f"{prefix}generated_{i:05d}" for i in range(n_gen)
    ]
    roles = ["real"] * n_real + ["generated"] * n_gen
    labels = ["used" if v else "not_used" for v in y] + ["unknown"] * n_gen
    order = np.argsort(keys)
    return Features(
        np.array(keys)[order], np.array(roles)[order], np.array(labels)[order], emb[order].astype(np.float32)
    )


def test_cv_finds_planted_signal():
    cfg = CompareConfig(
        features=("embedding", "profile"), comparators=FAST + ("hist_gb",), folds=2, repeats=2, top_k=4, n_boot=40
    )
    res = compare.run_comparators(make_features(), None, cfg)
    for name in ("cmp_logreg", "cmp_svm_rbf", "cmp_knn", "cmp_hist_gb"):
        assert res["cv"][name]["roc_auc"]["value"] > 0.75, (name, res["cv"][name]["roc_auc"])
    assert res["ranking"][0] == res["best"]
    aucs = [res["cv"][n]["roc_auc"]["value"] for n in res["ranking"]]
    assert aucs == sorted(aucs, reverse=True)
    assert res["n_dev"] == 60 and res["n_dev_pos"] == 30
    assert res["columns"][:16] == [f"emb_{i}" for i in range(16)] and res["columns"][16:] == [
        f"profile_{i}" for i in range(4)
    ]


def test_cv_on_noise_stays_at_chance():
    cfg = CompareConfig(features=("embedding", "profile"), folds=2, repeats=2, top_k=4, n_boot=40)
    res = compare.run_comparators(make_features(n_real=100, signal=False, seed=1), None, cfg)
    assert set(res["cv"]) == {f"cmp_{c}" for c in comparators.COMPARATORS}
    for name, d in res["cv"].items():
        auc = d["roc_auc"]
        assert auc["value"] < 0.65 or auc["ci_low"] <= 0.5 <= auc["ci_high"], (name, auc)
    assert np.mean([d["roc_auc"]["value"] for d in res["cv"].values()]) < 0.6


def test_outputs_are_complete_reproducible_and_refused_without_force(tmp_path):
    dev, test = make_features(), make_features(n_real=20, seed=1, prefix="t")
    cfg = CompareConfig(
        features=("embedding", "profile"), comparators=("logreg", "knn"), folds=2, repeats=2, top_k=4, n_boot=20, seed=3
    )
    res = compare.run_comparators(dev, test, cfg, out_dir=tmp_path)
    test_real = sorted(test.select(role="real").keys.tolist())
    for name in ("cmp_logreg", "cmp_knn"):
        table = read_scores(tmp_path / "scores" / f"{name}.csv")
        assert sorted(table.keys) == test_real
        thr = res["thresholds"][name]
        side = json.loads((tmp_path / "scores" / f"{name}.json").read_text())
        assert side["threshold_on_scale"] == thr and side["rule"] == "kappa" and side["threshold_scale"] == "robust"
        assert np.array_equal(table.labels, (table.scores >= side["threshold"]).astype(int))
        pipe, meta = comparators.load_comparator(tmp_path / "compare" / "models" / f"{name}{comparators.MODEL_SUFFIX}")
        fm = compare_features.build_features(SplitData(test), cfg.features, top_k=cfg.top_k)
        order = np.argsort(fm.keys)
        np.testing.assert_allclose(comparators.decision_scores(pipe, fm.X)[order], table.scores[np.argsort(table.keys)])
        assert meta["threshold"] == thr
    assert validate(tmp_path / "compare" / "run.csv", ids=test_real) == []
    saved = json.loads((tmp_path / "compare" / "cv.json").read_text())
    assert saved["best"] == res["best"] and saved["ranking"] == res["ranking"]
    assert "roc_auc" in (tmp_path / "compare" / "ranking.md").read_text()

    with pytest.raises(FingerprintError, match="already exists"):
        compare.run_comparators(dev, test, cfg, out_dir=tmp_path)
    first = (tmp_path / "scores" / "cmp_logreg.csv").read_bytes()
    again = compare.run_comparators(
        dev, test, CompareConfig(**{**cfg.__dict__, "comparators": ("logreg",)}), out_dir=tmp_path, force=True
    )
    assert (tmp_path / "scores" / "cmp_logreg.csv").read_bytes() == first
    assert again["cv"]["cmp_logreg"] == res["cv"]["cmp_logreg"]
    assert not (tmp_path / "scores" / "cmp_knn.csv").exists()  # stale output of the earlier run removed


def test_seed_pairs_mode_votes_per_real_image(tmp_path):
    plan = comparators.pair_plan(6, 10, 30, seed=0)
    assert plan.shape == (6, 5) and all(len(set(r)) == 5 for r in plan)
    assert np.array_equal(plan, comparators.pair_plan(6, 10, 30, seed=0))

    # the real half of each pair carries the label: the pair SVM must find it
    dev, test = make_features(), make_features(n_real=20, seed=1, prefix="t")
    for f in (dev, test):
        real = f.roles == "real"
        f.embeddings[real, 0] += np.where(f.labels[real] == "used", 1.0, -1.0)
    cfg = CompareConfig(mode="seed-pairs", folds=2, repeats=1, max_pairs=600, n_boot=20)
    res = compare.run_comparators(dev, test, cfg, out_dir=tmp_path)
    assert list(res["cv"]) == ["cmp_pairs_svm_rbf"]
    assert res["cv"]["cmp_pairs_svm_rbf"]["roc_auc"]["value"] > 0.75
    assert res["thresholds"]["cmp_pairs_svm_rbf"] == 0.5
    table = read_scores(tmp_path / "scores" / "cmp_pairs_svm_rbf.csv")
    assert len(table.keys) == 20 and ((table.scores >= 0) & (table.scores <= 1)).all()


def test_bad_options_give_clear_errors():
    feats = make_features(n_real=6, n_gen=3)
    with pytest.raises(FingerprintError, match="compare.features unknown feature set"):
        CompareConfig(features=("pixels",))
    with pytest.raises(FingerprintError, match="compare.comparators unknown comparator"):
        CompareConfig(comparators=("xgboost",))
    assert CompareConfig(features=("all",), comparators=("all",)).features == compare_features.FEATURE_SETS
    with pytest.raises(FingerprintError, match="need >= 5 of each"):
        compare.run_comparators(feats, None, CompareConfig(features=("embedding",), comparators=("logreg",)))
    with pytest.raises(FingerprintError, match="lower compare.top_k"):
        compare.run_comparators(feats, None, CompareConfig(top_k=16, folds=2))


def test_cli_end_to_end(tmp_path, capsys):
    make_features().save(tmp_path / "dev.npz")
    make_features(n_real=20, seed=1, prefix="t").save(tmp_path / "test.npz")
    argv = [
        "--dev",
        str(tmp_path / "dev.npz"),
        "--test",
        str(tmp_path / "test.npz"),
        "--out",
        str(tmp_path / "run"),
        "--comparators",
        "logreg,svm_linear",
        "--folds",
        "2",
        "--repeats",
        "2",
        "--top-k",
        "4",
        "--n-boot",
        "20",
        "--seed",
        "1",
    ]
    assert cli_compare.main(argv) == 0
    out = capsys.readouterr().out
    assert "cmp_logreg" in out and "best:" in out
    assert (tmp_path / "run" / "scores" / "cmp_svm_linear.csv").is_file()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["stage"] == "compare" and log[-1]["seconds"] > 0
    assert cli_compare.main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli_compare.main(argv[:6] + ["--features", "relation"]) == 2
    assert "--dev-scores" in capsys.readouterr().err
