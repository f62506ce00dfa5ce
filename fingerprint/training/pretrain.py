"""Self-supervised copy-detection pretraining of the backbone (SSCD-style), streamed from the shards (optional).

`run_pretrain(PretrainConfig)` trains the relation model's trunk and its
embedding head (`fingerprint.embedding.models.FingerprintModel.encode`) on the
unlabelled pool, without a label:

- anchors are real images of every shard folder given (dev and test); a
  positive is a view of its anchor that imitates a generator's imprecision
  (small affine bend, blur, gamma/contrast, noise, a light blend with another
  real image: `generator_views`);
- optionally (`pair_share`), part of each batch is pseudo-pairs: a generated
  image streamed from this process's shards with its nearest real image
  (Lowe's ratio < `pair_ratio`), found in the metric of `fingerprint adapt`
  when `metric` is given, else in normalised 32 px pixels: the generator's
  own distortion, as its images show it;
- loss: InfoNCE over the batch (Oord et al. 2018; SSCD, Pizzi et al. CVPR
  2022) plus the KoLeo differential-entropy term (Sablayrolles et al. ICLR
  2019), which keeps distinct images apart: generic invariance otherwise
  erases the identity that membership needs.

Accelerate drives it (DDP under `accelerate launch`, mixed precision,
channels-last); each process streams its own generated shards; checkpoints
(`accelerator.save_state` + the state JSON, as training's) are written every
epoch and `resume="latest"` continues from the newest one with the weights an
uninterrupted run would have. Output: a model folder (`model.safetensors` +
`model.json`, so `profile --descriptor` can use its embedding) and
`backbone.safetensors` (torchvision key names), which `train --weights`
loads. Not a default stage of `fingerprint run` (`--pretrain` turns it on):
measured on CPU budgets it lowered membership ROC-AUC (docs/quality.md);
`launch/pretrain-gpu.toml` is the long GPU recipe.
"""

from __future__ import annotations

import itertools
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from fingerprint.core.config import check_fields, exists_error, fail, option
from fingerprint.core.distributed import make_accelerator, seed_everything, set_process_threads
from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import atomic_path, read_json, save_tensors
from fingerprint.core.logs import JsonlLogger
from fingerprint.core.vocab import BACKBONES, MIXED_PRECISION, ON_ERROR
from fingerprint.data.stream import StreamConfig, hash_seed, load_all, make_loader
from fingerprint.embedding.model_io import save_model
from fingerprint.embedding.models import FingerprintModel, ModelConfig
from fingerprint.training.adapt import load_metric
from fingerprint.training.checkpoints import find_checkpoint, save_checkpoint, state_digest
from fingerprint.training.loop import make_optimizer, to_device, warmup_cosine

log = logging.getLogger(__name__)

BACKBONE_FILE = "backbone.safetensors"
PRETRAIN_STATE = "train_state.json"


@dataclass(kw_only=True)
class PretrainConfig:
    """Options of the pretraining stage (`fingerprint pretrain`)."""

    SECTION = "pretrain"

    shards: tuple[str, ...] = option(
        positional=True, help="shards of the unlabelled pool (dev and test): folders, folder URLs, patterns or pipe:"
    )
    out: Path = option(help="model folder to write (model.safetensors, model.json, backbone.safetensors)")
    backbone: str = option("resnet18", choices=BACKBONES, help="torchvision ResNet trunk (the relation model's)")
    image_size: int = option(64, min=32, help="input side while pretraining")
    embed_dim: int = option(128, min=1, help="embedding size")
    embed_grid: int = option(4, min=1, help="the map is pooled to this grid before the projection")
    epochs: int = option(4, min=1, help="epochs (a checkpoint after each)")
    steps_per_epoch: int = option(50, min=1, help="optimizer steps per epoch and process")
    batch_size: int = option(64, min=4, help="anchors per step and process")
    lr: float = option(2e-3, min=1e-9, help="AdamW peak learning rate")
    weight_decay: float = option(1e-4, min=0, help="AdamW weight decay (not on biases and norms)")
    warmup: float = option(0.1, min=0, help="share of steps of linear warm-up before the cosine decay")
    temperature: float = option(0.1, min=1e-4, help="InfoNCE temperature")
    koleo: float = option(0.5, min=0, help="weight of the KoLeo entropy term")
    pair_share: float = option(0.5, min=0, help="share of each batch from pseudo-pairs (0: generator-like views only)")
    pair_ratio: float = option(0.9, min=0, help="Lowe's ratio a pseudo-pair must pass")
    metric: Path | None = option(None, help="metric folder from 'fingerprint adapt' to find pseudo-pairs in")
    view_rotate: float = option(4.0, min=0, help="views: max rotation (degrees)")
    view_blur: float = option(1.2, min=0, help="views: max Gaussian blur sigma (pixels)")
    view_noise: float = option(0.03, min=0, help="views: max noise std")
    view_blend: float = option(0.3, min=0, help="views: max weight of a blended other real (30%% of views)")
    mixed_precision: str | None = option(None, choices=MIXED_PRECISION, help="autocast (default: the launcher's)")
    channels_last: bool = option(False, help="channels-last memory format (faster on recent GPUs)")
    num_workers: int = option(0, min=0, help="DataLoader workers reading the generated stream")
    threads: int | None = option(None, min=1, help="CPU threads per process (default: cores / local processes)")
    keep_checkpoints: int = option(2, min=1, help="checkpoints kept")
    on_error: str = option("raise", choices=ON_ERROR, help="unreadable samples: stop, or skip and count them")
    resume: str | None = option(None, help="'latest' or a checkpoint folder")
    seed: int = option(0, help="random seed")
    log: Path | None = option(None, help="append a JSON-lines record here")
    force: bool = option(False, help="replace an existing model and checkpoints")

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.pair_share < 1:
            raise fail(self, "pair_share", f"must be below 1 (anchors need views too), got {self.pair_share}")
        if not 0 < self.pair_ratio <= 1:
            raise fail(self, "pair_ratio", f"must be in (0, 1], got {self.pair_ratio}")
        if not self.warmup < 1:
            raise fail(self, "warmup", f"must be below 1, got {self.warmup}")

    def model_config(self) -> ModelConfig:
        return ModelConfig(
            backbone=self.backbone, image_size=self.image_size, embed_dim=self.embed_dim, embed_grid=self.embed_grid
        )


@dataclass
class PretrainState:
    """Counters saved with each checkpoint (JSON, as training's)."""

    epoch: int = 0
    step: int = 0
    checkpoint: int = -1
    history: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- views and losses


def generator_views(x: torch.Tensor, g: torch.Generator, others: torch.Tensor, cfg: PretrainConfig) -> torch.Tensor:
    """Generator-like views of (B,1,S,S) images in [0,1]: affine bend, blur, gamma/contrast, noise, light blend."""
    b = x.shape[0]

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=g)

    a = u(-cfg.view_rotate, cfg.view_rotate) * math.pi / 180
    sc = 1 + u(-0.04, 0.04)
    th = torch.zeros(b, 2, 3)
    th[:, 0, 0], th[:, 0, 1] = torch.cos(a) / sc, -torch.sin(a) / sc
    th[:, 1, 0], th[:, 1, 1] = torch.sin(a) / sc, torch.cos(a) / sc
    th[:, 0, 2], th[:, 1, 2] = u(-0.08, 0.08), u(-0.08, 0.08)
    x = F.grid_sample(
        x, F.affine_grid(th, list(x.shape), align_corners=False), padding_mode="border", align_corners=False
    )
    sigma = float(torch.rand(1, generator=g)) * cfg.view_blur
    if sigma > 0.2:
        k = int(2 * math.ceil(2 * sigma) + 1)
        w = torch.exp(-((torch.arange(k) - k // 2).float() ** 2) / (2 * sigma**2))
        w = w / w.sum()
        x = F.conv2d(F.pad(x, (k // 2,) * 4, mode="replicate"), w.view(1, 1, 1, k))
        x = F.conv2d(x, w.view(1, 1, k, 1))
    wb = (u(0, cfg.view_blend) * (torch.rand(b, generator=g) < 0.3)).view(b, 1, 1, 1)
    x = (1 - wb) * x + wb * others
    gamma = torch.exp(u(-0.15, 0.15)).view(b, 1, 1, 1)
    x = x.clamp(1e-4, 1) ** gamma
    x = x * u(0.85, 1.15).view(b, 1, 1, 1) + u(-0.05, 0.05).view(b, 1, 1, 1)
    noise = torch.randn(x.shape, generator=g) * cfg.view_noise * float(torch.rand(1, generator=g))
    return (x + noise).clamp(0, 1)


def info_nce(a: torch.Tensor, p: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE: each anchor's positive against the batch's other positives (and vice versa)."""
    logits = a.float() @ p.float().T / temperature
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def koleo(z: torch.Tensor) -> torch.Tensor:
    """KoLeo: minus the mean log distance of each embedding to its nearest other one in the batch."""
    z = z.float()
    d = torch.cdist(z, z) + torch.eye(len(z), device=z.device) * 1e6
    return -torch.log(d.min(1).values + 1e-6).mean()


# ----------------------------------------------------------------------------- data


def load_reals(cfg: PretrainConfig, size: int) -> tuple[list[str], torch.Tensor]:
    """Every real image of the pool (all processes hold them: they are few), sorted by key."""
    keys, images = [], []
    for folder in cfg.shards:
        batch = load_all(folder, StreamConfig(roles=("real",), image_size=size, on_error=cfg.on_error))
        keys += batch["key"]
        images.append(batch["image"])
    if not keys:
        raise FingerprintError(f"{', '.join(map(str, cfg.shards))}: no real images to pretrain on")
    order = np.argsort(np.asarray(keys), kind="stable")
    return [keys[i] for i in order], torch.cat(images)[torch.from_numpy(order)]


def find_pairs(cfg: PretrainConfig, acc: Any, real_keys: list[str]) -> dict[str, int]:
    """This process's generated keys -> row of their nearest real image, where Lowe's ratio test passes."""
    if cfg.pair_share <= 0:
        return {}
    metric, size = None, 32
    if cfg.metric is not None:
        metric = load_metric(cfg.metric)
        size = int(metric.meta["size"])
    _, reals = load_reals(cfg, size)
    vr = _pair_space(reals, metric)
    pairs: dict[str, int] = {}
    stream = StreamConfig(roles=("generated",), image_size=size, batch_size=256, on_error=cfg.on_error)
    for folder in cfg.shards:
        for batch in make_loader(folder, stream, rank=acc.process_index, world_size=acc.num_processes):
            d = torch.cdist(torch.from_numpy(_pair_space(batch["image"], metric)), torch.from_numpy(vr))
            two = torch.topk(d, min(2, d.shape[1]), dim=1, largest=False)
            ok = two.values[:, 0] < cfg.pair_ratio * two.values[:, -1]
            pairs.update({k: int(r) for k, r, o in zip(batch["key"], two.indices[:, 0].tolist(), ok.tolist()) if o})
    return pairs


def _pair_space(images: torch.Tensor, metric) -> np.ndarray:
    v = images.reshape(len(images), -1).double()
    v = v - v.mean(1, keepdim=True)
    v = (v / v.norm(dim=1, keepdim=True).clamp_min(1e-6)).numpy()
    return metric.transform(v, metric.full) if metric is not None else v.astype(np.float32)


def paired_generated(cfg: PretrainConfig, acc: Any, pairs: dict[str, int], epoch: int) -> Iterator[tuple[int, Any]]:
    """(real row, generated image) pairs from this process's generated shards, shuffled per epoch, endless."""
    stream = StreamConfig(
        roles=("generated",), image_size=cfg.image_size, batch_size=8, shuffle=True, shuffle_buffer=256,
        epoch_batches=10**9, seed=cfg.seed, epoch=epoch, num_workers=cfg.num_workers, on_error=cfg.on_error,
    )  # fmt: skip
    loaders = [make_loader(f, stream, rank=acc.process_index, world_size=acc.num_processes) for f in cfg.shards]
    for batches in zip(*loaders):
        for batch in batches:
            for key, image in zip(batch["key"], batch["image"]):
                if key in pairs:
                    yield pairs[key], image


# ----------------------------------------------------------------------------- the stage


def run_pretrain(cfg: PretrainConfig, *, accelerator: Any = None) -> dict:
    """Pretrain the trunk and embedding on the pool; write cfg.out (model folder + backbone.safetensors)."""
    t0 = time.time()
    out = Path(cfg.out)
    if cfg.resume is None and (out / "model.json").exists() and not cfg.force:
        raise exists_error(cfg, out / "model.json")
    acc = accelerator or make_accelerator(
        cfg.mixed_precision, project_dir=out, keep_checkpoints=cfg.keep_checkpoints, find_unused_parameters=True
    )
    set_process_threads(cfg.threads, acc)
    if cfg.resume is None and acc.is_main_process:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    acc.wait_for_everyone()
    seed_everything(cfg.seed)
    real_keys, reals = load_reals(cfg, cfg.image_size)
    pairs = find_pairs(cfg, acc, real_keys)
    n_pairs = int(acc.reduce(torch.tensor([len(pairs)], device=acc.device), reduction="sum").item())
    model = FingerprintModel(cfg.model_config())
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg)
    total = cfg.epochs * cfg.steps_per_epoch * acc.num_processes
    schedule = warmup_cosine(total, max(1, round(cfg.warmup * total)) if cfg.warmup else 0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    state = _resume(cfg, acc)
    logger = JsonlLogger(out / "pretrain_log.jsonl", stage="pretrain")
    for epoch in range(state.epoch, cfg.epochs):
        record = train_epoch(cfg, acc, model, optimizer, scheduler, reals, pairs, epoch)
        state.epoch, state.step = epoch + 1, state.step + cfg.steps_per_epoch
        state.history.append(record)
        logger.log(**record)
        if acc.is_main_process:
            log.info(
                "pretrain: epoch %d/%d loss %.4f (%.1f s)", epoch + 1, cfg.epochs, record["loss"], record["seconds"]
            )
        acc.wait_for_everyone()
        save_checkpoint(acc, state)
    net = acc.unwrap_model(model)
    summary = {"epochs": state.epoch, "steps": state.step, "n_real": len(real_keys), "n_pairs": n_pairs}
    summary |= {"world_size": acc.num_processes, "weights_sha256": state_digest(net), "seconds": time.time() - t0}
    if acc.is_main_process:
        save_pretrained(net, out, {"config": _plain(asdict(cfg)), **summary, "history": state.history})
    acc.wait_for_everyone()
    JsonlLogger(cfg.log).log(stage="pretrain", **summary)
    return summary


def _plain(d: dict) -> dict:
    return {
        k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if isinstance(v, tuple) else v) for k, v in d.items()
    }


def _resume(cfg: PretrainConfig, acc: Any) -> PretrainState:
    if cfg.resume is None:
        return PretrainState()
    ckpt = find_checkpoint(cfg.out, cfg.resume)
    acc.load_state(str(ckpt))
    state = PretrainState(
        **{k: v for k, v in read_json(ckpt / PRETRAIN_STATE).items() if k in PretrainState.__dataclass_fields__}
    )
    acc.project_configuration.iteration = state.checkpoint + 1
    log.info("pretrain: resumed from %s (epoch %d)", ckpt, state.epoch)
    return state


def train_epoch(cfg, acc, model, optimizer, scheduler, reals: torch.Tensor, pairs: dict, epoch: int) -> dict:
    """`steps_per_epoch` steps; every draw is seeded by (seed, epoch, rank), so a resumed epoch repeats exactly."""
    t0 = time.time()
    g = torch.Generator().manual_seed(hash_seed(cfg.seed, epoch, acc.process_index))
    n_pair = int(cfg.batch_size * cfg.pair_share) if pairs else 0
    stream = paired_generated(cfg, acc, pairs, epoch) if n_pair else iter(())
    model.train()
    losses = []
    for _ in range(cfg.steps_per_epoch):
        anchor, positive = _batch(cfg, reals, stream, n_pair, g)
        with acc.autocast():
            za = model(to_device(anchor, acc.device, cfg.channels_last))["emb"]
            zp = model(to_device(positive, acc.device, cfg.channels_last))["emb"]
            loss = info_nce(za, zp, cfg.temperature) + cfg.koleo * koleo(za)
        if not torch.isfinite(loss):
            raise FingerprintError(f"pretrain: non-finite loss at epoch {epoch + 1} (lower pretrain.lr)")
        optimizer.zero_grad(set_to_none=True)
        acc.backward(loss)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
    return {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": time.time() - t0}


def _batch(cfg: PretrainConfig, reals: torch.Tensor, stream: Iterator, n_pair: int, g: torch.Generator):
    """(anchors, positives): views of distinct random reals, then pseudo-pairs (real anchor, generated positive)."""
    n_view = cfg.batch_size - n_pair
    rows = torch.randperm(len(reals), generator=g)[:n_view]
    if len(rows) < n_view:
        rows = torch.randint(len(reals), (n_view,), generator=g)
    others = reals[torch.randint(len(reals), (n_view,), generator=g)]
    anchors, positives = [reals[rows]], [generator_views(reals[rows], g, others, cfg)]
    got = list(itertools.islice(stream, n_pair))
    if got:
        anchors.append(reals[torch.tensor([r for r, _ in got])])
        positives.append(torch.stack([img for _, img in got]))
    return torch.cat(anchors), torch.cat(positives)


def save_pretrained(net: FingerprintModel, out: Path, record: dict) -> None:
    """The model folder (model_io) plus backbone.safetensors in torchvision key names, for `train --weights`."""
    save_model(net, out, extra={"pretrain": record})
    trunk = next(iter(net.backbones.values()))
    state = {k: v.detach().cpu().contiguous() for k, v in trunk.state_dict().items()}
    with atomic_path(out / BACKBONE_FILE) as tmp:
        save_tensors(state, tmp, metadata={"format": "torchvision-resnet-1ch"})
