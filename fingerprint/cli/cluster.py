"""Hierarchical clustering of embeddings (separation metrics, dendrogram) and the cluster scorer.

Writes OUT/cluster/ (cluster.json, summary.md, dendrogram.png for dev,
dendrogram_test.png, assignments_<split>.csv) and, with --test,
OUT/scores/cluster.csv: each real test image scored by the share of generated
images in its cluster, thresholded at a cut calibrated on dev.
"""

from __future__ import annotations

from pathlib import Path

from fingerprint.analysis.cluster import ClusterConfig, run_cluster
from fingerprint.cli.options import command

NAME = "cluster"
SEPARATION = ("silhouette", "ari_used", "nmi_used", "ari_role")


def run(cfg: ClusterConfig) -> int:
    result = run_cluster(cfg)
    for split in ("dev", "test"):
        if split in result:
            m = result[split]["metrics"]
            sep = "; ".join(f"{k} {'-' if m[k] is None else format(m[k], '.3f')}" for k in SEPARATION)
            counts = f"{m['n_real']} real + {m['n_generated']} generated"
            print(f"{split}: {counts}; cophenetic {m['cophenetic_correlation']:.3f}; {sep}")
    sc = result.get("scorer")
    if sc and "dev" in sc:
        auc = sc["dev"]["roc_auc"]["value"]
        print(f"cluster scorer on dev: ROC-AUC {auc:.3f}, threshold {sc['threshold']:.4f} ({sc['rule']})")
    print(f"wrote {Path(cfg.out) / 'cluster'}" + (" and scores/cluster.csv" if sc and "test" in sc else ""))
    return 0


main = command(NAME, ClusterConfig, run, __doc__)
