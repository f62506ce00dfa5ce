"""The report's audit and attribution sections: present exactly when their outputs are in the folder."""

import numpy as np

from fingerprint.core.files import write_json
from fingerprint.report.build import ReportConfig, build_report
from fingerprint.report.tasks import task_sections
from fingerprint.tasks.attribute import attribution_metrics
from fingerprint.tasks.audit import AuditConfig, audit_summary
from fingerprint.tasks.imagesets import TogetherScores


def _audit_outputs(folder, rng):
    groups = ["candidate"] * 30 + ["reference"] * 60 + ["dev_used"] * 20 + ["dev_not_used"] * 20
    scores = np.r_[rng.normal(1, 1, 30), rng.normal(0, 1, 60), rng.normal(1, 1, 20), rng.normal(0, 1, 20)]
    keys = [f"k{i}" for i in range(len(groups))]
    together = TogetherScores(keys, groups, scores, None, {"scorer": "dcr", "generated_pool": "G"})
    cfg = AuditConfig(candidate=folder / "c", reference="r", generated=folder / "g", out=folder, scorer="dcr",
                      n_boot=200, power_reps=50)  # fmt: skip
    summary = audit_summary(cfg, "dcr", together, {"checked_against_training": False, "reference": "r"})
    write_json(folder / "audit.json", summary)
    rows = "".join(f"{k},{g},{s!r}\n" for k, g, s in zip(keys, groups, scores.tolist()))
    (folder / "audit_scores.csv").write_text("key,group,score\n" + rows)
    return summary


def test_sections_only_when_outputs_exist(tmp_path):
    assert task_sections(tmp_path) == []
    _audit_outputs(tmp_path, np.random.default_rng(0))
    assert [s[0] for s in task_sections(tmp_path)] == ["audit"]


def test_audit_section(tmp_path):
    summary = _audit_outputs(tmp_path, np.random.default_rng(1))
    assert summary["fraction"]["bound"] is False  # 20 + 20 held-out dev images measure AUC_u
    html_path, md_path = build_report(ReportConfig(run_dir=tmp_path))
    md = md_path.read_text()
    audit = md[md.index("## Dataset-level audit") :]
    assert summary["verdict"] in audit and "fraction used" in audit and "power curve" in audit
    assert "candidate vs reference scores" in audit
    assert html_path.read_text().count('<section id="audit">') == 1
    # an audit folder has no membership scores: its report opens with the audit and has no verdict
    headings = [line[3:] for line in md.splitlines() if line.startswith("## ")]
    assert headings == ["Dataset-level audit", "Training", "Data set", "Run folder and stage timings"]


def test_attribution_section_notes_missing_images(tmp_path):
    truth = ["a", "a", "b", "none"]
    pred = ["a", "b", "b", "none"]
    write_json(tmp_path / "attribution.json", {
        "subsets": ["a", "b"], "sizes": {"a": 5, "b": 5}, "n_generated": 4, "n_null": 10, "pair_score": "relation",
        "retrieval": "FAISS", "agg": "max", "alpha": 0.05, "threshold": 0.3, "none_rule": "conformal",
        "counts": {"a": 1, "b": 2, "none": 1}, "metrics": attribution_metrics(truth, pred, ["a", "b"]), "truth": "t",
        "examples": {"a": [{"generated": "g1", "real": "a_1", "score": 0.9}], "b": []},
        "shards": {"generated": str(tmp_path / "nope"), "subsets": {"a": str(tmp_path / "nope"), "b": ""}},
    })  # fmt: skip
    _, md_path = build_report(ReportConfig(run_dir=tmp_path))
    md = md_path.read_text()
    part = md[md.index("## Attribution to subsets") :]
    assert "confusion matrix" in part and "0.750" in part  # accuracy 3/4
    assert "a: no example strip" in part and "b: no generated image attributed to it" in part
