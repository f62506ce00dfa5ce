"""The whole pipeline on one data set: pack -> train -> embed -> index -> score -> compare/cluster -> evaluate -> report.

`run_pipeline` is what `fingerprint run` calls; `demo` builds (or reuses) the
built-in `medium` benchmark with `fingerprint.synth` and runs the pipeline on
it. Every stage writes into one run folder (layout in docs/design.md); a stage
whose outputs already exist is skipped, so an interrupted run picks up where it
stopped, and `force=True` redoes everything.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from fingerprint.utils import FingerprintError, JsonlLogger, read_json, write_json

log = logging.getLogger(__name__)

SPLITS = ("dev", "test")
BASELINES = ("dcr", "ssim", "emb_nn", "emb_topk", "seed_rule")
PIXEL_BASELINES = ("dcr", "ssim")


@dataclass
class RunConfig:
    """Options of `fingerprint run`; the defaults suit 2 CPU cores."""

    data_dir: Path
    out: Path
    seed: int = 0
    backbone: str = "resnet18"
    image_size: int = 128
    epochs: int | None = None
    k: int = 8
    batch_size: int = 64
    device: str = "auto"
    mixed_precision: str = "no"
    threads: int | None = None
    baselines: tuple[str, ...] = BASELINES
    seed_rule_max_pairs: int = 500_000
    index_factory: str = "Flat"
    n_boot: int = 500
    comparators: bool = True
    cluster: bool = True
    report: bool = True
    train_config: Path | None = None
    force: bool = False


def check_data_dir(data_dir: Path) -> Path | None:
    """Check DATA_DIR holds dev/ and test/; return its test_truth.csv if present."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FingerprintError(f"{data_dir}: data folder not found")
    for split in SPLITS:
        if not (data_dir / split).is_dir():
            raise FingerprintError(f"{data_dir}: no '{split}/' folder (expected dev/ and test/ in the 2023 layout)")
    truth = data_dir / "test_truth.csv"
    return truth if truth.is_file() else None


class Stages:
    """Runs a run's stages in order: each a subcommand's `main(argv)`, timed, skipped when its outputs exist."""

    def __init__(self, out: Path, force: bool):
        self.out = out
        self.force = force
        self.log = JsonlLogger(out / "log.jsonl")
        self.timings: dict[str, float] = {}

    def __call__(
        self, name: str, command: str, argv: Sequence[object], outputs: Sequence[Path], derived: bool = False
    ) -> None:
        """Run one stage; `derived` stages (evaluate, report) are cheap and always redone."""
        if not self.force and not derived and outputs and all(Path(p).exists() for p in outputs):
            log.info("[%s] outputs exist: skipped", name)
            self.log.log(stage="run", step=name, skipped=True)
            return
        from fingerprint.cli import COMMANDS
        import importlib

        redo = self.force or derived or any(Path(p).exists() for p in outputs)
        argv = [str(a) for a in argv] + (["--force"] if redo else [])
        log.info("[%s] fingerprint %s %s", name, command, " ".join(argv))
        t0 = time.perf_counter()
        rc = importlib.import_module(COMMANDS[command][0]).main(argv)
        dt = time.perf_counter() - t0
        if rc != 0:
            raise FingerprintError(f"stage '{name}' (fingerprint {command}) failed with exit code {rc}")
        self.timings[name] = round(dt, 2)
        self.log.log(stage="run", step=name, command=command, seconds=round(dt, 3))


def run_pipeline(cfg: RunConfig) -> dict:
    """pack -> train -> embed -> index -> score (+ baselines) -> compare -> cluster -> evaluate -> report."""
    data, out = Path(cfg.data_dir), Path(cfg.out)
    truth = check_data_dir(data)
    unknown = set(cfg.baselines) - set(BASELINES)
    if unknown:
        raise FingerprintError(f"unknown baseline(s) {', '.join(sorted(unknown))}; choose from {', '.join(BASELINES)}")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise FingerprintError(f"--device must be auto, cpu or cuda, got {cfg.device!r}")
    if cfg.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "1"
    out.mkdir(parents=True, exist_ok=True)
    stage = Stages(out, cfg.force)
    t0 = time.perf_counter()
    seed = ["--seed", cfg.seed]
    threads = ["--threads", cfg.threads] if cfg.threads else []
    shards = {s: out / "shards" / s for s in SPLITS}
    feats = {s: out / "features" / f"{s}.npz" for s in SPLITS}
    index = {s: out / "index" / f"{s}.faiss" for s in SPLITS}
    scores = {"dev": out / "scores_dev", "test": out / "scores"}
    model = out / "model"

    for s in SPLITS:
        stage(f"pack-{s}", "pack", [data / s, shards[s], *seed], [shards[s] / "manifest.json"])

    train_argv = [
        "--shards",
        shards["dev"],
        "--out",
        model,
        "--backbone",
        cfg.backbone,
        "--image-size",
        cfg.image_size,
        "--mixed-precision",
        cfg.mixed_precision,
        *seed,
        *threads,
    ]
    if cfg.epochs is not None:
        train_argv += ["--epochs", cfg.epochs]
    if cfg.train_config is not None:
        train_argv += ["--config", cfg.train_config]
    stage("train", "train", train_argv, [model / "model.json"])

    for s in SPLITS:
        stage(
            f"embed-{s}",
            "embed",
            [
                "--model",
                model,
                "--shards",
                shards[s],
                "--out",
                feats[s],
                "--fmaps",
                "--batch-size",
                cfg.batch_size,
                "--mixed-precision",
                cfg.mixed_precision,
                "--log",
                out / "log.jsonl",
                *seed,
                *threads,
            ],
            [feats[s]],
        )
        stage(
            f"index-{s}",
            "index",
            [
                "--features",
                feats[s],
                "--out",
                index[s],
                "--index-factory",
                cfg.index_factory,
                "--log",
                out / "log.jsonl",
                *seed,
                *threads,
            ],
            [index[s]],
        )

    n_real, n_gen = _split_sizes(shards["test"])
    for scorer in ("relation", *cfg.baselines):
        if scorer == "seed_rule" and n_real * n_gen > cfg.seed_rule_max_pairs:
            log.info(
                "[score] seed_rule skipped: %d x %d pairs > --seed-rule-max-pairs %d",
                n_real,
                n_gen,
                cfg.seed_rule_max_pairs,
            )
            continue
        for s in SPLITS:
            argv = [
                "--scorer",
                scorer,
                "--out",
                scores[s] / f"{scorer}.csv",
                "--log",
                out / "log.jsonl",
                *seed,
                *threads,
            ]
            if scorer in PIXEL_BASELINES:
                argv += ["--shards", shards[s]]
            else:
                argv += ["--features", feats[s], "--k", cfg.k]
                if scorer != "seed_rule":
                    argv += ["--index", index[s]]
                if scorer in ("relation", "seed_rule"):
                    argv += ["--model", model]
            if s == "dev":
                # calibrated on the labelled dev split it scores; relation stores the threshold with the model
                argv += ["--calibrate-on", shards["dev"] if scorer in PIXEL_BASELINES else feats["dev"]]
                if scorer != "seed_rule" and scorer not in PIXEL_BASELINES:
                    argv += ["--dev-index", index["dev"]]
            else:
                # the dev stage's threshold, not a second computation of every dev score
                argv += ["--threshold", _threshold(scores["dev"] / f"{scorer}.csv")]
                if scorer == "relation":
                    argv += ["--run-file", out / "run.csv"]
            stage(f"score-{scorer}-{s}", "score", argv, [scores[s] / f"{scorer}.csv"])

    if cfg.comparators:
        # untrained baselines only: the dev relation/seed-rule scores come from a model trained on those images
        stacked = [b for b in cfg.baselines if b in ("dcr", "ssim", "emb_nn", "emb_topk")]
        features = ["--features", "profile,baselines", "--baselines", ",".join(stacked)] if stacked else []
        stage(
            "compare",
            "compare",
            [
                "--dev",
                feats["dev"],
                "--test",
                feats["test"],
                "--out",
                out,
                *features,
                "--dev-scores",
                scores["dev"],
                "--test-scores",
                scores["test"],
                "--n-boot",
                cfg.n_boot,
                *seed,
            ],
            [out / "compare" / "cv.json"],
        )
    if cfg.cluster:
        stage(
            "cluster",
            "cluster",
            ["--dev", feats["dev"], "--test", feats["test"], "--out", out, "--n-boot", cfg.n_boot, *seed],
            [out / "cluster" / "cluster.json"],
        )

    metrics = None
    if truth is not None:
        shutil.copyfile(truth, out / "test_truth.csv")
        score_files = sorted(str(p) for p in scores["test"].glob("*.csv"))
        stage(
            "evaluate",
            "evaluate",
            [
                *score_files,
                "--truth",
                out / "test_truth.csv",
                "--out",
                out / "metrics.json",
                "--split",
                "test",
                "--n-boot",
                cfg.n_boot,
                *seed,
            ],
            [out / "metrics.json"],
            derived=True,
        )
        metrics = read_json(out / "metrics.json")
        dev = _dev_metrics(out)
        if dev:
            metrics["dev"] = dev
            write_json(out / "metrics.json", metrics)
    else:
        log.info("no test_truth.csv in %s: scores and run file written, nothing to evaluate", data)

    if cfg.report:
        stage("report", "report", [out, *seed], [out / "report.html"], derived=True)
    total = time.perf_counter() - t0
    summary = {
        "data_dir": str(data),
        "out": str(out),
        "seconds": round(total, 1),
        "stage_seconds": stage.timings,
        "run_file": str(out / "run.csv"),
        "metrics": str(out / "metrics.json") if metrics else None,
        "report": str(out / "report.html") if cfg.report else None,
    }
    write_json(out / "run.json", summary)
    stage.log.log(stage="run", seconds=round(total, 3))
    return summary


def _threshold(score_file: Path) -> str:
    """The decision threshold a dev score file was labelled with (from its .json sidecar), exactly as written."""
    from fingerprint.score import read_score_meta

    meta = read_score_meta(score_file) or {}
    if meta.get("threshold") is None:
        raise FingerprintError(f"{score_file}: no threshold in its sidecar (re-run with --force)")
    return repr(float(meta["threshold"]))


def _split_sizes(shards_dir: Path) -> tuple[int, int]:
    """(real, generated) image counts of a packed split, from its manifest."""
    from fingerprint.shards import read_manifest

    counts = read_manifest(shards_dir).get("counts", {})
    roles = counts.get("role", counts)
    return int(roles.get("real", 0)), int(roles.get("generated", 0))


def _dev_metrics(out: Path) -> dict:
    """Dev-set metrics where a stage measured them: comparators (cross-validated) and the cluster scorer."""
    cv = out / "compare" / "cv.json"
    if not cv.is_file():
        return {}
    dev = dict(read_json(cv).get("cv", {}))
    clusters = out / "cluster" / "cluster.json"
    if clusters.is_file():
        scorer = read_json(clusters).get("scorer") or {}
        if scorer.get("dev"):
            dev[scorer.get("name", "cluster")] = scorer["dev"]
    return dev


def demo(
    *,
    data_dir: Path,
    out: Path,
    level: str = "medium",
    seed: int = 0,
    force: bool = False,
    rebuild_data: bool = False,
    **run_options,
) -> dict:
    """Build the built-in benchmark once (cached in data_dir), then run the pipeline on it."""
    data_dir = Path(data_dir)
    if rebuild_data or not (data_dir / "synth.json").is_file():
        from fingerprint.cli import synth

        argv = [str(data_dir), "--level", level, "--seed", str(seed)] + (["--force"] if data_dir.exists() else [])
        log.info("building the %s benchmark in %s (cached for later demos)", level, data_dir)
        rc = synth.main(argv)
        if rc != 0:
            raise FingerprintError(f"stage 'synth' failed with exit code {rc}")
    else:
        params = read_json(data_dir / "synth.json")
        cached = params.get("level", params.get("params", {}).get("level"))
        if cached is not None and cached != level:
            raise FingerprintError(f"{data_dir}: holds a '{cached}' benchmark, not '{level}' (use --rebuild-data)")
        log.info("using the cached benchmark in %s (level %s)", data_dir, cached)
    return run_pipeline(RunConfig(data_dir=data_dir, out=Path(out), seed=seed, force=force, **run_options))
