"""Hierarchical clustering of embeddings: do used and not-used images separate, and a cluster scorer.

The seed's run 2 clustered ImageNet features of used + not-used + generated
images with Ward linkage, and used and not-used did not separate (its
reported numbers are in docs/design-notes.md). Here the same analysis runs over `fingerprint embed` features:
scipy linkage (ward, average or complete; euclidean or cosine distances),
cophenetic correlation, silhouette, adjusted Rand index and NMI of the cut
against used / not used (scikit-learn), a per-cluster composition table and a
truncated dendrogram (`fingerprint.analysis.cluster_outputs`). The cluster scorer gives a real image the share of
generated images in its cluster at the cut: if the generator memorised its
training images, its outputs gather around them. Its score file goes through
the same evaluate path as every other scorer. `run_cluster(ClusterConfig)` is
the stage entry.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from fingerprint.analysis.cluster_outputs import fmt, write_outputs
from fingerprint.analysis.clustering import (
    ClusterConfig,
    cluster_split,
)
from fingerprint.core.config import require
from fingerprint.core.errors import FingerprintError
from fingerprint.core.locks import locks_folder
from fingerprint.core.logs import JsonlLogger
from fingerprint.core.vocab import label_code
from fingerprint.embedding.features import Features
from fingerprint.evaluation.metrics import apply_threshold, calibrate_threshold, evaluate, on_scale

log = logging.getLogger(__name__)


@locks_folder(lambda cfg: cfg.out, "fingerprint cluster")
def run_cluster(cfg: ClusterConfig) -> dict:
    """Cluster the dev (and test) features from files; write cluster/ and scores/cluster.csv into `cfg.out`."""
    require(cfg, "dev", "out")
    t0 = time.perf_counter()
    dev = Features.load(cfg.dev, fmaps=False)
    test = Features.load(cfg.test, fmaps=False) if cfg.test else None
    result = analyse(dev, test, cfg, out_dir=cfg.out, force=cfg.force)
    points = sum(result[s]["metrics"]["n_points"] for s in ("dev", "test") if s in result)
    JsonlLogger(Path(cfg.out) / "log.jsonl").log(
        stage="cluster", seconds=round(time.perf_counter() - t0, 3), points=points
    )
    return result


def analyse(
    dev: Any,
    test: Any | None = None,
    cfg: ClusterConfig | None = None,
    *,
    out_dir: str | Path | None = None,
    force: bool = False,
) -> dict:
    """Cluster `dev` (and `test`), measure the separation, and score test's real images with the cluster scorer.

    `dev`/`test` are `fingerprint.embedding.embed.Features`. The scorer's threshold is
    calibrated on dev (where used and not-used labels exist), else it is the
    generated share of all clustered dev points ("above average"). With
    `out_dir` (a run folder) it writes `scores/cluster.csv` (test) and
    `cluster/` with `cluster.json` (the returned dict), `summary.md`,
    `dendrogram.png` (dev), `dendrogram_test.png` and `assignments_<split>.csv`.
    """
    cfg = cfg or ClusterConfig()
    out_dir = Path(out_dir) if out_dir is not None else None
    if out_dir is not None:
        existing = [p for p in (out_dir / "cluster", out_dir / "scores" / "cluster.csv") if p.exists()]
        if existing and not force:
            raise FingerprintError(f"{existing[0]}: already exists (use cluster.force to replace it)")
    splits = {"dev": cluster_split(dev, cfg, name="dev")}
    if test is not None:
        splits["test"] = cluster_split(test, cfg, name="test")
    result: dict[str, Any] = {"stage": "cluster", "config": dataclasses.asdict(cfg)}
    for name, c in splits.items():
        result[name] = {
            "metrics": c.metrics,
            "composition": c.composition,
            "cut_height": c.cut_height,
            "n_generated_total": c.n_generated_total,
        }
        m = c.metrics
        log.info(
            "%s: cophenetic %.3f, silhouette %s, ARI(used) %s, NMI(used) %s",
            name,
            m["cophenetic_correlation"],
            fmt(m["silhouette"]),
            fmt(m["ari_used"]),
            fmt(m["nmi_used"]),
        )

    test_scores = None
    if not cfg.real_only:
        dkeys, dscores = splits["dev"].real_scores()
        dlabels = splits["dev"].labels[splits["dev"].roles == "real"]
        y = np.array([label_code(v) for v in dlabels])
        lab = y >= 0
        scorer: dict[str, Any] = {"name": "cluster"}
        scale = "raw"
        if lab.any() and len(np.unique(y[lab])) == 2:
            scale = cfg.threshold_scale
            dz = on_scale(dscores[lab], scale)
            scorer["threshold"] = float(calibrate_threshold(y[lab], dz, rule=cfg.threshold_rule, seed=cfg.seed))
            scorer["rule"] = cfg.threshold_rule
            scorer["dev"] = evaluate(
                y[lab], dscores[lab], (dz >= scorer["threshold"]).astype(int), n_boot=cfg.n_boot, seed=cfg.seed
            )
        else:
            scorer["threshold"] = float(np.mean(splits["dev"].roles == "generated"))
            scorer["rule"] = "above_average_generated_share"
        scorer["scale"] = scale
        if "test" in splits:
            tkeys, tscores = splits["test"].real_scores()
            tpred = apply_threshold(tscores, scorer["threshold"], scale)[0]
            test_scores = (tkeys, tscores, tpred)
            scorer["test"] = {"n": int(len(tkeys)), "n_used": int(tpred.sum())}
        result["scorer"] = scorer

    if out_dir is not None:
        write_outputs(out_dir, result, splits, test_scores, cfg)
    return result
