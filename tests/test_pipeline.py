"""The pipeline: `fingerprint demo` end to end on the tiny benchmark (CLI), re-runs, bad input, the stage runner."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from serve import serve

from fingerprint.cli import main as cli
from fingerprint.config import option
from fingerprint.pipeline import RunOptions, RunPaths, Stages, score_config
from fingerprint.runfile import validate
from fingerprint.scorefiles import write_scores

#: the tiny run's options, shared by the demo and the re-run
TINY = ["--seed", "3", "--epochs", "1", "--image-size", "32", "--k", "4"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    data, out = root / "data", root / "run"
    argv = ["demo", "--level", "tiny", "--data-dir", str(data), "--out", str(out), "--batch-size", "32", *TINY]
    assert cli(argv) == 0
    return data, out


@pytest.mark.slow
def test_demo_writes_every_output(demo_run):
    data, out = demo_run
    for rel in (
        "shards/dev/manifest.json",
        "shards/test/manifest.json",
        "model/model.json",
        "features/dev/features.json",
        "features/test/features.json",
        "features/test/parts/shard-000000.fmaps.npy",
        "index/test.faiss",
        "run.csv",
        "metrics.json",
        "report.html",
        "log.jsonl",
    ):
        assert (out / rel).exists(), rel
    truth = {r["figure_id"]: int(r["label"]) for r in csv.DictReader(open(data / "test_truth.csv"))}
    for name in ("relation", "dcr", "ssim", "emb_nn", "emb_topk"):
        rows = list(csv.DictReader(open(out / "scores" / f"{name}.csv")))
        assert {r["key"] for r in rows} == set(truth), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"relation", "dcr", "ssim", "emb_nn"} <= set(metrics["scorers"])
    f1 = metrics["scorers"]["relation"]["f1"]
    assert 0.0 <= f1["value"] <= 1.0 and f1["ci_low"] <= f1["value"] <= f1["ci_high"]


@pytest.mark.slow
def test_run_file_is_official_format(demo_run):
    data, out = demo_run
    ids = [r["figure_id"] for r in csv.DictReader(open(data / "test_truth.csv"))]
    assert validate(out / "run.csv", ids) == []


@pytest.mark.slow
def test_rerun_skips_finished_stages(demo_run, capsys):
    data, out = demo_run
    before = (out / "scores" / "relation.csv").read_bytes()
    assert cli(["run", str(data), "--out", str(out), *TINY, "--no-report"]) == 0
    assert (out / "scores" / "relation.csv").read_bytes() == before
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any(r.get("skipped") and r.get("step") == "train" for r in log)


@pytest.mark.slow
def test_run_from_shards_served_over_http_matches_the_local_run(demo_run, tmp_path):
    """`fingerprint run` started from the packed shards served by a real HTTP server gives exactly the local
    run's scores, run file and metrics."""
    data, out = demo_run
    run = tmp_path / "http"
    with serve(out / "shards") as base:
        argv = ["run", "--out", str(run), "--dev-shards", f"{base}/dev/", "--test-shards", f"{base}/test/",
                "--truth", str(data / "test_truth.csv"), "--batch-size", "32", *TINY, "--no-compare", "--no-cluster",
                "--no-report"]  # fmt: skip
        assert cli(argv) == 0
    assert not (run / "shards").exists() and json.loads((run / "shards.json").read_text())["dev"] == f"{base}/dev/"
    assert (run / "run.csv").read_bytes() == (out / "run.csv").read_bytes()
    scorers = sorted(p.stem for p in (run / "scores").glob("*.csv"))
    assert {"relation", "dcr", "ssim", "emb_nn", "emb_topk"} <= set(scorers)
    for folder in ("scores", "scores_dev"):
        for name in scorers:
            assert (run / folder / f"{name}.csv").read_bytes() == (out / folder / f"{name}.csv").read_bytes(), name
    got, ref = (json.loads((d / "metrics.json").read_text())["scorers"] for d in (run, out))
    assert {n: got[n] for n in scorers} == {n: ref[n] for n in scorers}


def test_run_needs_a_data_dir_or_both_shard_sets(tmp_path, capsys):
    assert cli(["run", "--out", str(tmp_path / "run"), "--dev-shards", str(tmp_path)]) == 2
    assert "DATA_DIR must be given unless both --dev-shards and --test-shards are" in capsys.readouterr().err


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
    write_scores(paths.scores("dev") / "emb_nn.csv", ["a"], [0.5], [1], meta={"threshold": threshold})
    test = score_config("emb_nn", "test", paths, RunOptions(k=3, seed=2))
    assert test.threshold == threshold and test.calibrate_on is None and test.k == 3 and test.seed == 2
    assert test.index == paths.index("test") and test.run_file is None
    assert score_config("dcr", "dev", paths, RunOptions()).k == 16  # pixel scorers keep their own default
