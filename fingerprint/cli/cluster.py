"""Hierarchical clustering of embeddings (separation metrics, dendrogram) and the cluster scorer.

Writes OUT/cluster/ (cluster.json, summary.md, dendrogram.png for dev,
dendrogram_test.png, assignments_<split>.csv) and, with --test,
OUT/scores/cluster.csv: each real test image scored by the share of generated
images in its cluster, thresholded at a cut calibrated on dev.
"""

from __future__ import annotations

import time
from pathlib import Path

from fingerprint.cli.base import run_command
from fingerprint.utils import JsonlLogger

NAME = "cluster"


def add_arguments(p) -> None:
    from fingerprint.cluster import DISTANCES, LINKAGES

    p.add_argument("--dev", required=True, help="features .npz of the development split (fingerprint embed)")
    p.add_argument("--test", help="features .npz of the split to score with the cluster scorer")
    p.add_argument("--out", required=True, help="run folder: writes cluster/ and scores/cluster.csv")
    p.add_argument("--method", default="ward", choices=LINKAGES, help="linkage (ward needs --metric euclidean)")
    p.add_argument("--metric", default="euclidean", choices=DISTANCES, help="distance between embeddings")
    p.add_argument("--n-clusters", type=int, default=8, help="where to cut the tree (metrics and the cluster scorer)")
    p.add_argument("--real-only", action="store_true", help="cluster the real images only (no cluster scorer)")
    p.add_argument(
        "--max-generated",
        type=int,
        default=3000,
        help="cluster at most this many generated images per split (random subset; linkage memory grows as n^2)",
    )
    p.add_argument("--dendrogram-leaves", type=int, default=30, help="leaves shown in the truncated dendrogram")
    p.add_argument(
        "--threshold-rule", default="max_f1", choices=("max_f1", "youden"), help="threshold rule on dev scores"
    )
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the dev intervals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace existing cluster outputs")


def run(args) -> int:
    from fingerprint.cluster import ClusterConfig, analyse
    from fingerprint.embed import Features

    cfg = ClusterConfig(
        method=args.method,
        metric=args.metric,
        include_generated=not args.real_only,
        n_clusters=args.n_clusters,
        max_generated=args.max_generated,
        dendrogram_leaves=args.dendrogram_leaves,
        threshold_rule=args.threshold_rule,
        n_boot=args.n_boot,
        seed=args.seed,
    )
    cfg.check()
    t0 = time.perf_counter()
    dev = Features.load(args.dev, fmaps=False)
    test = Features.load(args.test, fmaps=False) if args.test else None
    out = Path(args.out)
    result = analyse(dev, test, cfg, out_dir=out, force=args.force)
    for split in ("dev", "test"):
        if split in result:
            m = result[split]["metrics"]
            print(
                f"{split}: {m['n_real']} real + {m['n_generated']} generated; cophenetic {m['cophenetic_correlation']:.3f}; "
                + "; ".join(
                    f"{k} {'-' if m[k] is None else format(m[k], '.3f')}"
                    for k in ("silhouette", "ari_used", "nmi_used", "ari_role")
                )
            )
    sc = result.get("scorer")
    if sc and "dev" in sc:
        print(
            f"cluster scorer on dev: ROC-AUC {sc['dev']['roc_auc']['value']:.3f}, threshold {sc['threshold']:.4f} ({sc['rule']})"
        )
    print(f"wrote {out / 'cluster'}" + (" and scores/cluster.csv" if sc and "test" in sc else ""))
    JsonlLogger(out / "log.jsonl").log(
        stage=NAME,
        seconds=round(time.perf_counter() - t0, 3),
        points=sum(result[s]["metrics"]["n_points"] for s in ("dev", "test") if s in result),
    )
    return 0


def main(argv=None) -> int:
    return run_command(NAME, add_arguments, run, argv, __doc__)
