"""How hard a benchmark is: ROC-AUC of the plain pixel nearest-neighbour distance (used images vs not used).

A generator that memorised its training images leaves each used image with a
close synthetic neighbour; the ROC-AUC of -(L2 distance to the nearest
generated image) on dev and test measures how much of that a pixel-space
attacker sees (the distance to closest record, DCR, of the synthetic-data
privacy literature).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fingerprint.core.errors import FingerprintError
from fingerprint.core.intensity import significant_depth
from fingerprint.evaluation.metrics import read_truth, roc_auc


def nearest_distances(real: np.ndarray, generated: np.ndarray, chunk: int = 512) -> np.ndarray:
    """L2 distance (pixels scaled to [0, 1]) from each real image to its nearest generated image."""
    r = torch.from_numpy(real.reshape(len(real), -1).astype(np.float32) / 255.0)
    rn = (r * r).sum(1)
    best = torch.full((len(r),), float("inf"))
    for i in range(0, len(generated), chunk):
        g = torch.from_numpy(generated[i : i + chunk].reshape(-1, r.shape[1]).astype(np.float32) / 255.0)
        d = rn[:, None] + (g * g).sum(1)[None, :] - 2.0 * (r @ g.T)
        best = torch.minimum(best, d.min(dim=1).values)
    return best.clamp_min(0.0).sqrt().numpy()


def pixel_nn_auc(real: np.ndarray, labels: np.ndarray, generated: np.ndarray) -> float:
    """ROC-AUC of score = -(L2 distance to the nearest generated image), label 1 = used."""
    return roc_auc(np.asarray(labels), -nearest_distances(real, generated))


def _gray8(im: Image.Image) -> np.ndarray:
    """8-bit gray pixels; a wide image (16-bit PNG) is scaled by its own bit depth, as `pack` does by default."""
    if not im.mode.startswith("I"):
        return np.asarray(im.convert("L"), np.uint8)
    a = np.asarray(im).astype(np.float64)
    top = (1 << significant_depth(float(a.max()))) - 1
    return np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)


def _read_folder(folder: Path, prefix: str) -> tuple[list[str], np.ndarray]:
    files = sorted(folder.glob(f"{prefix}_*.png"))
    if not files:
        raise FingerprintError(f"{folder}: no {prefix}_*.png images")
    arrs = []
    for f in files:
        try:
            with Image.open(f) as im:
                arrs.append(_gray8(im))
        except (OSError, UnidentifiedImageError) as e:
            raise FingerprintError(f"{f}: cannot read image ({e})") from None
    shapes = {a.shape for a in arrs}
    if len(shapes) != 1:
        raise FingerprintError(f"{folder}: images of different sizes {sorted(shapes)}")
    return [f.stem for f in files], np.stack(arrs)


def measure_difficulty(root: str | os.PathLike) -> dict:
    """Pixel-NN ROC-AUC of a benchmark folder in the 2023 layout (dev labels; test via test_truth.csv)."""
    root = Path(root)
    _, gen = _read_folder(root / "dev" / "generated", "generated")
    _, used = _read_folder(root / "dev" / "used", "used")
    _, not_used = _read_folder(root / "dev" / "not_used", "not_used")
    dev = pixel_nn_auc(np.concatenate([used, not_used]), np.r_[np.ones(len(used)), np.zeros(len(not_used))], gen)
    out = {"dev": round(dev, 4)}
    truth_file = root / "test_truth.csv"
    if truth_file.is_file():
        truth = read_truth(truth_file)
        _, tgen = _read_folder(root / "test" / "generated_1", "generated")
        keys, unknown = _read_folder(root / "test" / "real_unknown_1", "real_unknown")
        missing = [k for k in keys if k not in truth]
        if missing:
            raise FingerprintError(f"{truth_file}: no label for {missing[0]} ({len(missing)} missing)")
        out["test"] = round(pixel_nn_auc(unknown, np.array([truth[k] for k in keys]), tgen), 4)
    return out
