"""The project's vocabulary, defined once: roles, labels and their codes, splits, metrics, threshold rules.

Every module imports these names from here instead of spelling them out, so
a new label, metric or precision mode is one edit. The ImageCLEFmedical GANs
2023 task fixes the meaning: a real image is "used" (1, the positive class of
the official F1) when it was in the generator's training set, "not_used" (0)
otherwise; generated images carry "unknown".
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fingerprint.core.errors import FingerprintError

#: what an image is: a real (medical) image or one a generative model produced
ROLES = ("real", "generated")
#: membership labels; "unknown" for generated images and unlabelled real ones
LABELS = ("used", "not_used", "unknown")
#: the 0/1 codes of the two membership labels (used is the positive class)
LABEL_CODES = {"used": 1, "not_used": 0}
#: the data splits of the 2023 layout
SPLITS = ("dev", "test")

#: metrics in every metrics.evaluate() dict, in report order: the ones a threshold cannot game lead
METRICS = (
    "roc_auc",
    "kappa",
    "balanced_accuracy",
    "tpr_at_1fpr",
    "tpr_at_5fpr",
    "f1",
    "accuracy",
    "precision",
    "recall",
    "specificity",
)
#: metrics that need continuous scores (None when only labels are known)
SCORE_METRICS = ("roc_auc", "tpr_at_1fpr", "tpr_at_5fpr")
#: how tables title each metric
METRIC_TITLES = {
    "f1": "F1",
    "accuracy": "accuracy",
    "precision": "precision",
    "recall": "recall",
    "specificity": "specificity",
    "roc_auc": "ROC-AUC",
    "kappa": "kappa",
    "balanced_accuracy": "bal. acc.",
    "tpr_at_1fpr": "TPR@1%FPR",
    "tpr_at_5fpr": "TPR@5%FPR",
}
#: decision-threshold rules (metrics.calibrate_threshold), the default first: Cohen's kappa or balanced accuracy
#: (both bootstrap-smoothed), best F1 on "used" (labels most images used), or Youden's J = TPR - FPR (unsmoothed)
THRESHOLD_RULES = ("kappa", "balanced_accuracy", "max_f1", "youden")
#: the scale a decision threshold applies on, the default first: "robust" = (score - median) / IQR within the
#: scored split, "rank" = rank-gauss within the split (either way a dev threshold transfers to a test split whose
#: generated pool differs in size), "raw" = the scores as written
SCORE_SCALES = ("robust", "rank", "raw")

#: autocast precision of the Accelerate-driven stages ("no" = fp32)
MIXED_PRECISION = ("no", "fp16", "bf16")
#: torchvision ResNet trunks the relation network can use
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
#: relation heads: "light" (cheap per pair) or "seed" (the seed's run-1 head)
RELATIONS = ("light", "seed")
#: how K pair logits become one membership logit
POOLS = ("max", "mean", "attention")
#: what a stage does with an unreadable sample: stop, or skip it and count it
ON_ERROR = ("raise", "skip")
#: where training and embedding run in `fingerprint run`
DEVICES = ("auto", "cpu", "cuda")
#: what a scorer may read (declared in the scorer registry, fingerprint.membership.scorers): pixels from shards,
#: a features .npz, a similarity-profile .npz (fingerprint.membership.profile), the trained relation model, the
#: fitted fusion, an index
SCORER_INPUTS = ("pixels", "features", "profile", "model", "fusion", "index")
#: representation spaces of the similarity profile (fingerprint.membership.profile): raw pixels (px) or per-image
#: normalised pixels (pn) at 16/32/64 px, the metric learned from pseudo-pairs, cross-fitted (k32x), aligned
#: correlation at 64 px (al64), distance after free-form registration at 32 px (ff32), a descriptor's embedding (emb)
SPACES = ("px64", "pn32", "px16", "k32x", "al64", "ff32", "px32", "pn64", "pn16", "emb")


def label_code(label: str, default: int = -1) -> int:
    """used -> 1, not_used -> 0, anything else -> `default`."""
    return LABEL_CODES.get(str(label), default)


def label_codes(labels: Sequence[str], *, source: str | None = None) -> np.ndarray:
    """0/1 codes of membership labels (int64).

    With `source` every label must be used or not_used (a FingerprintError
    names the source otherwise); without it unknown labels become -1.
    """
    labels = np.asarray(labels, dtype=str)
    if source is not None:
        bad = sorted(set(labels.tolist()) - set(LABEL_CODES))
        if bad:
            raise FingerprintError(f"{source}: real images must be labelled used/not_used, found {', '.join(bad)}")
    return np.array([label_code(v) for v in labels.tolist()], dtype=np.int64)
