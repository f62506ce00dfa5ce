"""Learned statistical deformation model (`sharp` family): how one used image's anatomy differs from its neighbours'.

Each used image is registered (non-rigidly) to its `neighbours` nearest used
images in the generator's latent space; the displacement fields, on a coarse
control grid, are the training data of a zero-mean Gaussian over fields
(principal components of the fields, as the statistical deformation models
of Rueckert et al. 2003, IEEE TMI 22(8)). Drawing a field from it and warping
a generated image gives a plausible anatomical variation of that image:
a different body outline, heart size, rib and diaphragm position, of the size
seen between real neighbours.

Registration: a displacement on a `grid` x `grid` control lattice,
interpolated bicubically to the image (a free-form deformation, Rueckert et
al. 1999), fitted by Adam on the mean squared difference of lightly blurred
images plus penalties on the displacement and on its differences between
neighbouring control points (a discrete bending term that keeps fields
smooth and folding-free); all pairs in one batch.
Displacements are in the normalised [-1, 1] coordinates of `grid_sample`, so
one field applies at any image size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def dense_field(ctrl: torch.Tensor, size: int) -> torch.Tensor:
    """Control displacements (B, 2, g, g) -> dense (B, size, size, 2) by bicubic interpolation."""
    return F.interpolate(ctrl, size=(size, size), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)


def warp(images: torch.Tensor, ctrl: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Warp (B, 1, s, s) images by control displacements (B, 2, g, g); outside the image reads black (0)."""
    b, _, s, _ = images.shape
    lin = torch.linspace(-1.0, 1.0, s, device=images.device)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    ident = torch.stack([xx, yy], dim=-1).expand(b, s, s, 2)
    return F.grid_sample(images, ident + dense_field(ctrl, s), mode=mode, padding_mode="zeros", align_corners=True)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = int(3 * sigma)
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=x.dtype) ** 2) / (2 * sigma**2))
    k = (k / k.sum()).to(x.device)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.reshape(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.reshape(1, 1, -1, 1))


def register(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    *,
    grid: int = 6,
    steps: int = 120,
    lr: float = 0.02,
    penalty: float = 0.02,
    smooth: float = 0.2,
    sigma: float = 1.0,
) -> torch.Tensor:
    """Control displacements (P, 2, grid, grid) that warp each moving image (P, 1, r, r) onto its fixed image."""
    m, f = _blur(moving, sigma), _blur(fixed, sigma)
    ctrl = torch.zeros(len(moving), 2, grid, grid, requires_grad=True)
    opt = torch.optim.Adam([ctrl], lr=lr)
    for _ in range(steps):
        bend = (ctrl[..., 1:, :] - ctrl[..., :-1, :]).square().mean() + (ctrl[..., 1:] - ctrl[..., :-1]).square().mean()
        loss = (warp(m, ctrl) - f).square().mean() + penalty * ctrl.square().mean() + smooth * bend
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return ctrl.detach()


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
