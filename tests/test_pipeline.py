"""The pipeline: `fingerprint demo` end to end on the tiny benchmark (CLI), re-runs, bad input, the stage runner."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fingerprint.cli import main as cli
from fingerprint.config import option
from fingerprint.metrics import read_truth
from fingerprint.pipeline import RunOptions, RunPaths, Stages, check_label_share, score_config
from fingerprint.runfile import validate
from fingerprint.scorefiles import write_scores
from fingerprint.shards import FORMAT

#: the tiny run's options, shared by the demo and the re-run
TINY = ["--seed", "3", "--epochs", "1", "--image-size", "32", "--k", "4"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    data, out = root / "data", root / "run"
    argv = ["demo", "--level", "tiny", "--data-dir", str(data), "--out", str(out), "--batch-size", "32", *TINY]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert cli(argv) == 0
    return data, out, printed.getvalue()


@pytest.mark.slow
def test_demo_writes_every_output(demo_run):
    data, out, _ = demo_run
    for rel in (
        "shards/dev/manifest.json",
        "shards/test/manifest.json",
        "model/model.json",
        "model/metric.json",
        "model/fusion.json",
        "profile/dev.npz",
        "profile/test.npz",
        "features/dev.npz",
        "features/test.npz",
        "index/test.faiss",
        "run.csv",
        "metrics.json",
        "report.html",
        "log.jsonl",
    ):
        assert (out / rel).exists(), rel
    truth = {r["figure_id"]: int(r["label"]) for r in csv.DictReader(open(data / "test_truth.csv"))}
    for name in ("fused", "relation", "dcr", "ssim", "emb_nn", "emb_topk"):
        rows = list(csv.DictReader(open(out / "scores" / f"{name}.csv")))
        assert {r["key"] for r in rows} == set(truth), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"fused", "relation", "dcr", "ssim", "emb_nn"} <= set(metrics["scorers"])
    kappa = metrics["scorers"]["fused"]["kappa"]
    assert -1.0 <= kappa["value"] <= 1.0 and kappa["ci_low"] <= kappa["value"] <= kappa["ci_high"]
    side = json.loads((out / "scores" / "fused.json").read_text())
    dev = json.loads((out / "scores_dev" / "fused.json").read_text())
    assert side["rule"] == dev["rule"] == "kappa" and side["threshold_scale"] == "robust"
    assert "fusion.json" in dev["threshold_from"] and side["threshold_on_scale"] == dev["threshold_on_scale"]
    run = [line.split(",") for line in (out / "run.csv").read_text().splitlines()]
    fused = {r["key"]: r["label"] for r in csv.DictReader(open(out / "scores" / "fused.csv"))}
    assert {k: v for k, v in run} == fused  # the run file is the fused scorer's labels


@pytest.mark.slow
def test_demo_prints_the_run_file_scorer_first_with_its_margin(demo_run):
    _, out, printed = demo_run
    rows = printed.split("test split")[1].splitlines()
    assert rows[1].split()[:2] == ["scorer", "roc_auc"] and rows[2].split()[0] == "fused"
    assert "margin of fused (run.csv) over the best untrained baseline" in printed
    summary = json.loads((out / "run.json").read_text())
    assert summary["run_file_scorer"] == "fused" and summary["margin"]["baseline"] in (
        "dcr",
        "ssim",
        "emb_nn",
        "emb_topk",
    )


@pytest.mark.slow
def test_run_file_is_official_format(demo_run):
    data, out, _ = demo_run
    ids = [r["figure_id"] for r in csv.DictReader(open(data / "test_truth.csv"))]
    assert validate(out / "run.csv", ids) == []


@pytest.mark.slow
def test_rerun_skips_finished_stages(demo_run, capsys):
    data, out, _ = demo_run
    before = (out / "scores" / "fused.csv").read_bytes()
    assert cli(["run", str(data), "--out", str(out), *TINY, "--no-report"]) == 0
    assert (out / "scores" / "fused.csv").read_bytes() == before
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    for step in ("train", "adapt", "profile", "fuse"):
        assert any(r.get("skipped") and r.get("step") == step for r in log), step


def test_missing_data_dir_is_one_line_error(tmp_path, capsys):
    assert cli(["run", str(tmp_path / "nope"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data folder not found" in err[0]


def test_data_dir_without_test_split(tmp_path, capsys):
    (tmp_path / "dev").mkdir()
    assert cli(["run", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    assert "no 'test/' folder" in capsys.readouterr().err


@dataclass(kw_only=True)
class EchoConfig:
    SECTION = "echo"

    out: Path = option(help="file to write")
    value: float = option(0.5, help="a number")
    force: bool = option(False, help="replace")


def test_stages_skip_force_and_log_the_command_line(tmp_path, caplog):
    runs = []

    def echo(cfg):
        runs.append(cfg)
        cfg.out.write_text(str(cfg.value))
        return cfg.value

    stage = Stages(tmp_path, force=False)
    cfg = EchoConfig(out=tmp_path / "a.txt", value=0.1 + 0.2)
    with caplog.at_level("INFO"):
        assert stage("echo-a", echo, cfg, [cfg.out]) == 0.1 + 0.2
    assert f"[echo-a] fingerprint echo --out {tmp_path / 'a.txt'} --value {0.1 + 0.2!r}" in caplog.text
    assert stage("echo-a", echo, cfg, [cfg.out]) is None and len(runs) == 1  # outputs exist: skipped
    stage("echo-a", echo, cfg, [cfg.out], derived=True)
    assert runs[-1].force is True  # redone over existing outputs
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r.get("skipped", False) for r in log] == [False, True, False] and log[0]["command"] == "echo"
    assert "echo-a" in stage.timings


def test_test_split_takes_the_dev_threshold_as_a_number(tmp_path):
    paths = RunPaths(tmp_path)
    threshold = 0.1 + 0.2
    meta = {"threshold": 7.0, "threshold_on_scale": threshold, "threshold_scale": "rank"}
    write_scores(paths.scores("dev") / "emb_nn.csv", ["a"], [0.5], [1], meta=meta)
    test = score_config("emb_nn", "test", paths, RunOptions(k=3, seed=2))
    assert test.threshold == threshold and test.scale == "rank" and test.calibrate_on is None
    assert test.k == 3 and test.seed == 2
    assert test.index == paths.index("test") and test.run_file is None
    assert score_config("dcr", "dev", paths, RunOptions()).k == 16  # pixel scorers keep their own default


def test_a_run_file_labelled_one_way_is_flagged(tmp_path):
    paths = RunPaths(tmp_path)
    pack_counts = {"format": FORMAT, "counts": {"label": {"used": 80, "not_used": 80}, "role": {"real": 160}}}
    (tmp_path / "shards" / "dev").mkdir(parents=True)
    (tmp_path / "shards" / "dev" / "manifest.json").write_text(json.dumps(pack_counts))
    keys = [f"k{i}" for i in range(20)]
    meta = {"threshold": 0.0, "n": 20, "n_predicted_used": 19}
    write_scores(paths.scores("test") / "fused.csv", keys, np.arange(20.0), [0] + [1] * 19, meta=meta)
    warnings = check_label_share(paths)
    assert len(warnings) == 1 and "95% of the test reals are labelled used" in warnings[0]
    assert json.loads((paths.scores("test") / "fused.json").read_text())["warnings"] == warnings
    meta["n_predicted_used"] = 10
    write_scores(paths.scores("test") / "fused.csv", keys, np.arange(20.0), [0] * 10 + [1] * 10, meta=meta)
    assert check_label_share(paths) == []


@pytest.mark.slow
def test_quality_table_reads_a_finished_run(demo_run, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import quality_table

    data, out, _ = demo_run
    row = quality_table.summarise("tiny", out)
    metrics = json.loads((out / "metrics.json").read_text())["scorers"]
    assert row["auc"]["value"] == metrics["fused"]["roc_auc"]["value"]
    assert row["margin"] == pytest.approx(
        row["auc"]["value"] - max(metrics[b]["roc_auc"]["value"] for b in quality_table.BASELINES)
    )
    assert row["groups"][0] == "px64" and "| tiny |" in quality_table.main_table([row])
    truth = read_truth(data / "test_truth.csv")
    again = quality_table.evaluate_fusion(out / "model" / "fusion.json", out / "profile" / "test.npz", truth, 0, 3)
    assert again["auc"]["value"] == pytest.approx(row["auc"]["value"]) and again["kappa"] == pytest.approx(
        row["kappa"]["value"]
    )
