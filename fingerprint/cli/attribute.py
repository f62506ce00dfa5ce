"""Attribution: for each generated image, the real subset it most likely came from, or "none".

Retrieves each generated image's nearest real images in every subset (one
FAISS index per subset; by default over normalised 32 px pixels, with
--pair-score relation/cosine/pixel over a model's embeddings), scores the
pairs (by default the profile evidence: -log pixel L2 distance summed over
the calibrated profile's pixel spaces, no model needed), and names the best
subset when its score beats a threshold calibrated on null reals. Writes
OUT/attribution.csv (figure_id,subset,score: the challenge's subtask-2
style), OUT/attribution.json (with the confusion matrix and accuracy when
--truth is given) and OUT/report.html. Details: docs/audit.md.
"""

from __future__ import annotations

from fingerprint.cli.options import command
from fingerprint.tasks.attribute import AttributeConfig, run_attribute

NAME = "attribute"


def run(cfg: AttributeConfig) -> int:
    summary = run_attribute(cfg)
    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
    print(f"{summary['n_generated']} generated images attributed ({summary['pair_score']} pair score): {counts}")
    m = summary.get("metrics")
    if m:
        print(
            f"accuracy {m['accuracy']:.3f} (chance {m['chance_majority']:.3f}), balanced accuracy "
            f"{m['balanced_accuracy'] if m['balanced_accuracy'] is None else round(m['balanced_accuracy'], 3)}, "
            f"kappa {m['kappa']:.3f}"
        )
    print(f"wrote {cfg.out}/attribution.csv and attribution.json")
    return 0


main = command(NAME, AttributeConfig, run, __doc__)
