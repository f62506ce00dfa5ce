"""Episodic training of the relation network with Accelerate: the driver (`run_train(TrainConfig)`).

The driver sets up data, model, optimizer and schedule, then alternates
`loop.train_one_epoch` and `loop.evaluate`, and owns what spans
epochs: the best epoch (saved to `best/`), early stopping on the validation
ROC-AUC, checkpoints and resume, and the final model with its threshold
calibration (the layout of open_clip's `main.py` over `train.py`).

Defaults are sized for the demo on 2 CPU cores: the ResNet-18 backbone and
the embedding projection stay at their (seeded) random initialisation with
BatchNorm statistics as built (`freeze="layer4"`, `train_embed=False`,
`bn="frozen"`), and only the relation head and pooling are trained, so the
memory bank is static (computed once) and a step costs one forward pass of
its queries. Why these defaults, with the measurements behind them, is in
docs/design-notes.md; with pretrained weights (`weights=`) or more data and
a GPU, set `freeze`, `train_embed`, `bn` and `augment`.

Checkpoints (`accelerator.save_state`, rotated) are written at the end of each
epoch together with `train_state.json` (counters, early-stopping state), which
also marks the checkpoint complete; `resume="latest"` continues from the newest
complete one and ends with the weights an uninterrupted run would have (same
seed, CPU; `fingerprint.training.checkpoints`). A NaN/inf loss stops the run before the
optimizer step.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch
from torch import nn

from fingerprint.core.distributed import (
    check_world,
    checkpoint_config,
    make_accelerator,
    seed_everything,
    set_process_threads,
)
from fingerprint.core.errors import FingerprintError
from fingerprint.core.locks import locks_folder
from fingerprint.core.logs import JsonlLogger
from fingerprint.core.vocab import (
    LABEL_CODES,
    label_code,
)
from fingerprint.data.stream import StreamConfig, load_all
from fingerprint.embedding.model_io import build_model, save_model
from fingerprint.embedding.models import FingerprintModel, count_parameters, describe
from fingerprint.training.checkpoints import (
    LOG_FILE,
    discard_unresumable,
    find_checkpoint,
    finish,
    load_checkpoint,
    prepare_out_dir,
    save_checkpoint,
    state_digest,
)
from fingerprint.training.episodes import SupportSampler, dev_reals, split_dev
from fingerprint.training.loop import (
    TrainRun,
    epoch_record,
    evaluate,
    freeze_backbone,
    make_optimizer,
    train_one_epoch,
    warmup_cosine,
)
from fingerprint.training.train_config import TrainConfig, TrainState

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- the driver


@locks_folder(lambda cfg: cfg.out, "fingerprint train")
def run_train(cfg: TrainConfig, *, accelerator: Any = None) -> dict:
    """Train a relation network on the labelled dev shards `cfg.shards`; write the model to `cfg.out`.

    Writes out/model.safetensors + model.json (config, calibration, training
    summary, sha256), out/best/ (best validation epoch so far),
    out/checkpoints/checkpoint_<n>/ (accelerate state + train_state.json)
    and out/train_log.jsonl. Returns the training summary. The output folder
    is locked while it trains (`fingerprint.core.locks`). A run that fails before
    its first complete checkpoint leaves nothing behind (and no folder it
    created); one that fails later keeps its checkpoints for `resume`.
    """
    t_start = time.time()
    accelerator = _accelerator(cfg, accelerator)
    set_process_threads(cfg.threads, accelerator)
    seed_everything(cfg.seed)
    prepare_out_dir(cfg, accelerator)
    try:
        return _train(cfg, accelerator, t_start)
    except BaseException:
        if accelerator.is_main_process:
            discard_unresumable(cfg.out)
        raise


def _train(cfg: TrainConfig, accelerator: Any, t_start: float) -> dict:
    run = setup(cfg, accelerator)
    state = TrainState()
    if cfg.resume is not None:
        ckpt = find_checkpoint(cfg.out, cfg.resume)
        state = TrainState.from_json(load_checkpoint(accelerator, ckpt))
        accelerator.project_configuration.iteration = state.checkpoint + 1
        log.info("train: resumed from %s (epoch %d, step %d)", ckpt, state.epoch, state.step)
    stop_reason, train_seconds, episodes = fit(run, state)
    accelerator.wait_for_everyone()
    world = accelerator.num_processes
    digest = state_digest(run.net)
    summary = finish(cfg, state, world, stop_reason, accelerator.is_main_process)
    summary.update(
        weights_sha256=digest,
        rank=accelerator.process_index,
        mixed_precision=accelerator.mixed_precision,
        seconds=time.time() - t_start,
        train_seconds=train_seconds,
        episodes_per_s=episodes * world / train_seconds if train_seconds else None,
        queries_per_s=episodes * world * cfg.queries / train_seconds if train_seconds else None,
    )
    run.logger.log(
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


def fit(run: TrainRun, state: TrainState) -> tuple[str, float, int]:
    """Epochs from `state.epoch` on: train, validate, keep the best, checkpoint, stop early.

    Returns (stop reason, training seconds, episodes run by this process).
    """
    cfg, acc = run.cfg, run.accelerator
    train_seconds, episodes = 0.0, 0
    last_ckpt = find_checkpoint(cfg.out, "latest") if cfg.resume else None
    for epoch in range(state.epoch, cfg.epochs):
        if cfg.patience and state.bad_epochs >= cfg.patience:  # resumed a run that had already stopped early
            return "early", train_seconds, episodes
        t0 = time.time()
        losses = train_one_epoch(run, state, epoch, last_ckpt)
        episodes += len(losses)
        train_seconds += time.time() - t0
        record = epoch_record(epoch, losses, t0)
        validate_epoch(run, state, epoch, record)
        state.epoch = epoch + 1
        state.history.append(record)
        run.logger.log(**record)
        if acc.is_main_process:
            val = f" val_auc {record['val_auc']:.3f} val_loss {record['val_loss']:.4f}" if "val_auc" in record else ""
            log.info(
                "train: epoch %d/%d loss %.4f%s (%.1fs)", epoch + 1, cfg.epochs, record["loss"], val, record["seconds"]
            )
        acc.wait_for_everyone()
        last_ckpt = save_checkpoint(acc, state, cfg)
        if cfg.patience and state.bad_epochs >= cfg.patience and state.epoch < cfg.epochs:
            if acc.is_main_process:
                log.info(
                    "train: no better validation AUC for %d epochs; stopping (best epoch %d, AUC %.3f)",
                    *(cfg.patience, state.best_epoch, state.best_auc),
                )
            return "early", train_seconds, episodes
    return "epochs", train_seconds, episodes


def validate_epoch(run: TrainRun, state: TrainState, epoch: int, record: dict) -> None:
    """Validate the current weights (the bank is reused by the next epoch's first step); keep the best epoch."""
    main = run.accelerator.is_main_process
    if not run.val["key"]:
        state.best_epoch = epoch + 1
        if main:
            save_model(run.net, run.cfg.out / "best", extra={"epoch": epoch + 1, "validation": None})
        return
    run.current_bank(state.optimizer_steps)
    result = evaluate(run)
    record.update(val_auc=result["val_auc"], val_loss=result["val_loss"])
    auc, loss = result["val_auc"], result["val_loss"]
    better = auc > state.best_auc + 1e-9 or (abs(auc - state.best_auc) <= 1e-9 and loss < state.best_loss)
    if not better:
        state.bad_epochs += 1
        return
    state.best_epoch, state.best_auc, state.best_loss, state.bad_epochs = epoch + 1, auc, loss, 0
    if main:
        save_model(run.net, run.cfg.out / "best", extra={"epoch": epoch + 1, "validation": result})


# ----------------------------------------------------------------------------- setup


def _accelerator(cfg: TrainConfig, accelerator: Any | None) -> Any:
    if accelerator is None:
        return make_accelerator(
            cfg.mixed_precision,
            grad_accum=cfg.grad_accum,
            project_dir=cfg.out,
            keep_checkpoints=cfg.keep_checkpoints,
            find_unused_parameters=True,
        )
    accelerator.project_configuration = checkpoint_config(cfg.out, cfg.keep_checkpoints)
    accelerator.gradient_accumulation_steps = cfg.grad_accum
    check_world(accelerator)
    if cfg.mixed_precision is not None and accelerator.mixed_precision != cfg.mixed_precision:
        log.warning(
            "train: using the given accelerator's mixed precision %r, not %r",
            accelerator.mixed_precision,
            cfg.mixed_precision,
        )
    return accelerator


def _training_data(cfg: TrainConfig, world: int) -> dict[str, Any]:
    """The dev split, the generated pool (in memory), BatchNorm images, validation images, episodes per epoch."""
    keys, labels = dev_reals(cfg.shards)
    if not keys:
        raise FingerprintError(f"{cfg.shards}: no labelled real images (used / not_used) to train on")
    train_keys, val_keys = split_dev(keys, labels, cfg.val_fraction, cfg.seed)
    label_of = dict(zip(keys, labels))
    gen = load_all(cfg.shards, StreamConfig(roles=("generated",), image_size=cfg.image_size, on_error=cfg.on_error))
    pool_keys, pool = gen["key"], gen["image"]
    if not pool_keys:
        raise FingerprintError(f"{cfg.shards}: no generated images to build support sets from")
    sampler = SupportSampler(len(pool), cfg.k, cfg.k_random, cfg.episodes, cfg.seed)
    calib = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.bn_images]]
    val = _real_images(cfg, val_keys)
    n_used = sum(label_of[k] == "used" for k in train_keys)
    if min(n_used, len(train_keys) - n_used) < 1:
        raise FingerprintError(f"{cfg.shards}: the training split needs used and not-used images")
    per_epoch = max(1, round(len(train_keys) / (cfg.queries * world)))
    per_epoch = math.ceil(per_epoch / cfg.grad_accum) * cfg.grad_accum
    return dict(
        train_keys=train_keys, label_of=label_of, pool_keys=pool_keys, pool=pool, sampler=sampler, calib=calib,
        val=val, per_epoch=per_epoch,
    )  # fmt: skip


def _model(cfg: TrainConfig) -> tuple[FingerprintModel, list[nn.Module]]:
    """The model with frozen stages (and a fixed embedding projection unless trained)."""
    model = build_model(cfg.model_config(), cfg.weights)
    frozen = freeze_backbone(model, cfg.freeze)
    if not cfg.train_embed:
        model.embed_head.requires_grad_(False)
    if cfg.bn == "frozen" and cfg.weights is None and any(p.requires_grad for p in model.backbones.parameters()):
        log.warning(
            "train: training backbone layers from random initialisation with BatchNorm statistics frozen "
            "at their initial values is unstable; consider train.bn recalibrate or batch"
        )
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, frozen


def setup(cfg: TrainConfig, accelerator: Any) -> TrainRun:
    """Data, model, optimizer and warm-up + cosine schedule, prepared by Accelerate (the loader is not)."""
    world = accelerator.num_processes
    data = _training_data(cfg, world)
    model, frozen = _model(cfg)
    optimizer = make_optimizer(model, cfg)
    # the prepared scheduler steps once per process per optimizer step
    sched_total = data["per_epoch"] // cfg.grad_accum * cfg.epochs * world
    warm = max(1, round(cfg.warmup * sched_total)) if cfg.warmup else 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(sched_total, warm))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    net: FingerprintModel = accelerator.unwrap_model(model)
    static = cfg.bn == "frozen" and not any(
        p.requires_grad for p in [*net.backbones.parameters(), *net.embed_head.parameters()]
    )
    logger = JsonlLogger(cfg.out / LOG_FILE, stage="train")
    run = TrainRun(
        cfg, accelerator, model, net, optimizer, scheduler, frozen, logger=logger, static_bank=static, **data
    )
    if accelerator.is_main_process:
        log.info(
            "train: %s; %d trainable; %d train / %d val real, %d generated; %d process(es), %d episodes/epoch "
            "of %d queries x K=%d (%s supports)",
            *(describe(net), count_parameters(net, True), len(run.train_keys), len(run.val["key"]), len(run.pool)),
            *(world, run.per_epoch, cfg.queries, cfg.k, cfg.support_mode()),
        )
    return run


def _real_images(cfg: TrainConfig, keys: list[str]) -> dict:
    """The validation images, in memory (few), with 0/1 labels."""
    if not keys:
        return {"key": [], "image": torch.zeros(0, 1, cfg.image_size, cfg.image_size), "y": []}
    stream = StreamConfig(roles=("real",), labels=tuple(LABEL_CODES), image_size=cfg.image_size, on_error=cfg.on_error)
    batch = load_all(cfg.shards, stream)
    want = set(keys)
    idx = [i for i, k in enumerate(batch["key"]) if k in want]
    return {
        "key": [batch["key"][i] for i in idx],
        "image": batch["image"][idx],
        "y": [label_code(batch["label"][i]) for i in idx],
    }
