"""Options of `fingerprint run` and `fingerprint demo`, and where each stage writes inside a run folder.

`RunOptions` are shared by both commands; `RunConfig` adds the data and the
run folder, `DemoConfig` the built-in benchmark's level and the demo's task.
`RunPaths` names every file a run writes (layout in docs/design.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from fingerprint.benchdata.synth import LEVELS
from fingerprint.core.config import (
    check_fields,
    fail,
    option,
)
from fingerprint.core.vocab import BACKBONES, DEVICES, MIXED_PRECISION, SCORE_SCALES, SPACES, THRESHOLD_RULES
from fingerprint.embedding.features import SET_FILE
from fingerprint.membership.scorers import scorer_names
from fingerprint.membership.spaces import DEFAULT_SPACES

#: the scorer whose labels become the official run file (run.csv): the trained fusion (fingerprint.membership.fuse)
RUN_FILE_SCORER = "fused"


#: the other registered scorers, each one a baseline a run may add
BASELINES = tuple(n for n in scorer_names() if n != RUN_FILE_SCORER)


#: the baselines `fingerprint run` adds by default: pixel scorers, which need no CNN (no training, no embedding)
RUN_BASELINES = ("dcr", "ssim")


#: what `fingerprint demo` shows: the membership pipeline, or a collection-level command (fingerprint.tasks.demo)
DEMO_TASKS = ("membership", "audit", "attribute")


@dataclass(kw_only=True)
class RunOptions:
    """Options shared by `fingerprint run` and `fingerprint demo`; the defaults suit 2 CPU cores."""

    seed: int = option(0, help="seed of every stage")
    backbone: str = option("resnet18", choices=BACKBONES, help="ResNet trunk of the relation network")
    image_size: int = option(128, min=32, help="model input size (each stage resizes the packed images as it reads)")
    epochs: int | None = option(None, min=1, help="training epochs (default: the trainer's, sized for 2 CPU cores)")
    k: int = option(8, min=1, help="generated neighbours per real image when scoring (training uses 8)")
    batch_size: int = option(64, min=1, help="images per forward pass when embedding")
    device: str = option("auto", choices=DEVICES, help="where training and embedding run")
    mixed_precision: str = option(
        "no", choices=MIXED_PRECISION, help="autocast for training and embedding (fp32 'no' on CPUs)"
    )
    threads: int | None = option(None, min=1, help="torch/FAISS CPU threads per stage (default: each stage's own)")
    baselines: tuple[str, ...] = option(
        RUN_BASELINES,
        choices=BASELINES,
        help=f"comma-separated baseline scorers ({', '.join(BASELINES)}; '' for none); relation, emb_nn, emb_topk "
        "and seed_rule train and embed with the CNN",
    )
    seed_rule_max_pairs: int = option(
        500_000, min=0, help="run pairwise scorers (the seed's rule) only when real x generated is at most this"
    )
    pixel_baselines_max: int = option(
        50_000,
        min=0,
        help="run the pixel baselines (dcr, ssim: every image in memory) only up to this many generated images a split",
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

    baselines: tuple[str, ...] = option(
        BASELINES, choices=BASELINES, help=f"comma-separated baseline scorers ({', '.join(BASELINES)}; '' for none)"
    )

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
