"""Keyed feature export: every image of a shard set through the model once.

Each rank reads its own shards (stream.make_loader split by node; the loader
is not prepared), encodes them under the accelerator's autocast, and the
per-rank results are gathered with `gather_object`, de-duplicated by key and
sorted by key, so the output does not depend on the number of processes.
Embeddings are unit-norm float32; the spatial feature maps the relation head
needs are kept in float16 when asked for.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from fingerprint.stream import StreamConfig, make_loader
from fingerprint.utils import FingerprintError, atomic_path, is_main_process

log = logging.getLogger(__name__)

_ARRAYS = ("keys", "roles", "labels", "embeddings")


@dataclass
class Features:
    """Rows of keyed features; `fmaps` (float16 N x C x h x w) only when exported with fmaps."""

    keys: np.ndarray
    roles: np.ndarray
    labels: np.ndarray
    embeddings: np.ndarray
    fmaps: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.keys = np.asarray(self.keys, dtype=str)
        self.roles = np.asarray(self.roles, dtype=str)
        self.labels = np.asarray(self.labels, dtype=str)
        self.embeddings = np.ascontiguousarray(self.embeddings, dtype=np.float32)
        n = len(self.keys)
        if self.embeddings.ndim != 2:
            raise FingerprintError(f"features: embeddings must be N x D, got shape {self.embeddings.shape}")
        if not (len(self.roles) == len(self.labels) == len(self.embeddings) == n):
            raise FingerprintError(
                f"features: {n} keys, {len(self.roles)} roles, {len(self.labels)} labels, {len(self.embeddings)} embeddings"
            )
        if self.fmaps is not None:
            self.fmaps = np.asarray(self.fmaps, dtype=np.float16)
            if self.fmaps.ndim != 4 or len(self.fmaps) != n:
                raise FingerprintError(f"features: fmaps must be N x C x h x w for {n} rows, got {self.fmaps.shape}")

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def take(self, idx: np.ndarray | Sequence[int]) -> "Features":
        """The rows `idx`, in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        return Features(
            self.keys[idx],
            self.roles[idx],
            self.labels[idx],
            self.embeddings[idx],
            None if self.fmaps is None else self.fmaps[idx],
            dict(self.meta),
        )

    def select(self, role: str | Iterable[str] | None = None, label: str | Iterable[str] | None = None) -> "Features":
        """The rows with this role and label (each a name or a collection of names; None = any)."""
        mask = np.ones(len(self), dtype=bool)
        for values, want in ((self.roles, role), (self.labels, label)):
            if want is not None:
                mask &= np.isin(values, [want] if isinstance(want, str) else list(want))
        return self.take(np.flatnonzero(mask))

    def rows_of(self, keys: Sequence[str], *, source: str = "features") -> np.ndarray:
        """Row numbers of `keys`; a clear error for any key these features lack."""
        pos = {k: i for i, k in enumerate(self.keys.tolist())}
        missing = [k for k in keys if k not in pos]
        if missing:
            raise FingerprintError(
                f"{source}: {len(missing)} key(s) not in the features (first: {', '.join(missing[:3])})"
            )
        return np.array([pos[k] for k in keys], dtype=np.int64)

    def save(self, path: str | Path) -> Path:
        """One .npz (no pickle), written atomically."""
        arrays = {
            "keys": self.keys,
            "roles": self.roles,
            "labels": self.labels,
            "embeddings": self.embeddings,
            "meta": np.array(json.dumps(self.meta, sort_keys=True)),
        }
        if self.fmaps is not None:
            arrays["fmaps"] = self.fmaps
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, *, fmaps: bool = True) -> "Features":
        """Read a features file; `fmaps=False` skips the (large) feature maps."""
        path = Path(path)
        if not path.is_file():
            raise FingerprintError(f"{path}: features file not found")
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [a for a in _ARRAYS if a not in z.files]
                if missing:
                    raise FingerprintError(f"{path}: not a features file (missing {', '.join(missing)})")
                meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
                feats = cls(
                    z["keys"],
                    z["roles"],
                    z["labels"],
                    z["embeddings"],
                    z["fmaps"] if fmaps and "fmaps" in z.files else None,
                    meta,
                )
        except FingerprintError:
            raise
        except (OSError, ValueError, EOFError) as e:
            raise FingerprintError(f"{path}: cannot read features ({e})") from None
        if len(set(feats.keys.tolist())) != len(feats):
            raise FingerprintError(f"{path}: a key appears more than once")
        return feats


def merge(parts: Sequence[Features]) -> tuple[Features, int]:
    """Concatenate, drop repeated keys (first kept) and sort by key; returns (features, duplicates dropped)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        raise FingerprintError("embed: no images were read")
    with_fmaps = {p.fmaps is not None for p in parts}
    if len(with_fmaps) != 1:
        raise FingerprintError("embed: some parts have feature maps and some do not")
    keys = np.concatenate([p.keys for p in parts])
    _, first = np.unique(keys, return_index=True)  # np.unique sorts by key
    cat = Features(
        keys,
        np.concatenate([p.roles for p in parts]),
        np.concatenate([p.labels for p in parts]),
        np.concatenate([p.embeddings for p in parts]),
        np.concatenate([p.fmaps for p in parts]) if parts[0].fmaps is not None else None,
        dict(parts[0].meta),
    )
    return cat.take(first), len(keys) - len(first)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=1)


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

    `model.encode(x, role)` gives (unit-norm embedding, feature map); images are
    split by role inside a batch because an unshared model has one backbone
    per role. `image_size` defaults to the model's. With an accelerator, each
    rank reads its own shards and runs under `accelerator.autocast()`; the
    model is put in eval mode on the accelerator's device. `stats`
    (if given) receives images, unique, encode_seconds, images_per_s, world_size, per_rank, duplicates,
    skipped.
    """
    if accelerator is not None:
        rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
        autocast = accelerator.autocast
    else:
        rank, world = 0, 1
        device = next(model.parameters()).device
        autocast = contextlib.nullcontext
    size = int(image_size or model.cfg.image_size)
    cfg = StreamConfig(batch_size=batch_size, image_size=size, num_workers=num_workers, on_error=on_error)
    loader = make_loader(shards, cfg, rank=rank, world_size=world)
    model.eval().to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)

    keys: list[str] = []
    roles: list[str] = []
    labels: list[str] = []
    embs: list[np.ndarray] = []
    maps: list[np.ndarray] = []
    start = time.perf_counter()
    bar = tqdm(desc=f"embed (rank {rank}/{world})", unit="img", disable=not is_main_process())
    with torch.inference_mode(), autocast():
        for batch in loader:
            x = batch["image"].to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            batch_roles = np.asarray(batch["role"])
            for role in sorted(set(batch_roles.tolist())):
                idx = np.flatnonzero(batch_roles == role)
                emb, fmap = model.encode(x[torch.from_numpy(idx).to(device)], role=role)
                embs.append(_unit(emb).cpu().numpy())
                if fmaps:
                    maps.append(fmap.to(torch.float16).cpu().numpy())
                keys += [batch["key"][i] for i in idx]
                roles += [role] * len(idx)
                labels += [batch["label"][i] for i in idx]
            bar.update(len(x))
    bar.close()
    seconds = time.perf_counter() - start
    dim = int(embs[0].shape[1]) if embs else 0
    local = Features(
        keys,
        roles,
        labels,
        np.concatenate(embs) if embs else np.zeros((0, dim), np.float32),
        (np.concatenate(maps) if maps else np.zeros((0, 1, 1, 1), np.float16)) if fmaps else None,
    )
    parts = [local]
    skipped = dict(loader.skipped)
    counts = [len(local)]
    if world > 1:
        from accelerate.utils import gather_object

        gathered = gather_object([(local, skipped, seconds)])
        parts = [g[0] for g in gathered]
        counts = [len(p) for p in parts]
        skipped = {}
        for g in gathered:
            for k, n in g[1].items():
                skipped[k] = skipped.get(k, 0) + n
        seconds = max(g[2] for g in gathered)
    feats, dupes = merge(parts)
    feats.meta.update({"image_size": size, "fmaps": bool(fmaps)})
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
