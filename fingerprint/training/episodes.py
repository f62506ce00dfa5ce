"""Episodes for relation-network training: dev split, balanced real queries, generated support sets.

An episode is a batch of real query images, half "used" and half "not used",
each with a support set of K generated images: its nearest generated images
by the current embeddings (a FAISS inner-product index over the generated
pool, rebuilt whenever the memory bank is refreshed) mixed with random ones.
`mode="pairs"` instead gives each query K random generated images and labels
every pair with the query's label (the seed's pair training).

The generated pool is held in memory (supports are retrieved by index); the
real queries are streamed, each rank reading its own shards
(`BalancedQueries` re-batches that stream into class-balanced batches).
"""

from __future__ import annotations

import json
import logging
import random
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import faiss
import numpy as np
import torch
from torch import Tensor

from fingerprint.core.errors import FingerprintError
from fingerprint.core.vocab import LABEL_CODES
from fingerprint.data.shards import iter_shard, resolve
from fingerprint.embedding.index import build_index, search

log = logging.getLogger(__name__)

MODES = ("nearest", "pairs")


# ----------------------------------------------------------------------------- dev set and split


def dev_reals(shards: str | Path) -> tuple[list[str], list[str]]:
    """Keys and labels ("used"/"not_used") of the labelled real images in a shard set (local or URL), by key.

    Reads only the json records (no image decoding), so every rank can afford it.
    """
    found: dict[str, str] = {}
    listed = resolve(shards)
    for url in listed.urls:
        for raw in iter_shard(url, listed.entry(url)):
            try:
                rec = json.loads(raw["json"])
            except (KeyError, ValueError) as e:
                raise FingerprintError(f"{url}: sample {raw.get('__key__')}: bad json record ({e})") from None
            if rec.get("role") != "real" or rec.get("label") not in LABEL_CODES:
                continue
            key = rec.get("key", raw["__key__"])
            if key in found:
                raise FingerprintError(f"{url}: key {key} appears twice in {shards}")
            found[key] = rec["label"]
    keys = sorted(found)
    return keys, [found[k] for k in keys]


def split_dev(
    keys: Sequence[str], labels: Sequence[str | int], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Stratified, seeded train/validation split of labelled keys -> (train_keys, val_keys), each sorted.

    Labels are "used"/"not_used" or 1/0. Each class keeps at least one image on
    each side when val_fraction > 0; val_fraction = 0 puts everything in train.
    """
    if len(keys) != len(labels):
        raise FingerprintError(f"split: {len(keys)} keys but {len(labels)} labels")
    if len(set(keys)) != len(keys):
        raise FingerprintError("split: duplicate keys")
    if not 0.0 <= val_fraction < 1.0:
        raise FingerprintError(f"split: val fraction must be in [0, 1), got {val_fraction}")
    by_class: dict[int, list[str]] = {0: [], 1: []}
    for k, lab in zip(keys, labels):
        v = LABEL_CODES.get(lab, lab) if isinstance(lab, str) else int(lab)
        if v not in (0, 1):
            raise FingerprintError(f"split: key {k} has label {lab!r}; expected used/not_used or 1/0")
        by_class[v].append(k)
    train: list[str] = []
    val: list[str] = []
    for v, ks in by_class.items():
        name = "used" if v else "not_used"
        if not ks:
            raise FingerprintError(f"split: no '{name}' images in the development set")
        ks = sorted(ks)
        random.Random(f"{seed}:split:{v}").shuffle(ks)
        n_val = 0
        if val_fraction > 0:
            if len(ks) < 2:
                raise FingerprintError(f"split: only {len(ks)} '{name}' image(s); a validation split needs at least 2")
            n_val = min(max(1, round(len(ks) * val_fraction)), len(ks) - 1)
        val += ks[:n_val]
        train += ks[n_val:]
    return sorted(train), sorted(val)


# ----------------------------------------------------------------------------- real queries


@dataclass
class Queries:
    """One batch of real query images with keys and 0/1 labels."""

    key: list[str]
    image: Tensor  # (Q,1,H,W) float32 in [0,1]
    label: Tensor  # (Q,) float32, 1 = used


class BalancedQueries:
    """Re-batch a stream of real samples into `n_batches` batches of `queries` images, half per class.

    Only samples whose key is in `keys` (the train split) are kept. `stream` is
    re-iterable (a stream Loader for one rank and epoch): when a pass ends before
    `n_batches` batches, it is read again, so a rank only ever repeats its own
    share of the shards and ranks stay disjoint. A pass that brings none of a
    class that is still needed is an error naming what this process received.
    """

    def __init__(
        self,
        stream: Iterable[dict],
        keys: Iterable[str],
        labels: dict[str, str],
        queries: int,
        n_batches: int,
        *,
        where: str = "this process",
    ):
        if queries < 2 or queries % 2:
            raise FingerprintError(f"episode queries must be an even number >= 2, got {queries}")
        if n_batches < 1:
            raise FingerprintError(f"episodes per epoch must be >= 1, got {n_batches}")
        self.stream, self.keys, self.labels = stream, set(keys), labels
        self.queries, self.n_batches, self.where = queries, n_batches, where

    def __iter__(self) -> Iterator[Queries]:
        half = self.queries // 2
        buf: dict[int, deque] = {0: deque(), 1: deque()}
        this_pass = {0: 0, 1: 0}
        made = 0
        it = iter(self.stream)
        while made < self.n_batches:
            while len(buf[0]) < half or len(buf[1]) < half:
                try:
                    batch = next(it)
                except StopIteration:
                    short = [c for c in (1, 0) if len(buf[c]) < half and this_pass[c] == 0]
                    if short:
                        raise FingerprintError(
                            f"{self.where}: its share of the query shards holds no "
                            f"{' and no '.join(repr('used' if c else 'not_used') for c in short)} training images "
                            f"({this_pass[1]} used / {this_pass[0]} not-used in one pass); repack with smaller shards "
                            "(pack.max_count) or use fewer processes"
                        ) from None
                    this_pass = {0: 0, 1: 0}
                    it = iter(self.stream)
                    continue
                for i, key in enumerate(batch["key"]):
                    if key in self.keys:
                        v = LABEL_CODES[self.labels[key]]
                        buf[v].append((key, batch["image"][i]))
                        this_pass[v] += 1
            picked = [buf[1].popleft() for _ in range(half)] + [buf[0].popleft() for _ in range(half)]
            yield Queries(
                key=[k for k, _ in picked],
                image=torch.stack([x for _, x in picked]),
                label=torch.tensor([1.0] * half + [0.0] * half),
            )
            made += 1


# ----------------------------------------------------------------------------- generated supports


@dataclass
class Bank:
    """The generated pool's current embeddings (and feature maps) with a FAISS index over them."""

    keys: list[str]
    emb: Tensor  # (N,D) float32, unit norm, CPU
    index: faiss.Index
    fmap: Tensor | None = None  # (N,C,h,w), on the training device; None when supports are re-encoded

    @classmethod
    def build(cls, keys: Sequence[str], emb: Tensor, fmap: Tensor | None = None) -> "Bank":
        e = emb.detach().float().cpu().contiguous()
        if len(keys) != len(e):
            raise ValueError(f"{len(keys)} keys for {len(e)} embeddings")
        return cls(list(keys), e, build_index(e.numpy(), "Flat"), None if fmap is None else fmap.detach())


class SupportSampler:
    """Chooses K generated pool ids per query: nearest by embedding plus random, or (pairs) all random.

    Checks up front that the pool holds at least K images and that the random
    share fits. Draws are seeded by (seed, epoch, step, rank), so a resumed run
    draws what an uninterrupted one would.
    """

    def __init__(self, pool_size: int, k: int, k_random: int = 0, mode: str = "nearest", seed: int = 0):
        if mode not in MODES:
            raise FingerprintError(f"unknown episode mode {mode!r} (choose from {', '.join(MODES)})")
        if k < 1:
            raise FingerprintError(f"support size K must be >= 1, got {k}")
        if pool_size < k:
            raise FingerprintError(f"support size K={k} is larger than the generated pool ({pool_size} images)")
        if mode == "nearest" and not 0 <= k_random <= k:
            raise FingerprintError(f"random supports ({k_random}) must be between 0 and K={k}")
        self.pool_size, self.k, self.k_random, self.mode, self.seed = pool_size, k, k_random, mode, seed

    def rng(self, epoch: int, step: int, rank: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, step, rank, 7])

    def sample(
        self,
        q_emb: np.ndarray | Tensor | None,
        bank: Bank | None,
        *,
        epoch: int,
        step: int,
        rank: int = 0,
        n_queries: int | None = None,
    ) -> np.ndarray:
        """(Q,K) int64 pool ids: nearest first (by cosine, best first), then random ones."""
        rng = self.rng(epoch, step, rank)
        q = n_queries if q_emb is None else len(q_emb)
        if self.mode == "pairs":
            return np.stack([rng.choice(self.pool_size, self.k, replace=False) for _ in range(q)]).astype(np.int64)
        if bank is None or q_emb is None:
            raise ValueError("nearest supports need query embeddings and a bank")
        n_near = self.k - self.k_random
        ids = np.empty((q, self.k), dtype=np.int64)
        near = nearest(bank, q_emb, n_near)[1] if n_near else np.empty((q, 0), dtype=np.int64)
        for i in range(q):
            ids[i, :n_near] = near[i]
            if self.k_random:
                mask = np.ones(self.pool_size, dtype=bool)
                mask[near[i]] = False
                ids[i, n_near:] = rng.choice(np.flatnonzero(mask), self.k_random, replace=False)
        return ids


def nearest(bank: Bank, q_emb: np.ndarray | Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(cosine sims (Q,k) float32, pool ids (Q,k) int64) of the k nearest bank images, best first."""
    if isinstance(q_emb, Tensor):
        q_emb = q_emb.detach().float().cpu().numpy()
    return search(bank.index, np.ascontiguousarray(q_emb, dtype=np.float32), k)


def bank_support_fn(
    bank: Bank, ids_fn: Callable[[Tensor], np.ndarray], record: list | None = None
) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """A `support_fn` for FingerprintModel.forward: query embeddings -> (s_emb, s_fmap) from the bank.

    `ids_fn(q_emb)` picks the (Q,K) pool ids; they are appended to `record` if given.
    """
    if bank.fmap is None:
        raise ValueError("this bank holds no feature maps (supports are re-encoded)")

    def fn(q_emb: Tensor) -> tuple[Tensor, Tensor]:
        ids = ids_fn(q_emb)
        if record is not None:
            record.append(ids)
        idx = torch.as_tensor(ids, device=bank.fmap.device)
        s_fmap = bank.fmap[idx.reshape(-1)].reshape(*ids.shape, *bank.fmap.shape[1:])
        s_emb = bank.emb.to(q_emb.device)[idx.to(q_emb.device)]
        return s_emb, s_fmap

    return fn


def pair_targets(labels: Tensor, k: int) -> Tensor:
    """Per-pair targets for pairs mode: each of a query's K pairs gets the query's label -> (Q,K)."""
    return labels.reshape(-1, 1).expand(-1, k)
