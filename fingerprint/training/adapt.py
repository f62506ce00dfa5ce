"""The adaptation stage: a metric learned from the whole unlabelled pool (KISSME on pseudo-pairs), cross-fitted.

The generator's imprecision (blur, contrast, small bends, blends) moves a
copy away from its training image along some directions of image space more
than others. `run_adapt(AdaptConfig)` learns those directions without a label:

1. every image of the pool (the real and generated images of every shard
   folder given: dev and test) as per-image normalised pixels at `size` px,
   reduced by PCA (the covariance is summed over all processes);
2. pseudo-positive pairs: a generated image g and a real image r that are
   mutual nearest neighbours (r is g's nearest real, g is r's nearest
   generated image) with Lowe's ratio d1/d2 < `ratio` on g's side;
   pseudo-negatives: every pair of distinct real images;
3. KISSME (Koestinger et al., CVPR 2012, "Large scale metric learning from
   equivalence constraints"): M = inv(S_pos) - inv(S_neg), S the covariance
   of the pair differences (shrunk towards its mean eigenvalue), projected to
   the PSD cone; x -> L P (x - mean) with L^T L = M, so Euclidean distance in
   the learned space is the Mahalanobis distance of M: the log-likelihood
   ratio of "copy" vs "different image" under Gaussian differences.

Cross-fitting: a metric learned from a real image's own pseudo-pairs pulls it
towards "its" generated images whatever its membership. The reals are split
into `folds` by a hash of their key; metric k is learned without the
pseudo-pairs (and negatives) of fold k's reals, and the profile
(`fingerprint.membership.profile`, space `k32x`) measures fold k's reals in metric k.
One more metric, from every real, serves images whose key the stage never saw.

Under `accelerate launch` each process streams its own shards (split by
node); the moment and covariance sums are all-reduced, the (few) real images
are gathered, and each real's nearest generated distance is all-reduced
(min), so the result equals one process's up to float rounding. The output
is a model artefact: `metric.safetensors` (mean, projections) + `metric.json`
(folds by key, pair counts, sha256 of the weights).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather_object
from safetensors.torch import load_file

from fingerprint.core.config import check_fields, exists_error, fail, option
from fingerprint.core.distributed import make_accelerator, seed_everything, set_process_threads
from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import atomic_path, read_json, save_tensors, sha256_file, write_json
from fingerprint.core.logs import JsonlLogger
from fingerprint.core.vocab import DEVICES, MIXED_PRECISION, ON_ERROR
from fingerprint.data.stream import StreamConfig, make_loader, to_float

log = logging.getLogger(__name__)

METRIC_FILE = "metric.safetensors"
METRIC_META = "metric.json"
FORMAT = "fingerprint-metric/1"


@dataclass(kw_only=True)
class AdaptConfig:
    """Options of the adaptation stage (`fingerprint adapt`)."""

    SECTION = "adapt"

    shards: tuple[str, ...] = option(
        positional=True, help="shards of the unlabelled pool (dev and test): folders, folder URLs, patterns or pipe:"
    )
    out: Path = option(help="folder to write metric.safetensors and metric.json")
    size: int = option(32, min=4, help="side of the normalised pixel images the metric is learned on")
    dim: int = option(128, min=1, help="PCA dimensions kept (capped by the pool)")
    ratio: float = option(0.95, min=0, help="Lowe's ratio test on a pseudo-pair's generated side (<= 1)")
    shrink: float = option(0.1, min=0, help="covariance shrinkage towards the mean eigenvalue (< 1)")
    folds: int = option(4, min=2, help="cross-fitting folds over the real images")
    batch_size: int = option(256, min=1, help="images per batch read from the shards")
    device: str = option("auto", choices=DEVICES, help="where the distances are computed")
    mixed_precision: str | None = option(
        None, choices=MIXED_PRECISION, help="precision of the Accelerate state this creates (sums are float64)"
    )
    threads: int | None = option(None, min=1, help="torch/FAISS CPU threads per process (default: cores / local)")
    on_error: str = option("raise", choices=ON_ERROR, help="unreadable samples: stop, or skip and count them")
    seed: int = option(0, help="seed of the fold assignment")
    log: Path | None = option(None, help="append a JSON-lines record here")
    force: bool = option(False, help="replace the metric if it exists")

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.shards:
            raise fail(self, "shards", "must name at least one shard folder")
        if not 0 < self.ratio <= 1:
            raise fail(self, "ratio", f"must be in (0, 1], got {self.ratio}")
        if not self.shrink < 1:
            raise fail(self, "shrink", f"must be below 1, got {self.shrink}")


@dataclass
class Metric:
    """A learned metric: x -> projection[m] @ (x - mean) for metric m (one per held-out fold, then the full one)."""

    mean: np.ndarray  # (D,)
    projection: np.ndarray  # (M, d, D)
    fold_of: dict[str, int]  # real key -> held-out fold
    meta: dict

    @property
    def full(self) -> int:
        """Index of the metric learned from every real image."""
        return len(self.projection) - 1

    def transform(self, x: np.ndarray, m: int) -> np.ndarray:
        return ((np.asarray(x, np.float64) - self.mean) @ self.projection[m].T).astype(np.float32)


def fold_of_key(key: str, seed: int, folds: int) -> int:
    """The cross-fitting fold of a real image: a hash of its key (same on every process, any order)."""
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:12], 16) % folds


def pixel_rows(batch: dict, size: int) -> torch.Tensor:
    """A stream batch as per-image normalised float64 rows at `size` px (zero mean, unit norm)."""
    v = to_float(batch, size)["image"].reshape(len(batch["key"]), -1).double()
    v = v - v.mean(1, keepdim=True)
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-6)


# ----------------------------------------------------------------------------- the stage


def run_adapt(cfg: AdaptConfig, *, accelerator: Any = None) -> dict:
    """Learn the cross-fitted metric from the shards' images; write cfg.out/metric.{safetensors,json}."""
    out = Path(cfg.out)
    if (out / METRIC_META).exists() and not cfg.force:
        raise exists_error(cfg, out / METRIC_META)
    t0 = time.perf_counter()
    acc = accelerator or make_accelerator(cfg.mixed_precision, cpu=cfg.device == "cpu", reuse_state=True)
    set_process_threads(cfg.threads, acc)
    seed_everything(cfg.seed)
    device = acc.device if cfg.device != "cpu" else torch.device("cpu")
    pool = Pool(cfg, acc, device)
    mean, P = pool.pca()
    reals, gens = pool.project(mean, P)
    folds = np.array([fold_of_key(k, cfg.seed, cfg.folds) for k in reals["key"]])
    pairs = pseudo_pair_sums(pool, reals["z"], gens, folds, cfg)
    projection, stats = [], []
    for m in range(cfg.folds + 1):
        keep = folds != m  # m == folds: the full metric keeps every real
        neg = pool.negative_cov(reals["z_local"], reals["fold_local"] != m)
        L = kissme(pairs["pos"][m] / max(pairs["n"][m], 1), neg, cfg.shrink)
        projection.append(L @ P)
        stats.append({"held_out_fold": m if m < cfg.folds else None, "n_real": int(keep.sum()), **pairs["info"][m]})
    meta = _meta(cfg, reals["key"], folds, stats, pool, P.shape[0], acc.num_processes)
    if acc.is_main_process:
        save_metric(out, mean, np.stack(projection), meta)
    acc.wait_for_everyone()
    seconds = time.perf_counter() - t0
    summary = {"n_real": len(reals["key"]), "n_generated": pool.n_gen, "dim": int(P.shape[0]), "seconds": seconds}
    summary |= {"pairs": [s["n_pairs"] for s in stats], "local_images": pool.n_local}
    JsonlLogger(cfg.log).log(stage="adapt", world_size=acc.num_processes, **summary)
    log.info(
        "adapt: %d real, %d generated, PCA %d, pseudo-pairs per metric %s (%.1f s)",
        *(summary["n_real"], pool.n_gen, P.shape[0], summary["pairs"], seconds),
    )
    return summary


def _meta(cfg: AdaptConfig, keys, folds, stats, pool, dim: int, world: int) -> dict:
    return {
        "format": FORMAT,
        "size": cfg.size,
        "normalise": True,
        "dim": dim,
        "folds": cfg.folds,
        "ratio": cfg.ratio,
        "shrink": cfg.shrink,
        "seed": cfg.seed,
        "n_real": len(keys),
        "n_generated": pool.n_gen,
        "shards": [str(s) for s in cfg.shards],
        "world_size": world,
        "metrics": stats,
        "fold_of": {k: int(f) for k, f in zip(keys, folds)},
    }


class Pool:
    """One process's share of the pool, streamed from the shards, with the collectives that join the shares."""

    def __init__(self, cfg: AdaptConfig, acc: Any, device: torch.device):
        self.cfg, self.acc, self.device = cfg, acc, device
        self.n_gen = 0
        self.n_local = 0  # images this process read

    def batches(self):
        stream = StreamConfig(batch_size=self.cfg.batch_size, on_error=self.cfg.on_error)
        for folder in self.cfg.shards:
            loader = make_loader(folder, stream, rank=self.acc.process_index, world_size=self.acc.num_processes)
            for batch in loader:
                yield batch, pixel_rows(batch, self.cfg.size)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return self.acc.reduce(t.to(self.acc.device), reduction="sum").cpu() if self.acc.num_processes > 1 else t

    def minimum(self, t: torch.Tensor) -> torch.Tensor:
        if self.acc.num_processes > 1:
            t = t.to(self.acc.device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        return t.cpu()

    def pca(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean (D,), components (d, D)) of every image of the pool, from all-reduced moments."""
        s1 = s2 = None
        n = 0
        for _, v in self.batches():
            s1 = v.sum(0) if s1 is None else s1 + v.sum(0)
            s2 = v.T @ v if s2 is None else s2 + v.T @ v
            n += len(v)
        self.n_local = n
        D = self.cfg.size**2
        s1 = s1 if s1 is not None else torch.zeros(D, dtype=torch.float64)
        s2 = s2 if s2 is not None else torch.zeros(D, D, dtype=torch.float64)
        total = self.sum(torch.cat([s1, s2.reshape(-1), torch.tensor([float(n)], dtype=torch.float64)]))
        n_all = int(total[-1])
        if n_all < 3:
            raise FingerprintError(f"{', '.join(map(str, self.cfg.shards))}: too few images to learn a metric")
        mean = total[:D] / n_all
        cov = total[D:-1].reshape(D, D) / n_all - torch.outer(mean, mean)
        w, v = torch.linalg.eigh(cov)
        d = min(self.cfg.dim, D, n_all - 1)
        return mean.numpy(), v[:, torch.argsort(w, descending=True)[:d]].T.contiguous().numpy()

    def project(self, mean: np.ndarray, P: np.ndarray) -> tuple[dict, np.ndarray]:
        """Second pass: every real image's key and projection on every process (gathered, sorted by key), this
        process's own reals, and this process's generated images in the PCA space (G_local, d)."""
        keys, reals, gens = [], [], []
        for batch, v in self.batches():
            z = (v.numpy() - mean) @ P.T
            real = np.array([r == "real" for r in batch["role"]])
            keys += [k for k, is_real in zip(batch["key"], real) if is_real]
            reals.append(z[real])
            gens.append(z[~real])
        empty = np.zeros((0, len(P)))
        z_local, zg = (np.concatenate(x) if x else empty for x in (reals, gens))
        self.n_gen = int(self.sum(torch.tensor([float(len(zg))], dtype=torch.float64))[0])
        parts = gather_object([(keys, z_local)])
        all_keys = [k for part_keys, _ in parts for k in part_keys]
        if not all_keys or self.n_gen == 0:
            raise FingerprintError(f"{', '.join(map(str, self.cfg.shards))}: needs real and generated images")
        z = np.concatenate([part_z for _, part_z in parts])
        _, first = np.unique(np.asarray(all_keys), return_index=True)  # sorted, each key once
        fold_local = np.array([fold_of_key(k, self.cfg.seed, self.cfg.folds) for k in keys], dtype=np.int64)
        reals_out = {"key": [all_keys[i] for i in first], "z": z[first], "z_local": z_local, "fold_local": fold_local}
        return reals_out, zg

    def negative_cov(self, z_local: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """Mean (z_i - z_j)(z_i - z_j)^T over ordered pairs of distinct kept reals, from all-reduced sums."""
        z = torch.from_numpy(np.ascontiguousarray(z_local[keep], dtype=np.float64))
        d = z_local.shape[1]
        packed = torch.cat([z.sum(0), (z.T @ z).reshape(-1), torch.tensor([float(len(z))], dtype=torch.float64)])
        total = self.sum(packed)
        n = float(total[-1])
        if n < 2:
            raise FingerprintError("adapt: fewer than two real images outside a fold (use fewer adapt.folds)")
        s1, s2 = total[:d], total[d:-1].reshape(d, d)
        return ((2 * n * s2 - 2 * torch.outer(s1, s1)) / (n * (n - 1))).numpy()


def pseudo_pairs(zr: np.ndarray, zg: np.ndarray, allowed: np.ndarray, ratio: float, device) -> dict[str, np.ndarray]:
    """Each generated row's nearest allowed real: {"nn", "d1", "ratio_ok"}, and each allowed real's nearest
    generated distance over these rows ("real_min", inf for reals not allowed); torch, chunked."""
    r = torch.from_numpy(np.ascontiguousarray(zr, dtype=np.float32)).to(device)
    bad = torch.from_numpy(~allowed).to(device)
    nn_, d1, ok = [], [], []
    real_min = torch.full((len(zr),), float("inf"), dtype=torch.float64)
    for i in range(0, len(zg), 4096):
        g = torch.from_numpy(np.ascontiguousarray(zg[i : i + 4096], dtype=np.float32)).to(device)
        d = torch.cdist(g.double(), r.double()).masked_fill(bad[None, :], float("inf"))
        two = torch.topk(d, min(2, d.shape[1]), dim=1, largest=False)
        nn_.append(two.indices[:, 0].cpu())
        d1.append(two.values[:, 0].cpu())
        second = two.values[:, -1] if d.shape[1] > 1 else torch.full_like(two.values[:, 0], float("inf"))
        ok.append((two.values[:, 0] / second.clamp_min(1e-12) < ratio).cpu())
        real_min = torch.minimum(real_min, d.amin(0).cpu())
    cat = lambda xs, dt: torch.cat(xs).numpy() if xs else np.zeros(0, dt)  # noqa: E731
    return {"nn": cat(nn_, np.int64), "d1": cat(d1, np.float64), "ratio_ok": cat(ok, bool), "real_min": real_min}


def pseudo_pair_sums(pool: Pool, zr: np.ndarray, zg: np.ndarray, folds: np.ndarray, cfg: AdaptConfig) -> dict:
    """Per metric (held-out fold m, then the full one): summed (z_r - z_g)(z_r - z_g)^T over its pseudo-pairs,
    all-reduced; a real of fold m never pairs in metric m. Too few mutual pairs: every generated image's
    nearest allowed real instead (as the ratio test would then leave almost nothing to learn from)."""
    d = zr.shape[1]
    found = [pseudo_pairs(zr, zg, folds != m, cfg.ratio, pool.device) for m in range(cfg.folds + 1)]
    real_min = pool.minimum(torch.stack([f["real_min"] for f in found]))
    pos, n, info = [], [], []
    for m, f in enumerate(found):
        mutual = f["ratio_ok"] & (f["d1"] <= real_min[m].numpy()[f["nn"]] * (1 + 1e-9))
        n_mutual = int(pool.sum(torch.tensor([float(mutual.sum())], dtype=torch.float64))[0])
        fallback = n_mutual < 2 * d
        use = np.ones(len(zg), bool) if fallback else mutual
        diff = torch.from_numpy(zr[f["nn"][use]] - zg[use])
        total = pool.sum(
            torch.cat([(diff.T @ diff).reshape(-1), torch.tensor([float(len(diff))], dtype=torch.float64)])
        )
        pos.append(total[:-1].reshape(d, d).numpy())
        n.append(int(total[-1]))
        info.append({"n_pairs": int(total[-1]), "n_mutual": n_mutual, "fallback": bool(fallback)})
    return {"pos": pos, "n": n, "info": info}


def kissme(pos_cov: np.ndarray, neg_cov: np.ndarray, shrink: float) -> np.ndarray:
    """L (d, d) with L^T L = PSD part of inv(S_pos) - inv(S_neg); each S shrunk towards its mean eigenvalue."""

    def shrunk(c: np.ndarray) -> np.ndarray:
        return (1 - shrink) * c + shrink * np.trace(c) / len(c) * np.eye(len(c))

    m = np.linalg.inv(shrunk(pos_cov)) - np.linalg.inv(shrunk(neg_cov))
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


# ----------------------------------------------------------------------------- files


def save_metric(out: Path, mean: np.ndarray, projection: np.ndarray, meta: dict) -> None:
    """metric.safetensors (mean, projection) + metric.json (with the weights' sha256), each atomically."""
    out.mkdir(parents=True, exist_ok=True)
    tensors = {"mean": torch.from_numpy(mean.astype(np.float64)), "projection": torch.from_numpy(projection)}
    with atomic_path(out / METRIC_FILE) as tmp:
        save_tensors({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata={"format": FORMAT})
    write_json(out / METRIC_META, {**meta, "weights_file": METRIC_FILE, "sha256": sha256_file(out / METRIC_FILE)})


def read_metric_meta(folder: str | Path) -> dict:
    """metric.json of a metric folder; a clear error for anything else."""
    path = Path(folder) / METRIC_META
    if not path.is_file():
        raise FingerprintError(f"{path}: not found (run 'fingerprint adapt' first)")
    meta = read_json(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise FingerprintError(f"{path}: not a learned metric (format {FORMAT})")
    return meta


def load_metric(folder: str | Path) -> Metric:
    """Load a metric folder, refusing weights whose sha256 does not match metric.json."""
    meta = read_metric_meta(folder)
    weights = Path(folder) / meta.get("weights_file", METRIC_FILE)
    if not weights.is_file() or sha256_file(weights) != meta.get("sha256"):
        raise FingerprintError(f"{weights}: missing, or its sha256 does not match {METRIC_META}")
    t = load_file(str(weights))
    return Metric(t["mean"].numpy(), t["projection"].double().numpy(), dict(meta["fold_of"]), meta)
