"""The bounded-memory profile: compact codes, an approximate index, exact re-ranking from the pixels on disk.

The exact profile (`fingerprint.membership.profile`) holds every image of a
split at each size in memory and searches it exhaustively. Here memory grows
with the real images only:

- one pass over each split's shards writes the generated images, as stored
  (uint8, at most the largest side a space reads), into a part file in a
  temporary folder of the profile's output, read back by row (`Part`); the
  reals stay in memory;
- each vector space (`px*`, `pn*`, `k32x`) gets a compact code per image: a
  PCA of the space's rows fitted on a seeded sample (`k32x`: the learned
  metric's own projection, already linear and low-dimensional); codes are
  computed chunk by chunk from the part;
- a FAISS index over the generated codes (exact `Flat` on small pools, else
  `IVF<nlist>,Flat`) gives each real image its `rerank` nearest candidates,
  re-ranked exactly in the full space from the part's rows (in `k32x`,
  in the real image's own cross-fitted metric), and the same for the
  reference reals; the recall@16 of the index against exhaustive search on
  the codes is measured on a seeded sample of real queries and recorded;
- `al64` and `ff32` align each real image with its top `pn32` candidates only,
  read from the part.

Where the index is exact and the re-ranking depth covers the true neighbours
(every small pool), the columns equal the exact profile's.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import faiss
import numpy as np
import torch

from fingerprint.core.errors import FingerprintError
from fingerprint.core.vocab import SPLITS
from fingerprint.data.stream import StreamConfig, make_loader, to_float
from fingerprint.membership.align import aligned_distance_fn, registered_distance_fn
from fingerprint.membership.spaces import KS_GEN, KS_REF, ProfileConfig, drop_self, flat, profile_columns
from fingerprint.training.adapt import load_metric

log = logging.getLogger(__name__)

#: the neighbour rank whose recall the index is measured at
RECALL_AT = 16

#: real queries the recall is measured on (a seeded sample)
RECALL_QUERIES = 256

#: generated images per split in the sample the PCA codes are fitted on (with every real image)
PCA_SAMPLE = 1024


#: images per chunk when coding from the part
CHUNK = 1024


#: real queries per re-ranking block (their candidates' full rows are held at once)
QUERY_BLOCK = 16


class Part:
    """A generated pool's uint8 images (N, S, S) in a file, read by row with positioned reads.

    Plain reads (not a memory map) keep the pages out of the process's resident set: memory is what a chunk
    needs, whatever the pool's size.
    """

    def __init__(self, path: Path, n: int, side: int):
        self.path, self.shape, self.row = path, (n, side, side), side * side
        self.fd = os.open(path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: np.ndarray | slice) -> np.ndarray:
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(len(self))
            data = os.pread(self.fd, (stop - start) * self.row, start * self.row)
            return np.frombuffer(data, np.uint8).reshape(stop - start, *self.shape[1:]).copy()
        out = np.empty((len(rows), *self.shape[1:]), np.uint8)
        for i, r in enumerate(np.asarray(rows, dtype=np.int64).tolist()):
            out[i] = np.frombuffer(os.pread(self.fd, self.row, r * self.row), np.uint8).reshape(self.shape[1:])
        return out

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class Images:
    """One role's images of a split as uint8 (N, S, S) (in memory, or a part on disk) and their keys."""

    keys: list[str]
    pixels: np.ndarray | Part

    def __len__(self) -> int:
        return len(self.keys)

    def at(self, rows: np.ndarray | slice, size: int) -> torch.Tensor:
        """Images `rows` as float32 (n,1,size,size) in [0,1], resized as a stream stage reads them."""
        x = torch.from_numpy(np.array(self.pixels[rows]))[:, None]
        return to_float({"image": x}, size)["image"]


@dataclass
class Split:
    """A split for the bounded profile: reals in memory (sorted by key, with labels), generated in a part file."""

    real: Images
    labels: list[str]
    gen: Images


# ----------------------------------------------------------------------------- reading


def store_side(shard_side: int, sizes: list[int]) -> int:
    """The side the generated images are kept at: as stored, or the largest side a space reads if smaller."""
    return min(int(shard_side), max(sizes))


def read_split(shards: str | Path, folder: Path, name: str, sizes: list[int], cfg: ProfileConfig) -> Split:
    """One pass over a split's shards: reals kept in memory, generated appended to folder/<name>.u8."""
    loader = make_loader(
        shards, StreamConfig(batch_size=cfg.batch_size, on_error=cfg.on_error, num_workers=1), rank=0, world_size=1
    )
    path = folder / f"{name}.u8"
    rkeys, rlabels, reals, gkeys, side = [], [], [], [], None
    with open(path, "wb") as f:
        for batch in loader:
            x = batch["image"]
            side = side or store_side(x.shape[-1], sizes)
            if x.shape[-1] != side:
                x = to_float(batch, side)["image"]
            u8 = (x[:, 0] * 255.0).round_().clamp_(0, 255).to(torch.uint8).numpy()
            gen = np.asarray(batch["role"]) == "generated"
            f.write(np.ascontiguousarray(u8[gen]).tobytes())
            gkeys += [k for k, g in zip(batch["key"], gen) if g]
            rkeys += [k for k, g in zip(batch["key"], gen) if not g]
            rlabels += [lab for lab, g in zip(batch["label"], gen) if not g]
            reals.append(u8[~gen])
    if not rkeys or not gkeys:
        raise FingerprintError(f"{shards}: the profile needs real and generated images")
    order = np.argsort(np.asarray(rkeys), kind="stable")
    real = np.concatenate(reals)[order]
    pixels = Part(path, len(gkeys), side)
    return Split(Images([rkeys[i] for i in order], real), [rlabels[i] for i in order], Images(gkeys, pixels))


# ----------------------------------------------------------------------------- a space's rows, codes and index


@dataclass
class Space:
    """A vector space: full rows of images at `size` (normalised or not) and a linear code of them.

    `projected`: the full rows are already the projection (the learned metric, k32x), and the code is the row.
    """

    size: int
    normalise: bool
    mean: np.ndarray | None = None
    components: np.ndarray | None = None  # (d, D)
    projected: bool = False

    def rows(self, images: Images, ids: np.ndarray | slice) -> np.ndarray:
        x = flat(images.at(ids, self.size), self.normalise)
        return self.project(x) if self.projected else x

    def project(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float64) - self.mean) @ self.components.T).astype(np.float32)

    def code(self, rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(rows if self.projected else self.project(rows), dtype=np.float32)


def fit_pca(rows: np.ndarray, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(mean, top-`dim` principal directions (dim, D)) of sample rows: a seeded randomised SVD (Halko et al.), the
    code only has to retrieve candidates (they are re-ranked exactly)."""
    x = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
    mean = x.mean(0)
    q = min(dim + 8, *x.shape)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        _, _, v = torch.svd_lowrank(x - mean, q=q, niter=3)
    return mean.numpy(), np.ascontiguousarray(v[:, :dim].T.numpy())


def fit_space(space: Space, splits: dict[str, Split], dim: int, seed: int) -> Space:
    """Fit the space's PCA code on every real image and a seeded sample of each split's generated images."""
    rng = np.random.default_rng(seed)
    sample = []
    for sp in splits.values():
        sample.append(space.rows(sp.real, slice(None)))
        n = min(len(sp.gen), PCA_SAMPLE)
        sample.append(space.rows(sp.gen, np.sort(rng.choice(len(sp.gen), n, replace=False))))
    space.mean, space.components = fit_pca(np.concatenate(sample), dim, seed)
    return space


def pool_codes(space: Space, images: Images) -> np.ndarray:
    """Codes (N, d) of every image of a pool (in memory or a part), chunk by chunk."""
    out = np.empty((len(images), space.components.shape[0]), np.float32)
    for i in range(0, len(images), CHUNK):
        out[i : i + CHUNK] = space.code(space.rows(images, slice(i, i + CHUNK)))
    return out


def build_index(codes: np.ndarray, cfg: ProfileConfig, seed: int) -> faiss.Index:
    """`Flat` (exact) up to `profile.index_exact_max` rows, else IVF with sqrt-sized lists, probed `index_nprobe`."""
    n, d = codes.shape
    if n <= cfg.index_exact_max:
        index = faiss.IndexFlatL2(d)
    else:
        nlist = int(min(4 * np.sqrt(n), n // 39))
        index = faiss.index_factory(d, f"IVF{nlist},Flat")
        rng = np.random.default_rng(seed)
        train = codes[np.sort(rng.choice(n, min(n, 64 * nlist), replace=False))]
        index.cp.seed = seed
        index.train(train)
        index.nprobe = min(cfg.index_nprobe, nlist)
    index.add(codes)
    return index


def recall(index: faiss.Index, codes: np.ndarray, queries: np.ndarray, seed: int) -> float:
    """Recall@16 of `index` against exhaustive search over `codes`, on a seeded sample of `queries`."""
    rng = np.random.default_rng(seed)
    q = queries[np.sort(rng.choice(len(queries), min(len(queries), RECALL_QUERIES), replace=False))]
    k = min(RECALL_AT, len(codes))
    exact = faiss.IndexFlatL2(codes.shape[1])
    exact.add(codes)
    _, truth = exact.search(q, k)
    _, got = index.search(q, k)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(truth, got)]))


def rerank(
    query: np.ndarray, base: Callable[[np.ndarray], np.ndarray], cand: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact L2 of each query row to its candidates' full rows (`base(ids)`), the k nearest: (dist, ids) sorted."""
    dist = np.empty(cand.shape, np.float64)
    b = QUERY_BLOCK
    for i in range(0, len(cand), b):
        c = cand[i : i + b]
        ids = np.unique(c[c >= 0])
        rows = base(ids).astype(np.float64)
        local = np.searchsorted(ids, np.where(c >= 0, c, ids[0]))
        diff = rows[local] - query[i : i + b, None].astype(np.float64)
        d = np.sqrt((diff * diff).sum(-1))
        dist[i : i + b] = np.where(c >= 0, d, np.inf)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, order, 1), np.take_along_axis(cand, order, 1)


# ----------------------------------------------------------------------------- the profile


class BoundedProfile:
    """The bounded path of `run_profile`: `columns()` -> {split: {column: values}}, `stats` for the record."""

    def __init__(self, splits: dict[str, Split], cfg: ProfileConfig):
        self.splits, self.cfg = splits, cfg
        self.stats: dict[str, dict] = {}
        self.neighbours: dict[str, tuple[dict[str, np.ndarray], np.ndarray]] = {}
        self.real_all = Images(
            [k for s in SPLITS for k in splits[s].real.keys], np.concatenate([splits[s].real.pixels for s in SPLITS])
        )

    def offsets(self) -> dict[str, np.ndarray]:
        out, start = {}, 0
        for s in SPLITS:
            out[s] = start + np.arange(len(self.splits[s].real))
            start += len(self.splits[s].real)
        return out

    def vector_space(
        self, name: str, space: Space, depth: int
    ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
        """Nearest generated images (per split) and nearest other reals of every real, exact in the full rows.

        Returns ({split: (dist (R, max KS_GEN), generated rows)}, (dist (R_all, max KS_REF), rows of every real)),
        each sorted, the query itself excluded from its reference.
        """
        cfg, kgen, kref = self.cfg, max(KS_GEN), max(KS_REF)
        real_rows = space.rows(self.real_all, slice(None))
        real_codes = space.code(real_rows)
        gen, recalls = {}, {}
        for s, rows in self.offsets().items():
            images = self.splits[s].gen
            codes = pool_codes(space, images)
            index = build_index(codes, cfg, cfg.seed)
            _, cand = index.search(real_codes[rows], min(max(depth, kgen), len(images)))
            recalls[s] = round(recall(index, codes, real_codes[rows], cfg.seed), 4)
            del index, codes
            gen[s] = rerank(real_rows[rows], partial(space.rows, images), cand, kgen)
        index = build_index(real_codes, cfg, cfg.seed)
        own = np.arange(len(real_codes))
        _, cand = index.search(real_codes, min(max(depth, kref + 1), len(own)))
        d, ids = rerank(real_rows, lambda ids: real_rows[ids], cand, min(kref + 1, len(own)))
        self.stats[name] = {
            "recall_at_16": recalls,
            "depth": depth,
            "pool": {s: len(self.splits[s].gen) for s in SPLITS},
        }
        return gen, drop_self(d, ids, own)

    def columns_of(self, name: str, gen: dict, ref: tuple[np.ndarray, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        out = {}
        for s, rows in self.offsets().items():
            out[s] = profile_columns(gen[s][0], ref[0][rows], name)
        return out

    def pixel_space(self, name: str) -> dict[str, dict[str, np.ndarray]]:
        space = fit_space(Space(int(name[2:]), name.startswith("pn")), self.splits, self.cfg.code_dim, self.cfg.seed)
        depth = max(self.cfg.rerank, self.cfg.align_candidates, self.cfg.align_references + 1)
        gen, ref = self.vector_space(name, space, depth)
        if name == "pn32":  # the al64 / ff32 candidates
            self.neighbours["pn32"] = ({s: v[1] for s, v in gen.items()}, ref[1])
        return self.columns_of(name, gen, ref)

    def crossfit_space(self) -> dict[str, dict[str, np.ndarray]]:
        """k32x: candidates by the full metric's projection, re-ranked in each real image's own fold metric."""
        metric = load_metric(self.cfg.metric)
        keys = self.real_all.keys
        fold = np.array([metric.fold_of.get(k, metric.full) for k in keys])
        unseen = int((fold == metric.full).sum())
        if unseen:
            log.warning("profile: %d real image(s) unknown to the metric: measured in the full metric", unseen)
        out: dict[str, dict[str, np.ndarray]] = {s: {} for s in SPLITS}
        for m in sorted(set(fold.tolist())):
            space = Space(int(metric.meta["size"]), True, metric.mean, metric.projection[m], projected=True)
            gen, ref = self.vector_space("k32x", space, self.cfg.rerank)
            cols = self.columns_of("k32x", gen, ref)
            for s, rows in self.offsets().items():
                for col, values in cols[s].items():
                    out[s].setdefault(col, np.zeros(len(values)))[fold[rows] == m] = values[fold[rows] == m]
        return out

    def candidate_space(self, name: str) -> dict[str, dict[str, np.ndarray]]:
        """al64 / ff32 on each real image's nearest pn32 generated images and reals, read from the part."""
        if "pn32" not in self.neighbours:
            self.pixel_space("pn32")
        cand, ref = self.neighbours["pn32"]
        cfg, size = self.cfg, 64 if name == "al64" else 32
        distance = aligned_distance_fn(cfg) if name == "al64" else registered_distance_fn(cfg)
        real = self.real_all.at(slice(None), size)
        out = {}
        for s, rows in self.offsets().items():
            c = cand[s][:, : cfg.align_candidates]
            used = np.unique(c)
            pool = torch.cat([self.splits[s].gen.at(used, size), real])
            refs = ref[rows][:, : cfg.align_references]
            dist = distance(real[rows], pool, np.hstack([np.searchsorted(used, c), len(used) + refs]))
            m = c.shape[1]
            out[s] = profile_columns(np.sort(dist[:, :m], axis=1), np.sort(dist[:, m:], axis=1), name)
        return out

    def space(self, name: str) -> dict[str, dict[str, np.ndarray]]:
        if name[:2] in ("px", "pn"):
            return self.pixel_space(name)
        if name == "k32x":
            return self.crossfit_space()
        if name in ("al64", "ff32"):
            return self.candidate_space(name)
        raise FingerprintError(f"profile: space {name!r} has no bounded path (profile.path exact)")


def pool_folder(out: Path) -> Path:
    """A temporary folder for the part files inside the profile's output (a stale one is removed later)."""
    folder = Path(out) / f".pool.tmp-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder
