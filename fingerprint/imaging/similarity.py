"""Pixel similarity shared by the detector and the benchmark builder: exact pixel-L2 neighbours and SSIM.

`pixel_neighbours` is an exact FAISS k-NN over flattened images; `ssim` is
Wang et al. (2004) with a Gaussian window (data range 1); `ssim_max` finds
each real image's best SSIM among its pixel-nearest generated candidates.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fingerprint.core.errors import FingerprintError
from fingerprint.core.logs import is_main_process

log = logging.getLogger(__name__)

#: SSIM constants of Wang et al. (2004) for data range 1.
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _flat_pixels(x: torch.Tensor | np.ndarray, what: str) -> np.ndarray:
    x = torch.as_tensor(x)
    if x.ndim != 4 or x.shape[1] != 1:
        raise FingerprintError(f"{what}: expected images (B,1,H,W), got shape {tuple(x.shape)}")
    return np.ascontiguousarray(x.reshape(len(x), -1).float().numpy())


def pixel_neighbours(real: torch.Tensor, gen: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k generated images by pixel L2: (distances (R,k) float32, gen rows (R,k) int64), nearest first."""
    r, g = _flat_pixels(real, "real pixels"), _flat_pixels(gen, "generated pixels")
    if len(g) == 0 or len(r) == 0:
        raise FingerprintError("pixel baseline: needs real and generated images")
    if r.shape[1] != g.shape[1]:
        raise FingerprintError(
            f"pixel baseline: real images have {r.shape[1]} pixels, generated {g.shape[1]} "
            "(score.pixel_size must be the same)"
        )
    index = faiss.IndexFlatL2(g.shape[1])
    index.add(g)
    d2, ids = index.search(r, min(int(k), len(g)))
    return np.sqrt(np.maximum(d2, 0.0)), ids


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1-D Gaussian (size,) float32."""
    if size < 1 or size % 2 == 0:
        raise FingerprintError(f"SSIM window must be odd and positive, got {size}")
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).float()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, 'valid' borders (as in Wang et al.): (B,1,H,W) -> (B,1,H-s+1,W-s+1)."""
    n = len(g)
    x = F.conv2d(x, g.reshape(1, 1, n, 1).to(x))
    return F.conv2d(x, g.reshape(1, 1, 1, n).to(x))


def _moments(x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Local means and second moments (float64) of images (B,1,H,W)."""
    x = x.double()
    return _blur(x, g), _blur(x * x, g)


def _ssim_batch(
    x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, x_moments: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """SSIM of the pairs (x[j], y[j]) as the mean of the SSIM map -> (P,) float64.

    `x_moments` lets a caller reuse x's local statistics across many pairs.
    """
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    mx, ex2 = x_moments if x_moments is not None else _moments(x, g)
    my, ey2 = _moments(y, g)
    sxx, syy = ex2 - mx * mx, ey2 - my * my
    sxy = _blur(x.double() * y.double(), g) - mx * my
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return m.mean(dim=(1, 2, 3))


def ssim(x: torch.Tensor, y: torch.Tensor, *, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM of paired images x[i], y[i] (B,1,H,W) in [0,1] -> (B,) float64 (Gaussian window, valid borders)."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.shape != y.shape or x.ndim != 4:
        raise FingerprintError(
            f"ssim: expected two (B,1,H,W) batches of one shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    _check_size(x, window)
    return _ssim_batch(x, y, gaussian_window(window, sigma))


def _check_size(x: torch.Tensor, window: int) -> None:
    if min(x.shape[-2:]) < window:
        raise FingerprintError(f"ssim: images of {tuple(x.shape[-2:])} are smaller than the {window}-pixel window")


def ssim_max(
    real_pixels: torch.Tensor,
    gen_pixels: torch.Tensor,
    *,
    candidates: int | None = 64,
    window: int = 11,
    sigma: float = 1.5,
    pair_batch: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """(max SSIM over generated images (R,), row of that image (R,)).

    Exhaustive SSIM over R x N pairs is too slow at 200 x 10,000 on a CPU, so
    with `candidates=M` each real image is compared exactly with only its M
    nearest generated images by pixel L2 (exact FAISS search); SSIM is high
    only where local means and structure agree, which L2-near images are.
    `candidates=None` (or >= N) is exhaustive.
    """
    real = torch.as_tensor(real_pixels).float()
    gen = torch.as_tensor(gen_pixels).float()
    if real.ndim != 4 or gen.ndim != 4 or real.shape[1:] != gen.shape[1:]:
        raise FingerprintError(
            f"ssim: real {tuple(real.shape)} and generated {tuple(gen.shape)} images must share (1,H,W)"
        )
    if len(gen) == 0 or len(real) == 0:
        raise FingerprintError("ssim: needs real and generated images")
    _check_size(real, window)
    g = gaussian_window(window, sigma)
    n = len(gen)
    if candidates is None or candidates >= n:
        cand = np.broadcast_to(np.arange(n), (len(real), n))
    else:
        if candidates < 1:
            raise FingerprintError(f"ssim: candidates must be >= 1, got {candidates}")
        _, cand = pixel_neighbours(real, gen, candidates)
    mu, ex2 = _moments(real, g)
    qi = torch.from_numpy(np.repeat(np.arange(len(real)), cand.shape[1]))
    gi = torch.from_numpy(np.ascontiguousarray(cand).reshape(-1).astype(np.int64))
    values = torch.empty(len(qi), dtype=torch.float64)
    steps = range(0, len(qi), pair_batch)
    for i in tqdm(steps, desc="ssim", unit="batch", disable=not is_main_process() or len(steps) < 8):
        q, j = qi[i : i + pair_batch], gi[i : i + pair_batch]
        values[i : i + pair_batch] = _ssim_batch(real[q], gen[j], g, (mu[q], ex2[q]))
    values = values.reshape(len(real), cand.shape[1]).numpy()
    best = values.argmax(axis=1)
    return values[np.arange(len(real)), best], np.asarray(cand)[np.arange(len(real)), best]
