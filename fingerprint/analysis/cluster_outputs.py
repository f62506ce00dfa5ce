"""What the cluster stage writes: truncated dendrograms, a Markdown summary, assignments and the score file.

The dendrogram is scipy's, truncated to its last merges (truncate_mode
"lastp") with each leaf labelled by its make-up (points, generated, used,
not used) and the scorer's cut drawn dashed. The score file is written
first, then the cluster/ folder in one atomic rename.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from scipy.cluster.hierarchy import dendrogram

from fingerprint.analysis.clustering import ClusterConfig, Clustering
from fingerprint.core.files import atomic_path, write_json, write_text
from fingerprint.evaluation.metrics import apply_threshold
from fingerprint.evaluation.scorefiles import write_scores

matplotlib.use("Agg")  # figures are only ever written to files
log = logging.getLogger(__name__)

#: what each split's clustering reports, in table order
SPLIT_METRICS = ("n_real", "n_generated", "cophenetic_correlation", "silhouette", "ari_used", "nmi_used", "ari_role",
                 "nmi_role")  # fmt: skip
#: the count columns of a composition row, in table order
COMPOSITION = ("cluster", "n", "generated", "used", "not_used", "real_unknown")


def dendrogram_png(clustering: Clustering, path: str | Path, *, leaves: int = 30, title: str = "") -> Path:
    """A dendrogram truncated to its last `leaves` merges (truncate_mode='lastp'), each leaf labelled with its make-up.

    Leaf labels read `n | g G u U n N` (points, generated, used, not used); the
    dashed line is the cut that gives the scorer's clusters.
    """
    n = len(clustering.keys)
    counts = np.zeros((2 * n - 1, 3), dtype=np.int64)
    counts[np.arange(n), 0] = clustering.roles == "generated"
    counts[np.arange(n), 1] = clustering.labels == "used"
    counts[np.arange(n), 2] = (clustering.roles == "real") & (clustering.labels == "not_used")
    for i, (a, b, _, _) in enumerate(clustering.Z):
        counts[n + i] = counts[int(a)] + counts[int(b)]

    def label(i: int) -> str:
        g, u, nu = counts[i]
        if i < n:
            return "gen" if g else ("used" if u else ("not used" if nu else "real ?"))
        total = int(clustering.Z[i - n, 3])
        return f"{total} | g{g} u{u} n{nu}"

    p = min(leaves, n)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.32 * p + 2), 5.5))
    dendrogram(
        clustering.Z,
        truncate_mode="lastp",
        p=p,
        leaf_label_func=label,
        leaf_rotation=90,
        leaf_font_size=8,
        color_threshold=clustering.cut_height,
        above_threshold_color="0.55",
        ax=ax,
    )
    ax.axhline(clustering.cut_height, ls="--", lw=1, color="0.3")
    ax.set_ylabel("merge distance")
    ax.set_title(title or "dendrogram")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def composition_table(rows: Sequence[dict]) -> str:
    """Markdown table of `composition` rows."""
    head = (
        "| cluster | n | generated | used | not used | real unknown | generated share |\n|---|---|---|---|---|---|---|"
    )
    body = ["| " + " | ".join(str(r[c]) for c in COMPOSITION) + f" | {r['generated_share']:.3f} |" for r in rows]
    return "\n".join([head, *body])


def fmt(v: Any) -> str:
    """A metric for the summary: - for None, 3 decimals for floats."""
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def summary_markdown(result: dict) -> str:
    """The cluster stage's Markdown summary: metrics and composition per split, and the scorer."""
    cfg = result["config"]
    lines = [
        f"# Hierarchical clustering ({cfg['method']} linkage, {cfg['metric']} distance, "
        f"cut into {cfg['n_clusters']} clusters)",
        "",
    ]
    for split in ("dev", "test"):
        s = result.get(split)
        if not s:
            continue
        m = s["metrics"]
        lines += [f"## {split}", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {fmt(m.get(k))} |" for k in ("n_points", *SPLIT_METRICS)]
        lines += ["", composition_table(s["composition"]), ""]
    sc = result.get("scorer")
    if sc:
        lines += [
            "## Cluster scorer",
            "",
            "Score: share of generated images in a real image's cluster; "
            f"threshold {sc['threshold']:.4f} ({sc['rule']}, {sc.get('scale', 'raw')} scale).",
            "",
        ]
        dev = sc.get("dev")
        if dev:
            lines.append(
                "Dev (threshold fitted on these images, so F1 is optimistic; ROC-AUC is not): "
                f"ROC-AUC {fmt(dev['roc_auc']['value'])}, "
                f"F1 {fmt(dev['f1']['value'])}."
            )
    return "\n".join(lines) + "\n"


def write_outputs(out_dir: Path, result: dict, splits: dict[str, Clustering], test_scores, cfg: ClusterConfig) -> None:
    """The score file first, then the cluster/ folder in one atomic rename."""
    score_path = out_dir / "scores" / "cluster.csv"
    if test_scores is not None:
        keys, s, pred = test_scores
        sc = result["scorer"]
        write_scores(
            score_path,
            list(keys),
            s,
            pred,
            meta={
                "scorer": "cluster",
                "threshold": apply_threshold(s, sc["threshold"], sc.get("scale", "raw"))[1],
                "threshold_on_scale": sc["threshold"],
                "threshold_scale": sc.get("scale", "raw"),
                "rule": sc["rule"],
                "source": "cluster",
                "calibrated_on": "dev",
            },
        )
    else:
        score_path.unlink(missing_ok=True)
        score_path.with_suffix(".json").unlink(missing_ok=True)
    with atomic_path(out_dir / "cluster") as tmp:
        tmp.mkdir(parents=True)
        for name, c in splits.items():
            fname = "dendrogram.png" if name == "dev" else f"dendrogram_{name}.png"
            dendrogram_png(
                c,
                tmp / fname,
                leaves=cfg.dendrogram_leaves,
                title=f"{name}: {cfg.method} linkage, {cfg.metric}; "
                f"{c.metrics['n_real']} real + {c.metrics['n_generated']} generated",
            )
            rows = ["key,role,label,cluster"] + [
                f"{k},{r},{lab},{a}" for k, r, lab, a in zip(c.keys, c.roles, c.labels, c.assign)
            ]
            write_text(tmp / f"assignments_{name}.csv", "\n".join(rows) + "\n")
        write_text(tmp / "summary.md", summary_markdown(result))
        write_json(tmp / "cluster.json", result)
    log.info("cluster: wrote %s", out_dir / "cluster")
