"""Report sections: metric rows sorted by ROC-AUC with the best F1 marked; missing inputs become notes."""

from fingerprint.report_data import RunInputs
from fingerprint.report_sections import _metrics_rows, section_clustering, section_comparators, section_metrics


def _m(auc, f1, thr=None):
    return {"roc_auc": {"value": auc}, "f1": {"value": f1}, "threshold": thr, "confusion_matrix": {"tn": 1.0}}


def test_metric_rows():
    header, rows, best = _metrics_rows({"a": _m(0.6, 0.7), "b": _m(0.8, 0.5), "c": _m(None, 0.7)}, {"a": 0.25})
    assert header[0] == "scorer" and "ROC-AUC" in header and [r[0] for r in rows] == ["b", "a", "c"]
    assert best == [1, 2] and rows[1][-2] == "0.2500"  # the sidecar's threshold where the metrics have none


def test_missing_parts_are_notes(tmp_path):
    run = RunInputs(tmp_path)
    for section, text in ((section_metrics, "no metrics.json"), (section_comparators, "no compare/cv.json"),
                          (section_clustering, "no cluster output")):  # fmt: skip
        s = section(run)
        assert s.notes and text in s.notes[0] and 'class="note"' in "".join(s.html)
