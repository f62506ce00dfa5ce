"""The vocabulary: label codes, metric names and rules are defined once and used everywhere."""

from pathlib import Path

import numpy as np
import pytest

from fingerprint.analysis import compare
from fingerprint.core import vocab
from fingerprint.core.errors import FingerprintError
from fingerprint.evaluation import metrics
from fingerprint.report import sections as report_sections


def test_label_codes():
    assert vocab.LABEL_CODES == {"used": 1, "not_used": 0}
    assert [vocab.label_code(x) for x in ("used", "not_used", "unknown")] == [1, 0, -1]
    assert vocab.label_codes(["used", "unknown"]).tolist() == [1, -1]
    codes = vocab.label_codes(["used", "not_used"], source="dev.npz")
    assert codes.dtype == np.int64 and codes.tolist() == [1, 0]
    with pytest.raises(FingerprintError, match="dev.npz: real images must be labelled used/not_used, found unknown"):
        vocab.label_codes(["used", "unknown"], source="dev.npz")


def test_one_definition_per_word():
    assert set(vocab.LABEL_CODES) < set(vocab.LABELS) and vocab.ROLES == ("real", "generated")
    assert set(vocab.SCORE_METRICS) < set(vocab.METRICS) and set(vocab.METRIC_TITLES) == set(vocab.METRICS)
    for module in (metrics, report_sections, compare):
        assert module.METRICS is vocab.METRICS
    assert "no" in vocab.MIXED_PRECISION and vocab.THRESHOLD_RULES == ("kappa", "balanced_accuracy", "max_f1", "youden")


def test_nothing_redefines_the_vocabulary():
    """No module spells the label codes, the metric list or the precision modes out again."""
    root = Path(vocab.__file__).parents[1]
    words = ('"used": 1', '("no", "fp16", "bf16")', '("max_f1", "youden")', '"tpr_at_1fpr", "tpr_at_5fpr")')
    for path in root.rglob("*.py"):
        if path.name == "vocab.py":
            continue
        text = path.read_text()
        assert not [w for w in words if w in text], path
