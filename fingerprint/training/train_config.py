"""The train stage's options (`TrainConfig`) and the counters saved with each checkpoint (`TrainState`).

`train`, the training loop and the checkpoints all read them; they sit here,
below those three, so that none of them imports another for its types.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from fingerprint.core.config import check_fields, fail, option
from fingerprint.core.vocab import (
    BACKBONES,
    MIXED_PRECISION,
    ON_ERROR,
    POOLS,
    RELATIONS,
    SCORE_SCALES,
    THRESHOLD_RULES,
)
from fingerprint.embedding.models import Backbone, ModelConfig
from fingerprint.training.episodes import MODES

SUPPORTS = ("auto", "bank", "encode")
BN_MODES = ("frozen", "recalibrate", "batch")
FREEZE = ("none",) + Backbone.STAGES


@dataclass(kw_only=True)
class TrainConfig:
    """Options of the train stage (`fingerprint train`); the model fields are those of ModelConfig."""

    SECTION = "train"

    shards: str = option(
        help="labelled development shards (from 'fingerprint pack'): a folder, a folder URL (https://, s3://), "
        "a brace pattern or a pipe: command"
    )
    out: Path = option(help="model folder to write")
    # model
    backbone: str = option("resnet18", choices=BACKBONES, help="torchvision ResNet trunk")
    shared: bool = option(True, help="one backbone for real and generated images (--no-shared: two, as the seed did)")
    relation: str = option("light", choices=RELATIONS, help="relation head: light (cheap per pair) or seed (run 1's)")
    pool: str = option("max", choices=POOLS, help="how the K pair scores of a query become one logit")
    image_size: int = option(128, min=32, help="images are resized to this side on the fly")
    embed_dim: int = option(128, min=1, help="size of the unit-norm embedding")
    seed_stem: bool = option(False, help="the seed's stem: conv1 7x7/2 and no max-pool (4x larger feature maps)")
    relation_dim: int = option(32, min=1, help="light head: channels each feature map is projected to")
    relation_hidden: int = option(64, min=1, help="light head: width of the pair conv and MLP")
    weights: Path | None = option(None, help="local torchvision ResNet state-dict file (never downloaded)")
    freeze: str = option("layer4", choices=FREEZE, help="freeze the backbone up to and including this stage")
    train_embed: bool = option(False, help="train the embedding projection (else a fixed random projection)")
    # episodes
    episodes: str = option(
        "nearest", choices=MODES, help="nearest: pooled score over nearest+random supports; pairs: the seed's labels"
    )
    queries: int = option(16, min=2, help="real query images per episode and process (half used, half not used)")
    k: int = option(8, min=1, help="generated support images per query (and neighbours scored at validation)")
    k_random: int = option(2, min=0, help="how many of the K supports are random instead of nearest")
    support: str = option(
        "auto",
        choices=SUPPORTS,
        help="bank: support maps from a no-grad memory bank; encode: re-encode with gradients; auto: bank if shared",
    )
    refresh_every: int = option(8, min=1, help="episodes between memory-bank and FAISS-index refreshes")
    bn: str = option(
        "frozen",
        choices=BN_MODES,
        help="frozen: backbone BatchNorm statistics as built/loaded; recalibrate: recomputed on generated images "
        "at each refresh; batch: batch statistics for the queries",
    )
    bn_images: int = option(128, min=1, help="generated images used to recalibrate BatchNorm")
    augment: bool = option(False, help="flips, small affine and intensity jitter on the real queries")
    val_fraction: float = option(
        0.2, min=0, help="share of the labelled real images held out (stratified) for validation and calibration"
    )
    # optimisation
    epochs: int = option(12, min=1, help="maximum epochs (an epoch shows each training real image about once)")
    lr: float = option(1e-3, help="AdamW peak learning rate (> 0)")
    weight_decay: float = option(1e-4, min=0, help="AdamW weight decay (not on biases and norms)")
    warmup: float = option(0.1, min=0, help="fraction of optimizer steps of linear warm-up before the cosine decay")
    grad_accum: int = option(1, min=1, help="episodes accumulated per optimizer step")
    clip_grad: float = option(1.0, min=0, help="clip the gradient norm to this (0: off)")
    patience: int = option(4, min=0, help="stop after this many epochs without a better validation AUC (0: never)")
    calibration: str = option(
        THRESHOLD_RULES[0], choices=THRESHOLD_RULES, help="rule for the threshold on the held-out validation scores"
    )
    calibration_scale: str = option(
        SCORE_SCALES[0], choices=SCORE_SCALES, help="scale of that threshold (robust/rank: standardised per split)"
    )
    # runtime
    mixed_precision: str | None = option(
        None,
        choices=MIXED_PRECISION,
        help="autocast precision (default: the accelerate launch setting, else no; keep 'no' on CPUs without fast "
        "bf16)",
    )
    channels_last: bool = option(False, help="channels-last memory format (faster on recent GPUs)")
    batch_size: int = option(64, min=1, help="images per forward pass when encoding the generated pool and validating")
    num_workers: int = option(0, min=0, help="DataLoader workers reading the query stream")
    threads: int | None = option(
        None, min=1, help="CPU threads per process for torch and FAISS (default: cores / local processes)"
    )
    seed: int = option(0, help="random seed (split, sampling, initialisation)")
    keep_checkpoints: int = option(2, min=1, help="checkpoints kept (older ones are deleted)")
    log_every: int = option(1, min=1, help="write a train_log.jsonl record every this many episodes")
    on_error: str = option("raise", choices=ON_ERROR, help="raise on an unreadable sample, or skip it (counted)")
    resume: str | None = option(None, help="'latest' (newest complete checkpoint in the output) or a checkpoint folder")
    force: bool = option(False, help="replace an existing model and checkpoints in the output folder")

    def __post_init__(self) -> None:
        check_fields(self)
        self.model_config()
        if self.queries % 2:
            raise fail(self, "queries", f"must be even (half used, half not used), got {self.queries}")
        if self.k_random > self.k:
            raise fail(self, "k_random", f"must be between 0 and train.k={self.k}, got {self.k_random}")
        if self.lr <= 0:
            raise fail(self, "lr", f"must be > 0, got {self.lr}")
        if self.warmup >= 1:
            raise fail(self, "warmup", f"must be below 1, got {self.warmup}")
        if not self.val_fraction < 1:
            raise fail(self, "val_fraction", f"must be below 1, got {self.val_fraction}")
        if self.support_mode() == "bank" and not self.shared:
            raise fail(self, "support", "bank: memory-bank supports need a shared backbone (use encode)")

    def model_config(self) -> ModelConfig:
        names = {f.name for f in fields(ModelConfig)}
        return ModelConfig(**{k: v for k, v in asdict(self).items() if k in names})

    def support_mode(self) -> str:
        return ("bank" if self.shared else "encode") if self.support == "auto" else self.support


@dataclass
class TrainState:
    """Counters and early-stopping state saved with each checkpoint (as JSON, not pickle)."""

    epoch: int = 0  # epochs completed
    step: int = 0  # episodes completed (per process)
    optimizer_steps: int = 0
    best_epoch: int = -1
    best_auc: float = -1.0
    best_loss: float = math.inf
    bad_epochs: int = 0
    checkpoint: int = -1  # accelerate's automatic checkpoint iteration of this state
    history: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        d = asdict(self)
        d["best_loss"] = None if math.isinf(self.best_loss) else self.best_loss
        return d

    @classmethod
    def from_json(cls, d: dict) -> TrainState:
        d = dict(d)
        d["best_loss"] = math.inf if d.get("best_loss") is None else d["best_loss"]
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
