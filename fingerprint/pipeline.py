"""The whole pipeline on one data set (`run_pipeline(RunConfig)`), and the demo on the built-in benchmark.

pack -> adapt (-> pretrain) -> train -> embed -> index -> profile -> fuse ->
score (every registered scorer; the fused scorer writes run.csv) -> compare /
cluster -> evaluate -> report, each stage a library call with its config
object (`run_pack(PackConfig)`, `run_adapt(AdaptConfig)`, ...). Every
stage writes into one run folder (layout in docs/design.md); `Stages` is the
one place a stage is run: it skips a stage whose outputs exist (so an
interrupted run picks up where it stopped; `force` redoes everything), logs
the stage's equivalent command line, and times it. `run_demo(DemoConfig)`
builds (or reuses) the built-in benchmark with `benchdata.synth`, then runs
the pipeline on it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

from fingerprint.adapt import METRIC_META, AdaptConfig, run_adapt
from fingerprint.benchdata.synth import LEVELS, SynthConfig, run_synth
from fingerprint.cluster import ClusterConfig, run_cluster
from fingerprint.compare import CompareConfig, run_compare
from fingerprint.config import (
    check_fields,
    command_line,
    config_from_file,
    load_config_file,
    option,
    section_of,
    values_from_mapping,
)
from fingerprint.embed import EmbedConfig, run_embed
from fingerprint.evaluate import EvaluateConfig, run_evaluate
from fingerprint.fuse import FuseConfig, run_fuse
from fingerprint.index import IndexConfig, run_index
from fingerprint.metrics import LEAD_METRICS, auc_margin, format_table, label_share_warning
from fingerprint.pack import PackConfig, run_pack
from fingerprint.pretrain import BACKBONE_FILE, PretrainConfig, run_pretrain
from fingerprint.profile import DEFAULT_SPACES, ProfileConfig, run_profile
from fingerprint.report import ReportConfig, run_report
from fingerprint.score import ScoreConfig, run_score
from fingerprint.scorefiles import read_score_meta
from fingerprint.scorers import get_scorer, scorer_names, untrained_scorers
from fingerprint.shards import read_manifest
from fingerprint.train import TrainConfig, run_train
from fingerprint.utils import FingerprintError, JsonlLogger, read_json, write_json
from fingerprint.vocab import BACKBONES, DEVICES, MIXED_PRECISION, SCORE_SCALES, SPACES, SPLITS, THRESHOLD_RULES

log = logging.getLogger(__name__)

#: the scorer whose labels become the run's official run file (run.csv): the trained fusion (fingerprint.fuse)
RUN_FILE_SCORER = "fused"
#: the other registered scorers, run as baselines by default
BASELINES = tuple(n for n in scorer_names() if n != RUN_FILE_SCORER)


@dataclass(kw_only=True)
class RunOptions:
    """Options shared by `fingerprint run` and `fingerprint demo`; the defaults suit 2 CPU cores."""

    seed: int = option(0, help="seed of every stage")
    backbone: str = option("resnet18", choices=BACKBONES, help="ResNet trunk of the relation network")
    image_size: int = option(128, min=32, help="model input size (images are packed at 256)")
    epochs: int | None = option(None, min=1, help="training epochs (default: the trainer's, sized for 2 CPU cores)")
    k: int = option(8, min=1, help="generated neighbours per real image when scoring (training uses 8)")
    batch_size: int = option(64, min=1, help="images per forward pass when embedding")
    device: str = option("auto", choices=DEVICES, help="where training and embedding run")
    mixed_precision: str = option(
        "no", choices=MIXED_PRECISION, help="autocast for training and embedding (fp32 'no' on CPUs)"
    )
    threads: int | None = option(None, min=1, help="torch/FAISS CPU threads per stage (default: each stage's own)")
    baselines: tuple[str, ...] = option(
        BASELINES, choices=BASELINES, help=f"comma-separated baseline scorers ({', '.join(BASELINES)}; '' for none)"
    )
    seed_rule_max_pairs: int = option(
        500_000, min=0, help="run pairwise scorers (the seed's rule) only when real x generated is at most this"
    )
    index_factory: str = option("Flat", help="FAISS index over generated embeddings (Flat = exact)")
    rule: str = option(THRESHOLD_RULES[0], choices=THRESHOLD_RULES, help="threshold rule of every scorer's labels")
    scale: str = option(
        SCORE_SCALES[0], choices=SCORE_SCALES, help="thresholds apply on scores standardised per split (robust, rank)"
    )
    spaces: tuple[str, ...] = option(
        DEFAULT_SPACES, choices=SPACES, help="similarity-profile spaces the fused scorer may use (emb: a model's)"
    )
    pretrain: bool = option(False, help="SSCD-style CNN pretraining: its trunk starts the relation model, emb space")
    stage_config: Path | None = option(
        None, help="TOML/YAML with [adapt], [pretrain], [profile], [fuse] tables (any option of those stages)"
    )
    n_boot: int = option(500, min=0, help="bootstrap resamples for every metric's 95%% interval")
    train_config: Path | None = option(None, help="TOML/YAML config of the training stage (any train option)")
    compare: bool = option(True, help="run the scikit-learn comparators")
    cluster: bool = option(True, help="run hierarchical clustering")
    report: bool = option(True, help="write the HTML report")
    force: bool = option(False, help="redo every stage even if its outputs exist")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(kw_only=True)
class RunConfig(RunOptions):
    """Options of `fingerprint run`."""

    SECTION = "run"

    data_dir: Path = option(positional=True, help="folder with dev/ and test/ (2023 layouts), optional test_truth.csv")
    out: Path = option(help="run folder to write")


@dataclass(kw_only=True)
class DemoConfig(RunOptions):
    """Options of `fingerprint demo`."""

    SECTION = "demo"

    data_dir: Path | None = option(
        None, help="where the benchmark is built and cached (default: data/benchmark-<level>-seed<seed>)"
    )
    out: Path = option(Path("runs/demo"), help="run folder to write")
    level: str = option("medium", choices=tuple(LEVELS), help="benchmark difficulty (tiny: seconds, for tests)")
    rebuild_data: bool = option(False, help="rebuild the benchmark even if it is cached")


class Stages:
    """The one place a run's stage is run: skipped when its outputs exist, logged as a command line, timed."""

    def __init__(self, out: Path, force: bool):
        self.out = out
        self.force = force
        self.log = JsonlLogger(out / "log.jsonl")
        self.timings: dict[str, float] = {}

    def __call__(
        self, name: str, fn: Callable[[Any], Any], cfg: Any, outputs: Sequence[Path], derived: bool = False
    ) -> Any:
        """Run `fn(cfg)` as stage `name`; `derived` stages (evaluate, report) are cheap and always redone."""
        if not self.force and not derived and outputs and all(Path(p).exists() for p in outputs):
            log.info("[%s] outputs exist: skipped", name)
            self.log.log(stage="run", step=name, skipped=True)
            return None
        redo = self.force or derived or any(Path(p).exists() for p in outputs)
        cfg = dataclasses.replace(cfg, force=redo)
        log.info("[%s] %s", name, command_line(cfg))
        t0 = time.perf_counter()
        result = fn(cfg)
        dt = time.perf_counter() - t0
        self.timings[name] = round(dt, 2)
        self.log.log(stage="run", step=name, command=section_of(cfg), seconds=round(dt, 3))
        return result


@dataclass(frozen=True)
class RunPaths:
    """Where each stage writes inside the run folder."""

    out: Path

    def shards(self, split: str) -> Path:
        return self.out / "shards" / split

    def features(self, split: str) -> Path:
        return self.out / "features" / f"{split}.npz"

    def index(self, split: str) -> Path:
        return self.out / "index" / f"{split}.faiss"

    def scores(self, split: str) -> Path:
        return self.out / ("scores_dev" if split == "dev" else "scores")

    @property
    def model(self) -> Path:
        return self.out / "model"

    @property
    def fusion(self) -> Path:
        return self.out / "model" / "fusion.json"

    @property
    def pretrain(self) -> Path:
        return self.out / "pretrain"

    def profile(self, split: str) -> Path:
        return self.out / "profile" / f"{split}.npz"

    @property
    def log(self) -> Path:
        return self.out / "log.jsonl"


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


def run_pipeline(cfg: RunConfig) -> dict:
    """pack -> train -> embed -> index -> score (+ baselines) -> compare -> cluster -> evaluate -> report."""
    data, out = Path(cfg.data_dir), Path(cfg.out)
    truth = check_data_dir(data)
    if cfg.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "1"
    out.mkdir(parents=True, exist_ok=True)
    stage, paths = Stages(out, cfg.force), RunPaths(out)
    t0 = time.perf_counter()
    _pack_and_train(stage, paths, data, cfg)
    _embed_and_index(stage, paths, cfg)
    _profile_and_fuse(stage, paths, cfg)
    warnings = _score(stage, paths, cfg)
    if cfg.compare:
        _compare(stage, paths, cfg)
    if cfg.cluster:
        feats = {"dev": paths.features("dev"), "test": paths.features("test")}
        cluster = ClusterConfig(**feats, out=out, n_boot=cfg.n_boot, seed=cfg.seed)
        stage("cluster", run_cluster, cluster, [out / "cluster" / "cluster.json"])
    metrics = _evaluate(stage, paths, truth, cfg) if truth is not None else None
    if truth is None:
        log.info("no test_truth.csv in %s: scores and run file written, nothing to evaluate", data)
    if cfg.report:
        stage("report", run_report, ReportConfig(run_dir=out, seed=cfg.seed), [out / "report.html"], derived=True)
    total = time.perf_counter() - t0
    summary = {
        "data_dir": str(data),
        "out": str(out),
        "seconds": round(total, 1),
        "stage_seconds": stage.timings,
        "run_file": str(out / "run.csv"),
        "run_file_scorer": RUN_FILE_SCORER,
        "warnings": warnings,
        "metrics": str(out / "metrics.json") if metrics else None,
        "table": roc_table(metrics["scorers"]) if metrics else None,
        "margin": auc_margin(metrics["scorers"], RUN_FILE_SCORER, untrained_scorers()) if metrics else None,
        "report": str(out / "report.html") if cfg.report else None,
    }
    write_json(out / "run.json", summary)
    stage.log.log(stage="run", seconds=round(total, 3))
    return summary


def _common(cfg: RunOptions) -> dict[str, Any]:
    """seed and threads, which every Accelerate/torch stage takes from the run."""
    return {"seed": cfg.seed, "threads": cfg.threads}


def stage_config(cls: type, cfg: RunOptions, required: dict[str, Any], defaults: dict[str, Any] | None = None) -> Any:
    """A stage's config: run-level `defaults`, then the stage's table of `cfg.stage_config`, then `required`."""
    where = cfg.stage_config
    values = {} if where is None else values_from_mapping(cls, load_config_file(where, cls.SECTION), str(where))
    return cls(**{**(defaults or {}), **values, **required})


def _pack_and_train(stage: Stages, paths: RunPaths, data: Path, cfg: RunConfig) -> None:
    for s in SPLITS:
        pack = PackConfig(src=data / s, out=paths.shards(s), seed=cfg.seed)
        stage(f"pack-{s}", run_pack, pack, [paths.shards(s) / "manifest.json"])
    shards = tuple(paths.shards(s) for s in SPLITS)
    runtime = {**_common(cfg), "mixed_precision": cfg.mixed_precision}
    if "k32x" in cfg.spaces or cfg.pretrain:
        adapt = stage_config(AdaptConfig, cfg, {"shards": shards, "out": paths.model, "log": paths.log, **runtime})
        stage("adapt", run_adapt, adapt, [paths.model / METRIC_META])
    given = {"epochs": cfg.epochs} if cfg.epochs is not None else {}
    if cfg.pretrain:
        metric = {"metric": paths.model} if (paths.model / METRIC_META).exists() else {}
        required = {"shards": shards, "out": paths.pretrain, "log": paths.log, **runtime, **metric}
        pretrain = stage_config(PretrainConfig, cfg, required, {"backbone": cfg.backbone})
        stage("pretrain", run_pretrain, pretrain, [paths.pretrain / BACKBONE_FILE])
        given["weights"] = paths.pretrain / BACKBONE_FILE
    given |= {"calibration": cfg.rule, "calibration_scale": cfg.scale}
    train = config_from_file(
        TrainConfig,
        cfg.train_config,
        shards=paths.shards("dev"),
        out=paths.model,
        backbone=cfg.backbone,
        image_size=cfg.image_size,
        mixed_precision=cfg.mixed_precision,
        **_common(cfg),
        **given,
    )
    stage("train", run_train, train, [paths.model / "model.json"])


def _embed_and_index(stage: Stages, paths: RunPaths, cfg: RunConfig) -> None:
    for s in SPLITS:
        embed = EmbedConfig(
            model=paths.model, shards=paths.shards(s), out=paths.features(s), fmaps=True, batch_size=cfg.batch_size,
            mixed_precision=cfg.mixed_precision, log=paths.log, **_common(cfg),
        )  # fmt: skip
        stage(f"embed-{s}", run_embed, embed, [paths.features(s)])
        index = IndexConfig(
            features=paths.features(s), out=paths.index(s), index_factory=cfg.index_factory, log=paths.log,
            **_common(cfg),
        )  # fmt: skip
        stage(f"index-{s}", run_index, index, [paths.index(s)])


def _profile_and_fuse(stage: Stages, paths: RunPaths, cfg: RunConfig) -> None:
    """The similarity profile of both splits, then the fused scorer's fit on the dev labels."""
    spaces = tuple(cfg.spaces) + (("emb",) if cfg.pretrain and "emb" not in cfg.spaces else ())
    required = {"dev": paths.shards("dev"), "test": paths.shards("test"), "out": paths.out / "profile"}
    required |= {"log": paths.log, "seed": cfg.seed, "threads": cfg.threads}
    if "k32x" in spaces:
        required["metric"] = paths.model
    if "emb" in spaces:
        required["descriptor"] = paths.pretrain if cfg.pretrain else paths.model
    profile = stage_config(ProfileConfig, cfg, required, {"spaces": spaces})
    stage("profile", run_profile, profile, [paths.profile(s) for s in SPLITS])
    fit = {"dev": paths.profile("dev"), "out": paths.fusion, "log": paths.log, "seed": cfg.seed}
    fuse = stage_config(FuseConfig, cfg, fit, {"spaces": profile.spaces, "rule": cfg.rule, "scale": cfg.scale})
    stage("fuse", run_fuse, fuse, [paths.fusion])


def _split_sizes(shards_dir: Path) -> tuple[int, int]:
    """(real, generated) image counts of a packed split, from its manifest."""
    counts = read_manifest(shards_dir).get("counts", {})
    roles = counts.get("role", counts)
    return int(roles.get("real", 0)), int(roles.get("generated", 0))


def _threshold(score_file: Path) -> tuple[float, str]:
    """The decision threshold a dev score file was labelled with, and its scale (from its .json sidecar)."""
    meta = read_score_meta(score_file) or {}
    if meta.get("threshold") is None:
        raise FingerprintError(f"{score_file}: no threshold in its sidecar (re-run with run.force)")
    if meta.get("threshold_on_scale") is None:
        return float(meta["threshold"]), "raw"
    return float(meta["threshold_on_scale"]), str(meta.get("threshold_scale", "raw"))


def score_config(name: str, split: str, paths: RunPaths, cfg: RunOptions) -> ScoreConfig:
    """The score stage of scorer `name` on `split`: its inputs from the registry's declared needs.

    dev: untrained scorers are calibrated on the labelled dev split they score;
    scorers fitted on dev labels take the threshold stored with their model,
    chosen out of sample (fused: on out-of-fold dev scores; relation: on its
    held-out validation images). test: the dev stage's threshold, on the same
    per-split scale, not a second computation of every dev score.
    """
    scorer = get_scorer(name)
    needs = scorer.needs
    args: dict[str, Any] = {"scorer": name, "out": paths.scores(split) / f"{name}.csv", "log": paths.log}
    if "pixels" in needs:
        args["shards"] = paths.shards(split)
    elif "profile" in needs:
        args |= {"profile": paths.profile(split), "fusion": paths.fusion}
    else:
        args |= {"features": paths.features(split), "k": cfg.k}
    if "index" in needs:
        args["index"] = paths.index(split)
    if "model" in needs:
        args["model"] = paths.model
    args |= {"rule": cfg.rule, "scale": cfg.scale}
    if split == "dev" and not scorer.calibrates_model:
        args["calibrate_on"] = args.get("shards") or args.get("features")
        if "index" in needs:
            args["dev_index"] = paths.index("dev")
    elif split != "dev":
        args["threshold"], args["scale"] = _threshold(paths.scores("dev") / f"{name}.csv")
        if name == RUN_FILE_SCORER:
            args["run_file"] = paths.out / "run.csv"
    return ScoreConfig(**args, **_common(cfg))


def _score(stage: Stages, paths: RunPaths, cfg: RunConfig) -> list[str]:
    """Every scorer on dev then test; returns the warnings about the run file's labels."""
    n_real, n_gen = _split_sizes(paths.shards("test"))
    for name in (RUN_FILE_SCORER, *cfg.baselines):
        if get_scorer(name).pairwise and n_real * n_gen > cfg.seed_rule_max_pairs:
            log.info(
                "[score] %s skipped: %d x %d pairs > run.seed_rule_max_pairs %d",
                *(name, n_real, n_gen, cfg.seed_rule_max_pairs),
            )
            continue
        for s in SPLITS:
            out = paths.scores(s) / f"{name}.csv"
            # the test config reads the dev threshold, so it is built after the dev stage ran
            stage(f"score-{name}-{s}", run_score, score_config(name, s, paths, cfg), [out])
    return check_label_share(paths)


def check_label_share(paths: RunPaths) -> list[str]:
    """Warn (log + the run-file scorer's sidecar) when a balanced dev set meets a run file labelled one way."""
    test = paths.scores("test") / f"{RUN_FILE_SCORER}.csv"
    meta = read_score_meta(test) or {}
    labels = read_manifest(paths.shards("dev")).get("counts", {}).get("label", {})
    n_used, n_not = int(labels.get("used", 0)), int(labels.get("not_used", 0))
    if not meta.get("n"):
        return []
    warning = label_share_warning(meta["n_predicted_used"] / meta["n"], n_used + n_not, n_used)
    if warning is None:
        if meta.pop("warnings", None) is not None:
            write_json(test.with_suffix(".json"), meta)
        return []
    log.warning("run.csv (%s): %s", RUN_FILE_SCORER, warning)
    write_json(test.with_suffix(".json"), {**meta, "warnings": [warning]})
    return [warning]


def roc_table(results: dict[str, dict]) -> str:
    """The test metrics that lead (ROC-AUC, kappa, balanced accuracy, TPR at 1% / 5% FPR), the run file's
    scorer first, then every other scorer by ROC-AUC, and the margin line."""

    def auc(name: str) -> float:
        v = (results[name].get("roc_auc") or {}).get("value")
        return -1.0 if v is None else v

    order = [n for n in results if n == RUN_FILE_SCORER] + sorted(
        (n for n in results if n != RUN_FILE_SCORER), key=lambda n: (-auc(n), n)
    )
    text = format_table({n: results[n] for n in order}, LEAD_METRICS)
    margin = auc_margin(results, RUN_FILE_SCORER, untrained_scorers())
    if margin is not None:
        text += (
            f"\nmargin of {RUN_FILE_SCORER} (run.csv) over the best untrained baseline "
            f"({margin['baseline']} {margin['baseline_auc']:.3f}): {margin['margin']:+.3f} ROC-AUC"
        )
    return text


def _compare(stage: Stages, paths: RunPaths, cfg: RunConfig) -> None:
    # untrained scorers only: the dev relation/seed-rule scores come from a model trained on those images
    stacked = tuple(b for b in cfg.baselines if b in untrained_scorers())
    features = {"features": ("profile", "baselines"), "baselines": stacked} if stacked else {}
    compare = CompareConfig(
        dev=paths.features("dev"), test=paths.features("test"), out=paths.out, dev_scores=paths.scores("dev"),
        test_scores=paths.scores("test"), n_boot=cfg.n_boot, seed=cfg.seed, **features,
    )  # fmt: skip
    stage("compare", run_compare, compare, [paths.out / "compare" / "cv.json"])


def _evaluate(stage: Stages, paths: RunPaths, truth: Path, cfg: RunConfig) -> dict:
    """Every test score file against the truth -> metrics.json (with the dev numbers where a stage measured them)."""
    out = paths.out
    shutil.copyfile(truth, out / "test_truth.csv")
    score_files = tuple(Path(p) for p in sorted(str(p) for p in paths.scores("test").glob("*.csv")))
    evaluate = EvaluateConfig(
        scores=score_files, truth=out / "test_truth.csv", out=out / "metrics.json", split="test", n_boot=cfg.n_boot,
        seed=cfg.seed,
    )  # fmt: skip
    results = stage("evaluate", run_evaluate, evaluate, [out / "metrics.json"], derived=True)
    log.info("test metrics:\n%s", roc_table(results))
    metrics = read_json(out / "metrics.json")
    dev = _dev_metrics(out)
    if dev:
        metrics["dev"] = dev
        write_json(out / "metrics.json", metrics)
    return metrics


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


def run_demo(cfg: DemoConfig) -> dict:
    """Build the built-in benchmark once (cached in data_dir), then run the pipeline on it."""
    data_dir = Path(cfg.data_dir or f"data/benchmark-{cfg.level}-seed{cfg.seed}")
    if cfg.rebuild_data or not (data_dir / "synth.json").is_file():
        log.info("building the %s benchmark in %s (cached for later demos)", cfg.level, data_dir)
        run_synth(SynthConfig(out=data_dir, level=cfg.level, seed=cfg.seed, force=data_dir.exists()))
    else:
        params = read_json(data_dir / "synth.json")
        cached = params.get("level", params.get("params", {}).get("level"))
        if cached is not None and cached != cfg.level:
            raise FingerprintError(
                f"{data_dir}: holds a '{cached}' benchmark, not '{cfg.level}' (use demo.rebuild_data)"
            )
        log.info("using the cached benchmark in %s (level %s)", data_dir, cached)
    options = {f.name: getattr(cfg, f.name) for f in fields(RunOptions)}
    return run_pipeline(RunConfig(data_dir=data_dir, out=Path(cfg.out), **options))
