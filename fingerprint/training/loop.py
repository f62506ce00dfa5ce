"""The steps of episodic training: one epoch of episodes, and the validation that follows it.

Each step is one episode per process (Sung et al. 2018, "Learning to
Compare"): a class-balanced batch of real query images, streamed (each rank
reads its own shards), and for each query K generated support images, its
nearest in the current embedding space plus random ones. The K relation
logits are pooled into one membership logit and trained with BCE against
used / not used. Supports come from a memory bank (the generated pool's
embeddings and feature maps, computed without gradients, refreshed with the
FAISS index every `refresh_every` steps; Wu et al. 2018 for memory banks);
with separate backbones, or `support="encode"`, the supports are re-encoded
with gradients instead. `evaluate` scores the validation images through the
same inference function as the relation scorer (`fingerprint.embedding.inference`).

BatchNorm of the backbone: `bn="frozen"` keeps the statistics as built or
loaded (eval mode); `bn="recalibrate"` recomputes them over a fixed sample of
the generated pool at every bank refresh, so queries and bank see the same
normalisation and training matches inference; `bn="batch"` uses ordinary
batch statistics for the queries. The split follows open_clip's
`open_clip_train/train.py` (steps) and `main.py` (the driver, `fingerprint.training.train`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import gather_object
from torch import Tensor, nn
from tqdm import tqdm

from fingerprint.core.errors import FingerprintError
from fingerprint.core.logs import JsonlLogger
from fingerprint.core.vocab import LABEL_CODES
from fingerprint.data.stream import StreamConfig, make_loader
from fingerprint.embedding.inference import pooled_logits, relation_logits
from fingerprint.embedding.models import Backbone, FingerprintModel, preserved_modes
from fingerprint.evaluation.metrics import roc_auc
from fingerprint.training.episodes import BalancedQueries, Bank, SupportSampler, bank_support_fn, nearest, pair_targets
from fingerprint.training.train_config import TrainConfig, TrainState


class NonFiniteLoss(FingerprintError):
    """The loss became NaN or infinite; the run stops before the optimizer step."""


# ----------------------------------------------------------------------------- model modes and BatchNorm


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


def set_train_modes(model: FingerprintModel, cfg: TrainConfig, frozen: list[nn.Module]) -> None:
    """Train mode, except backbone BatchNorm under bn="frozen"/"recalibrate" and frozen stages (eval)."""
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
            x = to_device(images[i : i + batch_size], device)
            with autocast():
                for role in roles:
                    model.encode(x, role)
    for m, mom in zip(bns, momenta):
        m.momentum = mom


def to_device(x: Tensor, device: torch.device, channels_last: bool = False) -> Tensor:
    """Move a batch to `device` (pinned first for CUDA), optionally channels-last."""
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
            x = to_device(images[i : i + batch_size], device, channels_last=channels_last)
            with autocast():
                e, f = model.encode(x, role)
            embs.append(e.float().cpu())
            if fmaps:
                maps.append(f.contiguous())
    emb = torch.cat(embs) if embs else torch.zeros(0, model.cfg.embed_dim)
    return emb, (torch.cat(maps) if fmaps and maps else None)


# ----------------------------------------------------------------------------- the memory bank


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


@dataclass
class TrainRun:
    """Everything a training run holds between steps (built by `fingerprint.training.train.setup`)."""

    cfg: TrainConfig
    accelerator: Any
    model: nn.Module  # as prepared (DDP-wrapped under several processes)
    net: FingerprintModel  # unwrapped
    optimizer: Any
    scheduler: Any
    frozen: list[nn.Module]
    pool_keys: list[str]
    pool: Tensor  # the generated images, in memory
    calib: Tensor  # generated images that recalibrate BatchNorm
    val: dict  # {"key", "image", "y"} validation images, in memory
    sampler: SupportSampler
    train_keys: list[str]
    label_of: dict[str, str]
    per_epoch: int  # episodes per epoch and process
    logger: JsonlLogger
    static_bank: bool  # frozen backbone, BatchNorm and embedding: the bank never changes
    bank: Bank | None = None
    bank_at: int = -1  # optimizer step count the bank was computed at

    def current_bank(self, optimizer_steps: int, due: bool = True) -> bool:
        """Refresh the bank if there is none, or if `due` and the weights moved; True when it was refreshed."""
        stale = due and self.bank_at != optimizer_steps and not self.static_bank
        if self.bank is not None and not stale:
            return False
        self.bank = refresh_bank(self.accelerator, self.net, self.pool_keys, self.pool, self.calib, self.cfg)
        self.bank_at = optimizer_steps
        return True


# ----------------------------------------------------------------------------- optimisation


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter 2019); no weight decay on biases, norms and scalars."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up to 1, then cosine decay to 0 at `total_steps` (Loshchilov & Hutter 2017)."""

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


# ----------------------------------------------------------------------------- one epoch


def _episode_stream(run: TrainRun, epoch: int) -> BalancedQueries:
    cfg, acc = run.cfg, run.accelerator
    stream_cfg = StreamConfig(
        roles=("real",),
        labels=tuple(LABEL_CODES),
        batch_size=cfg.queries,
        image_size=cfg.image_size,
        augment=cfg.augment,
        num_workers=cfg.num_workers,
        seed=cfg.seed,
        epoch=epoch,
        shuffle=True,
        shuffle_buffer=4 * cfg.queries,
        on_error=cfg.on_error,
    )
    stream = make_loader(cfg.shards, stream_cfg, rank=acc.process_index, world_size=acc.num_processes)
    where = f"rank {acc.process_index}"
    return BalancedQueries(stream, run.train_keys, run.label_of, cfg.queries, run.per_epoch, where=where)


def _forward(run: TrainRun, x: Tensor, pick: Callable[[Tensor | None], np.ndarray]) -> dict[str, Tensor]:
    """One episode's forward: supports from the bank, or re-encoded (with gradients) from the pool."""
    cfg, net = run.cfg, run.net
    if cfg.support_mode() == "bank":
        return run.model(x, support_fn=bank_support_fn(run.bank, pick))
    q_emb = None
    if cfg.episodes == "nearest":
        with torch.no_grad(), preserved_modes(net), run.accelerator.autocast():
            net.eval()
            q_emb = net.encode(x, "real")[0]
    ids = torch.as_tensor(pick(q_emb))
    s = to_device(run.pool[ids.reshape(-1)], run.accelerator.device, channels_last=cfg.channels_last)
    return run.model(x, s.reshape(*ids.shape, *s.shape[1:]))


def train_step(run: TrainRun, x: Tensor, y: Tensor, pick: Callable, where: str, last_ckpt: Any) -> float:
    """Forward, loss, backward and (when gradients sync) an optimizer step; returns the mean loss over ranks."""
    cfg, acc = run.cfg, run.accelerator
    with acc.accumulate(run.model):
        loss = episode_loss(_forward(run, x, pick), y, cfg.episodes)
        mean_loss = acc.reduce(loss.detach().float(), reduction="mean").item()
        if not math.isfinite(mean_loss):
            raise NonFiniteLoss(
                f"{where}: loss is {mean_loss}; stopped before updating the weights "
                f"(last good checkpoint: {last_ckpt or 'none'})"
            )
        acc.backward(loss)
        if acc.sync_gradients and cfg.clip_grad:
            acc.clip_grad_norm_(run.model.parameters(), cfg.clip_grad)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
    return mean_loss


def train_one_epoch(run: TrainRun, state: TrainState, epoch: int, last_ckpt: Any = None) -> list[float]:
    """One epoch of `run.per_epoch` episodes; updates `state` counters; returns the per-step mean losses."""
    cfg, acc = run.cfg, run.accelerator
    rank, main = acc.process_index, acc.is_main_process
    episodes = _episode_stream(run, epoch)
    set_train_modes(run.net, cfg, run.frozen)
    losses = []
    desc = f"train epoch {epoch + 1}/{cfg.epochs}"
    bar = tqdm(episodes, total=run.per_epoch, desc=desc, unit="ep", disable=not main, leave=False)
    for i, q in enumerate(bar):
        if run.current_bank(state.optimizer_steps, due=i % cfg.refresh_every == 0):
            set_train_modes(run.net, cfg, run.frozen)
        x = to_device(q.image, acc.device, channels_last=cfg.channels_last)
        y = q.label.to(acc.device)

        def pick(q_emb: Tensor | None, _i: int = i, _n: int = len(y)) -> np.ndarray:
            return run.sampler.sample(q_emb, run.bank, epoch=epoch, step=_i, rank=rank, n_queries=_n)

        mean_loss = train_step(run, x, y, pick, f"epoch {epoch + 1} step {i + 1}", last_ckpt)
        if acc.sync_gradients:
            state.optimizer_steps += 1
        state.step += 1
        losses.append(mean_loss)
        bar.set_postfix(loss=f"{mean_loss:.4f}")
        if state.step % cfg.log_every == 0:
            run.logger.log(step=state.step, epoch=epoch + 1, loss=mean_loss, lr=run.scheduler.get_last_lr()[0])
    bar.close()
    return losses


# ----------------------------------------------------------------------------- validation


def _val_logits(run: TrainRun, images: Tensor) -> np.ndarray:
    """Pooled membership logits of real images against their k nearest generated images, as the scorer does."""
    cfg, net, autocast = run.cfg, run.net, run.accelerator.autocast
    if len(images) == 0:
        return np.zeros(0, dtype=np.float32)
    q_emb, q_fmap = encode_images(net, images, "real", cfg.batch_size, autocast, channels_last=cfg.channels_last)
    bs = cfg.batch_size
    rows = np.concatenate([nearest(run.bank, q_emb[i : i + bs], cfg.k)[1] for i in range(0, len(q_emb), bs)])
    supports: Any = run.bank.fmap
    if supports is None:  # re-encoded supports (separate backbones)

        def supports(r: np.ndarray) -> Tensor:
            s = to_device(run.pool[torch.as_tensor(r).reshape(-1)], run.accelerator.device, cfg.channels_last)
            _, s_fmap = net.encode(s, "generated")
            return s_fmap.reshape(*r.shape, *s_fmap.shape[1:])

    pair = relation_logits(net, q_fmap, supports, rows, batch_size=bs, autocast=autocast)
    return pooled_logits(net, pair)


def evaluate(run: TrainRun) -> dict:
    """Score this process's share of the validation images, gather, and compute ROC-AUC and loss."""
    acc, val = run.accelerator, run.val
    rank, world = acc.process_index, acc.num_processes
    idx = list(range(rank, len(val["key"]), world))
    logits = _val_logits(run, val["image"][idx])
    mine = [(val["key"][i], float(lg), int(val["y"][i])) for i, lg in zip(idx, logits.tolist())]
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


def epoch_record(epoch: int, losses: list[float], t0: float) -> dict[str, Any]:
    """The per-epoch log record (validation fields are added by the driver)."""
    return {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": time.time() - t0}
