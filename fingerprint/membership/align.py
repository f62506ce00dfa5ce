"""Aligned pixel evidence: rigid search (space `al64`) and free-form registration (space `ff32`).

`al64`: normalised correlation after a small rotation / scale / shift search.

A generator that memorises bends its copies a little (global and elastic
warps) and smooths them; plain pixel L2 and SSIM punish both. Each real image
x is compared with a few candidates c (its nearest generated images of its
split, and, for calibration, its nearest other reals, both retrieved by
normalised-pixel L2 at 32 px) at 64 px: x is warped by every (rotation,
scale) of a small grid, and the normalised cross-correlation (zero mean,
unit norm per window, so contrast and brightness changes do not matter) of
c's central crop with every window of the warped x within +-`shift` px is
computed at once (an FFT product; window norms from integral images). The
best NCC over the search is
the aligned similarity of (x, c), and `sqrt(2 - 2 NCC)` (the L2 distance of
the normalised crops at the best alignment) enters the calibrated profile like
any distance (`fingerprint.membership.profile`). Plain torch: it runs on a GPU when
`profile.device` gives one.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from fingerprint.core.vocab import SPLITS

#: added to registered RMS distances (pixels in [0, 1]) so identical images give finite logs
EPS_RMS = 1e-4

from fingerprint.imaging.register import registered_rms  # noqa: E402
from fingerprint.membership.spaces import ProfileConfig, SplitImages, drop_self, flat, l2_knn, profile_columns  # noqa: E402


def pick_device(device: str) -> torch.device:
    """`auto` = CUDA when present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def warp_bank(x: torch.Tensor, angles: tuple[float, ...], scales: tuple[float, ...]) -> torch.Tensor:
    """(R,1,S,S) -> (R, W, S, S): each image rotated/scaled about its centre by every (angle, scale) pair."""
    R, _, S, _ = x.shape
    theta = []
    for a in angles:
        for s in scales:
            c, sn = math.cos(math.radians(a)) / s, math.sin(math.radians(a)) / s
            theta.append([[c, -sn, 0.0], [sn, c, 0.0]])
    th = torch.tensor(theta, dtype=x.dtype, device=x.device)
    W = len(theta)
    grid = F.affine_grid(th, [W, 1, S, S], align_corners=False)
    out = F.grid_sample(x.repeat_interleave(W, 0), grid.repeat(R, 1, 1, 1), padding_mode="border", align_corners=False)
    return out.reshape(R, W, S, S)


def _normalise(v: torch.Tensor) -> torch.Tensor:
    v = v - v.mean(-1, keepdim=True)
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def centre_crops(x: torch.Tensor, shift: int) -> torch.Tensor:
    """(N,1,S,S) -> (N, (S - 2 shift)^2) normalised central crops."""
    S = x.shape[-1]
    return _normalise(x[:, 0, shift : S - shift, shift : S - shift].reshape(len(x), -1))


def box_sums(x: torch.Tensor, c: int, n: int) -> torch.Tensor:
    """Sums of x (..., S, S) over every c x c window at offsets [0, n) x [0, n) (integral image, float64)."""
    ii = F.pad(x.double(), (1, 0, 1, 0)).cumsum(-1).cumsum(-2)
    return ii[..., c : c + n, c : c + n] - ii[..., :n, c : c + n] - ii[..., c : c + n, :n] + ii[..., :n, :n]


def shifted_ncc(w: torch.Tensor, cand: torch.Tensor, shift: int) -> torch.Tensor:
    """Best NCC over every shift of each warp: w (B, W, S, S), cand (B, M, c*c) normalised -> (B, M).

    The correlations at all (2 shift + 1)^2 offsets come from one FFT product per (warp, candidate); each
    window's mean and norm from integral images, so no crop is materialised (5x faster than unfolding them).
    """
    B, W, S, _ = w.shape
    c, n = S - 2 * shift, 2 * shift + 1
    k = torch.zeros(B, cand.shape[1], S, S, dtype=w.dtype, device=w.device)
    k[..., :c, :c] = cand.reshape(B, -1, c, c)
    corr = torch.fft.irfft2(torch.fft.rfft2(w)[:, :, None] * torch.fft.rfft2(k)[:, None].conj(), s=(S, S))
    s1, s2 = box_sums(w, c, n), box_sums(w * w, c, n)
    norm = (s2 - s1 * s1 / (c * c)).clamp_min(1e-12).sqrt().to(w.dtype)  # (B, W, n, n)
    return (corr[..., :n, :n] / norm[:, :, None]).amax(dim=(1, 3, 4))


def aligned_ncc(
    real: torch.Tensor,
    cands: torch.Tensor,
    rows: np.ndarray,
    *,
    angles: tuple[float, ...] = (-6.0, -3.0, 0.0, 3.0, 6.0),
    scales: tuple[float, ...] = (0.95, 1.0, 1.05),
    shift: int = 3,
    device: torch.device | str = "cpu",
    chunk: int | None = None,
) -> np.ndarray:
    """Best NCC (R, M) of each real image (R,1,S,S) with its candidates `cands[rows[i]]` over the search."""
    device = torch.device(device)
    chunk = chunk or (64 if device.type == "cuda" else 8)
    c = centre_crops(cands.to(device), shift)
    out = np.empty(rows.shape, np.float32)
    with torch.inference_mode():
        for i in range(0, len(real), chunk):
            w = warp_bank(real[i : i + chunk].to(device), angles, scales)  # (b, W, S, S)
            cand = c[torch.from_numpy(rows[i : i + chunk]).to(device)]  # (b, M, D)
            out[i : i + chunk] = shifted_ncc(w, cand, shift).float().cpu().numpy()
    return out


def aligned_distance(ncc: np.ndarray) -> np.ndarray:
    """L2 distance of two normalised crops with correlation `ncc`."""
    return np.sqrt(np.clip(2.0 - 2.0 * ncc.astype(np.float64), 1e-8, None))


def candidate_profile(
    splits: dict[str, SplitImages], cfg: ProfileConfig, size: int, prefix: str, distance
) -> dict[str, dict[str, np.ndarray]]:
    """The calibrated profile (ngen_k, ref_k, cal_k) of every real image on a pairwise distance, per split.

    Candidates are retrieved once by normalised-pixel L2 at 32 px: each real image's `align_candidates`
    nearest generated images of its split and `align_references` nearest other reals of both splits.
    `distance(real (R,1,s,s), pool (P,1,s,s), pairs (R, M + K) rows of pool)` -> (R, M + K) distances at
    side `size`; the pool is the split's generated images, then every real.
    """

    real = torch.cat([splits[s].real[size] for s in SPLITS])
    vr = flat(torch.cat([splits[s].real[32] for s in SPLITS]), normalise=True)
    d, ids = l2_knn(vr, vr, cfg.align_references + 1)
    _, ref_rows = drop_self(d, ids, np.arange(len(vr)))
    out, start = {}, 0
    for s in SPLITS:
        sp = splits[s]
        rows = start + np.arange(len(sp.real_keys))
        _, cand = l2_knn(flat(sp.gen[32], normalise=True), vr[rows], cfg.align_candidates)
        pool = torch.cat([sp.gen[size], real])
        dist = distance(real[rows], pool, np.hstack([cand, len(sp.gen[size]) + ref_rows[rows]]))
        m = cand.shape[1]
        out[s] = profile_columns(np.sort(dist[:, :m], axis=1), np.sort(dist[:, m:], axis=1), prefix)
        start += len(rows)
    return out


def aligned_distance_fn(cfg: ProfileConfig):
    """`distance(real, pool, pairs)` of `al64`: the aligned distance of each pair at 64 px (see candidate_profile)."""
    search = {"angles": cfg.align_angles, "scales": cfg.align_scales, "shift": cfg.align_shift}
    device = pick_device(cfg.device)

    def distance(real: torch.Tensor, pool: torch.Tensor, pairs: np.ndarray) -> np.ndarray:
        return aligned_distance(aligned_ncc(real, pool, pairs, device=device, **search))

    return distance


def aligned_profile(splits: dict[str, SplitImages], cfg: ProfileConfig) -> dict[str, dict[str, np.ndarray]]:
    """The calibrated profile of every real image on aligned distances at 64 px (space `al64`)."""
    return candidate_profile(splits, cfg, 64, "al64", aligned_distance_fn(cfg))


def registered_profile(splits: dict[str, SplitImages], cfg: ProfileConfig) -> dict[str, dict[str, np.ndarray]]:
    """The calibrated profile on distances after free-form registration at 32 px (space `ff32`).

    A generator that bends its training images elastically (outline, heart, diaphragm) moves a copy away from
    its source in pixel space; a rigid search (`al64`) cannot undo that. Each real image is registered
    (`fingerprint.imaging.register`, a smooth control-grid field) onto its candidates (`candidate_profile`), and the
    RMS difference left after registration is the distance: a bent copy of x comes back close to x, an image
    of other anatomy does not.
    """

    return candidate_profile(splits, cfg, 32, "ff32", registered_distance_fn(cfg))


def registered_distance_fn(cfg: ProfileConfig):
    """`distance(real, pool, pairs)` of `ff32`: the RMS left after free-form registration at 32 px."""
    device = pick_device(cfg.device)

    def distance(real: torch.Tensor, pool: torch.Tensor, pairs: np.ndarray) -> np.ndarray:
        moving = real.repeat_interleave(pairs.shape[1], 0).to(device)
        fixed = pool[torch.from_numpy(pairs.reshape(-1))].to(device)
        rms = registered_rms(moving, fixed, grid=cfg.register_grid, steps=cfg.register_steps, lr=0.02, sigma=0.5)
        return rms.cpu().double().numpy().reshape(pairs.shape) + EPS_RMS

    return distance
