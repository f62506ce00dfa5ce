"""Learned statistical deformation model (`sharp` family): how one used image's anatomy differs from its neighbours'.

Each used image is registered (non-rigidly) to its `neighbours` nearest used
images in the generator's latent space; the displacement fields, on a coarse
control grid, are the training data of a zero-mean Gaussian over fields
(principal components of the fields, as the statistical deformation models
of Rueckert et al. 2003, IEEE TMI 22(8)). Drawing a field from it and warping
a generated image gives a plausible anatomical variation of that image:
a different body outline, heart size, rib and diaphragm position, of the size
seen between real neighbours.

Registration: `fingerprint.imaging.register` (a free-form deformation on a coarse
control grid with a bending penalty, fitted by Adam; all pairs in one batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fingerprint.imaging.register import register, warp


@dataclass
class DeformationModel:
    """A zero-mean Gaussian over control displacement fields, in principal components."""

    components: np.ndarray  # (k, 2 * g * g) unit principal directions
    stds: np.ndarray  # (k,) standard deviation along each
    grid: int
    fit_residual: float  # mean squared difference after registration / before (how much the fields explain)

    def sample(
        self,
        n: int,
        rng: np.random.Generator,
        scale: float | np.ndarray = 1.0,
        *,
        truncate: float = 2.0,
        components: int = 12,
    ) -> torch.Tensor:
        """n control fields (n, 2, g, g); `scale` (scalar or (n,)) multiplies each field.

        Only the first `components` principal directions are used (global,
        smooth variation: outline, size, pose, heart and diaphragm position;
        the later ones are local wrinkles), and each coefficient is clipped to
        `truncate` standard deviations (the truncation trick of Brock et al.
        2019 / Karras et al. 2019: no extreme, implausible bends).
        """
        k = min(components, len(self.stds))
        coef = np.clip(rng.standard_normal((n, k)), -truncate, truncate) * self.stds[:k]
        flat = (coef @ self.components[:k]) * np.reshape(np.asarray(scale, np.float64), (-1, 1))
        return torch.from_numpy(flat.astype(np.float32)).reshape(n, 2, self.grid, self.grid)


def fit_deformation_model(
    images: torch.Tensor,
    codes: np.ndarray,
    *,
    neighbours: int = 2,
    grid: int = 6,
    steps: int = 120,
    max_components: int = 32,
) -> DeformationModel:
    """Register every image (n, 1, r, r) to its nearest neighbours by code distance; PCA of the fields."""
    c = torch.from_numpy(np.asarray(codes, np.float32))
    d = torch.cdist(c, c)
    d.fill_diagonal_(float("inf"))
    nn_idx = d.topk(neighbours, largest=False).indices  # (n, k)
    mov = images.repeat_interleave(neighbours, 0)
    fix = images[nn_idx.reshape(-1)]
    ctrl = register(mov, fix, grid=grid, steps=steps)
    with torch.no_grad():
        before = (mov - fix).square().mean().item()
        after = (warp(mov, ctrl) - fix).square().mean().item()
    flat = ctrl.reshape(len(ctrl), -1).double().numpy()
    flat = np.concatenate([flat, -flat])  # the inverse direction, roughly: a symmetric, zero-mean model
    _, s, vt = np.linalg.svd(flat, full_matrices=False)
    k = min(max_components, len(s))
    stds = s[:k] / np.sqrt(len(flat) - 1)
    return DeformationModel(vt[:k].astype(np.float64), stds, grid, after / max(before, 1e-12))
