"""End to end: `fingerprint demo` on the tiny built-in benchmark, through the CLI, then re-run and bad input."""

from __future__ import annotations

import csv
import json

import pytest

from fingerprint.cli import main as cli
from fingerprint.runfile import validate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    data, out = root / "data", root / "run"
    argv = [
        "demo",
        "--level",
        "tiny",
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--seed",
        "3",
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--batch-size",
        "32",
        "--k",
        "4",
    ]
    assert cli(argv) == 0
    return data, out


def test_demo_writes_every_output(demo_run):
    data, out = demo_run
    for rel in (
        "shards/dev/manifest.json",
        "shards/test/manifest.json",
        "model/model.json",
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
    for name in ("relation", "dcr", "ssim", "emb_nn", "emb_topk"):
        rows = list(csv.DictReader(open(out / "scores" / f"{name}.csv")))
        assert {r["key"] for r in rows} == set(truth), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"relation", "dcr", "ssim", "emb_nn"} <= set(metrics["scorers"])
    f1 = metrics["scorers"]["relation"]["f1"]
    assert 0.0 <= f1["value"] <= 1.0 and f1["ci_low"] <= f1["value"] <= f1["ci_high"]


def test_run_file_is_official_format(demo_run):
    data, out = demo_run
    ids = [r["figure_id"] for r in csv.DictReader(open(data / "test_truth.csv"))]
    assert validate(out / "run.csv", ids) == []


def test_rerun_skips_finished_stages(demo_run, capsys):
    data, out = demo_run
    before = (out / "scores" / "relation.csv").read_bytes()
    assert (
        cli(
            [
                "run",
                str(data),
                "--out",
                str(out),
                "--seed",
                "3",
                "--epochs",
                "1",
                "--image-size",
                "32",
                "--k",
                "4",
                "--no-report",
            ]
        )
        == 0
    )
    assert (out / "scores" / "relation.csv").read_bytes() == before
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any(r.get("skipped") and r.get("step") == "train" for r in log)


def test_missing_data_dir_is_one_line_error(tmp_path, capsys):
    assert cli(["run", str(tmp_path / "nope"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data folder not found" in err[0]


def test_data_dir_without_test_split(tmp_path, capsys):
    (tmp_path / "dev").mkdir()
    assert cli(["run", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    assert "no 'test/' folder" in capsys.readouterr().err
