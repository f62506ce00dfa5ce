"""Read packed shards as batches: the WebDataset pipeline the trainer and scorers read through.

The shard list is shuffled with seed+epoch identically on every rank, then
split by node (rank::world, like `wds.split_by_node` but with the rank given
explicitly or taken from torch.distributed / env) and by DataLoader worker
(`wds.split_by_worker`), so each sample is read once per pass across all
processes. `epoch_batches` makes every rank yield the
same number of batches (the stream repeats and is cut), which keeps DDP from
hanging on uneven shards. Loaders are not meant for `accelerator.prepare`:
move batches to the device yourself.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
from dataclasses import dataclass, replace
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds

from fingerprint.core.errors import FingerprintError
from fingerprint.core.vocab import LABELS, ROLES
from fingerprint.data import urls
from fingerprint.data.shards import ShardSet, decode_sample, iter_shard, resolve

log = logging.getLogger(__name__)

_COUNTS = "__skipped__"  # private batch entry carrying a worker's skip counts to the main process
Batch = dict  # {"key", "role", "label", "shard" (source URL): list[str]; "image": float32 Bx1xHxW in [0,1]}


@dataclass
class StreamConfig:
    """What to read and how; see docs/design.md."""

    roles: tuple[str, ...] | None = None
    labels: tuple[str, ...] | None = None
    batch_size: int = 32
    image_size: int | None = None
    augment: bool = False
    num_workers: int = 0
    seed: int = 0
    epoch: int = 0
    shuffle_buffer: int = 0
    shuffle: bool = False
    epoch_batches: int | None = None
    on_error: str = "raise"
    checksum: bool = True  # check each shard's sha256 against the manifest as it streams

    def check(self) -> None:
        for r in self.roles or ():
            if r not in ROLES:
                raise FingerprintError(f"unknown role {r!r} (choose from {', '.join(ROLES)})")
        for lab in self.labels or ():
            if lab not in LABELS:
                raise FingerprintError(f"unknown label {lab!r} (choose from {', '.join(LABELS)})")
        if self.batch_size < 1:
            raise FingerprintError(f"batch size must be positive, got {self.batch_size}")
        if self.num_workers < 0:
            raise FingerprintError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.on_error not in ("raise", "skip"):
            raise FingerprintError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")
        if self.epoch_batches is not None and self.epoch_batches < 1:
            raise FingerprintError(f"epoch_batches must be positive, got {self.epoch_batches}")
        if self.image_size is not None and self.image_size < 1:
            raise FingerprintError(f"image_size must be positive, got {self.image_size}")


def dist_info(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): given values, else torch.distributed's, else env RANK/WORLD_SIZE, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        r, w = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        r, w = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    r = r if rank is None else rank
    w = w if world_size is None else world_size
    if not 0 <= r < w:
        raise FingerprintError(f"bad rank {r} for world size {w}")
    return r, w


def resolve_urls(urls_or_dir: str | os.PathLike | Iterable[str]) -> list[str]:
    """Shard URLs from a folder, folder URL, pattern or list (`shards.resolve`)."""
    return resolve(urls_or_dir).urls


def _select_shards(shards: ShardSet, cfg: StreamConfig, skipped: dict[str, int] | None = None) -> ShardSet:
    """Drop shards that the manifest says hold no selected sample; check local files' sizes against it.

    A shard whose size differs from the manifest is an error, or with
    on_error="skip" a skipped shard counted in `skipped["shards"]`. Remote
    shards cannot be measured without reading them: their size (and sha256)
    is checked as each one ends streaming (`shards.iter_shard`).
    """
    if shards.manifest is None:
        return shards
    kept = []
    for u in shards.urls:
        s = shards.entry(u)
        if s is None:
            kept.append(u)
            continue
        path = urls.local_path(u)
        size = path.stat().st_size if path is not None else s["bytes"]
        if size != s["bytes"]:
            msg = f"{u}: shard is {size} bytes, manifest.json says {s['bytes']} (truncated or changed)"
            if cfg.on_error == "raise":
                raise FingerprintError(msg)
            log.warning("skipping shard %s", msg)
            if skipped is not None:
                skipped["shards"] = skipped.get("shards", 0) + 1
            continue
        groups = s.get("groups", {})
        if any(_wanted(cfg, *g.split("/", 1)) for g, n in groups.items() if n):
            kept.append(u)
    return ShardSet(kept, shards.manifest, shards.where)


def _wanted(cfg: StreamConfig, role: str, label: str) -> bool:
    return (cfg.roles is None or role in cfg.roles) and (cfg.labels is None or label in cfg.labels)


class _Samples:
    """Pipeline stages: shard list -> (detshuffle, node split, worker split) -> decoded, filtered samples.

    Holds the error counters of its own process; a skipped shard or sample
    is logged with its name.
    """

    def __init__(self, shards: ShardSet, cfg: StreamConfig, rank: int, world: int, counts: dict[str, int] | None):
        self.shards, self.urls, self.cfg, self.rank, self.world = shards, shards.urls, cfg, rank, world
        self.counts = counts if counts is not None else {}

    def shard_lists(self) -> Iterator[list[str]]:
        """One list per pass: every rank shuffles with the same seed+epoch(+pass), then takes rank::world."""
        passes = itertools.count() if self.cfg.epoch_batches else range(1)
        for rep in passes:
            urls = list(self.urls)
            if self.cfg.shuffle:
                random.Random(f"{self.cfg.seed}:{self.cfg.epoch}:{rep}").shuffle(urls)
            yield list(itertools.islice(urls, self.rank, None, self.world))

    def url_source(self) -> Iterator[dict[str, Any]]:
        for node_urls in self.shard_lists():
            yield from wds.split_by_worker([{"url": u} for u in node_urls])

    def samples(self, src: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Read each shard, decode json first, filter, then decode the image."""
        cfg = self.cfg
        barren = 0  # consecutive shards with no selected sample: a whole cycle of them means none exist
        for item in src:
            url = item["url"]
            n = kept = 0
            try:
                for raw in iter_shard(url, self.shards.entry(url), checksum=cfg.checksum):
                    n += 1
                    try:
                        rec = json.loads(raw["json"])
                        if not _wanted(cfg, rec.get("role"), rec.get("label")):
                            continue
                        key, pixels, rec = decode_sample(raw)
                    except (FingerprintError, KeyError, ValueError) as e:
                        msg = (
                            str(e)
                            if isinstance(e, FingerprintError)
                            else f"{url}: sample {raw.get('__key__')}: bad record ({e})"
                        )
                        if cfg.on_error == "raise":
                            raise FingerprintError(msg) from None
                        self._skip("samples", msg)
                        continue
                    kept += 1
                    yield {"key": key, "pixels": pixels, "role": rec["role"], "label": rec["label"], "shard": url}
            except FingerprintError as e:
                if cfg.on_error == "raise" or not str(e).startswith(url):
                    raise
                self._skip("shards", f"{e} (after {n} samples)")
            barren = 0 if kept else barren + 1
            if cfg.epoch_batches and barren > len(self.urls):
                raise FingerprintError(
                    f"no samples with roles={cfg.roles} labels={cfg.labels} in this process's shards ({url} ...)"
                )

    def tag_counts(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        """Attach this worker's running skip counts to each batch (read off by Loader)."""
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        for batch in batches:
            batch[_COUNTS] = (worker, dict(self.counts))
            yield batch

    def _skip(self, what: str, msg: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
        log.warning("skipping: %s", msg)


def _shuffle_rng(cfg: StreamConfig, rank: int) -> random.Random:
    info = torch.utils.data.get_worker_info()
    worker = info.id if info is not None else 0
    return random.Random(f"{cfg.seed}:{cfg.epoch}:{rank}:{worker}")


def collate(samples: list[dict[str, Any]]) -> Batch:
    """Samples with uint8 HxW pixels -> Batch with uint8 Bx1xHxW image (converted to float later) and source shards."""
    shapes = {s["pixels"].shape for s in samples}
    if len(shapes) > 1:
        raise FingerprintError(
            f"images of different sizes in one batch {sorted(shapes)}: read shards packed with one pack.image_size"
        )
    pixels = [s["pixels"] for s in samples]
    if any(p.dtype != np.uint8 for p in pixels):  # 16-bit images (alone or mixed with 8-bit): float [0,1] now
        pixels = [unit_float(p) for p in pixels]
    image = torch.from_numpy(np.stack(pixels))[:, None]
    return {
        "key": [s["key"] for s in samples],
        "image": image,
        "role": [s["role"] for s in samples],
        "label": [s["label"] for s in samples],
        "shard": [s["shard"] for s in samples],
    }


def unit_float(pixels: np.ndarray) -> np.ndarray:
    """uint8 or uint16 pixels -> float32 in [0, 1] (by the dtype's range)."""
    top = np.float32(np.iinfo(pixels.dtype).max)
    a = pixels.astype(np.float32)
    return np.divide(a, top, out=a)


def to_float(batch: Batch, image_size: int | None = None) -> Batch:
    """uint8 image -> float32 [0,1] (float images, from 16-bit shards, as they are), resized (bilinear,
    antialiased) if `image_size` differs."""
    x = batch["image"]
    if x.dtype == torch.uint8:
        if x.device.type == "cpu":  # numpy's conversion is ~10x faster than Tensor.float() on CPU here
            a = x.numpy().astype(np.float32)
            x = torch.from_numpy(np.divide(a, np.float32(255.0), out=a))
        else:
            x = x.float().div_(255.0)
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
        x = x.clamp_(0.0, 1.0)
    return {**batch, "image": x}


def augment_batch(
    x: torch.Tensor,
    gen: torch.Generator,
    *,
    max_rotate: float = 7.0,
    max_shift: float = 0.04,
    max_scale: float = 0.06,
    contrast: float = 0.1,
    brightness: float = 0.05,
) -> torch.Tensor:
    """Train-time augmentation of float Bx1xHxW in [0,1]: horizontal flip, small affine, intensity jitter.

    All random draws come from `gen`, so a seeded generator gives the same batch.
    """
    b = x.shape[0]

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=gen)

    flip = torch.rand(b, generator=gen) < 0.5
    angle = u(-max_rotate, max_rotate) * (math.pi / 180.0)
    scale = 1.0 + u(-max_scale, max_scale)
    tx, ty = u(-max_shift, max_shift) * 2, u(-max_shift, max_shift) * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    sx = torch.where(flip, -1.0, 1.0)
    theta = torch.stack([torch.stack([cos * sx, -sin, tx], 1), torch.stack([sin * sx, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    c = (1.0 + u(-contrast, contrast)).view(b, 1, 1, 1).to(x.dtype)
    br = u(-brightness, brightness).view(b, 1, 1, 1).to(x.dtype)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * c + mean + br).clamp_(0.0, 1.0)


class _Finish:
    """Last pipeline stage: float conversion, resize and (seeded) augmentation, run inside the worker."""

    def __init__(self, cfg: StreamConfig, rank: int):
        self.cfg, self.rank = cfg, rank

    def __call__(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        gen = None
        if self.cfg.augment:
            info = torch.utils.data.get_worker_info()
            worker = info.id if info is not None else 0
            gen = torch.Generator().manual_seed(hash_seed(self.cfg.seed, self.cfg.epoch, self.rank, worker))
        for batch in batches:
            batch = to_float(batch, self.cfg.image_size)
            if gen is not None:
                batch["image"] = augment_batch(batch["image"], gen)
            yield batch


def hash_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (stable across processes, unlike hash())."""
    return random.Random(":".join(map(str, parts))).getrandbits(63)


class Loader:
    """Iterable of Batches for one rank; `set_epoch(e)` reshuffles for the next pass.

    `skipped` counts the shards/samples skipped with on_error="skip" in the
    current (or last) pass on this rank, workers included; each skip is also
    logged by name.
    """

    def __init__(
        self, shards: ShardSet, cfg: StreamConfig, rank: int, world: int, preskipped: dict[str, int] | None = None
    ):
        self.shards, self.urls, self.cfg, self.rank, self.world = shards, shards.urls, cfg, rank, world
        self.preskipped = dict(preskipped or {})  # shards dropped before reading (counted on rank 0)
        self.skipped: dict[str, int] = dict(self.preskipped)

    def set_epoch(self, epoch: int) -> None:
        self.cfg = replace(self.cfg, epoch=epoch)

    def _convert_in_workers(self) -> bool:
        """Workers hand over uint8 batches (4x less to copy between processes) unless they must augment or resize."""
        cfg = self.cfg
        if cfg.num_workers == 0 or cfg.augment:
            return True
        man = self.shards.manifest
        return cfg.image_size is not None and (man is None or man["image_size"] != cfg.image_size)

    def dataset(self) -> wds.DataPipeline:
        cfg = self.cfg
        stages = _Samples(self.shards, cfg, self.rank, self.world, self.skipped if cfg.num_workers == 0 else None)
        pipeline: list[Any] = [stages.url_source, stages.samples]
        if cfg.shuffle_buffer > 0:
            pipeline.append(_BufferShuffle(cfg, self.rank))
        pipeline.append(wds.batched(cfg.batch_size, collation_fn=collate, partial=cfg.epoch_batches is None))
        if self._convert_in_workers():
            pipeline.append(_Finish(cfg, self.rank))
        if cfg.num_workers > 0:
            pipeline.append(stages.tag_counts)
        return wds.DataPipeline(*pipeline)

    def __iter__(self) -> Iterator[Batch]:
        cfg = self.cfg
        self.skipped.clear()
        self.skipped.update(self.preskipped)
        ds = self.dataset()
        pin = torch.cuda.is_available()
        if cfg.num_workers > 0:
            in_workers = self._convert_in_workers()
            it: Iterable[Batch] = wds.WebLoader(
                ds,
                batch_size=None,
                num_workers=cfg.num_workers,
                pin_memory=pin and in_workers,
                persistent_workers=False,
            )
            it = self._collect_counts(it)
            if not in_workers:
                it = (_pinned(to_float(b, cfg.image_size), pin) for b in it)
        else:
            it = ds
        if cfg.epoch_batches is not None:
            it = itertools.islice(it, cfg.epoch_batches)
        yield from it

    def _collect_counts(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        """Strip the workers' running skip counts from their batches and sum them into `skipped`."""
        per_worker: dict[int, dict[str, int]] = {}
        for batch in batches:
            worker, counts = batch.pop(_COUNTS)
            per_worker[int(worker)] = counts
            self.skipped.clear()
            for c in [self.preskipped, *per_worker.values()]:
                for k, n in c.items():
                    self.skipped[k] = self.skipped.get(k, 0) + int(n)
            yield batch

    def __len__(self) -> int:
        if self.cfg.epoch_batches is None:
            raise TypeError("a Loader without epoch_batches has no fixed length")
        return self.cfg.epoch_batches


def _pinned(batch: Batch, pin: bool) -> Batch:
    if pin:
        batch["image"] = batch["image"].pin_memory()
    return batch


class _BufferShuffle:
    """Seeded sample shuffle buffer (per rank and worker)."""

    def __init__(self, cfg: StreamConfig, rank: int):
        self.cfg, self.rank = cfg, rank

    def __call__(self, samples: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        rng = _shuffle_rng(self.cfg, self.rank)
        n = self.cfg.shuffle_buffer
        yield from wds.filters._shuffle(samples, bufsize=n, initial=n, rng=rng)


def make_loader(
    urls_or_dir: str | os.PathLike | Iterable[str],
    cfg: StreamConfig,
    *,
    rank: int | None = None,
    world_size: int | None = None,
) -> Loader:
    """Batches of the selected samples for this rank (see module doc); FingerprintError if shards < ranks x workers."""
    cfg.check()
    r, w = dist_info(rank, world_size)
    preskipped: dict[str, int] = {}
    shards = _select_shards(resolve(urls_or_dir), cfg, preskipped if r == 0 else None)
    if not shards.urls:
        raise FingerprintError(f"no shard holds samples with roles={cfg.roles} labels={cfg.labels}")
    need = w * max(1, cfg.num_workers)
    if len(shards.urls) < need:
        raise FingerprintError(
            f"{len(shards.urls)} shard(s) with the selected samples, fewer than {w} rank(s) x "
            f"{max(1, cfg.num_workers)} worker(s): repack with a smaller pack.max_count or use fewer workers"
        )
    return Loader(shards, cfg, r, w, preskipped)


def load_all(
    urls_or_dir: str | os.PathLike | Iterable[str], cfg: StreamConfig, *, skipped: dict[str, int] | None = None
) -> Batch:
    """Every selected sample in one Batch (single process, no split, no shuffle), sorted by key.

    With on_error="skip", `skipped` (if given) receives the counts of skipped shards/samples.
    """
    cfg = replace(cfg, num_workers=0, shuffle=False, shuffle_buffer=0, epoch_batches=None)
    cfg.check()
    counts: dict[str, int] = skipped if skipped is not None else {}
    shards = _select_shards(resolve(urls_or_dir), cfg, counts)
    found = _Samples(shards, cfg, 0, 1, counts).samples({"url": u} for u in shards.urls)
    samples = sorted(found, key=lambda s: s["key"])
    if counts:
        log.warning("load_all skipped %s", ", ".join(f"{n} {k}" for k, n in counts.items()))
    if not samples:
        size = cfg.image_size or 0
        return {"key": [], "image": torch.zeros(0, 1, size, size), "role": [], "label": [], "shard": []}
    batch = to_float(collate(samples), cfg.image_size)
    if cfg.augment:
        batch["image"] = augment_batch(batch["image"], torch.Generator().manual_seed(hash_seed(cfg.seed, cfg.epoch)))
    return batch
