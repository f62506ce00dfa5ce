"""Episodic training of the relation network with Accelerate.

Each step is one episode per process: a class-balanced batch of real query
images (streamed, each rank reading its own shards) and, for each query, K
generated support images (its nearest in the current embedding space, plus
random ones). The K relation logits are pooled into one membership logit and
trained with BCE against used / not used. Supports come from a memory bank:
the generated pool's embeddings and feature maps, computed without gradients
and refreshed (with the FAISS index) every `refresh_every` steps; with
separate backbones, or `support="encode"`, the supports are re-encoded with
gradients instead.

Defaults are sized for the demo on 2 CPU cores (500 generated + 160 real dev
images at 128 px, well under the 2-3 minute budget): the ResNet-18 backbone
and the embedding projection stay at their (seeded) random initialisation
with BatchNorm statistics as built (`freeze="layer4"`, `train_embed=False`,
`bn="frozen"`), and only the relation head and pooling are trained. That
makes the memory bank static (computed once) and a step costs one forward
pass of its queries. Why: measured on the medium synthetic benchmark, the
unpooled layer4 maps of a random ResNet-18 already rank near-copies well
(nearest-neighbour ROC-AUC 0.88 on the dev reals), and with 128 labelled
training images every trained variant tried did worse on held-out images:
training the embedding projection memorised the training queries (best
validation AUC 0.70, against 0.79 with it fixed), training layer4 from random
initialisation was unstable (0.51), recalibrating BatchNorm on the pool lowered
the random features' AUC to 0.74, and geometric augmentation of the queries
breaks their alignment with their generated near-copies, which is the
signal (default `augment=False`). The trade: the backbone learns nothing
here; with pretrained weights (`weights=`) or more data and a GPU, set
`freeze`, `train_embed`, `bn` (recalibrate or batch) and `augment`.

Backbone BatchNorm: `bn="frozen"` keeps the statistics as built or loaded
(eval mode); `bn="recalibrate"` recomputes them over a fixed sample of the
generated pool at every bank refresh, so queries and bank see the same
normalisation and training matches inference; `bn="batch"` uses ordinary
batch statistics for the queries.

Checkpoints (`accelerator.save_state`, rotated) are written at the end of each
epoch together with `train_state.json` (counters, early-stopping state), which
also marks the checkpoint complete; `resume="latest"` continues from the newest
complete one and ends with the weights an uninterrupted run would have (same
seed, CPU). A NaN/inf loss stops the run before the optimizer step.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from fingerprint.episodes import (
    Bank,
    BalancedQueries,
    SupportSampler,
    bank_support_fn,
    dev_reals,
    nearest,
    pair_targets,
    split_dev,
)
from fingerprint.models import (
    Backbone,
    FingerprintModel,
    ModelConfig,
    build_model,
    count_parameters,
    describe,
    save_model,
)
from fingerprint.stream import StreamConfig, load_all, make_loader
from fingerprint.utils import FingerprintError, JsonlLogger, read_json, seed_everything, set_threads, write_json

log = logging.getLogger(__name__)

MIXED_PRECISION = ("no", "fp16", "bf16")
SUPPORTS = ("auto", "bank", "encode")
BN_MODES = ("frozen", "recalibrate", "batch")
FREEZE = ("none",) + Backbone.STAGES
CALIBRATION_RULES = ("max_f1", "youden")
STATE_FILE = "train_state.json"
LOG_FILE = "train_log.jsonl"


@dataclass
class TrainConfig:
    """Everything `fingerprint train` can set (CLI flags are these names in kebab-case)."""

    # model
    backbone: str = "resnet18"
    shared: bool = True
    relation: str = "light"
    pool: str = "max"
    image_size: int = 128
    embed_dim: int = 128
    seed_stem: bool = False
    relation_dim: int = 32
    relation_hidden: int = 64
    weights: str | None = None  # local torchvision ResNet state dict
    freeze: str = "layer4"  # freeze the backbone up to and including this stage (none|stem|layer1..layer4)
    train_embed: bool = False  # train the embedding projection (else it stays a fixed random projection)
    # episodes
    episodes: str = "nearest"  # nearest | pairs (the seed's pair labelling)
    queries: int = 16  # real images per episode and process (half used, half not used)
    k: int = 8  # generated supports per query
    k_random: int = 2  # of which random (the rest are the nearest by embedding)
    support: str = "auto"  # bank | encode | auto (bank when the backbone is shared)
    refresh_every: int = 8  # steps between memory-bank / FAISS-index refreshes
    bn: str = "frozen"  # frozen | recalibrate | batch
    bn_images: int = 128  # generated images used to recalibrate BatchNorm statistics
    augment: bool = False  # flips / small affine / intensity jitter of the queries
    val_fraction: float = 0.2
    # optimisation
    epochs: int = 12
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: float = 0.1  # fraction of optimizer steps spent warming up (then cosine decay)
    grad_accum: int = 1
    clip_grad: float = 1.0  # max gradient norm; 0 disables
    patience: int = 4  # epochs without a better validation AUC before stopping; 0 disables
    calibration: str = "max_f1"  # threshold rule on the validation scores
    # runtime
    mixed_precision: str | None = None  # no | fp16 | bf16; None: the launcher's setting, else no (fp32)
    channels_last: bool = False
    batch_size: int = 64  # images per forward when encoding the pool and validating
    num_workers: int = 0
    threads: int | None = None  # torch/FAISS CPU threads per process (default: cores / local processes)
    seed: int = 0
    keep_checkpoints: int = 2
    log_every: int = 1
    on_error: str = "raise"  # raise | skip (unreadable samples)
    resume: str | None = None  # None | "latest" | a checkpoint folder
    force: bool = False

    def model_config(self) -> ModelConfig:
        names = {f.name for f in fields(ModelConfig)}
        return ModelConfig(**{k: v for k, v in asdict(self).items() if k in names})

    def support_mode(self) -> str:
        return ("bank" if self.shared else "encode") if self.support == "auto" else self.support

    def check(self) -> None:
        self.model_config()
        choices = {
            "episodes": ("nearest", "pairs"),
            "support": SUPPORTS,
            "bn": BN_MODES,
            "freeze": FREEZE,
            "mixed_precision": MIXED_PRECISION,
            "calibration": CALIBRATION_RULES,
            "on_error": ("raise", "skip"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed and not (name == "mixed_precision" and self.mixed_precision is None):
                raise FingerprintError(
                    f"train: {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )
        for name in (
            "queries",
            "k",
            "refresh_every",
            "epochs",
            "grad_accum",
            "batch_size",
            "keep_checkpoints",
            "log_every",
            "bn_images",
        ):
            if getattr(self, name) < 1:
                raise FingerprintError(f"train: {name} must be >= 1, got {getattr(self, name)}")
        if self.queries % 2:
            raise FingerprintError(f"train: queries must be even (half used, half not used), got {self.queries}")
        if not 0 <= self.k_random <= self.k:
            raise FingerprintError(f"train: k-random must be between 0 and k={self.k}, got {self.k_random}")
        if self.lr <= 0 or self.weight_decay < 0 or self.clip_grad < 0 or not 0 <= self.warmup < 1:
            raise FingerprintError("train: need lr > 0, weight-decay >= 0, clip-grad >= 0 and 0 <= warmup < 1")
        if self.support_mode() == "bank" and not self.shared:
            raise FingerprintError("train: memory-bank supports need a shared backbone (use --support encode)")
        if self.patience < 0:
            raise FingerprintError(f"train: patience must be >= 0, got {self.patience}")


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
    def from_json(cls, d: dict) -> "TrainState":
        d = dict(d)
        d["best_loss"] = math.inf if d.get("best_loss") is None else d["best_loss"]
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class NonFiniteLoss(FingerprintError):
    """The loss became NaN or infinite; the run stops before the optimizer step."""


# ----------------------------------------------------------------------------- model helpers


def freeze_backbone(model: FingerprintModel, upto: str) -> list[nn.Module]:
    """Stop gradients for backbone stages up to and including `upto`; returns the frozen modules."""
    if upto == "none":
        return []
    stages = Backbone.STAGES[: Backbone.STAGES.index(upto) + 1]
    frozen = []
    for bb in model.backbones.values():
        for st in stages:
            for m in bb.stage_modules(st):
                m.requires_grad_(False)
                frozen.append(m)
    return frozen


def _backbone_bns(model: FingerprintModel) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        m for bb in model.backbones.values() for m in bb.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]


@contextlib.contextmanager
def preserved_modes(model: nn.Module) -> Iterator[None]:
    """Restore every submodule's train/eval flag on exit."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, t in flags:
            m.training = t


def set_train_modes(model: FingerprintModel, cfg: TrainConfig, frozen: list[nn.Module]) -> None:
    """Train mode, except backbone BatchNorm under bn="recalibrate" and frozen stages (eval)."""
    model.train()
    if cfg.bn in ("frozen", "recalibrate"):
        for m in _backbone_bns(model):
            m.eval()
    for m in frozen:
        m.eval()


@torch.no_grad()
def recalibrate_bn(model: FingerprintModel, images: Tensor, batch_size: int, autocast: Callable[[], Any]) -> None:
    """Recompute backbone BatchNorm running statistics as the plain average over `images` (generated).

    With separate backbones both are calibrated on these images (generated
    images stand in for real ones, which is what they imitate).
    """
    bns = _backbone_bns(model)
    momenta = [m.momentum for m in bns]
    device = next(model.parameters()).device
    with preserved_modes(model):
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        roles = ("real",) if model.cfg.shared else ("real", "generated")
        for i in range(0, len(images), batch_size):
            x = _to_device(images[i : i + batch_size], device, model)
            with autocast():
                for role in roles:
                    model.encode(x, role)
    for m, mom in zip(bns, momenta):
        m.momentum = mom


def _to_device(
    x: Tensor, device: torch.device, model: FingerprintModel | None = None, channels_last: bool = False
) -> Tensor:
    if device.type == "cuda":
        x = x.pin_memory()
    x = x.to(device, non_blocking=True)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@torch.no_grad()
def encode_images(
    model: FingerprintModel,
    images: Tensor,
    role: str,
    batch_size: int,
    autocast: Callable[[], Any],
    *,
    channels_last: bool = False,
    fmaps: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Eval-mode (emb, fmap) of `images` in chunks; fmap stays on the model's device."""
    device = next(model.parameters()).device
    embs, maps = [], []
    with preserved_modes(model):
        model.eval()
        for i in range(0, len(images), batch_size):
            x = _to_device(images[i : i + batch_size], device, channels_last=channels_last)
            with autocast():
                e, f = model.encode(x, role)
            embs.append(e.float().cpu())
            if fmaps:
                maps.append(f.contiguous())
    emb = torch.cat(embs) if embs else torch.zeros(0, model.cfg.embed_dim)
    return emb, (torch.cat(maps) if fmaps and maps else None)


def refresh_bank(
    accelerator: Any, model: FingerprintModel, pool_keys: list[str], pool: Tensor, calib: Tensor, cfg: TrainConfig
) -> Bank:
    """Recalibrate BatchNorm, encode the generated pool (split across processes, then gathered), index it."""
    if cfg.bn != "frozen":
        recalibrate_bn(model, calib, cfg.batch_size, accelerator.autocast)
    n, world, rank = len(pool), accelerator.num_processes, accelerator.process_index
    chunk = math.ceil(n / world)
    ids = torch.arange(rank * chunk, (rank + 1) * chunk).clamp_(max=n - 1)
    want_fmap = cfg.support_mode() == "bank"
    emb, fmap = encode_images(
        model,
        pool[ids],
        "generated",
        cfg.batch_size,
        accelerator.autocast,
        channels_last=cfg.channels_last,
        fmaps=want_fmap,
    )
    if world > 1:
        emb = accelerator.gather(emb.to(accelerator.device)).cpu()
        fmap = accelerator.gather(fmap) if fmap is not None else None
    emb = emb[:n]
    fmap = fmap[:n] if fmap is not None else None
    return Bank.build(pool_keys, emb, fmap)


# ----------------------------------------------------------------------------- optimisation


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms and scalars."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)


def warmup_cosine(total_steps: int, warmup_steps: int) -> Any:
    """LR multiplier: linear warm-up to 1, then cosine decay to 0 at `total_steps`."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return f


def episode_loss(out: dict[str, Tensor], labels: Tensor, mode: str) -> Tensor:
    """BCE with logits: pooled logit vs the query label (nearest), or every pair vs it (pairs)."""
    if mode == "pairs":
        pl = out["pair_logits"].float()
        return F.binary_cross_entropy_with_logits(pl, pair_targets(labels, pl.shape[1]))
    return F.binary_cross_entropy_with_logits(out["logit"].float(), labels)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else float("nan")


# ----------------------------------------------------------------------------- validation


@torch.no_grad()
def score_queries(
    model: FingerprintModel, images: Tensor, bank: Bank, pool: Tensor, cfg: TrainConfig, autocast: Callable[[], Any]
) -> Tensor:
    """Membership logits of real images against their k nearest generated images (as the scorer does)."""
    device = next(model.parameters()).device
    logits = []
    with preserved_modes(model):
        model.eval()
        for i in range(0, len(images), cfg.batch_size):
            x = _to_device(images[i : i + cfg.batch_size], device, channels_last=cfg.channels_last)
            with autocast():
                q_emb, q_fmap = model.encode(x, "real")
                ids = nearest(bank, q_emb, cfg.k)[1]
                if bank.fmap is not None:
                    s_fmap = bank.fmap[torch.as_tensor(ids, device=bank.fmap.device)]
                else:
                    s = pool[torch.as_tensor(ids).reshape(-1)]
                    _, s_fmap = model.encode(_to_device(s, device, channels_last=cfg.channels_last), "generated")
                    s_fmap = s_fmap.reshape(*ids.shape, *s_fmap.shape[1:])
                logits.append(model.pool(model.relate(q_fmap, s_fmap)).float().cpu())
    return torch.cat(logits) if logits else torch.zeros(0)


def validate(accelerator: Any, model: FingerprintModel, val: dict, bank: Bank, pool: Tensor, cfg: TrainConfig) -> dict:
    """Score this process's share of the validation images, gather, and compute ROC-AUC and loss."""
    from accelerate.utils import gather_object

    rank, world = accelerator.process_index, accelerator.num_processes
    idx = list(range(rank, len(val["key"]), world))
    logits = score_queries(model, val["image"][idx], bank, pool, cfg, accelerator.autocast)
    mine = [(val["key"][i], float(l), int(val["y"][i])) for i, l in zip(idx, logits.tolist())]
    rows = gather_object(mine) if world > 1 else mine
    rows = sorted(dict((k, (k, s, y)) for k, s, y in rows).values())
    keys = [r[0] for r in rows]
    lg = np.array([r[1] for r in rows], dtype=np.float64)
    y = np.array([r[2] for r in rows], dtype=np.int64)
    loss = float(F.binary_cross_entropy_with_logits(torch.from_numpy(lg), torch.from_numpy(y).double()))
    probs = 1.0 / (1.0 + np.exp(-lg))
    return {
        "keys": keys,
        "scores": probs.tolist(),
        "labels": y.tolist(),
        "val_auc": roc_auc(y, probs),
        "val_loss": loss,
    }


# ----------------------------------------------------------------------------- the run


def _make_accelerator(cfg: TrainConfig, out_dir: Path, accelerator: Any | None) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    project = ProjectConfiguration(
        project_dir=str(out_dir), automatic_checkpoint_naming=True, total_limit=cfg.keep_checkpoints
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator is None:
        try:
            accelerator = Accelerator(
                # a multi-process launch on a machine without GPUs: gloo processes on the CPU (otherwise
                # `accelerate launch --multi_gpu` there gives independent single-process runs)
                cpu=launched > 1 and not torch.cuda.is_available(),
                mixed_precision=cfg.mixed_precision,
                gradient_accumulation_steps=cfg.grad_accum,
                project_config=project,
                kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
            )
        except ValueError as e:
            raise FingerprintError(f"train: cannot set up Accelerate ({e})") from None
    else:
        accelerator.project_configuration = project
        accelerator.gradient_accumulation_steps = cfg.grad_accum
        if cfg.mixed_precision is not None and accelerator.mixed_precision != cfg.mixed_precision:
            log.warning(
                "train: using the given accelerator's mixed precision %r, not %r",
                accelerator.mixed_precision,
                cfg.mixed_precision,
            )
    if accelerator.num_processes != launched:
        raise FingerprintError(
            f"train: {launched} processes were launched but Accelerate formed a world of "
            f"{accelerator.num_processes} (set ACCELERATE_USE_CPU=1 on machines without GPUs)"
        )
    return accelerator


def _prepare_out_dir(out_dir: Path, cfg: TrainConfig, accelerator: Any) -> None:
    taken = (out_dir / "model.json").exists() or (out_dir / "checkpoints").exists()
    if cfg.resume is None and taken and not cfg.force:  # checked on every rank, so all of them stop
        raise FingerprintError(
            f"{out_dir}: holds a trained model or checkpoints (use --force to replace them, "
            "or --resume latest to continue)"
        )
    if cfg.resume is None and accelerator.is_main_process:
        for name in ("checkpoints", "best"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
        for name in ("model.json", "model.safetensors", LOG_FILE):
            (out_dir / name).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()


def find_checkpoint(out_dir: Path, resume: str) -> Path:
    """The checkpoint to resume from: `resume` itself, or the newest complete one under out_dir/checkpoints."""
    if resume != "latest":
        p = Path(resume)
        if not (p / STATE_FILE).is_file():
            raise FingerprintError(f"{p}: not a complete training checkpoint (no {STATE_FILE})")
        return p
    root = out_dir / "checkpoints"
    found = []
    for p in root.glob("checkpoint_*") if root.is_dir() else []:
        if (p / STATE_FILE).is_file() and p.name.split("_")[-1].isdigit():
            found.append((int(p.name.split("_")[-1]), p))
    if not found:
        raise FingerprintError(f"{root}: no complete checkpoint to resume from")
    return max(found)[1]


def _real_images(shards: Path, cfg: TrainConfig, keys: list[str]) -> dict:
    """The validation images, in memory (few), with 0/1 labels."""
    if not keys:
        return {"key": [], "image": torch.zeros(0, 1, cfg.image_size, cfg.image_size), "y": []}
    batch = load_all(
        shards,
        StreamConfig(roles=("real",), labels=("used", "not_used"), image_size=cfg.image_size, on_error=cfg.on_error),
    )
    want = set(keys)
    idx = [i for i, k in enumerate(batch["key"]) if k in want]
    return {
        "key": [batch["key"][i] for i in idx],
        "image": batch["image"][idx],
        "y": [1 if batch["label"][i] == "used" else 0 for i in idx],
    }


def train(cfg: TrainConfig, shards: str | os.PathLike, out_dir: str | os.PathLike, *, accelerator: Any = None) -> dict:
    """Train a relation network on a labelled dev shard folder; write the model to out_dir.

    Writes out_dir/model.safetensors + model.json (config, calibration, training
    summary, sha256), out_dir/best/ (best validation epoch so far),
    out_dir/checkpoints/checkpoint_<n>/ (accelerate state + train_state.json)
    and out_dir/train_log.jsonl. Returns the training summary.
    """
    t_start = time.time()
    cfg.check()
    shards, out_dir = Path(shards), Path(out_dir)
    accelerator = _make_accelerator(cfg, out_dir, accelerator)
    rank, world = accelerator.process_index, accelerator.num_processes
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    set_threads(cfg.threads or max(1, (os.cpu_count() or 1) // max(1, local)))
    seed_everything(cfg.seed)
    _prepare_out_dir(out_dir, cfg, accelerator)
    main = accelerator.is_main_process
    logger = JsonlLogger(out_dir / LOG_FILE, stage="train")

    # data: split, generated pool in memory, validation images in memory, queries streamed
    keys, labels = dev_reals(shards)
    if not keys:
        raise FingerprintError(f"{shards}: no labelled real images (used / not_used) to train on")
    train_keys, val_keys = split_dev(keys, labels, cfg.val_fraction, cfg.seed)
    label_of = dict(zip(keys, labels))
    gen = load_all(shards, StreamConfig(roles=("generated",), image_size=cfg.image_size, on_error=cfg.on_error))
    pool_keys, pool = gen["key"], gen["image"]
    if not pool_keys:
        raise FingerprintError(f"{shards}: no generated images to build support sets from")
    sampler = SupportSampler(len(pool), cfg.k, cfg.k_random, cfg.episodes, cfg.seed)
    calib = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.bn_images]]
    val = _real_images(shards, cfg, val_keys)
    n_used = sum(label_of[k] == "used" for k in train_keys)
    if min(n_used, len(train_keys) - n_used) < 1:
        raise FingerprintError(f"{shards}: the training split needs used and not-used images")
    per_epoch = max(1, round(len(train_keys) / (cfg.queries * world)))
    per_epoch = math.ceil(per_epoch / cfg.grad_accum) * cfg.grad_accum
    opt_total = per_epoch // cfg.grad_accum * cfg.epochs

    # model, optimizer, schedule
    model = build_model(cfg.model_config(), cfg.weights)
    frozen = freeze_backbone(model, cfg.freeze)
    if not cfg.train_embed:
        model.embed_head.requires_grad_(False)
    if cfg.bn == "frozen" and cfg.weights is None and any(p.requires_grad for p in model.backbones.parameters()):
        log.warning(
            "train: training backbone layers from random initialisation with BatchNorm statistics frozen "
            "at their initial values is unstable; consider --bn recalibrate or --bn batch"
        )
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg)
    # the prepared scheduler steps once per process per optimizer step
    sched_total = opt_total * world
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(sched_total, max(1, round(cfg.warmup * sched_total)) if cfg.warmup else 0)
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    net: FingerprintModel = accelerator.unwrap_model(model)
    device = accelerator.device
    mode = cfg.support_mode()
    if main:
        log.info(
            "train: %s; %d trainable; %d train / %d val real, %d generated; %d process(es), %d episodes/epoch "
            "of %d queries x K=%d (%s supports)",
            describe(net),
            count_parameters(net, True),
            len(train_keys),
            len(val_keys),
            len(pool),
            world,
            per_epoch,
            cfg.queries,
            cfg.k,
            mode,
        )

    state = TrainState()
    if cfg.resume is not None:
        ckpt = find_checkpoint(out_dir, cfg.resume)
        accelerator.load_state(str(ckpt))
        state = TrainState.from_json(read_json(ckpt / STATE_FILE))
        accelerator.project_configuration.iteration = state.checkpoint + 1
        log.info("train: resumed from %s (epoch %d, step %d)", ckpt, state.epoch, state.step)

    bank: Bank | None = None
    bank_at = -1  # optimizer step count the bank was computed at
    # with a frozen backbone, fixed BatchNorm statistics and a fixed embedding projection the bank never
    # changes: compute it once
    static_bank = cfg.bn == "frozen" and not any(
        p.requires_grad for p in [*net.backbones.parameters(), *net.embed_head.parameters()]
    )
    train_seconds = 0.0
    episodes_done = 0
    stop_reason = "epochs"
    last_ckpt = find_checkpoint(out_dir, "latest") if cfg.resume else None
    for epoch in range(state.epoch, cfg.epochs):
        if cfg.patience and state.bad_epochs >= cfg.patience:  # resumed a run that had already stopped early
            stop_reason = "early"
            break
        t0 = time.time()
        stream = make_loader(
            shards,
            StreamConfig(
                roles=("real",),
                labels=("used", "not_used"),
                batch_size=cfg.queries,
                image_size=cfg.image_size,
                augment=cfg.augment,
                num_workers=cfg.num_workers,
                seed=cfg.seed,
                epoch=epoch,
                shuffle=True,
                shuffle_buffer=4 * cfg.queries,
                on_error=cfg.on_error,
            ),
            rank=rank,
            world_size=world,
        )
        episodes = BalancedQueries(stream, train_keys, label_of, cfg.queries, per_epoch, where=f"rank {rank}")
        set_train_modes(net, cfg, frozen)
        losses = []
        bar = tqdm(
            episodes,
            total=per_epoch,
            desc=f"train epoch {epoch + 1}/{cfg.epochs}",
            unit="ep",
            disable=not main,
            leave=False,
        )
        for i, q in enumerate(bar):
            if bank is None or (i % cfg.refresh_every == 0 and bank_at != state.optimizer_steps and not static_bank):
                bank = refresh_bank(accelerator, net, pool_keys, pool, calib, cfg)
                bank_at = state.optimizer_steps
                set_train_modes(net, cfg, frozen)
            x = _to_device(q.image, device, channels_last=cfg.channels_last)
            y = q.label.to(device)

            def pick(q_emb: Tensor, _i: int = i) -> np.ndarray:
                return sampler.sample(q_emb, bank, epoch=epoch, step=_i, rank=rank, n_queries=len(y))

            with accelerator.accumulate(model):
                if mode == "bank":
                    out = model(x, support_fn=bank_support_fn(bank, pick))
                else:
                    q_emb = None
                    if cfg.episodes == "nearest":
                        with torch.no_grad(), preserved_modes(net), accelerator.autocast():
                            net.eval()
                            q_emb = net.encode(x, "real")[0]
                    ids = torch.as_tensor(pick(q_emb))
                    s = _to_device(pool[ids.reshape(-1)], device, channels_last=cfg.channels_last)
                    out = model(x, s.reshape(*ids.shape, *s.shape[1:]))
                loss = episode_loss(out, y, cfg.episodes)
                mean_loss = accelerator.reduce(loss.detach().float(), reduction="mean").item()
                if not math.isfinite(mean_loss):
                    raise NonFiniteLoss(
                        f"epoch {epoch + 1} step {i + 1}: loss is {mean_loss}; stopped before updating the weights "
                        f"(last good checkpoint: {last_ckpt or 'none'})"
                    )
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.clip_grad:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if accelerator.sync_gradients:
                state.optimizer_steps += 1
            state.step += 1
            episodes_done += 1
            losses.append(mean_loss)
            lr = scheduler.get_last_lr()[0]
            bar.set_postfix(loss=f"{mean_loss:.4f}")
            if state.step % cfg.log_every == 0:
                logger.log(step=state.step, epoch=epoch + 1, loss=mean_loss, lr=lr)
        bar.close()
        train_seconds += time.time() - t0

        # validation on the current weights (its bank is reused by the next epoch's first step)
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": time.time() - t0}
        result = None
        if val["key"]:
            if bank is None or (bank_at != state.optimizer_steps and not static_bank):
                bank = refresh_bank(accelerator, net, pool_keys, pool, calib, cfg)
                bank_at = state.optimizer_steps
            result = validate(accelerator, net, val, bank, pool, cfg)
            record.update(val_auc=result["val_auc"], val_loss=result["val_loss"])
            better = result["val_auc"] > state.best_auc + 1e-9 or (
                abs(result["val_auc"] - state.best_auc) <= 1e-9 and result["val_loss"] < state.best_loss
            )
            if better:
                state.best_epoch, state.best_auc, state.best_loss, state.bad_epochs = (
                    epoch + 1,
                    result["val_auc"],
                    result["val_loss"],
                    0,
                )
                if main:
                    save_model(net, out_dir / "best", extra={"epoch": epoch + 1, "validation": result})
            else:
                state.bad_epochs += 1
        else:
            state.best_epoch = epoch + 1
            if main:
                save_model(net, out_dir / "best", extra={"epoch": epoch + 1, "validation": None})
        state.epoch = epoch + 1
        state.history.append(record)
        logger.log(**record)
        if main:
            log.info(
                "train: epoch %d/%d loss %.4f%s (%.1fs)",
                epoch + 1,
                cfg.epochs,
                record["loss"],
                f" val_auc {record['val_auc']:.3f} val_loss {record['val_loss']:.4f}" if result else "",
                record["seconds"],
            )
        accelerator.wait_for_everyone()
        last_ckpt = save_checkpoint(accelerator, state)
        if cfg.patience and state.bad_epochs >= cfg.patience and state.epoch < cfg.epochs:
            stop_reason = "early"
            if main:
                log.info(
                    "train: no better validation AUC for %d epochs; stopping (best epoch %d, AUC %.3f)",
                    cfg.patience,
                    state.best_epoch,
                    state.best_auc,
                )
            break

    accelerator.wait_for_everyone()
    digest = state_digest(net)
    summary = finish(out_dir, cfg, state, world, stop_reason, main)
    summary.update(
        weights_sha256=digest,
        rank=rank,
        mixed_precision=accelerator.mixed_precision,
        seconds=time.time() - t_start,
        train_seconds=train_seconds,
        episodes_per_s=episodes_done * world / train_seconds if train_seconds else None,
        queries_per_s=episodes_done * world * cfg.queries / train_seconds if train_seconds else None,
    )
    logger.log(
        seconds=summary["seconds"],
        episodes_per_s=summary["episodes_per_s"],
        queries_per_s=summary["queries_per_s"],
        epochs=state.epoch,
        best_epoch=state.best_epoch,
        val_auc=summary["val_auc"],
        world_size=world,
    )
    accelerator.wait_for_everyone()
    return summary


def state_digest(model: nn.Module) -> str:
    """sha256 over the model's state (names, dtypes, values): equal on every rank after a synchronised run."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(
            t.detach().cpu().contiguous().numpy().tobytes()
            if t.dtype != torch.bfloat16
            else t.detach().float().cpu().numpy().tobytes()
        )
    return h.hexdigest()


def save_checkpoint(accelerator: Any, state: TrainState) -> Path:
    """accelerate save_state (rotated) + train_state.json, which marks the checkpoint complete."""
    state.checkpoint = accelerator.project_configuration.iteration
    where = Path(accelerator.project_dir) / "checkpoints" / f"checkpoint_{state.checkpoint}"
    accelerator.save_state()
    if accelerator.is_main_process:
        write_json(where / STATE_FILE, state.to_json())
    accelerator.wait_for_everyone()
    return where


def finish(out_dir: Path, cfg: TrainConfig, state: TrainState, world: int, stop_reason: str, main: bool) -> dict:
    """Write the final model (the best validation epoch) with its calibration; return the summary."""
    from fingerprint.metrics import calibrate_threshold
    from fingerprint.models import load_model

    best, meta = load_model(out_dir / "best")
    validation = meta.get("validation")
    calibration = None
    if validation:
        calibration = {
            "threshold": calibrate_threshold(validation["labels"], validation["scores"], cfg.calibration),
            "rule": cfg.calibration,
            "space": "probability",  # sigmoid of the pooled logit over the k nearest generated images
            "k": cfg.k,
            "epoch": meta["epoch"],
            "val_auc": validation["val_auc"],
            "keys": validation["keys"],
            "scores": validation["scores"],
            "labels": validation["labels"],
        }
    summary = {
        "model_dir": str(out_dir),
        "epochs": state.epoch,
        "steps": state.step,
        "optimizer_steps": state.optimizer_steps,
        "best_epoch": meta["epoch"],
        "val_auc": validation["val_auc"] if validation else None,
        "threshold": calibration["threshold"] if calibration else None,
        "stopped": stop_reason,
        "world_size": world,
    }
    if main:
        extra = {"calibration": calibration, "train": {"config": asdict(cfg), **summary, "history": state.history}}
        save_model(best, out_dir, extra=extra)
    return summary
