"""Realism and leakage figures of a benchmark build: written to synth.json under `realism` by every build.

Every function takes uint8 images (n, s, s) as written to the PNGs, so the
figures describe the files a user gets, and every figure is computed in one
place here.

1. High-frequency energy (`hf_energy`, `hf_ratio`). For an image x in [0, 1]
   of n pixels with 2-D DFT X(f), the energy above the radial cut-off f_c
   (cycles per pixel) is

       E_hf(x) = (1 / n^2) * sum_{|f| > f_c} |X(f)|^2,

   which by Parseval is the mean squared value of x after an ideal radial
   high-pass filter. `hf_ratio` = mean E_hf over generated images / mean
   E_hf over real images (1 = as much fine detail as the real images; a
   blurred generator is far below 1). The default cut-off f_c = 1/8 cycle per
   pixel is the Nyquist limit of a 64 px image shown at 256 px: energy above
   it is detail a 64 px model cannot represent (vessels, rib cortex, noise).

2. Fréchet distance (`frechet`): the Fréchet (2-Wasserstein between fitted
   Gaussians) distance of Heusel et al. 2017 (FID), computed on features of a
   FIXED, SEEDED, RANDOMLY INITIALISED convolutional network
   (`RandomBackbone`), since Inception weights cannot be downloaded. Random
   convolutional embeddings are a usable stand-in for a trained one for
   fidelity/diversity metrics (Naeem et al. 2020, "Reliable Fidelity and
   Diversity Metrics for Generative Models", the T4 random embedding). The
   features are the spatial means of each stage's activations, each stage
   projected to `dims_per_stage` dimensions by a seeded random projection,
   then standardised by the real images' statistics. Because the FD estimate
   is biased by the sample size, generated and real sets are compared at
   EQUAL size: the reals are split into two seeded random halves A and B;
   the reference is FD(A, B) (real vs real); the generated figure is the mean
   of FD(G_k, B) and FD(G_k, A) over subsets G_k of the generated images of
   the size of a half. `fd_ratio` = generated / reference (1 = as close as
   another sample of reals).

3. Nearest-neighbour leakage (`nn_leakage`): pixel-NN ROC-AUC (score = -L2 to
   the nearest generated image; Chen et al. 2020, GAN-Leaks full black-box),
   SSIM-NN ROC-AUC (score = max SSIM to a generated image, Wang et al. 2004,
   exact over the `ssim_candidates` pixel-nearest generated images, as
   `fingerprint.imaging.similarity.ssim_max`), and the share of generated images
   whose nearest real image (pixel L2) is a used one, with its null value
   (share of used images among the reals of that split), and how many
   distinct real images are some generated image's nearest (a generator of
   generic images sends all its samples to the one most "average" real
   image, which makes the share 0 or 1 by chance: read the two together).

4. Memorisation (`memorisation`): for a real image i, rho_i = (L2 to the
   nearest generated image) / (L2 to the nearest OTHER real image of the
   build). A used image is "reproduced" when rho_i < `rho` (default 0.5: some
   generated image is at least twice as close to it as any other real
   image); `share_reproduced` is measured on used and on not-used images
   (the latter is the false-reproduction rate, ~0). `near_counts` counts, per
   used image, the generated images within rho * (nearest-real distance):
   their concentration (share held by the top 10% of used images) shows how
   unevenly the generator memorises.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fingerprint.benchdata.difficulty import _read_folder
from fingerprint.evaluation.metrics import read_truth, roc_auc
from fingerprint.imaging.similarity import gaussian_window, pixel_neighbours

HF_CUTOFF = 1.0 / 8.0  # cycles per pixel


def _float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)


# ---------------------------------------------------------------- high-frequency energy


def hf_energy(images: np.ndarray, cutoff: float = HF_CUTOFF, batch: int = 256) -> np.ndarray:
    """Per-image energy above the radial frequency `cutoff` (cycles/pixel), pixels in [0, 1] -> (n,) float64."""
    if images.ndim != 3:
        raise ValueError(f"hf_energy: expected (n, h, w) images, got {images.shape}")
    h, w = images.shape[1:]
    fy = torch.fft.fftfreq(h).abs()[:, None]
    fx = torch.fft.fftfreq(w).abs()[None, :]
    mask = (fy**2 + fx**2).sqrt() > cutoff
    out = []
    for i in range(0, len(images), batch):
        x = _float(images[i : i + batch])
        p = torch.fft.fft2(x).abs().square().double()
        out.append((p * mask).sum(dim=(1, 2)) / float(h * w) ** 2)
    return torch.cat(out).numpy()


def hf_ratio(generated: np.ndarray, real: np.ndarray, cutoff: float = HF_CUTOFF) -> float:
    """Mean high-frequency energy of the generated images / that of the real images."""
    return float(hf_energy(generated, cutoff).mean() / max(hf_energy(real, cutoff).mean(), 1e-30))


# ---------------------------------------------------------------- Fréchet distance, random backbone


class RandomBackbone(nn.Module):
    """A fixed random CNN: 5 stages of (3x3 conv stride 2, ReLU, 3x3 conv, ReLU), Kaiming-normal init from `seed`.

    Input: (B, 1, s, s) in [0, 1], resized to `size` (bilinear, antialiased).
    Output: (B, stages * dims_per_stage) = per stage, the spatial mean of the
    activations times a seeded Gaussian projection to `dims_per_stage`.
    """

    def __init__(self, seed: int = 0, widths=(16, 32, 64, 128, 256), dims_per_stage: int = 16, size: int = 128):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.size = size
        self.stages = nn.ModuleList()
        self.proj = []
        c_in = 1
        for c in widths:
            stage = nn.Sequential(nn.Conv2d(c_in, c, 3, 2, 1), nn.ReLU(), nn.Conv2d(c, c, 3, 1, 1), nn.ReLU())
            for m in stage:
                if isinstance(m, nn.Conv2d):
                    fan_in = m.in_channels * 9
                    with torch.no_grad():
                        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
                        m.bias.zero_()
            self.stages.append(stage)
            self.proj.append(torch.randn(c, dims_per_stage, generator=g) / math.sqrt(c))
            c_in = c
        self.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size:
            x = F.interpolate(
                x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > self.size
            )
        x = (x - 0.5) / 0.25
        feats = []
        for stage, p in zip(self.stages, self.proj):
            x = stage(x)
            feats.append(x.mean(dim=(2, 3)) @ p)
        return torch.cat(feats, dim=1)


def backbone_features(images: np.ndarray, seed: int = 0, batch: int = 64) -> np.ndarray:
    """Features of uint8 images (n, s, s) from the seeded `RandomBackbone` -> (n, d) float64."""
    net = RandomBackbone(seed)
    out = [net(_float(images[i : i + batch]).unsqueeze(1)) for i in range(0, len(images), batch)]
    return torch.cat(out).double().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two feature sets (n, d) (Heusel et al. 2017).

    The trace of the matrix square root is computed from the eigenvalues of
    S_a^(1/2) S_b S_a^(1/2) (symmetric PSD), which is stable when the
    covariances are singular (fewer samples than dimensions).
    """
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    wa, va = np.linalg.eigh(sa)
    root_a = (va * np.sqrt(np.clip(wa, 0, None))) @ va.T
    m = root_a @ sb @ root_a
    tr_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())
    return float(mu @ mu + np.trace(sa) + np.trace(sb) - 2.0 * tr_sqrt)


def frechet(generated: np.ndarray, real: np.ndarray, *, seed: int = 0, subsets: int = 4) -> dict:
    """Fréchet distance generated-vs-real at equal sample size, with the real-vs-real reference (module doc)."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 0xFD])
    fr, fg = backbone_features(real, seed), backbone_features(generated, seed)
    mu, sd = fr.mean(0), fr.std(0) + 1e-8
    fr, fg = (fr - mu) / sd, (fg - mu) / sd
    perm = rng.permutation(len(fr))
    half = len(fr) // 2
    a, b = fr[perm[:half]], fr[perm[half : 2 * half]]
    ref = frechet_distance(a, b)
    vals = []
    for _ in range(subsets):
        g = fg[rng.choice(len(fg), size=min(half, len(fg)), replace=False)]
        vals += [frechet_distance(g, a), frechet_distance(g, b)]
    gen = float(np.mean(vals))
    return {
        "generated": round(gen, 4),
        "real_vs_real": round(ref, 4),
        "ratio": round(gen / max(ref, 1e-12), 4),
        "n_per_set": half,
        "dims": int(fr.shape[1]),
        "backbone_seed": seed,
    }


# ---------------------------------------------------------------- nearest-neighbour leakage


def _pixels(images: np.ndarray) -> torch.Tensor:
    return _float(images).unsqueeze(1)


def nearest(query: np.ndarray, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact pixel-L2 nearest neighbour (pixels in [0, 1]) of each query image in pool -> (distances, rows)."""
    d, i = pixel_neighbours(_pixels(query), _pixels(pool), 1)
    return d[:, 0].astype(np.float64), i[:, 0]


def nn_leakage(real: np.ndarray, labels: np.ndarray, generated: np.ndarray, *, ssim_candidates: int = 8) -> dict:
    """Pixel-NN and SSIM-NN ROC-AUC (label 1 = used) and the share of generated images nearest to a used image."""
    labels = np.asarray(labels).astype(int)
    d, _ = nearest(real, generated)
    s = ssim_nn(real, generated, candidates=ssim_candidates)
    _, nn_real = nearest(generated, real)
    return {
        "pixel_nn_auc": round(float(roc_auc(labels, -d)), 4),
        "ssim_nn_auc": round(float(roc_auc(labels, s)), 4),
        "share_nearest_used": round(float(labels[nn_real].mean()), 4),
        "share_nearest_used_null": round(float(labels.mean()), 4),
        "distinct_nearest_reals": len(np.unique(nn_real)),
    }


def _band(g: torch.Tensor, size: int) -> torch.Tensor:
    """The 'valid' 1-D filtering by g as a (size - len(g) + 1, size) matrix."""
    n = len(g)
    m = torch.zeros(size - n + 1, size)
    for i in range(size - n + 1):
        m[i, i : i + n] = g
    return m


def _blur(x: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filter of (B, H, W) images as two matrix products (BLAS-fast on CPUs)."""
    return band @ x @ band.T


def ssim_nn(real: np.ndarray, generated: np.ndarray, *, candidates: int = 16, batch: int = 64) -> np.ndarray:
    """Max SSIM (Wang et al. 2004: 11-tap Gaussian window, sigma 1.5, K1 0.01, K2 0.03, valid borders) of each
    real image over its `candidates` pixel-L2-nearest generated images -> (n_real,) float64.

    Same definition as `fingerprint.imaging.similarity.ssim_max`, in float32 with each
    generated image's local moments computed once: about 30x faster on a CPU.
    """
    c1, c2 = 0.01**2, 0.03**2
    g = _band(gaussian_window(11, 1.5), real.shape[-1])
    _, cand = pixel_neighbours(_pixels(real), _pixels(generated), min(candidates, len(generated)))
    uniq, inv = np.unique(cand, return_inverse=True)
    inv = inv.reshape(cand.shape)

    def moments(imgs):
        x = _float(imgs)
        return x, _blur(x, g), _blur(x * x, g)

    gx, gm, gq = moments(generated[uniq])
    best = np.full(len(real), -np.inf)
    for i in range(0, len(real), batch):
        rx, rm, rq = moments(real[i : i + batch])
        for j in range(cand.shape[1]):
            k = torch.from_numpy(inv[i : i + batch, j])
            my, ey2 = gm[k], gq[k]
            sxy = _blur(rx * gx[k], g) - rm * my
            m = ((2 * rm * my + c1) * (2 * sxy + c2)) / ((rm * rm + my * my + c1) * (rq - rm * rm + ey2 - my * my + c2))
            best[i : i + batch] = np.maximum(best[i : i + batch], m.mean(dim=(1, 2)).double().numpy())
    return best


# ---------------------------------------------------------------- memorisation


def real_nn_distance(real: np.ndarray) -> np.ndarray:
    """L2 distance from each real image to the nearest OTHER real image -> (n,)."""
    d, i = pixel_neighbours(_pixels(real), _pixels(real), 2)
    self_first = i[:, 0] == np.arange(len(real))
    return np.where(self_first, d[:, 1], d[:, 0]).astype(np.float64)


def memorisation(
    real: np.ndarray, labels: np.ndarray, generated: np.ndarray, *, rho: float = 0.5, real_nn: np.ndarray | None = None
) -> dict:
    """How many used images the generated set reproduces, how closely, and how unevenly (module doc, item 4).

    `real_nn` is the nearest-other-real distance of each image of `real`
    (default: computed within `real`; pass distances to all reals of the build).
    """
    labels = np.asarray(labels).astype(bool)
    real_nn = real_nn_distance(real) if real_nn is None else np.asarray(real_nn, np.float64)
    d, _ = nearest(real, generated)
    ratio = d / np.maximum(real_nn, 1e-12)
    k = min(len(generated), 64)
    dk, _ = pixel_neighbours(_pixels(real[labels]), _pixels(generated), k)
    counts = (dk < rho * real_nn[labels][:, None]).sum(1)
    top = np.sort(counts)[::-1][: max(1, math.ceil(0.1 * len(counts)))]
    return {
        "rho": rho,
        "share_reproduced_used": round(float((ratio[labels] < rho).mean()), 4),
        "share_reproduced_not_used": round(float((ratio[~labels] < rho).mean()), 4),
        "median_ratio_used": round(float(np.median(ratio[labels])), 4),
        "median_ratio_not_used": round(float(np.median(ratio[~labels])), 4),
        "median_ratio_reproduced": (
            round(float(np.median(ratio[labels][ratio[labels] < rho])), 4) if (ratio[labels] < rho).any() else None
        ),
        "near_samples_per_used": round(float(counts.mean()), 3),
        "near_samples_top10pct_share": round(float(top.sum() / max(counts.sum(), 1)), 4),
        "near_samples_cap": k,
    }


# ---------------------------------------------------------------- one build folder


def read_build(root: str | os.PathLike) -> dict:
    """The images and labels of a folder in the 2023 layout -> {"dev"|"test": (real, labels, generated)}."""
    root = Path(root)
    _, gen = _read_folder(root / "dev" / "generated", "generated")
    _, used = _read_folder(root / "dev" / "used", "used")
    _, not_used = _read_folder(root / "dev" / "not_used", "not_used")
    out = {
        "dev": (np.concatenate([used, not_used]), np.r_[np.ones(len(used)), np.zeros(len(not_used))].astype(int), gen)
    }
    truth = read_truth(root / "test_truth.csv")
    _, tgen = _read_folder(root / "test" / "generated_1", "generated")
    keys, unknown = _read_folder(root / "test" / "real_unknown_1", "real_unknown")
    out["test"] = (unknown, np.array([truth[k] for k in keys], int), tgen)
    return out


def measure_splits(splits: dict, *, seed: int = 0, ssim_candidates: int = 8, max_generated: int = 1000) -> dict:
    """All realism, leakage and memorisation figures of a build from its splits (see `read_build`).

    The high-frequency ratio and the Fréchet distance use a seeded random
    subset of at most `max_generated` generated images (both are means; the
    Fréchet distance only ever uses as many as half the reals).
    """
    real_all = np.concatenate([s[0] for s in splits.values()])
    gen_all = np.concatenate([s[2] for s in splits.values()])
    if len(gen_all) > max_generated:
        pick = np.random.default_rng([seed & 0xFFFFFFFF, 0x6E]).choice(len(gen_all), max_generated, replace=False)
        gen_all = gen_all[np.sort(pick)]
    nn_all = real_nn_distance(real_all)
    out = {
        "hf_ratio": round(hf_ratio(gen_all, real_all), 4),
        "hf_cutoff_cycles_per_pixel": HF_CUTOFF,
        "hf_ratio_quarter": round(hf_ratio(gen_all, real_all, 0.25), 4),
        "frechet": frechet(gen_all, real_all, seed=seed),
        "splits": {},
    }
    k = 0
    for name, (real, labels, gen) in splits.items():
        leak = nn_leakage(real, labels, gen, ssim_candidates=ssim_candidates)
        mem = memorisation(real, labels, gen, real_nn=nn_all[k : k + len(real)])
        k += len(real)
        out["splits"][name] = {**leak, "memorisation": mem}
    return out


def measure_build(root: str | os.PathLike, *, seed: int = 0) -> dict:
    """`measure_splits` of a folder in the 2023 layout with test_truth.csv (e.g. an older build)."""
    return measure_splits(read_build(root), seed=seed)
