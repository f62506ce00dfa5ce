"""Writing a benchmark: sample the generator (no near-copies of real images), lay out the 2023 folders, synth.json.

`sample_and_write` draws the dev and test synthetic images, redrawing any
whose pixel correlation with a real image exceeds the bound (so no synthetic
image is a near-copy), writes the ImageCLEFmedical GANs 2023 layout into a
temporary folder (PNGs, test_truth.csv beside test/, real_sources.csv),
measures the difficulty on the files written and the realism of the images
(`fingerprint.benchdata.realism`), writes synth.json last and
renames the folder into place.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from fingerprint import __version__
from fingerprint.benchdata.difficulty import measure_difficulty
from fingerprint.benchdata.generators import TrainedGenerator, get_family
from fingerprint.benchdata.params import SynthParams
from fingerprint.benchdata.realimages import RealImages
from fingerprint.benchdata.realism import measure_splits
from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import atomic_path, write_json

log = logging.getLogger(__name__)

FORMAT = "fingerprint-synth/1"


def _unit_rows(x: np.ndarray):
    """Images as rows, centred and scaled to unit norm (constant rows stay zero): a float32 torch tensor."""
    v = torch.from_numpy(x.reshape(len(x), -1).astype(np.float32))
    v -= v.mean(dim=1, keepdim=True)
    norm = v.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, v / norm.clamp_min(1e-12), torch.zeros_like(v))


def sample_checked(
    gen: TrainedGenerator, n: int, real: np.ndarray, *, seed: int, max_correlation: float, batch: int = 256
) -> tuple[np.ndarray, dict]:
    """Draw `n` samples, redrawing any whose pixel correlation with a real image exceeds `max_correlation`
    (or that equals one exactly). Returns the images, rejection statistics, and each kept sample's source
    (the index of the training image it was drawn from, for generators that report `last_sources`; else None)."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 0x5A3])
    real_u = _unit_rows(real)
    real_bytes = {r.tobytes() for r in real}
    out: list[np.ndarray] = []
    kept_sources: list[np.ndarray | None] = []
    rejected, drawn, max_kept = 0, 0, -1.0
    while sum(len(o) for o in out) < n:
        need = n - sum(len(o) for o in out)
        imgs = gen.draw(min(batch, need), rng)
        drawn += len(imgs)
        corr = (_unit_rows(imgs) @ real_u.T).max(dim=1).values.numpy()
        ok = corr <= max_correlation
        ok &= np.array([im.tobytes() not in real_bytes for im in imgs])
        rejected += int((~ok).sum())
        src = getattr(gen, "last_sources", None)
        kept_sources.append(None if src is None else np.asarray(src)[ok])
        if ok.any():
            out.append(imgs[ok])
            max_kept = max(max_kept, float(corr[ok].max()))
        if rejected > 10 * n + 100:
            raise FingerprintError(
                f"the generator keeps reproducing real images (rejected {rejected} of {drawn} samples with "
                f"pixel correlation > {max_correlation}); raise synth.temperature or lower synth.epochs"
            )
    stats = {"drawn": drawn, "rejected": rejected, "max_kept_correlation": round(max_kept, 5)}
    sources = None if any(k is None for k in kept_sources) else np.concatenate(kept_sources)[:n]
    return np.concatenate(out)[:n], stats, sources


def traceability(sources: dict[str, np.ndarray | None], used_rows: dict[str, np.ndarray]) -> dict | None:
    """Per split: the share of its used images that are the source of at least one of its generated images.

    A sample is drawn from one training image (its source). `auc_traced_only` = traced + (1 - traced) / 2 is
    the ROC-AUC of a scorer that finds every traced used image and ranks the others like not-used ones: a
    reference for how concentrated the leakage is, not a bound (a decoder shared by all training images also
    moves samples toward their sources' latent neighbours, which leaks untraced images too).
    `used_rows[split]`: that split's used images as rows of the generator's training set. None for
    generators that do not report sources; a source of -1 (a sample drawn from no training image) counts for none.
    """
    if any(s is None for s in sources.values()):
        return None
    out = {}
    for split, src in sources.items():
        counts = np.bincount(src[src >= 0], minlength=int(used_rows[split].max()) + 1)[used_rows[split]]
        share = float((counts > 0).mean())
        per = round(float(counts[counts > 0].mean()), 2) if share else 0.0
        out[split] = {"traced_used": round(share, 4), "auc_traced_only": round(0.5 + share / 2, 4),
                      "samples_per_traced_used": per}  # fmt: skip
    return out


BIT_DEPTHS = (8, 12, 16)


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, "L" if arr.dtype == np.uint8 else None).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def widen(arr: np.ndarray, bits: int, seed: Sequence[int]) -> np.ndarray:
    """8-bit pixels as `bits`-bit values in a 16-bit container (uint16), as CT slices are stored.

    v -> v * (2^bits - 1) / 255 plus seeded dither within 0.45 of an 8-bit step,
    so the image uses the fine levels of its depth and maps back (by its own
    depth, `value / (2^bits - 1)`) to the same 8-bit value. The extra levels
    are dither, not extra anatomy: this exercises the wide-input path.
    """
    top = (1 << bits) - 1
    step = top / 255.0
    dither = np.random.default_rng(list(seed)).uniform(-0.45, 0.45, arr.shape) * step
    return np.clip(np.rint(arr.astype(np.float64) * step + dither), 0, top).astype(np.uint16)


def _write_pngs(
    folder: Path, prefix: str, images: np.ndarray, digits: int, pool: ThreadPoolExecutor, bits: int = 8, seed: int = 0
) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    width = max(digits, len(str(len(images))))
    keys = [f"{prefix}_{i + 1:0{width}d}" for i in range(len(images))]
    tag = zlib.crc32(f"{folder.parent.name}/{folder.name}".encode())

    def write(k: int) -> None:
        arr = images[k] if bits == 8 else widen(images[k], bits, (seed & 0xFFFFFFFF, tag, k))
        (folder / f"{keys[k]}.png").write_bytes(_png_bytes(arr))

    list(pool.map(write, range(len(images))))
    return keys


def sample_and_write(
    out_dir: Path,
    p: SynthParams,
    real: RealImages,
    split: dict,
    gen,
    history: dict,
    timings: dict,
    t_all: float,
    bits: int = 8,
) -> None:
    """Sample, write the layout and synth.json into `out_dir` (atomically); see the module docstring."""
    t0 = time.perf_counter()
    dev_gen, dev_rej, dev_src = sample_checked(
        gen, p.dev_generated, real.images, seed=p.seed * 2 + 1, max_correlation=p.max_correlation
    )
    test_gen, test_rej, test_src = sample_checked(
        gen, p.test_generated, real.images, seed=p.seed * 2 + 2, max_correlation=p.max_correlation
    )
    used_rows = {"dev": np.arange(p.dev_used), "test": p.dev_used + np.arange(p.test_used)}  # training order
    traced = traceability({"dev": dev_src, "test": test_src}, used_rows)
    timings["sampling"] = time.perf_counter() - t0

    # the test real images: used and not used, shuffled together
    test_idx = np.concatenate([split["test_used"], split["test_not_used"]])
    test_lab = np.r_[np.ones(len(split["test_used"]), int), np.zeros(len(split["test_not_used"]), int)]
    order = np.random.default_rng([p.seed & 0xFFFFFFFF, 0x7E57]).permutation(len(test_idx))
    test_idx, test_lab = test_idx[order], test_lab[order]

    t0 = time.perf_counter()
    dev_idx = np.concatenate([split["dev_used"], split["dev_not_used"]])
    dev_lab = np.r_[np.ones(len(split["dev_used"]), int), np.zeros(len(split["dev_not_used"]), int)]
    splits = {"dev": (real.images[dev_idx], dev_lab, dev_gen), "test": (real.images[test_idx], test_lab, test_gen)}
    realism = measure_splits(splits, seed=p.seed)
    timings["realism"] = time.perf_counter() - t0

    used_groups = set(real.group[np.concatenate([split["dev_used"], split["test_used"]])].tolist())
    not_used = np.concatenate([split["dev_not_used"], split["test_not_used"]])
    siblings = int(sum(g in used_groups for g in real.group[not_used].tolist()))

    with atomic_path(out_dir) as tmp:
        t0 = time.perf_counter()
        tmp.mkdir(parents=True)
        sources: list[tuple[str, str, str]] = []
        with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
            for folder, prefix, idx, digits in (
                ("dev/used", "used", split["dev_used"], 4),
                ("dev/not_used", "not_used", split["dev_not_used"], 4),
                ("test/real_unknown_1", "real_unknown", test_idx, 4),
            ):
                keys = _write_pngs(tmp / folder, prefix, real.images[idx], digits, pool, bits, p.seed)
                sources += [(k, folder, real.sources[i]) for k, i in zip(keys, idx)]
            _write_pngs(tmp / "dev" / "generated", "generated", dev_gen, 4, pool, bits, p.seed)
            _write_pngs(tmp / "test" / "generated_1", "generated", test_gen, 5, pool, bits, p.seed)
        unknown_keys = [s[0] for s in sources if s[1] == "test/real_unknown_1"]
        truth = "figure_id,label\n" + "".join(f"{k},{int(y)}\n" for k, y in zip(unknown_keys, test_lab))
        (tmp / "test_truth.csv").write_text(truth)
        src = io.StringIO()
        w = csv.writer(src, lineterminator="\n")
        w.writerow(["figure_id", "folder", "source"])
        w.writerows(sources)
        (tmp / "real_sources.csv").write_text(src.getvalue())
        timings["writing"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        difficulty = measure_difficulty(tmp)
        timings["difficulty"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_all
        info = _info(p, real, history, dev_rej, test_rej, difficulty, timings, siblings)
        info["realism"] = realism
        info["generator"]["traceability"] = traced
        info["bit_depth"] = bits
        write_json(tmp / "synth.json", info)
    log.info(
        "wrote %s: pixel-NN AUC dev %.3f, test %.3f (%.0f s)",
        out_dir,
        difficulty["dev"],
        difficulty["test"],
        timings["total"],
    )


def _info(
    p: SynthParams,
    real: RealImages,
    history: dict,
    dev_rej: dict,
    test_rej: dict,
    difficulty: dict,
    timings: dict,
    siblings: int,
) -> dict:
    params = asdict(p)
    return {
        "format": FORMAT,
        "level": p.level,
        "seed": p.seed,
        "params": params,
        "source": "real_dir" if p.real_dir else "phantom",
        "counts": {
            "dev": {"generated": p.dev_generated, "used": p.dev_used, "not_used": p.dev_not_used},
            "test": {
                "generated": p.test_generated,
                "real_unknown": p.test_used + p.test_not_used,
                "used": p.test_used,
                "not_used": p.test_not_used,
            },
            "generator_training_images": p.dev_used + p.test_used,
        },
        "layout": {
            "dev": {"generated": "dev/generated", "used": "dev/used", "not_used": "dev/not_used"},
            "test": {"generated": "test/generated_1", "real_unknown": "test/real_unknown_1"},
            "truth": "test_truth.csv",
            "sources": "real_sources.csv",
        },
        "real_images": {
            "skipped": real.skipped,
            "groups": int(len(np.unique(real.group))),
            "not_used_with_used_sibling": siblings,  # not-used images whose patient has a used slice
        },
        "generator": {"family": p.family, **get_family(p.family).summarize(history)},
        "near_duplicates": {
            "max_correlation": p.max_correlation,
            "dev": dev_rej,
            "test": test_rej,
            "rejected": dev_rej["rejected"] + test_rej["rejected"],
        },
        "difficulty": {
            "pixel_nn_auc": difficulty,
            "method": "ROC-AUC of -(L2 distance to the nearest generated image), pixels in [0, 1]",
        },
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "environment": {
            "fingerprint": __version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "threads": torch.get_num_threads(),
        },
    }
