"""The calibrated profile of one pooled set of real images against one generated pool, and a fusion applied to it.

The run's profile (`fingerprint.membership.profile`) measures every real image
of a dev and a test split against its split's generated pool, with every other
real image as the reference population. Collection-level questions (an audit,
an attribution) score named collections against ONE generated pool instead,
so the same columns are computed here on a pooled set:

- rows `[0, n_pool)` are the pool (for an audit: the candidate and the
  reference together); each is measured against the generated pool (`ngen_k`)
  and against every OTHER pooled image (`ref_k`, the image itself left out);
- later rows (e.g. held-out labelled dev images) are measured against the same
  generated pool and the same pooled reference population, which they are not
  part of.

Every pooled image is therefore scored by one symmetric function of itself and
of the pooled set: which pooled images are called candidate and which
reference changes no score, the exchangeability a rank test on the scores
needs (`fingerprint.tasks.audit_stats`, requirement 3). The fusion's
per-column standardisation is fitted on the pooled rows the same way
(`standardise_on_pool`). Spaces: the pixel spaces (`px*`, `pn*`), the learned
metric (`k32x`, each image in the metric whose fitting did not see it, by
`folds`), and the aligned and registered spaces (`al64`, `ff32`, on each
image's nearest candidates, as in the run's profile).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import norm, rankdata

from fingerprint.core.errors import FingerprintError
from fingerprint.core.vocab import SPACES
from fingerprint.imaging.register import registered_rms
from fingerprint.membership.align import EPS_RMS, aligned_distance, aligned_ncc, pick_device
from fingerprint.membership.spaces import (
    ProfileConfig,
    drop_self,
    flat,
    knn_profile,
    l2_knn,
    pixel_sizes,
    profile_columns,
)
from fingerprint.training.adapt import Metric


def _profile_default(name: str):
    return ProfileConfig.__dataclass_fields__[name].default


@dataclass(frozen=True)
class PooledOptions:
    """The candidate search of the aligned spaces (the profile stage's defaults)."""

    align_candidates: int = _profile_default("align_candidates")
    align_references: int = _profile_default("align_references")
    align_angles: tuple[float, ...] = _profile_default("align_angles")
    align_scales: tuple[float, ...] = _profile_default("align_scales")
    align_shift: int = _profile_default("align_shift")
    register_grid: int = _profile_default("register_grid")
    register_steps: int = _profile_default("register_steps")
    device: str = "auto"


def column_space(column: str) -> str:
    """The representation space of a profile column (`px64:cal_3` -> `px64`); an error for any other column."""
    space = column.split(":", 1)[0]
    if ":" not in column or space not in SPACES or space == "emb":
        raise FingerprintError(
            f"fusion column {column!r} is not a pixel, metric or aligned space column: a pooled profile cannot "
            "compute it (fit the fusion on those spaces only)"
        )
    return space


def needed_sizes(spaces: list[str] | tuple[str, ...], metric: Metric | None = None) -> list[int]:
    """Image sides the spaces read (32 px for the candidate search of al64 and ff32)."""
    sizes = pixel_sizes(spaces)
    if "k32x" in spaces:
        if metric is None:
            raise FingerprintError("space k32x needs the learned metric ('fingerprint adapt')")
        sizes.add(int(metric.meta["size"]))
    return sorted(sizes)


def own_rows(n: int, n_pool: int) -> np.ndarray:
    """Each row's own position in the pool (-1 for rows outside it)."""
    own = np.arange(n)
    own[n_pool:] = -1
    return own


def vector_columns(space: str, real: np.ndarray, gen: np.ndarray, n_pool: int) -> dict[str, np.ndarray]:
    """ngen_k, ref_k, cal_k of every real row: the pool is real[:n_pool], each pooled row without itself."""
    return knn_profile(real, gen, real[:n_pool], own_rows(len(real), n_pool), space)


def metric_columns(
    real: torch.Tensor, gen: torch.Tensor, n_pool: int, metric: Metric, folds: np.ndarray
) -> dict[str, np.ndarray]:
    """The `k32x` columns: each real row measured in metric `folds[i]` (one not fitted on its pseudo-pairs)."""
    vr, vg = flat(real, True), flat(gen, True)
    out: dict[str, np.ndarray] = {}
    for m in np.unique(folds):
        cols = vector_columns("k32x", metric.transform(vr, int(m)), metric.transform(vg, int(m)), n_pool)
        for name, values in cols.items():
            out.setdefault(name, np.zeros(len(vr)))[folds == m] = values[folds == m]
    return out


def candidate_columns(
    space: str, real: dict[int, torch.Tensor], gen: dict[int, torch.Tensor], n_pool: int, opt: PooledOptions
) -> dict[str, np.ndarray]:
    """al64 / ff32 columns on each real row's nearest generated images and nearest other pooled images.

    Candidates come from normalised-pixel L2 at 32 px, as in the run's profile (`align.candidate_profile`).
    """
    size = 64 if space == "al64" else 32
    vr, vg = flat(real[32], True), flat(gen[32], True)
    d, ids = l2_knn(vr[:n_pool], vr, opt.align_references + 1)
    _, ref_rows = drop_self(d, ids, own_rows(len(vr), n_pool))
    _, cand = l2_knn(vg, vr, opt.align_candidates)
    pool = torch.cat([gen[size], real[size][:n_pool]])
    pairs = np.hstack([cand, len(gen[size]) + ref_rows])
    dist = _pair_distance(space, real[size], pool, pairs, opt)
    m = cand.shape[1]
    return profile_columns(np.sort(dist[:, :m], axis=1), np.sort(dist[:, m:], axis=1), space)


def _pair_distance(space: str, real: torch.Tensor, pool: torch.Tensor, pairs: np.ndarray, opt: PooledOptions):
    device = pick_device(opt.device)
    if space == "al64":
        search = {"angles": opt.align_angles, "scales": opt.align_scales, "shift": opt.align_shift}
        return aligned_distance(aligned_ncc(real, pool, pairs, device=device, **search))
    moving = real.repeat_interleave(pairs.shape[1], 0).to(device)
    fixed = pool[torch.from_numpy(pairs.reshape(-1))].to(device)
    rms = registered_rms(moving, fixed, grid=opt.register_grid, steps=opt.register_steps, lr=0.02, sigma=0.5)
    return rms.cpu().double().numpy().reshape(pairs.shape) + EPS_RMS


def pooled_profile(
    real: dict[int, torch.Tensor],
    gen: dict[int, torch.Tensor],
    n_pool: int,
    spaces: list[str] | tuple[str, ...],
    *,
    metric: Metric | None = None,
    folds: np.ndarray | None = None,
    options: PooledOptions = PooledOptions(),
) -> dict[str, np.ndarray]:
    """{column: value per real row} of every space; `real`/`gen` map each side of `needed_sizes` to (N,1,s,s).

    `folds[i]`: the metric (fold) real row i is measured in (default: the full metric for every row).
    """
    n = len(next(iter(real.values())))
    if not 2 <= n_pool <= n:
        raise FingerprintError(f"pooled profile: needs at least 2 pooled real images, got {n_pool} of {n}")
    if len(next(iter(gen.values()))) == 0:
        raise FingerprintError("pooled profile: no generated images")
    out: dict[str, np.ndarray] = {}
    for space in spaces:
        if space[:2] in ("px", "pn"):
            size, normalise = int(space[2:]), space.startswith("pn")
            out |= vector_columns(space, flat(real[size], normalise), flat(gen[size], normalise), n_pool)
        elif space == "k32x":
            size = int(metric.meta["size"])
            f = np.full(n, metric.full) if folds is None else np.asarray(folds)
            out |= metric_columns(real[size], gen[size], n_pool, metric, f)
        elif space in ("al64", "ff32"):
            out |= candidate_columns(space, real, gen, n_pool, options)
        else:
            raise FingerprintError(f"pooled profile: space {space!r} is not computed on a pooled set")
    return out


def standardise_on_pool(values: np.ndarray, n_pool: int, how: str) -> np.ndarray:
    """`values` on the scale fitted on the pooled rows `values[:n_pool]`.

    The pooled rows get exactly `metrics.standardise` of the pool (rank-gauss or robust); a later row gets the
    value it would have as one more member ("rank": the normal quantile of its mid-rank among the pool plus
    itself), so it never changes a pooled row's value.
    """
    v = np.asarray(values, dtype=np.float64)
    pool = v[:n_pool]
    if how == "robust":
        q1, med, q3 = np.percentile(pool, [25, 50, 75])
        scale = q3 - q1
        if not scale > 1e-12:
            scale = pool.std() if pool.std() > 1e-12 else 1.0
        return (v - med) / scale
    if how != "rank":
        raise FingerprintError(f"standardise: unknown method {how!r} (rank or robust)")
    out = np.empty(len(v))
    out[:n_pool] = norm.ppf((rankdata(pool) - 0.5) / n_pool)
    if len(v) > n_pool:
        s = np.sort(pool)
        rest = v[n_pool:]
        mid = (np.searchsorted(s, rest, "left") + np.searchsorted(s, rest, "right")) / 2.0 + 1.0
        out[n_pool:] = norm.ppf((mid - 0.5) / (n_pool + 1))
    return out


def fusion_spaces(model: dict) -> list[str]:
    """The spaces a fusion model's columns come from, in first-use order."""
    return list(dict.fromkeys(column_space(c) for c in model["columns"]))


def pooled_fused(model: dict, columns: dict[str, np.ndarray], n_pool: int) -> np.ndarray:
    """The fused score of every row: the model's weights on its columns, each standardised on the pooled rows."""
    missing = [c for c in model["columns"] if c not in columns]
    if missing:
        raise FingerprintError(f"pooled profile: no column {missing[0]} (the fusion model needs it)")
    X = np.column_stack([standardise_on_pool(columns[c], n_pool, model["standardise"]) for c in model["columns"]])
    return X @ np.asarray(model["weights"], dtype=np.float64) + float(model["intercept"])
