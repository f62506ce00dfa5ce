"""The profile's options and its k-NN arithmetic over the representation spaces.

`ProfileConfig` (the `profile` stage's options), `SplitImages` (a split's
images in memory) and the calibrated k-NN columns every space shares
(`ngen_k`, `ref_k`, `cal_k`; see `fingerprint.membership.profile`), computed
with exact FAISS k-NN. The alignment spaces (`fingerprint.membership.align`)
and the profile stage build on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch

from fingerprint.core.config import check_fields, fail, option
from fingerprint.core.vocab import DEVICES, ON_ERROR, SPACES, SPLITS

#: how the profile searches: every image in memory, or codes + index + re-ranking (fingerprint.membership.bounded)
PROFILE_PATHS = ("auto", "exact", "bounded")


#: the profile's default spaces (the learned metric needs `profile.metric`)
DEFAULT_SPACES = ("px64", "pn32", "px16", "k32x", "al64", "ff32")


#: neighbour ranks of the distances to the generated pool and to the reference (every space)
KS_GEN = (1, 3, 5, 8)


KS_REF = (1, 3, 5)


EPS = 1e-6


@dataclass(kw_only=True)
class ProfileConfig:
    """Options of the profile stage (`fingerprint profile`)."""

    SECTION = "profile"

    dev: str = option(help="dev shards (labelled reals and their generated pool): a folder, folder URL or pattern")
    test: str = option(help="test shards (unlabelled reals and their generated pool): a folder, folder URL or pattern")
    out: Path = option(help="folder to write dev.npz and test.npz (one row per real image)")
    spaces: tuple[str, ...] = option(DEFAULT_SPACES, choices=SPACES, help="representation spaces of the profile")
    metric: Path | None = option(None, help="learned metric folder from 'fingerprint adapt' (space k32x)")
    descriptor: Path | None = option(None, help="model folder whose embedding is the emb space (e.g. 'pretrain')")
    align_candidates: int = option(16, min=1, help="al64, ff32: each real's nearest generated images aligned")
    align_references: int = option(8, min=1, help="al64, ff32: each real's nearest other reals aligned (reference)")
    align_angles: tuple[float, ...] = option((-6.0, -3.0, 0.0, 3.0, 6.0), help="al64: rotations searched (degrees)")
    align_scales: tuple[float, ...] = option((0.95, 1.0, 1.05), help="al64: scales searched")
    align_shift: int = option(3, min=0, help="al64: shifts searched, +-pixels at 64 px")
    register_grid: int = option(6, min=2, help="ff32: control grid side of the free-form registration")
    register_steps: int = option(60, min=1, help="ff32: Adam steps of the free-form registration")
    path: str = option(
        "auto",
        choices=PROFILE_PATHS,
        help="exact: every image in memory, exhaustive k-NN; bounded: codes, an index and exact re-ranking from "
        "the pixels on disk (memory grows with the reals only); auto: bounded above path_exact_max",
    )
    path_exact_max: int = option(20_000, min=0, help="auto: the exact path up to this many generated images a split")
    code_dim: int = option(32, min=1, help="bounded: PCA code size of each pixel space (fitted on a seeded sample)")
    rerank: int = option(64, min=1, help="bounded: candidates per real image re-ranked exactly from the full rows")
    index_exact_max: int = option(50_000, min=1, help="bounded: exact (Flat) index up to this many rows, else IVF")
    index_nprobe: int = option(48, min=1, help="bounded: IVF lists probed per query")
    batch_size: int = option(256, min=1, help="images per batch when reading shards and encoding")
    device: str = option("auto", choices=DEVICES, help="where the aligned search and the descriptor run")
    threads: int | None = option(None, min=1, help="torch/FAISS CPU threads (default: all cores)")
    on_error: str = option("raise", choices=ON_ERROR, help="unreadable samples: stop, or skip and count them")
    seed: int = option(0, help="random seed (the profile is deterministic)")
    log: Path | None = option(None, help="append a JSON-lines record here")
    force: bool = option(False, help="replace outputs that exist")

    def __post_init__(self) -> None:
        check_fields(self)
        if len(set(self.spaces)) != len(self.spaces) or not self.spaces:
            raise fail(self, "spaces", f"must name each space once, got {','.join(self.spaces) or 'none'}")
        if "k32x" in self.spaces and self.metric is None:
            raise fail(self, "metric", "must be given for space k32x (run 'fingerprint adapt' first)")
        if "emb" in self.spaces and self.descriptor is None:
            raise fail(self, "descriptor", "must be given for space emb (a model folder)")
        if any(s <= 0 for s in self.align_scales):
            raise fail(self, "align_scales", f"must be > 0, got {self.align_scales}")

    def outputs(self) -> list[Path]:
        return [Path(self.out) / f"{s}.npz" for s in SPLITS]


@dataclass
class SplitImages:
    """One split's images in memory: keys sorted, labels, and the images at each size (N,1,s,s) float32."""

    real_keys: list[str]
    real_labels: list[str]
    gen_keys: list[str]
    real: dict[int, torch.Tensor]
    gen: dict[int, torch.Tensor]


def flat(x: torch.Tensor, normalise: bool = False) -> np.ndarray:
    """Images (N,1,s,s) -> float32 rows (N, s*s); `normalise`: zero mean, unit norm per image."""
    v = x.reshape(len(x), -1).float()
    if normalise:
        v = v - v.mean(1, keepdim=True)
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-6)
    return np.ascontiguousarray(v.numpy(), dtype=np.float32)


def l2_knn(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of `base` by L2 (FAISS IndexFlatL2): (distances (Q,k) float64, rows (Q,k))."""
    index = faiss.IndexFlatL2(base.shape[1])
    index.add(np.ascontiguousarray(base, dtype=np.float32))
    d2, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), min(int(k), len(base)))
    return np.sqrt(np.maximum(d2.astype(np.float64), 0.0)), ids


def drop_self(dist: np.ndarray, ids: np.ndarray, own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove each query's own row from its neighbour list (or the last neighbour when it is not there)."""
    mask = ids == own[:, None]
    mask[~mask.any(1), -1] = True
    keep = ~mask
    n, k = dist.shape
    return dist[keep].reshape(n, k - 1), ids[keep].reshape(n, k - 1)


def knn_profile(
    query: np.ndarray, gen: np.ndarray, ref: np.ndarray, own: np.ndarray, prefix: str
) -> dict[str, np.ndarray]:
    """`prefix:ngen_k`, `prefix:ref_k`, `prefix:cal_k` of the query rows; `own[i]` is query i's row in `ref`."""
    dg, _ = l2_knn(gen, query, max(KS_GEN))
    dr, ids = l2_knn(ref, query, max(KS_REF) + 1)
    dr, _ = drop_self(dr, ids, own)
    return profile_columns(dg, dr, prefix)


def profile_columns(dgen: np.ndarray, dref: np.ndarray, prefix: str) -> dict[str, np.ndarray]:
    """Columns from sorted distances to the generated pool (Q, >=1) and to the reference (Q, >=1)."""
    out = {}
    for k in KS_GEN:
        out[f"{prefix}:ngen_{k}"] = -np.log(dgen[:, min(k, dgen.shape[1]) - 1] + EPS)
    for k in KS_REF:
        out[f"{prefix}:ref_{k}"] = np.log(dref[:, min(k, dref.shape[1]) - 1] + EPS)
        out[f"{prefix}:cal_{k}"] = out[f"{prefix}:ref_{k}"] + out[f"{prefix}:ngen_{k}"]
    return out


def vector_profile(name: str, vectors: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """Profile of one space from {split: (real rows, generated rows)}: the reference is every real of both splits."""
    ref = np.concatenate([vectors[s][0] for s in SPLITS])
    out, start = {}, 0
    for s in SPLITS:
        real, gen = vectors[s]
        own = start + np.arange(len(real))
        out[s] = knn_profile(real, gen, ref, own, name)
        start += len(real)
    return out


def pixel_sizes(spaces: list[str] | tuple[str, ...]) -> set[int]:
    """Image sides the pixel spaces read: each px/pn space's own, 64 + 32 for al64 (and its candidate search),
    32 for ff32."""
    sizes: set[int] = set()
    for space in spaces:
        if space[:2] in ("px", "pn"):
            sizes.add(int(space[2:]))
        elif space == "al64":
            sizes |= {64, 32}
        elif space == "ff32":
            sizes.add(32)
    return sizes
