"""Clustering: metrics equal scikit-learn's and scipy's, the scorer, outputs, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.cluster.hierarchy import cophenet, linkage
from scipy.spatial.distance import pdist
from sklearn.cluster import AgglomerativeClustering
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

from fingerprint.analysis import cluster
from fingerprint.analysis.cluster import ClusterConfig
from fingerprint.cli import cluster as cli_cluster
from fingerprint.core.errors import FingerprintError
from fingerprint.embedding.features import Features
from fingerprint.evaluation.scorefiles import read_scores


def blobs(*, n_used=12, n_not=12, n_gen=24, dim=8, seed=0, prefix="") -> Features:
    """Used images and the generated ones sit in two tight groups; not-used images in a third."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim)) * 3
    used = centres[rng.integers(0, 2, n_used)] + 0.3 * rng.normal(size=(n_used, dim))
    gen = used[rng.integers(0, n_used, n_gen)] + 0.3 * rng.normal(size=(n_gen, dim))
    nused = centres[2] + 0.3 * rng.normal(size=(n_not, dim))
    emb = np.concatenate([used, nused, gen])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    keys = (
        [f"{prefix}used_{i:04d}" for i in range(n_used)]
        + [f"{prefix}not_used_{i:04d}" for i in range(n_not)]
        + [f"{prefix}generated_{i:05d}" for i in range(n_gen)]
    )
    roles = ["real"] * (n_used + n_not) + ["generated"] * n_gen
    labels = ["used"] * n_used + ["not_used"] * n_not + ["unknown"] * n_gen
    order = np.argsort(keys)
    return Features(
        np.array(keys)[order], np.array(roles)[order], np.array(labels)[order], emb[order].astype(np.float32)
    )


@pytest.mark.parametrize("method,metric", [("ward", "euclidean"), ("average", "cosine"), ("complete", "euclidean")])
def test_metrics_equal_sklearn_and_scipy(method, metric):
    feats = blobs(seed=1)
    c = cluster.cluster_split(feats, ClusterConfig(method=method, metric=metric, n_clusters=4))
    X = feats.embeddings.astype(np.float64)  # cluster_split keeps the sorted key order when it takes every point
    assert list(c.keys) == list(feats.keys)
    sk = AgglomerativeClustering(n_clusters=4, linkage=method, metric=metric).fit_predict(X)
    real = feats.roles == "real"
    y = (feats.labels[real] == "used").astype(int)
    m = c.metrics
    assert m["ari_used"] == pytest.approx(adjusted_rand_score(y, sk[real]))
    assert m["nmi_used"] == pytest.approx(normalized_mutual_info_score(y, sk[real]))
    assert m["silhouette"] == pytest.approx(silhouette_score(X, sk, metric=metric))
    assert m["ari_role"] == pytest.approx(adjusted_rand_score(feats.roles, sk))
    d = pdist(X, metric)
    assert m["cophenetic_correlation"] == pytest.approx(cophenet(linkage(d, method), d)[0])
    assert sum(r["n"] for r in c.composition) == len(X) and m["n_clusters_found"] == 4


def test_scorer_is_generated_share_and_finds_used_images():
    feats = blobs(seed=2)
    c = cluster.cluster_split(feats, ClusterConfig(n_clusters=3))
    keys, scores = c.real_scores()
    for k, s in zip(keys, scores):
        members = c.assign == c.assign[list(c.keys).index(k)]
        assert s == pytest.approx(np.mean(c.roles[members] == "generated"))
    used = np.array([k.startswith("used") for k in keys])
    assert scores[used].min() > scores[~used].max()  # generated images gather around the used ones only


def test_analyse_writes_outputs_and_score_file(tmp_path):
    dev, test = blobs(seed=3), blobs(seed=4, prefix="t")
    cfg = ClusterConfig(n_clusters=3, n_boot=50, dendrogram_leaves=10)
    res = cluster.analyse(dev, test, cfg, out_dir=tmp_path)
    assert res["scorer"]["dev"]["roc_auc"]["value"] > 0.9
    table = read_scores(tmp_path / "scores" / "cluster.csv")
    assert sorted(table.keys) == sorted(test.select(role="real").keys.tolist())
    side = json.loads((tmp_path / "scores" / "cluster.json").read_text())
    assert side["threshold_on_scale"] == res["scorer"]["threshold"] and side["threshold_scale"] == "robust"
    assert np.array_equal(table.labels, (table.scores >= side["threshold"]).astype(int))
    for name in (
        "cluster.json",
        "summary.md",
        "dendrogram.png",
        "dendrogram_test.png",
        "assignments_dev.csv",
        "assignments_test.csv",
    ):
        assert (tmp_path / "cluster" / name).stat().st_size > 0
    assert (tmp_path / "cluster" / "dendrogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "cluster" / "cluster.json").read_text())
    assert saved["dev"]["metrics"] == res["dev"]["metrics"]
    assert "| cluster | n |" in (tmp_path / "cluster" / "summary.md").read_text()
    with pytest.raises(FingerprintError, match="already exists"):
        cluster.analyse(dev, test, cfg, out_dir=tmp_path)
    first = (tmp_path / "scores" / "cluster.csv").read_bytes()
    cluster.analyse(dev, test, cfg, out_dir=tmp_path, force=True)
    assert (tmp_path / "scores" / "cluster.csv").read_bytes() == first


def test_max_generated_subsamples_and_real_only():
    feats = blobs(n_gen=40)
    c = cluster.cluster_split(feats, ClusterConfig(n_clusters=3, max_generated=10, seed=5))
    assert c.metrics["n_generated"] == 10 and c.n_generated_total == 40
    c2 = cluster.cluster_split(feats, ClusterConfig(n_clusters=3, max_generated=10, seed=5))
    assert list(c.keys) == list(c2.keys)
    res = cluster.analyse(feats, None, ClusterConfig(n_clusters=3, real_only=True, n_boot=0))
    assert (
        "scorer" not in res and res["dev"]["metrics"]["n_generated"] == 0 and res["dev"]["metrics"]["ari_role"] is None
    )


def test_clear_errors(tmp_path, capsys):
    with pytest.raises(FingerprintError, match="ward linkage is defined for euclidean"):
        ClusterConfig(method="ward", metric="cosine")
    with pytest.raises(FingerprintError, match="must be below"):
        cluster.cluster_split(blobs(n_used=2, n_not=2, n_gen=2), ClusterConfig(n_clusters=8))
    blobs().save(tmp_path / "dev.npz")
    assert (
        cli_cluster.main(["--dev", str(tmp_path / "dev.npz"), "--out", str(tmp_path / "run"), "--metric", "cosine"])
        == 2
    )
    assert "ward linkage" in capsys.readouterr().err


def test_cli(tmp_path, capsys):
    blobs().save(tmp_path / "dev.npz")
    blobs(seed=1, prefix="t").save(tmp_path / "test.npz")
    argv = [
        "--dev",
        str(tmp_path / "dev.npz"),
        "--test",
        str(tmp_path / "test.npz"),
        "--out",
        str(tmp_path / "run"),
        "--method",
        "average",
        "--metric",
        "cosine",
        "--n-clusters",
        "3",
        "--n-boot",
        "20",
        "--seed",
        "2",
    ]
    assert cli_cluster.main(argv) == 0
    out = capsys.readouterr().out
    assert "cophenetic" in out and "cluster scorer on dev" in out
    assert (tmp_path / "run" / "scores" / "cluster.csv").is_file()
    log = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])
    assert log["stage"] == "cluster"
