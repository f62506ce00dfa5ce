"""Baseline membership scorers, each "higher = more likely used", through the same score path.

- `dcr`: pixel distance to the closest generated image (negated L2, exact FAISS search);
- `ssim_max`: SSIM to the most similar generated image (the idea behind the best
  2023 result), Gaussian-window SSIM in torch;
- `emb_nn` / `emb_topk`: embedding cosine to the nearest / mean over the top k;
- `seed_rule`: the seed's rule, mean relation probability over ALL generated images.

Pixels are float [0,1] tensors (B,1,H,W), as stream.load_all returns them.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from tqdm import tqdm

from fingerprint.core.errors import FingerprintError
from fingerprint.core.logs import is_main_process
from fingerprint.embedding.index import neighbours
from fingerprint.embedding.inference import check_fmaps, relation_logits
from fingerprint.imaging.similarity import (
    pixel_neighbours,
)

log = logging.getLogger(__name__)


def dcr(real_pixels: torch.Tensor, gen_pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Distance to closest record: (-L2 distance to the nearest generated image (R,), its row (R,)).

    L2 over all pixels of images in [0,1], so images must share a size; negated
    so that higher = closer = more likely used.
    """
    dist, ids = pixel_neighbours(real_pixels, gen_pixels, 1)
    return -dist[:, 0].astype(np.float64), ids[:, 0]


def emb_nn(real_emb: np.ndarray, gen_emb, *, index=None) -> tuple[np.ndarray, np.ndarray]:
    """(cosine to the nearest generated embedding (R,), its gen row (R,)); `gen_emb` and `index` as in
    index.neighbours (embeddings or a Gallery)."""
    sims, rows = neighbours(real_emb, gen_emb, index, k=1)
    return sims[:, 0].astype(np.float64), rows[:, 0]


def emb_topk(real_emb: np.ndarray, gen_emb, *, k: int = 16, index=None) -> tuple[np.ndarray, np.ndarray]:
    """(mean cosine over the k nearest generated embeddings (R,), their gen rows (R,k))."""
    sims, rows = neighbours(real_emb, gen_emb, index, k=k)
    return sims.mean(axis=1).astype(np.float64), rows


def seed_rule(
    model, real, gen, *, batch_size: int = 8, gen_chunk: int = 256, max_pairs: int | None = 2_000_000
) -> np.ndarray:
    """The seed's prediction rule: mean relation probability of each real image over ALL generated images.

    Cost grows with R x N pairs (the 2023 test set: 2,000,000), so it is meant
    for small sets; more than `max_pairs` pairs is refused (None: no limit).
    """
    check_fmaps(model, real, "real")
    check_fmaps(model, gen, "generated")
    r, n = len(real), len(gen)
    if r == 0 or n == 0:
        raise FingerprintError("seed_rule: needs real and generated images")
    if max_pairs is not None and r * n > max_pairs:
        raise FingerprintError(
            f"seed_rule: {r} x {n} = {r * n} pairs exceeds the limit of {max_pairs} (it is for small sets)"
        )
    total = np.zeros(r, dtype=np.float64)
    chunks = range(0, n, gen_chunk)
    for j in tqdm(chunks, desc="seed_rule", unit="chunk", disable=not is_main_process() or len(chunks) < 4):
        cols = np.arange(j, min(j + gen_chunk, n))
        rows = np.broadcast_to(cols, (r, len(cols)))
        logits = relation_logits(model, real.fmaps, gen.fmaps, rows, batch_size=batch_size)
        total += (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).sum(axis=1)
    return total / n
