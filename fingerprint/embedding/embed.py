"""Feature export: every image of a shard set through the model once (`run_embed(EmbedConfig)`).

Each rank reads its own shards (shard i goes to rank i % world; the loader
is not prepared), encodes them under the accelerator's autocast and writes
one memory-mappable part per shard it read into the features folder
(`fingerprint.embedding.features`): nothing is gathered, so no process holds more
than the shards it is reading. A part's JSON is written after its arrays and
the set's `features.json` after every part, so an interrupted export resumes:
shards whose part is complete are skipped. A `.npz` output (small sets) is
the folder merged into one file. Rows are keyed, so the result does not
depend on the number of processes. Embeddings are unit-norm float32; the
spatial feature maps the relation head needs are kept in float16 when asked
for. The seed method ran the backbone on every (real, generated) pair; here
each image passes it once. `embed_shards` is the in-memory form (gathered
across ranks) for small sets and benchmarks.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from accelerate.utils import gather_object
from tqdm import tqdm

from fingerprint.core.config import check_fields, exists_error, option
from fingerprint.core.distributed import make_accelerator, seed_everything, set_process_threads
from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import check_writable
from fingerprint.core.logs import JsonlLogger, is_main_process
from fingerprint.core.vocab import MIXED_PRECISION, ON_ERROR
from fingerprint.data import urls
from fingerprint.data.shards import ShardSet, resolve
from fingerprint.data.stream import StreamConfig, make_loader
from fingerprint.embedding.features import SET_FILE, Features, complete_parts, finish_store, merge, write_part
from fingerprint.embedding.model_io import load_model

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class EmbedConfig:
    """Options of the embed stage (`fingerprint embed`)."""

    SECTION = "embed"

    model: Path = option(help="trained model folder (model.safetensors + model.json)")
    shards: str = option(
        help="shards from 'fingerprint pack': a folder, a folder URL (https://, s3://, ...), a brace pattern "
        "or a pipe: command"
    )
    out: Path = option(
        help="features folder to write (one memory-mappable part per shard; an interrupted export resumes), "
        "or a .npz file (small sets)"
    )
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
    """Embed every image of `cfg.shards` with the model in `cfg.model` into `cfg.out`; return stats.

    A folder output resumes an interrupted export (complete parts are kept)
    unless `cfg.force`, which starts over.
    """
    out = Path(cfg.out)
    npz = out.suffix == ".npz"
    if (out if npz else out / SET_FILE).exists() and not cfg.force:
        raise exists_error(cfg, cfg.out)
    check_writable(Path(cfg.out).parent)  # before any work: a read-only or missing folder fails now, not at the end
    accelerator = accelerator or make_accelerator(cfg.mixed_precision)
    set_process_threads(cfg.threads, accelerator)
    seed_everything(cfg.seed)
    model, meta = load_model(cfg.model)
    folder = out.with_name(f".{out.name}.parts") if npz else out
    if is_main_process() and (cfg.force or npz) and folder.exists():
        shutil.rmtree(folder)
    accelerator.wait_for_everyone()
    t0, created = time.perf_counter(), not folder.exists()
    try:
        stats = embed_to_folder(
            model, cfg.shards, folder, batch_size=cfg.batch_size, fmaps=cfg.fmaps, image_size=cfg.image_size,
            accelerator=accelerator, num_workers=cfg.num_workers, on_error=cfg.on_error,
            meta={"model_sha256": meta.get("sha256"), "shards": str(cfg.shards)},
        )  # fmt: skip
    except BaseException:
        # complete parts of a folder output are kept for the resume; nothing else of a failed export is
        if is_main_process() and (npz or (created and not complete_parts(folder))):
            shutil.rmtree(folder, ignore_errors=True)
        raise
    if npz and is_main_process():
        Features.load(folder).save(out)
        shutil.rmtree(folder)
    accelerator.wait_for_everyone()
    kind = "with fmaps" if cfg.fmaps else "embeddings only"
    log.info("wrote %d keyed features (%s) -> %s", stats["unique"], kind, out)
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


def _runtime(model: torch.nn.Module, accelerator: Any) -> tuple[int, int, torch.device, Any]:
    """(rank, world, device, autocast) of this process; the model in eval mode on the device."""
    if accelerator is not None:
        rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
        autocast = accelerator.autocast
    else:
        rank, world, device = 0, 1, next(model.parameters()).device
        autocast = contextlib.nullcontext
    model.eval().to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return rank, world, device, autocast


def _encode_batches(model, loader, device, autocast, *, fmaps: bool, desc: str) -> Iterator[dict[str, Any]]:
    """Encoded rows batch by batch ({key, role, label, shard: lists; emb; fmap}); a batch is split by role
    because an unshared model has one backbone per role."""
    channels_last = device.type == "cuda"
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
                yield {
                    **{f: [batch[f][i] for i in idx] for f in ("key", "label", "shard")},
                    "role": [role] * len(idx),
                    "emb": _unit(emb).cpu().numpy(),
                    "fmap": fmap.to(torch.float16).cpu().numpy() if fmaps else None,
                }
            bar.update(len(x))
    bar.close()


def _rows(chunks: Sequence[dict[str, Any]], fmaps: bool, dim: int) -> Features:
    """Encoded chunks -> Features (in reading order)."""
    if not chunks:
        return Features(
            [], [], [], np.zeros((0, dim), np.float32), np.zeros((0, 1, 1, 1), np.float16) if fmaps else None
        )
    return Features(
        [k for c in chunks for k in c["key"]],
        [r for c in chunks for r in c["role"]],
        [lab for c in chunks for lab in c["label"]],
        np.concatenate([c["emb"] for c in chunks]),
        np.concatenate([c["fmap"] for c in chunks]) if fmaps else None,
    )


class _PartWriter:
    """Routes encoded rows to their shard and writes a shard's part as soon as all its samples are in."""

    def __init__(self, folder: Path, shards: ShardSet, names: dict[str, str], record: dict[str, Any], dim: int):
        self.folder, self.shards, self.names, self.record, self.dim = folder, shards, names, record, dim
        self.chunks: dict[str, list[dict[str, Any]]] = {}
        self.count: dict[str, int] = {}
        self.written: set[str] = set()

    def add(self, enc: dict[str, Any]) -> None:
        shard = np.asarray(enc["shard"])
        for url in dict.fromkeys(enc["shard"]):
            idx = np.flatnonzero(shard == url)
            part = {f: [enc[f][i] for i in idx] for f in ("key", "role", "label")}
            part |= {"emb": enc["emb"][idx], "fmap": None if enc["fmap"] is None else enc["fmap"][idx]}
            self.chunks.setdefault(url, []).append(part)
            self.count[url] = self.count.get(url, 0) + len(idx)
            expected = (self.shards.entry(url) or {}).get("count")
            if expected is not None and self.count[url] >= expected:
                self.flush(url)

    def flush(self, url: str) -> None:
        feats = _rows(self.chunks.pop(url, []), self.record["fmaps"], self.dim)
        expected = (self.shards.entry(url) or {}).get("count")
        write_part(self.folder, self.names[url], feats, {**self.record, "shard": url, "expected": expected})
        self.written.add(url)

    def close(self, assigned: Sequence[str]) -> None:
        """Write what is left: shards cut short (counted skips) and shards that gave no rows (an empty part)."""
        for url in assigned:
            if url not in self.written:
                self.flush(url)


def part_names(shards: ShardSet) -> dict[str, str]:
    """url -> part name (the shard's file name without .tar); two shards of one name are an error."""
    names = {u: urls.shard_name(u).removesuffix(".tar") for u in shards.urls}
    seen: dict[str, str] = {}
    for u, n in names.items():
        if n in seen:
            raise FingerprintError(f"{u}: two shards named {n}.tar ({seen[n]}); their features parts would collide")
        seen[n] = u
    return names


def _resumable(folder: Path, names: dict[str, str], record: dict[str, Any]) -> set[str]:
    """Names of the parts already complete; an error if one was made by another model or with other settings."""
    done = complete_parts(folder)
    for name, rec in done.items():
        for field in ("model_sha256", "image_size", "fmaps"):
            if rec.get(field) != record.get(field):
                raise FingerprintError(
                    f"{folder}: part {name} was made with {field}={rec.get(field)!r}, not {record.get(field)!r} "
                    "(use embed.force to start over)"
                )
    return set(done) & set(names.values())


def embed_to_folder(
    model: torch.nn.Module,
    shards: str | Path | Sequence[str] | ShardSet,
    folder: str | Path,
    *,
    batch_size: int = 64,
    fmaps: bool = False,
    image_size: int | None = None,
    accelerator: Any = None,
    num_workers: int = 0,
    on_error: str = "raise",
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Encode the shards not yet embedded in `folder`, each rank its own, one part per shard; finish the set.

    Shard i of those left goes to rank i % world; a part is written as soon as
    all of its shard's samples (the manifest's count) are encoded, so a rank
    holds only the shards it is reading (without a manifest, its parts are
    written at the end). Rank 0 writes `features.json` once every part is
    complete. Returns stats: images, unique, per_rank, encode_seconds,
    images_per_s, world_size, resumed, skipped.
    """
    folder = Path(folder)
    rank, world, device, autocast = _runtime(model, accelerator)
    size = int(image_size or model.cfg.image_size)
    found = resolve(shards)
    names = part_names(found)
    record = {"model_sha256": (meta or {}).get("model_sha256"), "image_size": size, "fmaps": bool(fmaps)}
    done = _resumable(folder, names, record)
    if accelerator is not None:
        accelerator.wait_for_everyone()  # every rank has read the same finished parts before any writes new ones
    todo = [u for u in found.urls if names[u] not in done]
    mine = todo[rank::world]
    start, skipped = time.perf_counter(), {}
    if mine:
        cfg = StreamConfig(batch_size=batch_size, image_size=size, num_workers=min(num_workers, len(mine)),
                           on_error=on_error)  # fmt: skip
        loader = make_loader(ShardSet(mine, found.manifest, found.where), cfg, rank=0, world_size=1)
        writer = _PartWriter(folder, found, names, record, int(model.cfg.embed_dim))
        desc = f"embed (rank {rank}/{world})"
        for enc in _encode_batches(model, loader, device, autocast, fmaps=fmaps, desc=desc):
            writer.add(enc)
        writer.close(mine)
        skipped = dict(loader.skipped)
    local = {"images": sum(writer.count.values()) if mine else 0, "seconds": time.perf_counter() - start,
             "skipped": skipped}  # fmt: skip
    ranks = gather_object([local]) if world > 1 else [local]
    if accelerator is not None:
        accelerator.wait_for_everyone()
    if is_main_process():
        skipped_all = _summed([r["skipped"] for r in ranks])
        finish_store(folder, list(names.values()), {"image_size": size, "fmaps": bool(fmaps), **(meta or {}),
                                                    "skipped": skipped_all})  # fmt: skip
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return _stats(ranks, folder, world, len(done), len(found.urls))


def _stats(ranks: list[dict[str, Any]], folder: Path, world: int, resumed: int, n_shards: int) -> dict[str, Any]:
    """Summed and per-rank counts of one export (logged and returned by run_embed)."""
    images = sum(r["images"] for r in ranks)
    seconds = max(r["seconds"] for r in ranks)
    skipped = _summed([r["skipped"] for r in ranks])
    rate = images / seconds if seconds > 0 else float("nan")
    unique = sum(p["n"] for p in complete_parts(folder).values())
    if skipped:
        log.warning("embed: skipped %s", ", ".join(f"{n} {k}" for k, n in skipped.items()))
    if resumed:
        log.info("embed: resumed; %d of %d shard(s) were already embedded", resumed, n_shards)
    log.info("embed: %d images on %d process(es) in %.1f s (%.1f images/s)", images, world, seconds, rate)
    return {"images": images, "unique": unique, "encode_seconds": round(seconds, 3), "images_per_s": round(rate, 2),
            "world_size": world, "per_rank": [r["images"] for r in ranks], "resumed": resumed,
            "skipped": skipped}  # fmt: skip


def _gather(local: Features, skipped: dict, seconds: float, world: int) -> tuple[list[Features], dict, float]:
    """Every rank's rows, summed skip counts and the slowest rank's seconds."""
    if world == 1:
        return [local], skipped, seconds
    gathered = gather_object([(local, skipped, seconds)])
    return [g[0] for g in gathered], _summed([g[1] for g in gathered]), max(g[2] for g in gathered)


def _summed(counts: Sequence[dict[str, int]]) -> dict[str, int]:
    """Skip counts of several ranks added up by kind."""
    total: dict[str, int] = {}
    for c in counts:
        for k, n in c.items():
            total[k] = total.get(k, 0) + int(n)
    return total


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
    """In memory (small sets, benchmarks): every image of `shards` encoded once; the same Features on every rank.

    Each rank encodes its own shards; the rows are gathered and sorted by key.
    `stats` (if given) receives images, unique, encode_seconds, images_per_s,
    world_size, per_rank, duplicates, skipped.
    """
    rank, world, device, autocast = _runtime(model, accelerator)
    size = int(image_size or model.cfg.image_size)
    cfg = StreamConfig(batch_size=batch_size, image_size=size, num_workers=num_workers, on_error=on_error)
    loader = make_loader(shards, cfg, rank=rank, world_size=world)
    start = time.perf_counter()
    desc = f"embed (rank {rank}/{world})"
    chunks = list(_encode_batches(model, loader, device, autocast, fmaps=fmaps, desc=desc))
    local = _rows(chunks, fmaps, int(model.cfg.embed_dim))
    seconds = time.perf_counter() - start
    parts, skipped, seconds = _gather(local, dict(loader.skipped), seconds, world)
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
        stats.update(images=images, unique=len(feats), encode_seconds=round(seconds, 3), images_per_s=round(rate, 2),
                     world_size=world, per_rank=counts, duplicates=dupes, skipped=skipped)  # fmt: skip
    return feats
