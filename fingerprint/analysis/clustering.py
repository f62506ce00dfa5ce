"""Hierarchical clustering of feature rows: the linkage, its metrics and the composition of each cluster.

The `cluster` stage (`fingerprint.analysis.cluster`) runs it and writes its outputs (`cluster_outputs`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.cluster.hierarchy import cophenet, fcluster, linkage
from scipy.spatial.distance import pdist, squareform
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

from fingerprint.core.config import check_fields, fail, option
from fingerprint.core.errors import FingerprintError
from fingerprint.core.vocab import LABEL_CODES, SCORE_SCALES, THRESHOLD_RULES, label_code

log = logging.getLogger(__name__)

LINKAGES = ("ward", "average", "complete")
DISTANCES = ("euclidean", "cosine")


@dataclass(kw_only=True)
class ClusterConfig:
    """Options of the cluster stage (`fingerprint cluster`); the paths are needed by `run_cluster` only."""

    SECTION = "cluster"

    dev: Path | None = option(None, required=True, help="features .npz of the development split (fingerprint embed)")
    test: Path | None = option(None, help="features .npz of the split to score with the cluster scorer")
    out: Path | None = option(None, required=True, help="run folder: writes cluster/ and scores/cluster.csv")
    method: str = option("ward", choices=LINKAGES, help="linkage (ward needs metric euclidean)")
    metric: str = option("euclidean", choices=DISTANCES, help="distance between embeddings")
    n_clusters: int = option(8, min=2, help="where to cut the tree (metrics and the cluster scorer)")
    real_only: bool = option(False, help="cluster the real images only (no cluster scorer)")
    max_generated: int = option(
        3000, min=1, help="cluster at most this many generated images per split (random subset; memory grows as n^2)"
    )
    dendrogram_leaves: int = option(30, min=2, help="leaves shown in the truncated dendrogram")
    threshold_rule: str = option(THRESHOLD_RULES[0], choices=THRESHOLD_RULES, help="threshold rule on dev scores")
    threshold_scale: str = option(
        SCORE_SCALES[0], choices=SCORE_SCALES, help="scale of the threshold (robust/rank: standardised per split)"
    )
    n_boot: int = option(1000, min=0, help="bootstrap resamples for the dev intervals")
    seed: int = option(0, help="seeds the subsample of generated images and the bootstrap")
    force: bool = option(False, help="replace existing cluster outputs")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.method == "ward" and self.metric != "euclidean":
            raise fail(
                self,
                "method",
                "ward: ward linkage is defined for euclidean distances only "
                "(use cluster.metric euclidean, or cluster.method average/complete with cosine)",
            )


@dataclass
class Clustering:
    """One split's clustering: the clustered points, the linkage, the cut and its metrics."""

    keys: np.ndarray
    roles: np.ndarray
    labels: np.ndarray
    Z: np.ndarray
    assign: np.ndarray  # cluster id (1..n_clusters) per point
    cut_height: float
    metrics: dict[str, Any]
    composition: list[dict[str, Any]]
    n_generated_total: int

    def real_scores(self) -> tuple[np.ndarray, np.ndarray]:
        """Cluster scorer: (keys, share of generated images in each real image's cluster)."""
        gen = self.roles == "generated"
        share = {c: float(gen[self.assign == c].mean()) for c in np.unique(self.assign)}
        real = self.roles == "real"
        return self.keys[real], np.array([share[c] for c in self.assign[real]], dtype=np.float64)


def linkage_matrix(X: np.ndarray, method: str = "ward", metric: str = "euclidean") -> tuple[np.ndarray, np.ndarray]:
    """(scipy linkage matrix, condensed distances) of the rows of X."""
    ClusterConfig(method=method, metric=metric)
    if len(X) < 3:
        raise FingerprintError(f"clustering needs at least 3 points (got {len(X)})")
    d = pdist(np.asarray(X, dtype=np.float64), metric=metric)
    if not np.all(np.isfinite(d)):
        raise FingerprintError("clustering: non-finite distances (zero-length embedding with cosine distance?)")
    return linkage(d, method=method), d


def cluster_metrics(
    d: np.ndarray, Z: np.ndarray, assign: np.ndarray, roles: np.ndarray, labels: np.ndarray
) -> dict[str, Any]:
    """Cophenetic correlation, silhouette of the cut, ARI / NMI of the cut against used/not-used and real/generated."""
    n_found = len(np.unique(assign))
    out: dict[str, Any] = {"cophenetic_correlation": float(cophenet(Z, d)[0]), "n_clusters_found": int(n_found)}
    out["silhouette"] = (
        float(silhouette_score(squareform(d), assign, metric="precomputed"))
        if 2 <= n_found <= len(assign) - 1
        else None
    )
    y = np.array([label_code(v) for v in labels])
    lab = (roles == "real") & (y >= 0)
    both = lab.any() and len(np.unique(y[lab])) == 2
    out["n_labelled_real"] = int(lab.sum())
    out["ari_used"] = float(adjusted_rand_score(y[lab], assign[lab])) if both else None
    out["nmi_used"] = float(normalized_mutual_info_score(y[lab], assign[lab])) if both else None
    has_gen = (roles == "generated").any() and (roles == "real").any()
    out["ari_role"] = float(adjusted_rand_score(roles, assign)) if has_gen else None
    out["nmi_role"] = float(normalized_mutual_info_score(roles, assign)) if has_gen else None
    return out


def composition(assign: np.ndarray, roles: np.ndarray, labels: np.ndarray) -> list[dict[str, Any]]:
    """Per cluster: size, generated / used / not-used / unlabelled real counts, and the generated share."""
    rows = []
    for c in np.unique(assign):
        m = assign == c
        real = m & (roles == "real")
        n_gen = int((m & (roles == "generated")).sum())
        rows.append(
            {
                "cluster": int(c),
                "n": int(m.sum()),
                "generated": n_gen,
                "used": int((real & (labels == "used")).sum()),
                "not_used": int((real & (labels == "not_used")).sum()),
                "real_unknown": int((real & ~np.isin(labels, tuple(LABEL_CODES))).sum()),
                "generated_share": round(n_gen / int(m.sum()), 4),
            }
        )
    return rows


def _points(features: Any, cfg: ClusterConfig, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    keys = np.asarray(features.keys).astype(str)
    roles = np.asarray(features.roles).astype(str)
    labels = np.asarray(features.labels).astype(str)
    emb = np.asarray(features.embeddings, dtype=np.float64)
    real = np.flatnonzero(roles == "real")
    gen = np.flatnonzero(roles == "generated")
    if len(real) == 0:
        raise FingerprintError(f"{name}: no real images in the features")
    take = real
    if not cfg.real_only:
        if len(gen) == 0:
            raise FingerprintError(f"{name}: no generated images to cluster with (use cluster.real_only)")
        if len(gen) > cfg.max_generated:
            gen = np.sort(np.random.default_rng(cfg.seed).choice(gen, size=cfg.max_generated, replace=False))
            log.info("%s: clustering a random %d of the generated images (cluster.max_generated)", name, len(gen))
        take = np.sort(np.concatenate([real, gen]))
    return keys[take], roles[take], labels[take], emb[take], int((roles == "generated").sum())


def cluster_split(features: Any, cfg: ClusterConfig, *, name: str = "split") -> Clustering:
    """Cluster one split's real images (with its generated ones, at most `max_generated`); cut into `n_clusters`."""
    keys, roles, labels, X, n_gen_total = _points(features, cfg, name)
    if cfg.n_clusters >= len(X):
        raise fail(cfg, "n_clusters", f"{cfg.n_clusters} must be below the {len(X)} clustered points of {name}")
    Z, d = linkage_matrix(X, cfg.method, cfg.metric)
    assign = fcluster(Z, t=cfg.n_clusters, criterion="maxclust")
    # between the last merge kept and the first one undone by cutting into k clusters
    cut = float((Z[-cfg.n_clusters, 2] + Z[-cfg.n_clusters + 1, 2]) / 2)
    metrics = cluster_metrics(d, Z, assign, roles, labels)
    metrics.update(
        {
            "n_points": int(len(X)),
            "n_real": int((roles == "real").sum()),
            "n_generated": int((roles == "generated").sum()),
        }
    )
    return Clustering(keys, roles, labels, Z, assign, cut, metrics, composition(assign, roles, labels), n_gen_total)
