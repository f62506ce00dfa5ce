"""Report sections: metric rows sorted by ROC-AUC with the best kappa marked; missing inputs become notes."""

import numpy as np

from fingerprint.core.files import write_json
from fingerprint.embedding.features import Features
from fingerprint.evaluation.scorefiles import ScoreTable
from fingerprint.report.data import RunInputs
from fingerprint.report.sections import (
    _metrics_rows,
    dev_auc,
    section_clustering,
    section_comparators,
    section_metrics,
    skip_notes,
    verdict_warnings,
)


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


def test_skips_and_renames_are_listed(tmp_path):
    """Counted skips reach the report: unreadable images at pack, renamed generated keys, shards skipped later."""
    man = {"format": "fingerprint-shards", "shards": [], "counts": {"role_label": {"real/used": 1}}, "n_skipped": 1,
           "skipped": [{"path": "used/bad.png", "reason": "not a recognised image format"}],
           "renamed": [{"path": "generated_2/g.png", "key": "g_2"}]}  # fmt: skip
    write_json(tmp_path / "shards" / "test" / "manifest.json", man)
    feats = Features(["a"], ["real"], ["used"], np.ones((1, 2), np.float32), None, {"skipped": {"shards": 1}})
    feats.save(tmp_path / "features" / "test.npz")
    notes = skip_notes(tmp_path, "test")
    assert notes == [
        "test: 1 unreadable image(s) skipped at pack: used/bad.png (not a recognised image format)",
        "test: 1 generated image(s) stored under another key: generated_2/g.png as g_2",
        "test: skipped when embedding (--on-error skip): 1 shards",
    ]
    assert skip_notes(tmp_path, "dev") == []


def test_dataset_section_shows_the_benchmarks_realism(tmp_path):
    from fingerprint.core.files import write_json
    from fingerprint.data.shards import FORMAT
    from fingerprint.report.html import Section
    from fingerprint.report.sections import _realism_tables

    leak = {"pixel_nn_auc": 0.75, "ssim_nn_auc": 0.7, "share_nearest_used": 0.6, "share_nearest_used_null": 0.5,
            "memorisation": {"share_reproduced_used": 0.1}}  # fmt: skip
    realism = {"hf_ratio": 0.7641, "frechet": {"generated": 50.0, "real_vs_real": 10.0, "ratio": 5.0},
               "splits": {"dev": leak, "test": leak}}  # fmt: skip
    data = tmp_path / "data"
    data.mkdir()
    write_json(data / "synth.json", {"level": "medium", "generator": {"family": "sharp"}, "realism": realism})
    (tmp_path / "run" / "shards" / "dev").mkdir(parents=True)
    write_json(
        tmp_path / "run" / "shards" / "dev" / "manifest.json",
        {"format": FORMAT, "shards": [], "source": str(data / "dev"), "counts": {"role_label": {"generated/none": 3}}},
    )
    sec = Section("dataset", "Data set")
    _realism_tables(RunInputs(tmp_path / "run"), sec)
    html = "".join(sec.html)
    assert "Realism of the benchmark (sharp generator, medium level)" in html and "0.764" in html
    assert "adversarial training" not in html
    curve = [
        {"step": k, "d_loss": 1.4 - 0.1 * k, "g_loss": 0.7 + 0.1 * k, "d_real": 0.5, "d_fake": 0.4} for k in (1, 2)
    ]
    gan = {"level": "hard", "generator": {"family": "gan", "curve": curve}, "realism": realism}
    write_json(data / "synth.json", gan)
    sec = Section("dataset", "Data set")
    _realism_tables(RunInputs(tmp_path / "run"), sec)
    html = "".join(sec.html)
    assert "(gan generator, hard level)" in html and "adversarial training" in html and "<img" in html
    (data / "synth.json").unlink()
    sec = Section("dataset", "Data set")
    _realism_tables(RunInputs(tmp_path / "run"), sec)
    assert "Realism" not in "".join(sec.html)


def test_dev_auc_sources_and_near_chance_warning(tmp_path):
    """The fused scorer's dev ROC-AUC is its out-of-fold one (model/fusion.json), another scorer's the
    cross-validated one in metrics.json; below 0.6 the verdict warns, and a balanced label share does not."""
    run = RunInputs(tmp_path)
    assert dev_auc(run, "fused") is None
    write_json(tmp_path / "model" / "fusion.json", {"dev": {"oof_auc": 0.55}})
    write_json(tmp_path / "metrics.json", {"scorers": {}, "dev": {"dcr": {"roc_auc": {"value": 0.71}}}})
    assert dev_auc(run, "fused") == (0.55, "out-of-fold, model/fusion.json")
    assert dev_auc(run, "dcr") == (0.71, "cross-validated, metrics.json")
    run.scores["fused"] = ScoreTable(["a", "b"], np.array([0.2, 0.8]), np.array([0, 1]))
    run.score_meta["fused"] = {"run_file": "run.csv"}
    (warning,) = verdict_warnings(run, "fused", dev_auc(run, "fused"))
    assert warning.startswith("the dev ROC-AUC is 0.550 (out-of-fold, model/fusion.json), near chance")
    assert verdict_warnings(run, "fused", (0.8, "x")) == []
