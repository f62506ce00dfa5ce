"""A run's plan: every stage config built, and so checked, before the first stage starts.

`plan_run(RunConfig)` checks the data folder and the input names (figure ids)
and builds the config of each stage from the run's options (`_common`,
`stage_config`, `score_config`, ...), so that a bad option of any stage is an
error before packing and training, not after.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import faiss

from fingerprint.analysis.cluster import ClusterConfig
from fingerprint.analysis.compare import CompareConfig
from fingerprint.core.config import (
    ConfigError,
    config_from_file,
    load_config_file,
    values_from_mapping,
)
from fingerprint.core.errors import FingerprintError
from fingerprint.core.vocab import SPLITS
from fingerprint.data.pack import PackConfig
from fingerprint.data.sources import find_sources, make_keys
from fingerprint.embedding.embed import EmbedConfig
from fingerprint.embedding.index import IndexConfig
from fingerprint.evaluation.evaluate import EvaluateConfig
from fingerprint.evaluation.metrics import read_truth
from fingerprint.evaluation.scorefiles import read_score_meta
from fingerprint.membership.fuse import FuseConfig
from fingerprint.membership.profile import ProfileConfig
from fingerprint.membership.score import ScoreConfig
from fingerprint.membership.scorers import get_scorer, untrained_scorers
from fingerprint.report.build import ReportConfig
from fingerprint.tasks.configs import RUN_FILE_SCORER, RunConfig, RunOptions, RunPaths
from fingerprint.training.adapt import AdaptConfig
from fingerprint.training.pretrain import BACKBONE_FILE, PretrainConfig
from fingerprint.training.train import TrainConfig


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
    cnn: tuple[str, ...] = ("train", "embed", "index")  # the CNN stages some output needs (`cnn_stages`)


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
        fusion=_fusion_configs(paths, cfg), cnn=cnn_stages(cfg),
    )  # fmt: skip


def cnn_stages(cfg: RunOptions) -> tuple[str, ...]:
    """The CNN stages ("train", "embed", "index") that the run's scorers, comparators and clustering need.

    The fused scorer reads the similarity profile (pixels and the learned linear metric): without an
    embedding or relation baseline, comparators, clustering or an `emb` space measured by the trained model,
    a run trains and embeds nothing.
    """
    needs = set().union(*(get_scorer(n).needs for n in (RUN_FILE_SCORER, *cfg.baselines)))
    embed = "features" in needs or cfg.compare or cfg.cluster
    train = embed or "model" in needs or ("emb" in cfg.spaces and not cfg.pretrain)
    stages = {"train": train, "embed": embed, "index": "index" in needs}
    return tuple(name for name, wanted in stages.items() if wanted)


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
                    raise FingerprintError(f"{image.path}: {image.problem}; {EVERY_TEST_IMAGE}")
            ids = sorted(k for k, image in zip(keys, images) if image.role == "real")
    return ids


EVERY_TEST_IMAGE = "the run file must list every real test image (fix or remove it)"
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


def _compare_config(paths: RunPaths, cfg: RunOptions) -> CompareConfig:
    # untrained scorers only: the dev relation/seed-rule scores come from a model trained on those images
    stacked = tuple(b for b in cfg.baselines if b in untrained_scorers())
    features = {"features": ("profile", "baselines"), "baselines": stacked} if stacked else {}
    return CompareConfig(
        dev=paths.features("dev"), test=paths.features("test"), out=paths.out, dev_scores=paths.scores("dev"),
        test_scores=paths.scores("test"), n_boot=cfg.n_boot, seed=cfg.seed, **features,
    )  # fmt: skip
