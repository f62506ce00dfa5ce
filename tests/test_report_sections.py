"""Report sections: metric rows sorted by ROC-AUC with the best kappa marked; missing inputs become notes."""

from fingerprint.report_data import RunInputs
from fingerprint.report_sections import _metrics_rows, section_clustering, section_comparators, section_metrics


def _m(auc, kappa, thr=None, f1=0.9):
    return {"roc_auc": {"value": auc}, "kappa": {"value": kappa}, "f1": {"value": f1}, "threshold": thr,
            "confusion_matrix": {"tn": 1.0}}  # fmt: skip


def test_metric_rows():
    # b has the best F1 (labelling everything used can buy that); a and c the best kappa, which is what is marked
    scorers = {"a": _m(0.6, 0.4), "b": _m(0.8, 0.1, f1=0.95), "c": _m(None, 0.4)}
    header, rows, best = _metrics_rows(scorers, {"a": 0.25})
    assert header[0] == "scorer" and "ROC-AUC" in header and [r[0] for r in rows] == ["b", "a", "c"]
    assert best == [1, 2] and rows[1][-2] == "0.2500"  # the sidecar's threshold where the metrics have none


def test_missing_parts_are_notes(tmp_path):
    run = RunInputs(tmp_path)
    for section, text in ((section_metrics, "no metrics.json"), (section_comparators, "no compare/cv.json"),
                          (section_clustering, "no cluster output")):  # fmt: skip
        s = section(run)
        assert s.notes and text in s.notes[0] and 'class="note"' in "".join(s.html)
