"""The similarity profile stage: how close each real image is to the generated pool, relative to the other reals.

`run_profile(ProfileConfig)` reads the dev and test shards (and the learned
metric of `fingerprint adapt`), and writes `PROFILE/{dev,test}.npz`: one row
per real image (keyed, as every features file), one column per feature.
For a real image x, in each representation space (`vocab.SPACES`):

- `ngen_k`: minus the log distance to its k-th nearest generated image of its
  own split (GAN-Leaks full black-box attack, Chen et al. CCS 2020, is k = 1);
- `ref_k`: the log distance to its k-th nearest other real image, the
  reference population: every real image of both splits except x itself
  (their labels are never read);
- `cal_k = ref_k + ngen_k`: the calibrated attack (GAN-Leaks calibrated), a
  k-NN estimate of the log density ratio p_gen(x) / p_ref(x) (DOMIAS, van
  Breugel et al. AISTATS 2023): it targets local overfitting and removes how
  typical x is.

Spaces: raw pixels (`px16/32/64`, the space of the `dcr` baseline at 64 px),
per-image normalised pixels (`pn*`: zero mean, unit norm, so L2 is a function
of the correlation), the metric learned from pseudo-pairs and cross-fitted over
the reals (`k32x`, `fingerprint.adapt`), aligned correlation after a small
registration search (`al64`, `fingerprint.align`), distance after free-form
registration (`ff32`, `fingerprint.register`), and a trained model's
embedding (`emb`). Every feature is oriented "higher = more likely used".
Distances are exact FAISS k-NN (IndexFlatL2). `fingerprint.fuse` fits the
trained scorer on these columns.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch

from fingerprint.config import check_fields, exists_error, fail, option
from fingerprint.distributed import seed_everything, set_threads
from fingerprint.features import Features
from fingerprint.stream import StreamConfig, make_loader, to_float
from fingerprint.utils import FingerprintError, JsonlLogger, read_json, sha256_file
from fingerprint.vocab import DEVICES, ON_ERROR, SPACES, SPLITS

log = logging.getLogger(__name__)

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


def run_profile(cfg: ProfileConfig) -> dict:
    """Profile every real image of dev and test; write out/{dev,test}.npz. Returns a summary."""
    for path in cfg.outputs():
        if path.exists() and not cfg.force:
            raise exists_error(cfg, path)
    seed_everything(cfg.seed)
    set_threads(cfg.threads)
    t0 = time.perf_counter()
    sizes = needed_sizes(cfg)
    splits = {s: read_split(getattr(cfg, s), sizes, cfg.batch_size, cfg.on_error) for s in SPLITS}
    columns: dict[str, dict[str, np.ndarray]] = {s: {} for s in SPLITS}
    seconds = {}
    for space in cfg.spaces:
        t = time.perf_counter()
        for split, feats in space_profile(space, splits, cfg).items():
            columns[split].update(feats)
        seconds[space] = round(time.perf_counter() - t, 2)
        log.info("profile: %s in %.1f s", space, seconds[space])
    meta = _meta(cfg, splits, seconds)
    for split in SPLITS:
        sp = splits[split]
        save_profile(
            Path(cfg.out) / f"{split}.npz", sp.real_keys, sp.real_labels, columns[split], {**meta, "split": split}
        )
    summary = {"spaces": list(cfg.spaces), "seconds": round(time.perf_counter() - t0, 2), "space_seconds": seconds}
    JsonlLogger(cfg.log).log(stage="profile", **summary)
    return summary


def needed_sizes(cfg: ProfileConfig) -> list[int]:
    """Image sides to read: each pixel space's, 64 + 32 for al64, the metric's for k32x, the descriptor's for emb."""
    sizes = set()
    for space in cfg.spaces:
        if space[:2] in ("px", "pn"):
            sizes.add(int(space[2:]))
        elif space == "al64":
            sizes |= {64, 32}
        elif space == "ff32":
            sizes.add(32)
        elif space == "k32x":
            from fingerprint.adapt import read_metric_meta

            sizes.add(int(read_metric_meta(cfg.metric)["size"]))
        elif space == "emb":
            from fingerprint.model_io import META_FILE

            sizes.add(int(read_json(Path(cfg.descriptor) / META_FILE)["config"]["image_size"]))
    return sorted(sizes)


def _meta(cfg: ProfileConfig, splits: dict[str, SplitImages], seconds: dict) -> dict:
    meta = {
        "kind": "profile",
        "spaces": list(cfg.spaces),
        "reference": "every real image of both splits except the query",
        "n_reference": sum(len(s.real_keys) for s in splits.values()),
        "n_generated": {k: len(s.gen_keys) for k, s in splits.items()},
        "shards": {k: str(getattr(cfg, k)) for k in SPLITS},
        "seconds": seconds,
    }
    if cfg.metric is not None:
        from fingerprint.adapt import METRIC_FILE

        meta["metric_sha256"] = sha256_file(Path(cfg.metric) / METRIC_FILE)
    return meta


def read_split(shards: Path, sizes: list[int], batch_size: int, on_error: str) -> SplitImages:
    """Stream a split's shards once; keep every image at each of `sizes` (bilinear, antialiased), sorted by key."""
    loader = make_loader(shards, StreamConfig(batch_size=batch_size, on_error=on_error), rank=0, world_size=1)
    keys, roles, labels, images = [], [], [], {s: [] for s in sizes}
    for batch in loader:
        keys += batch["key"]
        roles += batch["role"]
        labels += batch["label"]
        for s in sizes:
            images[s].append(to_float(batch, s)["image"])
    if not keys:
        raise FingerprintError(f"{shards}: no images")
    order = np.argsort(np.asarray(keys), kind="stable")
    roles_arr = np.asarray(roles)[order]
    real, gen = order[roles_arr == "real"], order[roles_arr == "generated"]
    if len(real) == 0 or len(gen) == 0:
        raise FingerprintError(f"{shards}: the profile needs real and generated images")
    cat = {s: torch.cat(v) for s, v in images.items()}
    return SplitImages(
        [keys[i] for i in real],
        [labels[i] for i in real],
        [keys[i] for i in gen],
        {s: x[torch.from_numpy(real)] for s, x in cat.items()},
        {s: x[torch.from_numpy(gen)] for s, x in cat.items()},
    )


# ----------------------------------------------------------------------------- vectors and k-NN


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


def space_profile(space: str, splits: dict[str, SplitImages], cfg: ProfileConfig) -> dict[str, dict[str, np.ndarray]]:
    """{split: {column: values per real image}} of one space."""
    if space[:2] in ("px", "pn"):
        size, norm = int(space[2:]), space.startswith("pn")
        vectors = {s: (flat(sp.real[size], norm), flat(sp.gen[size], norm)) for s, sp in splits.items()}
        return vector_profile(space, vectors)
    if space == "k32x":
        from fingerprint.adapt import crossfit_profile

        return crossfit_profile(splits, cfg.metric)
    if space == "al64":
        from fingerprint.align import aligned_profile

        return aligned_profile(splits, cfg)
    if space == "ff32":
        from fingerprint.align import registered_profile

        return registered_profile(splits, cfg)
    if space == "emb":
        return vector_profile("emb", descriptor_vectors(splits, cfg))
    raise FingerprintError(f"profile: unknown space {space!r}")


def descriptor_vectors(splits: dict[str, SplitImages], cfg: ProfileConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Unit-norm embeddings of every image by the model in `cfg.descriptor` (at its own input size)."""
    from fingerprint.align import pick_device
    from fingerprint.model_io import load_model

    model, _ = load_model(cfg.descriptor)
    device = pick_device(cfg.device)
    model.to(device)
    size = model.cfg.image_size
    out = {}
    with torch.inference_mode():
        for s, sp in splits.items():
            pair = []
            for images in (sp.real, sp.gen):
                x, b = images[size], cfg.batch_size
                rows = [model.encode(x[i : i + b].to(device))[0].float().cpu() for i in range(0, len(x), b)]
                pair.append(torch.cat(rows).numpy().astype(np.float32))
            out[s] = (pair[0], pair[1])
    return out


# ----------------------------------------------------------------------------- files


def save_profile(path: Path, keys: list[str], labels: list[str], columns: dict[str, np.ndarray], meta: dict) -> Path:
    """A profile file: a keyed features .npz whose `embeddings` are the columns named in meta["columns"]."""
    names = list(columns)
    matrix = np.column_stack([columns[n] for n in names]).astype(np.float32)
    if not np.isfinite(matrix).all():
        raise FingerprintError(f"{path}: non-finite profile values (identical images?)")
    feats = Features(keys, ["real"] * len(keys), labels, matrix, None, {**meta, "columns": names, "kind": "profile"})
    return feats.save(path)


def load_profile(path: str | Path) -> tuple[Features, dict[str, np.ndarray]]:
    """(keyed rows, {column: values}) of a profile file; a clear error for other .npz files."""
    if not Path(path).is_file():
        raise FingerprintError(f"{path}: profile file not found (run 'fingerprint profile')")
    feats = Features.load(path, fmaps=False)
    names = feats.meta.get("columns")
    if feats.meta.get("kind") != "profile" or not isinstance(names, list) or len(names) != feats.dim:
        raise FingerprintError(f"{path}: not a profile file (from 'fingerprint profile')")
    return feats, {n: feats.embeddings[:, i].astype(np.float64) for i, n in enumerate(names)}
