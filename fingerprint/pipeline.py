"""The whole pipeline on one data set (`run_pipeline(RunConfig)`), and the demo on the built-in benchmark.

pack -> adapt (-> pretrain) -> train -> embed -> index -> profile -> fuse ->
score (every registered scorer; the fused scorer writes run.csv) -> compare /
cluster -> evaluate -> report, each stage a library call with its config
object (`run_pack(PackConfig)`, `run_adapt(AdaptConfig)`, ...). Every stage
config is built, and so checked, before the first stage starts (`plan_run`),
together with the input's file names (figure ids). Every stage writes into
one run folder (layout in docs/design.md), which is locked while the run
writes into it (`fingerprint.locks`); `Stages` is the one place a stage is
run: it skips a stage whose stage-complete record matches
(`fingerprint.records`; so an interrupted or failed run picks up where it
stopped, and an interrupted training continues from its last checkpoint;
`force` redoes everything), logs the stage's equivalent command line, times
it and writes the record last. Before it reports success, `run` checks its
run file with the rules of `fingerprint validate` against the test split's
real figure ids. `run_demo(DemoConfig)` builds (or reuses) the built-in
benchmark with `benchdata.synth`, then runs the pipeline on it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import faiss

from fingerprint.adapt import METRIC_META, AdaptConfig, run_adapt
from fingerprint.benchdata.synth import LEVELS, SynthConfig, run_synth
from fingerprint.checkpoints import resumable_checkpoint
from fingerprint.cluster import ClusterConfig, run_cluster
from fingerprint.compare import CompareConfig, run_compare
from fingerprint.config import (
    ConfigError,
    check_fields,
    command_line,
    config_from_file,
    fail,
    load_config_file,
    option,
    section_of,
    to_argv,
    values_from_mapping,
)
from fingerprint.embed import EmbedConfig, run_embed
from fingerprint.evaluate import EvaluateConfig, run_evaluate
from fingerprint.feature_store import SET_FILE, FeatureStore
from fingerprint.fuse import FuseConfig, run_fuse
from fingerprint.index import IndexConfig, run_index
from fingerprint.locks import folder_lock
from fingerprint.metrics import LEAD_METRICS, auc_margin, format_table, label_share_warning, read_truth
from fingerprint.pack import PackConfig, run_pack
from fingerprint.pretrain import BACKBONE_FILE, PretrainConfig, run_pretrain
from fingerprint.profile import DEFAULT_SPACES, ProfileConfig, run_profile
from fingerprint.records import StageRecords, listing_digest
from fingerprint.report import ReportConfig, run_report
from fingerprint.runfile import validate
from fingerprint.score import ScoreConfig, run_score
from fingerprint.scorefiles import read_score_meta
from fingerprint.scorers import get_scorer, scorer_names, untrained_scorers
from fingerprint.shards import read_manifest
from fingerprint.sources import find_sources, make_keys
from fingerprint.train import TrainConfig, run_train
from fingerprint.utils import (
    FingerprintError,
    JsonlLogger,
    atomic_path,
    check_writable,
    read_json,
    remove_stale_temporaries,
    write_json,
)
from fingerprint.vocab import BACKBONES, DEVICES, MIXED_PRECISION, SCORE_SCALES, SPACES, SPLITS, THRESHOLD_RULES

log = logging.getLogger(__name__)

#: the scorer whose labels become the run's official run file (run.csv): the trained fusion (fingerprint.fuse)
RUN_FILE_SCORER = "fused"
#: the other registered scorers, run as baselines by default
BASELINES = tuple(n for n in scorer_names() if n != RUN_FILE_SCORER)
#: what `fingerprint demo` shows: the membership pipeline, or a collection-level command (fingerprint.demos)
DEMO_TASKS = ("membership", "audit", "attribute")


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

    data_dir: Path | None = option(
        None,
        positional=True,
        help="folder with dev/ and test/ (2023 layouts), optional test_truth.csv (not needed when both splits "
        "come as shards)",
    )
    out: Path = option(help="run folder to write")
    dev_shards: str | None = option(
        None,
        help="start from packed dev shards instead of DATA_DIR/dev: a folder, a folder URL (https://, s3://), "
        "a brace pattern or a pipe: command",
    )
    test_shards: str | None = option(None, help="start from packed test shards instead of DATA_DIR/test (as dev)")
    truth: Path | None = option(None, help="test truth file (figure_id,label) (default: DATA_DIR/test_truth.csv)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.data_dir is None and (self.dev_shards is None or self.test_shards is None):
            raise fail(self, "data_dir", "must be given unless both run.dev_shards and run.test_shards are")

    def given_shards(self) -> dict[str, str]:
        """split -> shards given instead of an image folder."""
        given = {"dev": self.dev_shards, "test": self.test_shards}
        return {split: str(v) for split, v in given.items() if v is not None}


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
    task: str = option(
        "membership",
        choices=DEMO_TASKS,
        help="membership: synth + run; audit / attribute: those commands on an audit-case / 3-subset build "
        "(output: runs/demo-<task> unless demo.out is given)",
    )


class Stages:
    """The one place a run's stage is run: skipped when its stage-complete record matches, logged, timed, recorded.

    A stage runs when it has no matching record (`fingerprint.records`): its
    record is removed first and written last, after every output exists.
    `derived` stages (evaluate, report) are cheap and always redone. A stage
    that runs may find what an interrupted attempt left (a score file without
    its run file, a model folder with checkpoints), so it runs with `force`
    (the run folder is locked: nothing else writes there), or as `resume(cfg)`
    returns it (an interrupted training continues from its checkpoint).
    """

    def __init__(self, out: Path, force: bool):
        self.out = out
        self.force = force
        self.log = JsonlLogger(out / "log.jsonl")
        self.timings: dict[str, float] = {}
        self.records = StageRecords(out)
        self.after = ""  # digest of the previous stage's record: redoing a stage redoes every later one

    def __call__(
        self, name: str, fn: Callable[[Any], Any], cfg: Any, outputs: Sequence[Path], derived: bool = False, *,
        inputs: Sequence[Path] = (), resume: Callable[[Any], Any] | None = None,
    ) -> Any:  # fmt: skip
        """Run `fn(cfg)` as stage `name` unless its record says it is done; returns its result (None if skipped)."""
        config = to_argv(dataclasses.replace(cfg, force=False))
        listing = listing_digest(inputs) if inputs else ""
        done = None if self.force or derived else self.records.complete(name, config, self.after, outputs, listing)
        if done is not None:
            log.info("[%s] complete (%s): skipped", name, self.records.path(name).relative_to(self.out))
            self.log.log(stage="run", step=name, skipped=True)
            self.after = done["digest"]
            return None
        self.records.invalidate(name)
        cfg = dataclasses.replace(cfg, force=True)
        if resume is not None and not self.force:
            cfg = resume(cfg)
        log.info("[%s] %s", name, command_line(cfg))
        t0 = time.perf_counter()
        result = fn(cfg)
        dt = time.perf_counter() - t0
        missing = [p for p in outputs if not Path(p).exists()]
        if missing:
            raise FingerprintError(f"{missing[0]}: stage {name} ended without writing it")
        self.after = self.records.write(name, config, self.after, outputs, listing, seconds=round(dt, 3))["digest"]
        self.timings[name] = round(dt, 2)
        self.log.log(stage="run", step=name, command=section_of(cfg), seconds=round(dt, 3))
        return result


@dataclass(frozen=True)
class RunPaths:
    """Where each stage writes inside the run folder (and where the shards are read from)."""

    out: Path
    given: dict[str, str] = dataclasses.field(default_factory=dict)  # split -> shards given instead of packing

    def shards(self, split: str) -> Path | str:
        return self.given.get(split) or self.out / "shards" / split

    def features(self, split: str) -> Path:
        """The split's features folder (one memory-mappable part per shard)."""
        return self.out / "features" / split

    def features_done(self, split: str) -> Path:
        """The file that marks the split's features complete."""
        return self.features(split) / SET_FILE

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


def check_data_dir(data_dir: Path | None, splits: Sequence[str] = SPLITS, truth: Path | None = None) -> Path | None:
    """Check DATA_DIR holds the split folders to pack; return the test truth file if there is one."""
    if truth is not None:
        if not Path(truth).is_file():
            raise FingerprintError(f"{truth}: truth file not found")
        return Path(truth)
    if data_dir is None:
        return None
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FingerprintError(f"{data_dir}: data folder not found")
    for split in splits:
        if not (data_dir / split).is_dir():
            raise FingerprintError(f"{data_dir}: no '{split}/' folder (expected dev/ and test/ in the 2023 layout)")
    found = data_dir / "test_truth.csv"
    return found if found.is_file() else None


@dataclass
class RunPlan:
    """Every stage config of a run, built (so checked) before the first stage starts, and the test figure ids."""

    cfg: RunConfig
    data: Path | None
    paths: RunPaths
    truth: Path | None
    test_ids: list[str] | None  # the real test images' figure ids (file names); None: read from given test shards
    pack: dict[str, PackConfig]
    train: TrainConfig
    embed: dict[str, EmbedConfig]
    index: dict[str, IndexConfig]
    compare: CompareConfig | None
    cluster: ClusterConfig | None
    report: ReportConfig | None
    fusion: dict[str, Any]  # adapt / pretrain (None when not run), profile and fuse configs


def plan_run(cfg: RunConfig) -> RunPlan:
    """Check the data folder, the input names (ids) and every stage's options, writing nothing.

    A bad option of any stage (a `--train-config` value, an unknown FAISS
    factory, ...) is an error here, not after packing and training.
    """
    given = cfg.given_shards()
    data, paths = None if cfg.data_dir is None else Path(cfg.data_dir), RunPaths(Path(cfg.out), given)
    packed = [s for s in SPLITS if s not in given]
    truth = check_data_dir(data, packed, cfg.truth)
    test_ids = input_ids(data, packed)
    if truth is not None:
        check_truth(truth, test_ids)
    train = _train_config(paths, cfg)
    check_index_factory(cfg.index_factory, train.embed_dim)
    embed, index = {}, {}
    for s in SPLITS:
        embed[s] = EmbedConfig(
            model=paths.model, shards=paths.shards(s), out=paths.features(s), fmaps=True, batch_size=cfg.batch_size,
            mixed_precision=cfg.mixed_precision, log=paths.log, **_common(cfg),
        )  # fmt: skip
        index[s] = IndexConfig(
            features=paths.features(s), out=paths.index(s), index_factory=cfg.index_factory, log=paths.log,
            **_common(cfg),
        )  # fmt: skip
    for name in (RUN_FILE_SCORER, *cfg.baselines):
        for s in SPLITS:
            score_config(name, s, paths, cfg, threshold=0.5)  # the test split's real threshold comes from dev
    if truth is not None:
        EvaluateConfig(scores=(paths.scores("test") / f"{RUN_FILE_SCORER}.csv",), truth=truth, n_boot=cfg.n_boot)
    feats = {"dev": paths.features("dev"), "test": paths.features("test")}
    return RunPlan(
        cfg=cfg, data=data, paths=paths, truth=truth, test_ids=test_ids, train=train, embed=embed, index=index,
        pack={s: PackConfig(src=data / s, out=paths.shards(s), seed=cfg.seed) for s in packed},
        compare=_compare_config(paths, cfg) if cfg.compare else None,
        cluster=ClusterConfig(**feats, out=paths.out, n_boot=cfg.n_boot, seed=cfg.seed) if cfg.cluster else None,
        report=ReportConfig(run_dir=paths.out, seed=cfg.seed) if cfg.report else None,
        fusion=_fusion_configs(paths, cfg),
    )  # fmt: skip


def input_ids(data_dir: Path | None, splits: Sequence[str] = SPLITS) -> list[str] | None:
    """The test split's real figure ids (file names); any name clash or unusable real name is an error now.

    Only the `splits` packed from DATA_DIR are read; None when the test split is given as shards.
    """
    ids = None
    for split in splits:
        layout, images = find_sources(data_dir / split)
        check_split_classes(data_dir / split, split, layout, images)
        keys = make_keys(images)  # raises on a real image's unusable or repeated name, naming the files
        if split == "test":
            for image in images:
                if image.role == "real" and image.problem is not None:
                    raise FingerprintError(f"{image.path}: {image.problem}; {_EVERY_TEST_IMAGE}")
            ids = sorted(k for k, image in zip(keys, images) if image.role == "real")
    return ids


_EVERY_TEST_IMAGE = "the run file must list every real test image (fix or remove it)"
#: the folders each split of a run needs, per layout: (role, label or None for any, folder named in the error)
_NEEDED = {
    ("dev", "dev"): [("generated", None, "generated/"), ("real", "used", "used/"), ("real", "not_used", "not_used/")],
    ("dev", "seed"): [("generated", None, "generated/"), ("real", "used", "real_used/"),
                      ("real", "not_used", "real_unused/")],
    ("test", "test"): [("generated", None, "generated_1/"), ("real", None, "real_unknown_1/")],
}  # fmt: skip


def check_split_classes(folder: Path, split: str, layout: str, images: Sequence) -> None:
    """A run's dev split needs a generated pool and both real classes, the test split generated and real images:
    one missing (or holding no usable image) is an error naming its folder, before any stage runs."""
    needed = _NEEDED.get((split, layout)) or _NEEDED[(split, split)]
    usable = Counter((i.role, i.label) for i in images if i.problem is None)
    names = ", ".join(name for *_, name in needed)
    for role, label, name in needed:
        count = sum(c for (r, lab), c in usable.items() if r == role and (label is None or lab == label))
        if count == 0:
            where = folder if layout == "manifest" else folder / name.rstrip("/")
            raise FingerprintError(f"{where}: missing or holds no usable image (the {split} split needs {names})")


def check_truth(truth: Path, test_ids: list[str] | None) -> None:
    """The truth file reads (`metrics.read_truth`) and labels exactly the real test images: an error naming the
    truth file now, before any stage, rather than at evaluate."""
    labels = read_truth(truth)
    if test_ids is None:
        return
    missing = [i for i in test_ids if i not in labels]
    extra = sorted(set(labels) - set(test_ids))
    if missing:
        raise FingerprintError(
            f"{truth}: {len(missing)} real test image(s) have no label (first: {', '.join(missing[:3])})"
        )
    if extra:
        raise FingerprintError(f"{truth}: {len(extra)} label(s) for no real test image (first: {', '.join(extra[:3])})")


def check_index_factory(factory: str, dim: int) -> None:
    """Refuse a FAISS factory string FAISS cannot build for `dim`-dimensional embeddings (before any stage runs)."""
    try:
        faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)
    except Exception as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ConfigError(f"run.index_factory: FAISS cannot build {factory!r} for {dim} dimensions ({reason})") from e


def run_pipeline(cfg: RunConfig) -> dict:
    """pack -> train -> embed -> index -> score (+ baselines) -> compare -> cluster -> evaluate -> report.

    Splits given as shards (`dev_shards`, `test_shards`: local or by URL) are
    read from there instead of being packed from DATA_DIR.
    """
    plan = plan_run(cfg)
    out = plan.paths.out
    if cfg.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "1"
    with folder_lock(out, "fingerprint run"):
        remove_stale_temporaries(out, recursive=True)
        check_writable(out)
        if plan.paths.given:
            write_json(out / "shards.json", plan.paths.given)
        return _run_stages(plan)


def _run_stages(plan: RunPlan) -> dict:
    cfg, paths, out, truth = plan.cfg, plan.paths, plan.paths.out, plan.truth
    stage = Stages(out, cfg.force)
    t0 = time.perf_counter()
    for s, pack in plan.pack.items():
        stage(f"pack-{s}", run_pack, pack, [paths.shards(s) / "manifest.json"], inputs=[pack.src])
    if "test" in plan.pack:
        check_test_pack(plan.pack["test"].src, paths.shards("test"))
    fusion = plan.fusion
    if fusion["adapt"] is not None:
        stage("adapt", run_adapt, fusion["adapt"], [paths.model / METRIC_META])
    if fusion["pretrain"] is not None:
        stage("pretrain", run_pretrain, fusion["pretrain"], [paths.pretrain / BACKBONE_FILE])
    stage("train", run_train, plan.train, [paths.model / "model.safetensors"], resume=_resume_training)
    _embed_and_index(stage, paths, plan)
    stage("profile", run_profile, fusion["profile"], [paths.profile(s) for s in SPLITS])
    stage("fuse", run_fuse, fusion["fuse"], [paths.fusion])
    warnings = _score(stage, paths, cfg)
    check_run_file(paths, plan.test_ids)
    if plan.compare is not None:
        stage("compare", run_compare, plan.compare, [out / "compare"])
    if plan.cluster is not None:
        stage("cluster", run_cluster, plan.cluster, [out / "cluster"])
    metrics = _evaluate(stage, paths, truth, cfg) if truth is not None else None
    if truth is None:
        log.info("no test truth (run.truth, DATA_DIR/test_truth.csv): scores and run file written, nothing to evaluate")
    if plan.report is not None:
        stage("report", run_report, plan.report, [out / "report.html"], derived=True)
    total = time.perf_counter() - t0
    summary = {
        "data_dir": None if plan.data is None else str(plan.data),
        "shards": {s: str(paths.shards(s)) for s in SPLITS},
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


def check_test_pack(src: Path, shards: Path) -> None:
    """A real test image that pack skipped (unreadable, too large) is an error naming it: it has no score."""
    for skip in read_manifest(shards).get("skipped", []):
        if skip.get("role") == "real":
            raise FingerprintError(
                f"{src / skip['path']}: unreadable test image ({skip['reason']}); {_EVERY_TEST_IMAGE}"
            )


def check_run_file(paths: RunPaths, test_ids: list[str] | None) -> None:
    """The run file must pass `fingerprint validate` against the real test images' ids (less any skipped at pack).

    With the test split given as shards (`test_ids` None), the ids are the real images' keys as embedded.
    """
    if test_ids is None:
        keys, roles, _ = FeatureStore.open(paths.features("test")).rows()
        ids = sorted(str(k) for k, r in zip(keys, roles) if r == "real")
    else:
        skipped = {Path(s["path"]).stem for s in read_manifest(paths.shards("test")).get("skipped", [])}
        ids = [i for i in test_ids if i not in skipped]
        if len(ids) < len(test_ids):
            log.warning("run.csv: %d real test image(s) were unreadable (skipped at pack) and are not in it",
                        len(test_ids) - len(ids))  # fmt: skip
    run_file = paths.out / "run.csv"
    problems = validate(run_file, ids)
    if problems:
        raise FingerprintError(
            f"{run_file}: {problems[0]} ({len(problems)} problem(s) against the {len(ids)} real test images' ids)"
        )


def _common(cfg: RunOptions) -> dict[str, Any]:
    """seed and threads, which every Accelerate/torch stage takes from the run."""
    return {"seed": cfg.seed, "threads": cfg.threads}


def _train_config(paths: RunPaths, cfg: RunConfig) -> TrainConfig:
    given: dict[str, Any] = {"epochs": cfg.epochs} if cfg.epochs is not None else {}
    if cfg.pretrain:
        given["weights"] = paths.pretrain / BACKBONE_FILE
    given |= {"calibration": cfg.rule, "calibration_scale": cfg.scale}
    try:
        return config_from_file(
            TrainConfig, cfg.train_config, shards=paths.shards("dev"), out=paths.model, backbone=cfg.backbone,
            image_size=cfg.image_size, mixed_precision=cfg.mixed_precision, **_common(cfg), **given,
        )  # fmt: skip
    except ConfigError as e:
        raise ConfigError(f"{cfg.train_config}: {e}" if cfg.train_config else str(e)) from None


def stage_config(cls: type, cfg: RunOptions, required: dict[str, Any], defaults: dict[str, Any] | None = None) -> Any:
    """A stage's config: run-level `defaults`, then the stage's table of `cfg.stage_config`, then `required`."""
    where = cfg.stage_config
    values = {} if where is None else values_from_mapping(cls, load_config_file(where, cls.SECTION), str(where))
    return cls(**{**(defaults or {}), **values, **required})


def _fusion_configs(paths: RunPaths, cfg: RunConfig) -> dict[str, Any]:
    """adapt (when the k32x space or pretraining needs its metric), pretrain, profile and fuse configs."""
    shards = tuple(paths.shards(s) for s in SPLITS)
    runtime = {**_common(cfg), "mixed_precision": cfg.mixed_precision}
    configs: dict[str, Any] = {"adapt": None, "pretrain": None}
    if "k32x" in cfg.spaces or cfg.pretrain:
        required = {"shards": shards, "out": paths.model, "log": paths.log, **runtime}
        configs["adapt"] = stage_config(AdaptConfig, cfg, required)
    if cfg.pretrain:
        required = {"shards": shards, "out": paths.pretrain, "log": paths.log, "metric": paths.model, **runtime}
        configs["pretrain"] = stage_config(PretrainConfig, cfg, required, {"backbone": cfg.backbone})
    spaces = tuple(cfg.spaces) + (("emb",) if cfg.pretrain and "emb" not in cfg.spaces else ())
    required = {"dev": paths.shards("dev"), "test": paths.shards("test"), "out": paths.out / "profile"}
    required |= {"log": paths.log, "seed": cfg.seed, "threads": cfg.threads}
    if "k32x" in spaces:
        required["metric"] = paths.model
    if "emb" in spaces:
        required["descriptor"] = paths.pretrain if cfg.pretrain else paths.model
    configs["profile"] = profile = stage_config(ProfileConfig, cfg, required, {"spaces": spaces})
    fit = {"dev": paths.profile("dev"), "out": paths.fusion, "log": paths.log, "seed": cfg.seed}
    configs["fuse"] = stage_config(
        FuseConfig, cfg, fit, {"spaces": profile.spaces, "rule": cfg.rule, "scale": cfg.scale}
    )
    return configs


def _resume_training(cfg: TrainConfig) -> TrainConfig:
    """An interrupted training continues from its newest complete checkpoint if that was the same training."""
    ckpt = resumable_checkpoint(cfg)
    if ckpt is None:
        return cfg
    log.info("[train] continuing the interrupted training from %s", ckpt)
    return dataclasses.replace(cfg, resume="latest", force=False)


def _embed_and_index(stage: Stages, paths: RunPaths, plan: RunPlan) -> None:
    for s in SPLITS:
        stage(f"embed-{s}", run_embed, plan.embed[s], [paths.features_done(s)])
        stage(f"index-{s}", run_index, plan.index[s], [paths.index(s), paths.index(s).with_suffix(".json")])


def _split_sizes(shards_dir: Path | str) -> tuple[int, int]:
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


def score_config(
    name: str, split: str, paths: RunPaths, cfg: RunOptions, threshold: float | None = None
) -> ScoreConfig:
    """The score stage of scorer `name` on `split`: its inputs from the registry's declared needs.

    dev: untrained scorers are calibrated on the labelled dev split they score;
    scorers fitted on dev labels take the threshold stored with their model,
    chosen out of sample (fused: on out-of-fold dev scores; relation: on its
    held-out validation images). test: the dev stage's threshold, on the same
    per-split scale (read from its sidecar unless `threshold` is given), not a
    second computation of every dev score.
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
        if threshold is None:
            args["threshold"], args["scale"] = _threshold(paths.scores("dev") / f"{name}.csv")
        else:
            args["threshold"] = threshold
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
            # the test config reads the dev threshold, so it is built after the dev stage ran
            score = score_config(name, s, paths, cfg)
            stage(f"score-{name}-{s}", run_score, score, [*score.outputs(), score.out.with_suffix(".json")])
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


def _compare_config(paths: RunPaths, cfg: RunOptions) -> CompareConfig:
    # untrained scorers only: the dev relation/seed-rule scores come from a model trained on those images
    stacked = tuple(b for b in cfg.baselines if b in untrained_scorers())
    features = {"features": ("profile", "baselines"), "baselines": stacked} if stacked else {}
    return CompareConfig(
        dev=paths.features("dev"), test=paths.features("test"), out=paths.out, dev_scores=paths.scores("dev"),
        test_scores=paths.scores("test"), n_boot=cfg.n_boot, seed=cfg.seed, **features,
    )  # fmt: skip


def _evaluate(stage: Stages, paths: RunPaths, truth: Path, cfg: RunConfig) -> dict:
    """Every test score file against the truth -> metrics.json (with the dev numbers where a stage measured them)."""
    out = paths.out
    with atomic_path(out / "test_truth.csv") as tmp:
        shutil.copyfile(truth, tmp)
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
    """Build the built-in benchmark once (cached in data_dir), then run the pipeline on it (or the task's demo)."""
    if cfg.task != "membership":
        from fingerprint import demos

        if cfg.out == Path("runs/demo"):
            cfg = dataclasses.replace(cfg, out=Path(f"runs/demo-{cfg.task}"))
        return demos.run_audit_demo(cfg) if cfg.task == "audit" else demos.run_attribute_demo(cfg)
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
