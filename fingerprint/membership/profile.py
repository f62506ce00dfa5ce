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
the reals (`k32x`, `fingerprint.training.adapt`), aligned correlation after a small
registration search (`al64`, `fingerprint.membership.align`), distance after free-form
registration (`ff32`, `fingerprint.imaging.register`), and a trained model's
embedding (`emb`). Every feature is oriented "higher = more likely used".
Distances are exact FAISS k-NN (IndexFlatL2) over every image in memory; above
`profile.path_exact_max` generated images a split (or with `profile.path bounded`)
they come from the bounded-memory path (`fingerprint.membership.bounded`: codes, an
index, exact re-ranking from the pixels on disk). `fingerprint.membership.fuse` fits
the trained scorer on these columns.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from fingerprint.core.config import exists_error
from fingerprint.core.distributed import seed_everything, set_threads
from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import read_json, sha256_file
from fingerprint.core.logs import JsonlLogger
from fingerprint.core.vocab import SPLITS
from fingerprint.data.shards import read_manifest
from fingerprint.data.stream import StreamConfig, make_loader, to_float
from fingerprint.embedding.features import Features
from fingerprint.embedding.model_io import META_FILE, load_model
from fingerprint.membership import bounded
from fingerprint.membership.align import aligned_profile, pick_device, registered_profile
from fingerprint.membership.spaces import (
    ProfileConfig,
    SplitImages,
    flat,
    pixel_sizes,
    vector_profile,
)
from fingerprint.training.adapt import METRIC_FILE, load_metric, read_metric_meta

log = logging.getLogger(__name__)


def run_profile(cfg: ProfileConfig) -> dict:
    """Profile every real image of dev and test; write out/{dev,test}.npz. Returns a summary."""
    for path in cfg.outputs():
        if path.exists() and not cfg.force:
            raise exists_error(cfg, path)
    seed_everything(cfg.seed)
    set_threads(cfg.threads)
    t0 = time.perf_counter()
    sizes = needed_sizes(cfg)
    path = choose_path(cfg)
    if path == "bounded":
        rows, columns, seconds, extra = _bounded_columns(cfg, sizes)
    else:
        splits = {s: read_split(getattr(cfg, s), sizes, cfg.batch_size, cfg.on_error) for s in SPLITS}
        rows = {s: (sp.real_keys, sp.real_labels, len(sp.gen_keys)) for s, sp in splits.items()}
        columns = _space_columns(cfg.spaces, lambda space: space_profile(space, splits, cfg))
        seconds, extra = columns.pop("seconds"), {}
    meta = _meta(cfg, rows, seconds) | {"path": path, **extra}
    for split in SPLITS:
        keys, labels, _ = rows[split]
        save_profile(Path(cfg.out) / f"{split}.npz", keys, labels, columns[split], {**meta, "split": split})
    summary = {"spaces": list(cfg.spaces), "seconds": round(time.perf_counter() - t0, 2), "space_seconds": seconds}
    summary |= {"path": path, "n_generated": meta["n_generated"], **extra}
    JsonlLogger(cfg.log).log(stage="profile", **summary)
    return summary


def choose_path(cfg: ProfileConfig) -> str:
    """`profile.path`, or for auto: bounded when a split has more than `path_exact_max` generated images."""
    if cfg.path != "auto":
        if cfg.path == "bounded" and "emb" in cfg.spaces:
            raise FingerprintError("profile: space emb has no bounded path (use profile.path exact or auto)")
        return cfg.path
    if "emb" in cfg.spaces:
        return "exact"
    counts = [read_manifest(getattr(cfg, s)).get("counts", {}).get("role", {}).get("generated", 0) for s in SPLITS]
    return "bounded" if max(counts) > cfg.path_exact_max else "exact"


def _space_columns(spaces: tuple[str, ...], profile_of) -> dict:
    """{split: {column: values}} of every space (`profile_of(space)`), and "seconds": {space: seconds}."""
    columns: dict = {s: {} for s in SPLITS}
    seconds = {}
    for space in spaces:
        t = time.perf_counter()
        for split, feats in profile_of(space).items():
            columns[split].update(feats)
        seconds[space] = round(time.perf_counter() - t, 2)
        log.info("profile: %s in %.1f s", space, seconds[space])
    return columns | {"seconds": seconds}


def _bounded_columns(cfg: ProfileConfig, sizes: list[int]) -> tuple[dict, dict, dict, dict]:
    """The bounded path (`fingerprint.membership.bounded`): rows, columns, seconds per space, its record."""
    folder = bounded.pool_folder(cfg.out)
    try:
        t = time.perf_counter()
        splits = {s: bounded.read_split(getattr(cfg, s), folder, s, sizes, cfg) for s in SPLITS}
        read_s = round(time.perf_counter() - t, 2)
        profile = bounded.BoundedProfile(splits, cfg)
        columns = _space_columns(cfg.spaces, profile.space)
        rows = {s: (sp.real.keys, sp.labels, len(sp.gen)) for s, sp in splits.items()}
        stats = profile.stats
        for sp in splits.values():
            sp.gen.pixels.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows, columns, columns.pop("seconds"), {"read_seconds": read_s, "index": stats}


def needed_sizes(cfg: ProfileConfig) -> list[int]:
    """Image sides to read: each pixel space's, 64 + 32 for al64, the metric's for k32x, the descriptor's for emb."""
    sizes = pixel_sizes(cfg.spaces)
    if "k32x" in cfg.spaces:
        sizes.add(int(read_metric_meta(cfg.metric)["size"]))
    if "emb" in cfg.spaces:
        sizes.add(int(read_json(Path(cfg.descriptor) / META_FILE)["config"]["image_size"]))
    return sorted(sizes)


def _meta(cfg: ProfileConfig, rows: dict[str, tuple[list, list, int]], seconds: dict) -> dict:
    meta = {
        "kind": "profile",
        "spaces": list(cfg.spaces),
        "reference": "every real image of both splits except the query",
        "n_reference": sum(len(keys) for keys, _, _ in rows.values()),
        "n_generated": {k: n for k, (_, _, n) in rows.items()},
        "shards": {k: str(getattr(cfg, k)) for k in SPLITS},
        "seconds": seconds,
    }
    if cfg.metric is not None:
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


def space_profile(space: str, splits: dict[str, SplitImages], cfg: ProfileConfig) -> dict[str, dict[str, np.ndarray]]:
    """{split: {column: values per real image}} of one space."""
    if space[:2] in ("px", "pn"):
        size, norm = int(space[2:]), space.startswith("pn")
        vectors = {s: (flat(sp.real[size], norm), flat(sp.gen[size], norm)) for s, sp in splits.items()}
        return vector_profile(space, vectors)
    if space == "k32x":
        return crossfit_profile(splits, cfg.metric)
    if space == "al64":
        return aligned_profile(splits, cfg)
    if space == "ff32":
        return registered_profile(splits, cfg)
    if space == "emb":
        return vector_profile("emb", descriptor_vectors(splits, cfg))
    raise FingerprintError(f"profile: unknown space {space!r}")


def descriptor_vectors(splits: dict[str, SplitImages], cfg: ProfileConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Unit-norm embeddings of every image by the model in `cfg.descriptor` (at its own input size)."""
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


def crossfit_profile(splits: dict, folder: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """The `k32x` profile: each real image measured in the metric learned without its own fold's pseudo-pairs."""
    metric = load_metric(folder)
    size = int(metric.meta["size"])
    vectors = {s: (flat(sp.real[size], True), flat(sp.gen[size], True)) for s, sp in splits.items()}
    which = {s: np.array([metric.fold_of.get(k, metric.full) for k in splits[s].real_keys]) for s in SPLITS}
    unseen = sum(int((w == metric.full).sum()) for w in which.values())
    if unseen:
        log.warning("profile: %d real image(s) unknown to the metric: measured in the full metric", unseen)
    out: dict[str, dict[str, np.ndarray]] = {s: {} for s in SPLITS}
    for m in sorted({int(x) for w in which.values() for x in w}):
        moved = {s: (metric.transform(r, m), metric.transform(g, m)) for s, (r, g) in vectors.items()}
        for s, cols in vector_profile("k32x", moved).items():
            for name, values in cols.items():
                out[s].setdefault(name, np.zeros(len(values)))[which[s] == m] = values[which[s] == m]
    return out
