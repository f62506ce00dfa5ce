"""The report's data layer: a run folder read part by part, with problems kept as notes, not crashes."""

import json

from fingerprint.evaluation.scorefiles import write_scores
from fingerprint.report.data import read_inputs, stage_timings, training_records, truth_for


def test_inputs_truth_and_broken_score_files(tmp_path):
    run = read_inputs(tmp_path, None)
    assert run.truth is None and "no truth for the test split" in run.truth_problem
    (tmp_path / "test_truth.csv").write_text("figure_id,label\na,1\nb,0\n")
    write_scores(tmp_path / "scores" / "s.csv", ["a", "b", "c"], [0.9, 0.1, 0.5], [1, 0, 1], meta={"threshold": 0.5})
    (tmp_path / "scores" / "broken.csv").write_text("key,score\n")
    run = read_inputs(tmp_path, None)
    assert run.truth == {"a": 1, "b": 0} and run.score_meta["s"]["threshold"] == 0.5
    assert len(run.score_problems) == 1 and "broken.csv" in run.score_problems[0]
    y, scores, labels = truth_for(run, "s")  # c is not in the truth
    assert y.tolist() == [1, 0] and scores.tolist() == [0.9, 0.1] and labels.tolist() == [1, 0]


def test_logs(tmp_path):
    """One timing row per stage: a stage's own record and the run's record of it merge; a stand-alone stage and
    the run's total keep their rows; lines that are not JSON are skipped."""
    log = tmp_path / "log.jsonl"
    recs = [
        {"stage": "pack", "seconds": 1.5, "images": 4},
        {"stage": "score", "seconds": 0.9, "n": 8, "threshold": 0.25},
        {"stage": "run", "step": "score-fused-test", "command": "score", "seconds": 1.0},
        {"stage": "run", "step": "train", "seconds": 2.0},
        {"stage": "run", "step": "fuse", "skipped": True},
        {"stage": "run", "seconds": 4.0},
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in recs[:2]) + "not json\n"
                   + "".join(json.dumps(r) + "\n" for r in recs[2:]))  # fmt: skip
    assert stage_timings(log) == [
        ["pack", "1.5", "images 4"],
        ["score-fused-test", "1.0", "n 8, threshold 0.250"],
        ["train", "2.0", ""],
        ["run (total)", "4.0", ""],
    ]
    train = tmp_path / "train_log.jsonl"
    recs = [{"step": 1, "loss": 0.5}, {"epoch": 1, "val_auc": 0.6}, {"epochs": 1, "seconds": 3}]
    train.write_text("".join(json.dumps(r) + "\n" for r in recs) + "{bad\n")
    steps, epochs, final, problems = training_records(train)
    assert (steps, epochs, final) == ([recs[0]], [recs[1]], recs[2]) and problems == [
        "model/train_log.jsonl: line 4 is not JSON, skipped"
    ]
