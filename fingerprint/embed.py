"""Feature export: every image of a shard set through the model once (`run_embed(EmbedConfig)`).

Each rank reads its own shards (stream.make_loader split by node; the loader
is not prepared), encodes them under the accelerator's autocast, and the
per-rank results are gathered with `gather_object`, de-duplicated by key and
sorted by key, so the output does not depend on the number of processes.
Embeddings are unit-norm float32; the spatial feature maps the relation head
needs are kept in float16 when asked for. The seed method ran the backbone on
every (real, generated) pair; here each image passes it once.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from accelerate.utils import gather_object
from tqdm import tqdm

from fingerprint.config import check_fields, exists_error, option
from fingerprint.distributed import make_accelerator, seed_everything, set_process_threads
from fingerprint.features import Features, merge
from fingerprint.model_io import load_model
from fingerprint.stream import StreamConfig, make_loader
from fingerprint.utils import JsonlLogger, check_writable, is_main_process
from fingerprint.vocab import MIXED_PRECISION, ON_ERROR

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class EmbedConfig:
    """Options of the embed stage (`fingerprint embed`)."""

    SECTION = "embed"

    model: Path = option(help="trained model folder (model.safetensors + model.json)")
    shards: Path = option(help="shard folder from 'fingerprint pack'")
    out: Path = option(help="features file to write (.npz)")
    fmaps: bool = option(False, help="also store the fp16 feature maps the relation scorer needs")
    batch_size: int = option(64, min=1, help="images per forward pass and rank")
    image_size: int | None = option(None, min=1, help="input size (default: the model's)")
    mixed_precision: str = option(
        "no",
        choices=MIXED_PRECISION,
        help="autocast dtype; 'no' (fp32) by default because CPUs without bf16 units run bf16 ~60x slower",
    )
    num_workers: int = option(0, min=0, help="DataLoader workers per rank")
    threads: int | None = option(None, min=1, help="torch CPU threads per process (default: cores / local processes)")
    on_error: str = option("raise", choices=ON_ERROR, help="unreadable samples: stop, or skip and count")
    log: Path | None = option(None, help="append JSON-lines records here (stage, seconds, images/s, world size)")
    seed: int = option(0, help="random seed (embedding is deterministic; kept for uniformity)")
    force: bool = option(False, help="replace the output if it exists")

    def __post_init__(self) -> None:
        check_fields(self)


def run_embed(cfg: EmbedConfig, *, accelerator: Any = None) -> dict:
    """Embed every image of `cfg.shards` with the model in `cfg.model`; write `cfg.out` (rank 0); return stats."""
    if Path(cfg.out).exists() and not cfg.force:
        raise exists_error(cfg, cfg.out)
    check_writable(Path(cfg.out).parent)  # before any work: a read-only or missing folder fails now, not at the end
    accelerator = accelerator or make_accelerator(cfg.mixed_precision)
    set_process_threads(cfg.threads, accelerator)
    seed_everything(cfg.seed)
    model, meta = load_model(cfg.model)
    stats: dict = {}
    t0 = time.perf_counter()
    feats = embed_shards(
        model,
        cfg.shards,
        batch_size=cfg.batch_size,
        fmaps=cfg.fmaps,
        image_size=cfg.image_size,
        accelerator=accelerator,
        num_workers=cfg.num_workers,
        on_error=cfg.on_error,
        stats=stats,
    )
    feats.meta.update({"model_sha256": meta.get("sha256"), "shards": str(cfg.shards)})
    if is_main_process():
        feats.save(cfg.out)
        kind = "with fmaps" if cfg.fmaps else "embeddings only"
        log.info("wrote %d keyed features (%s) -> %s", len(feats), kind, cfg.out)
    accelerator.wait_for_everyone()
    JsonlLogger(cfg.log).log(
        stage="embed",
        seconds=round(time.perf_counter() - t0, 3),
        mixed_precision=cfg.mixed_precision,
        device=str(accelerator.device),
        distributed_type=str(accelerator.distributed_type),
        **stats,
    )
    return stats


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=1)


@dataclass
class _Encoded:
    """One rank's encoded rows, in reading order."""

    keys: list[str]
    roles: list[str]
    labels: list[str]
    embs: list[np.ndarray]
    maps: list[np.ndarray]

    def features(self, fmaps: bool) -> Features:
        dim = int(self.embs[0].shape[1]) if self.embs else 0
        emb = np.concatenate(self.embs) if self.embs else np.zeros((0, dim), np.float32)
        maps = (np.concatenate(self.maps) if self.maps else np.zeros((0, 1, 1, 1), np.float16)) if fmaps else None
        return Features(self.keys, self.roles, self.labels, emb, maps)


def _encode_loader(model, loader, device, autocast, *, fmaps: bool, channels_last: bool, desc: str) -> _Encoded:
    """Encode every batch; a batch is split by role because an unshared model has one backbone per role."""
    out = _Encoded([], [], [], [], [])
    bar = tqdm(desc=desc, unit="img", disable=not is_main_process())
    with torch.inference_mode(), autocast():
        for batch in loader:
            x = batch["image"].to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            batch_roles = np.asarray(batch["role"])
            for role in sorted(set(batch_roles.tolist())):
                idx = np.flatnonzero(batch_roles == role)
                emb, fmap = model.encode(x[torch.from_numpy(idx).to(device)], role=role)
                out.embs.append(_unit(emb).cpu().numpy())
                if fmaps:
                    out.maps.append(fmap.to(torch.float16).cpu().numpy())
                out.keys += [batch["key"][i] for i in idx]
                out.roles += [role] * len(idx)
                out.labels += [batch["label"][i] for i in idx]
            bar.update(len(x))
    bar.close()
    return out


def _gather(local: Features, skipped: dict, seconds: float, world: int) -> tuple[list[Features], dict, float]:
    """Every rank's rows, summed skip counts and the slowest rank's seconds."""
    if world == 1:
        return [local], skipped, seconds
    gathered = gather_object([(local, skipped, seconds)])
    total: dict[str, int] = {}
    for _, counts, _ in gathered:
        for k, n in counts.items():
            total[k] = total.get(k, 0) + n
    return [g[0] for g in gathered], total, max(g[2] for g in gathered)


def embed_shards(
    model: torch.nn.Module,
    shards: str | Path | Sequence[str],
    *,
    batch_size: int = 64,
    fmaps: bool = False,
    image_size: int | None = None,
    accelerator: Any = None,
    num_workers: int = 0,
    on_error: str = "raise",
    stats: dict | None = None,
) -> Features:
    """Encode every image of `shards` once; the same Features (sorted by key) on every rank.

    `model.encode(x, role)` gives (unit-norm embedding, feature map).
    `image_size` defaults to the model's. With an accelerator, each rank
    reads its own shards and runs under `accelerator.autocast()`; the model
    is put in eval mode on the accelerator's device. `stats` (if given)
    receives images, unique, encode_seconds, images_per_s, world_size,
    per_rank, duplicates, skipped.
    """
    if accelerator is not None:
        rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
        autocast = accelerator.autocast
    else:
        rank, world, device = 0, 1, next(model.parameters()).device
        autocast = contextlib.nullcontext
    size = int(image_size or model.cfg.image_size)
    cfg = StreamConfig(batch_size=batch_size, image_size=size, num_workers=num_workers, on_error=on_error)
    loader = make_loader(shards, cfg, rank=rank, world_size=world)
    model.eval().to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    start = time.perf_counter()
    desc = f"embed (rank {rank}/{world})"
    local = _encode_loader(model, loader, device, autocast, fmaps=fmaps, channels_last=channels_last, desc=desc)
    seconds = time.perf_counter() - start
    parts, skipped, seconds = _gather(local.features(fmaps), dict(loader.skipped), seconds, world)
    feats, dupes = merge(parts)
    feats.meta.update({"image_size": size, "fmaps": bool(fmaps), "skipped": skipped})
    counts = [len(p) for p in parts]
    images = int(sum(counts))
    rate = images / seconds if seconds > 0 else float("nan")
    if skipped:
        log.warning("embed: skipped %s", ", ".join(f"{n} {k}" for k, n in skipped.items()))
    if dupes:
        log.info("embed: dropped %d repeated key(s) after gathering", dupes)
    log.info("embed: %d images on %d process(es) in %.1f s (%.1f images/s)", images, world, seconds, rate)
    if stats is not None:
        stats.update(
            images=images,
            unique=len(feats),
            encode_seconds=round(seconds, 3),
            images_per_s=round(rate, 2),
            world_size=world,
            per_rank=counts,
            duplicates=dupes,
            skipped=skipped,
        )
    return feats
