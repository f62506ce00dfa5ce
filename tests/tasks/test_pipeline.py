"""The pipeline: `fingerprint demo` end to end (CLI), re-runs, options checked first, the stage runner, records."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from serve import serve
from test_shards import make_layout

from fingerprint.cli import main as cli
from fingerprint.core.config import option
from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import write_json
from fingerprint.core.records import StageRecords
from fingerprint.data.pack import pack
from fingerprint.data.shards import FORMAT
from fingerprint.evaluation.metrics import read_truth
from fingerprint.evaluation.runfile import validate
from fingerprint.evaluation.scorefiles import write_scores
from fingerprint.tasks.configs import BASELINES, RunConfig, RunOptions
from fingerprint.tasks.pipeline import RunPaths, Stages, check_label_share, check_run_file, score_config
from fingerprint.tasks.plan import cnn_stages, input_ids

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
        "features/dev/features.json",
        "features/test/features.json",
        "features/test/parts/shard-000000.fmaps.npy",
        "model/metric.json",
        "model/fusion.json",
        "profile/dev.npz",
        "profile/test.npz",
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
    # the demo's options (a changed option would redo its stage and every later one)
    argv = ["run", str(data), "--out", str(out), *TINY, "--batch-size", "32", "--no-report", "--baselines"]
    assert cli([*argv, ",".join(BASELINES)]) == 0  # the demo runs every baseline; run's default is dcr,ssim
    assert (out / "scores" / "fused.csv").read_bytes() == before
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    rerun = log[log.index(next(r for r in log if r.get("step") == "pack-dev" and r.get("skipped"))) :]
    done = {r["step"] for r in rerun if r.get("skipped")}
    steps = {"pack-dev", "adapt", "train", "embed-test", "profile", "fuse", "score-fused-test", "compare", "cluster"}
    assert steps <= done
    assert not [r["step"] for r in rerun if r.get("command") and r["step"] not in ("evaluate",)]  # only derived


@pytest.mark.slow
def test_run_from_shards_served_over_http_matches_the_local_run(demo_run, tmp_path):
    """`fingerprint run` started from the packed shards served by a real HTTP server gives exactly the local
    run's scores, run file and metrics."""
    data, out, _ = demo_run
    run = tmp_path / "http"
    with serve(out / "shards") as base:
        argv = ["run", "--out", str(run), "--dev-shards", f"{base}/dev/", "--test-shards", f"{base}/test/",
                "--truth", str(data / "test_truth.csv"), "--batch-size", "32", *TINY, "--no-compare", "--no-cluster",
                "--no-report", "--baselines", ",".join(BASELINES)]  # fmt: skip
        assert cli(argv) == 0
    assert not (run / "shards").exists() and json.loads((run / "shards.json").read_text())["dev"] == f"{base}/dev/"
    assert (run / "run.csv").read_bytes() == (out / "run.csv").read_bytes()
    scorers = sorted(p.stem for p in (run / "scores").glob("*.csv"))
    assert {"fused", "relation", "dcr", "ssim", "emb_nn", "emb_topk"} <= set(scorers)
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
    stage = Stages(tmp_path, force=False)  # a re-run
    assert stage("echo-a", echo, cfg, [cfg.out]) is None and len(runs) == 1  # its record matches: skipped
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


def _tiny_layout(root: Path) -> Path:
    make_layout(root / "dev", "dev", n_gen=4, n_real=2)
    make_layout(root / "test", "test", n_gen=4, n_real=2)
    return root


@pytest.mark.parametrize(
    "fault, flags, message",
    [
        (None, ["--index-factory", "Bogus"], "--index-factory: FAISS cannot build 'Bogus'"),
        (None, ["--k", "0"], "--k must be >= 1, got 0"),
        ("train.toml", ["--train-config", "{toml}"], "train.lr must be a finite number, got nan"),
        ("collision", [], "same name as the real image"),
        ("comma", [], "cannot hold dots, commas, quotes or whitespace"),
    ],
)
def test_every_option_and_input_name_is_checked_before_the_first_stage(tmp_path, capsys, fault, flags, message):
    data = _tiny_layout(tmp_path / "data")
    if fault == "train.toml":
        (tmp_path / "train.toml").write_text("lr = nan\n")
    elif fault == "collision":
        real = data / "test" / "real_unknown_1" / "real_unknown_0001.png"
        shutil.copy(real, data / "test" / "generated_1" / real.name)
    elif fault == "comma":
        (data / "test" / "real_unknown_1" / "real_unknown_0001.png").rename(
            data / "test" / "real_unknown_1" / "a,b.png"
        )
    argv = ["run", str(data), "--out", str(tmp_path / "run"), *(f.format(toml=tmp_path / "train.toml") for f in flags)]
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()  # nothing written


def test_input_ids_are_the_real_test_file_names(tmp_path):
    data = _tiny_layout(tmp_path / "data")
    assert input_ids(data) == [f"real_unknown_{i:04d}" for i in range(1, 5)]


def test_stages_record_completion_and_redo_what_changed(tmp_path):
    runs = []

    def echo(cfg):
        runs.append(cfg.out.name)
        cfg.out.write_text(str(cfg.value))

    stage = Stages(tmp_path, force=False)
    a, b = EchoConfig(out=tmp_path / "a.txt"), EchoConfig(out=tmp_path / "b.txt")
    stage("a", echo, a, [a.out])
    stage("b", echo, b, [b.out])
    assert StageRecords(tmp_path).read("a")["outputs"]["a.txt"]["a.txt"]["size"] == 3
    again = Stages(tmp_path, force=False)
    again("a", echo, a, [a.out])
    again("b", echo, b, [b.out])
    assert runs == ["a.txt", "b.txt"]  # both complete: skipped
    a.out.write_text("0.7")  # an output changed after its stage: redone; b's inputs are as before: kept
    third = Stages(tmp_path, force=False)
    third("a", echo, a, [a.out])
    third("b", echo, b, [b.out])
    assert runs == ["a.txt", "b.txt", "a.txt"] and a.out.read_text() == "0.5"
    other = Stages(tmp_path, force=False)  # a stage's options changed: it and every later stage redone (the chain)
    other("a", echo, EchoConfig(out=a.out, value=0.25), [a.out])
    other("b", echo, b, [b.out])
    assert runs == ["a.txt", "b.txt", "a.txt", "a.txt", "b.txt"]
    runs.clear()
    stage = Stages(tmp_path, force=False)
    stage("a", echo, EchoConfig(out=a.out, value=0.25), [a.out])
    records = StageRecords(tmp_path)
    records.invalidate("b")  # interrupted before its record: redone, though its output exists
    fourth = Stages(tmp_path, force=False)
    fourth("a", echo, EchoConfig(out=a.out, value=0.25), [a.out])
    fourth("b", echo, b, [b.out])
    assert runs == ["b.txt"]

    def forgets(cfg):
        pass

    with pytest.raises(FingerprintError, match="c.txt: stage c ended without writing it"):
        fourth("c", forgets, EchoConfig(out=tmp_path / "c.txt"), [tmp_path / "c.txt"])
    assert records.read("c") is None


def test_the_run_file_is_checked_against_the_test_ids(tmp_path):
    paths = RunPaths(tmp_path)
    write_json(
        paths.shards("test") / "manifest.json",
        {"format": "fingerprint-shards", "shards": [], "skipped": [{"path": "real_unknown_1/c.png", "reason": "x"}]},
    )
    (tmp_path / "run.csv").write_text("a,1\nb,0\n")
    check_run_file(paths, ["a", "b", "c"])  # c was unreadable at pack: not expected
    (tmp_path / "run.csv").write_text("a,1\nb_2,0\n")
    with pytest.raises(FingerprintError, match=r"run.csv: line 2: unknown-id.*'b_2'.*against the 2 real test images"):
        check_run_file(paths, ["a", "b", "c"])


def test_a_run_file_labelled_one_way_is_flagged(tmp_path):
    paths = RunPaths(tmp_path)
    pack_counts = {
        "format": FORMAT,
        "shards": [],
        "counts": {"label": {"used": 80, "not_used": 80}, "role": {"real": 160}},
    }
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
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import quality_table

    data, out, _ = demo_run
    row = quality_table.summarise("tiny", out)
    metrics = json.loads((out / "metrics.json").read_text())["scorers"]
    assert row["auc"]["value"] == metrics["fused"]["roc_auc"]["value"]
    assert row["margin"] == pytest.approx(
        row["auc"]["value"] - max(metrics[b]["roc_auc"]["value"] for b in quality_table.BASELINES)
    )
    assert row["groups"][0] == "px64" and "| tiny |" in quality_table.main_table([row])
    assert quality_table.auc_traced_only(data) is None  # the vae family does not report its samples' sources
    assert "| 0.760 |" in quality_table.main_table([row | {"test_auc_traced_only": 0.76}])
    truth = read_truth(data / "test_truth.csv")
    again = quality_table.evaluate_fusion(out / "model" / "fusion.json", out / "profile" / "test.npz", truth, 0, 3)
    assert again["auc"]["value"] == pytest.approx(row["auc"]["value"]) and again["kappa"] == pytest.approx(
        row["kappa"]["value"]
    )


def test_splits_need_their_classes_and_the_truth_its_ids(tmp_path):
    from fingerprint.data.sources import find_sources
    from fingerprint.tasks.plan import check_split_classes, check_truth

    make_layout(tmp_path / "dev", "dev", n_gen=2, n_real=1)
    layout, images = find_sources(tmp_path / "dev")
    check_split_classes(tmp_path / "dev", "dev", layout, images)
    for name in ("not_used", "generated"):
        kept = [i for i in images if not i.rel.startswith(name + "/")]
        with pytest.raises(FingerprintError, match=rf"dev/{name}: missing or holds no usable image"):
            check_split_classes(tmp_path / "dev", "dev", layout, kept)
    truth = tmp_path / "truth.csv"
    truth.write_bytes(b"\xef\xbb\xbffigure_id,label\r\na,1\r\nb,0\r\n")
    check_truth(truth, ["a", "b"])
    with pytest.raises(FingerprintError, match=r"truth.csv: 1 real test image\(s\) have no label \(first: c\)"):
        check_truth(truth, ["a", "b", "c"])
    with pytest.raises(FingerprintError, match=r"truth.csv: 1 label\(s\) for no real test image \(first: b\)"):
        check_truth(truth, ["a"])


def test_run_without_cnn_work_skips_train_and_embed(tmp_path):
    """The fused scorer and the pixel baselines need no CNN: with comparators and clustering off, `run` neither
    trains nor embeds nor indexes, and still writes a valid run file; an embedding baseline brings them back."""
    for split in ("dev", "test"):
        make_layout(tmp_path / split, split, n_gen=24, n_real=10)
        pack(tmp_path / split, tmp_path / "shards" / split)
    shards = ["--dev-shards", str(tmp_path / "shards" / "dev"), "--test-shards", str(tmp_path / "shards" / "test")]
    argv = ["run", "--out", str(tmp_path / "run"), *shards, *TINY, "--spaces", "px64,pn32,px16",
            "--no-compare", "--no-cluster", "--no-report"]  # fmt: skip
    assert cli(argv) == 0
    out = tmp_path / "run"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = {r["step"] for r in log if r.get("stage") == "run" and "step" in r}
    assert {"profile", "fuse", "score-fused-test", "score-dcr-test", "score-ssim-test"} <= steps
    assert not {s for s in steps if s.startswith(("train", "embed", "index", "score-emb", "score-relation"))}
    assert next(r for r in log if r.get("step") == "cnn")["not_needed"] == ["train", "embed", "index"]
    assert not (out / "model" / "model.safetensors").exists() and not (out / "features").exists()
    ids = [f"real_unknown_{i:04d}" for i in range(1, 21)]
    assert validate(out / "run.csv", ids) == []
    again = RunConfig(out=out, dev_shards="d", test_shards="t", baselines=("emb_nn",), compare=False, cluster=False)
    assert cnn_stages(again) == ("train", "embed", "index")
    assert cnn_stages(RunConfig(out=out, dev_shards="d", test_shards="t")) == ("train", "embed")  # comparators
