"""Free-form (B-spline-like) image registration in plain torch: smooth control-grid displacements fitted by Adam.

A displacement on a `grid` x `grid` control lattice, interpolated bicubically
to the image (a free-form deformation, Rueckert et al. 1999, IEEE TMI 18(8)),
is fitted by Adam to the mean squared difference of lightly blurred images,
plus penalties on the displacement and on its differences between
neighbouring control points (a discrete bending term that keeps fields smooth
and folding-free); many pairs in one batch. Displacements are in the
normalised [-1, 1] coordinates of `grid_sample`, so one field applies at any
image size.

Two users: the `sharp` benchmark generator learns its deformation model from
registered used images (`fingerprint.benchdata.generators.deform`), and the
profile's `ff32` space measures how close a real image comes to a generated
one once smooth bends are undone (`fingerprint.membership.align.registered_profile`).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=16)
def _bicubic_matrix(grid: int, size: int) -> torch.Tensor:
    """(size, grid): the 1-D weights of torch's bicubic upsampling (align_corners=True) of a grid-point signal."""
    eye = torch.eye(grid, dtype=torch.float64)[:, None, :, None].expand(grid, 1, grid, 1)
    cols = F.interpolate(eye, size=(size, 1), mode="bicubic", align_corners=True)  # (grid, 1, size, 1)
    return cols[:, 0, :, 0].T.float().contiguous()


def dense_field(ctrl: torch.Tensor, size: int, separable: bool = False) -> torch.Tensor:
    """Control displacements (B, 2, g, g) -> dense (B, size, size, 2) by bicubic interpolation.

    `separable`: the same bicubic weights applied as two small matrix products (W ctrl W^T), several times
    faster than `F.interpolate` and its backward on a CPU; equal up to float rounding (the benchmark generator
    keeps the interpolate form so that its builds stay byte-identical).
    """
    if not separable:
        return F.interpolate(ctrl, size=(size, size), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    w = _bicubic_matrix(ctrl.shape[-1], size).to(ctrl)
    return torch.einsum("yi,bcij,xj->byxc", w, ctrl, w)


def warp(images: torch.Tensor, ctrl: torch.Tensor, mode: str = "bilinear", separable: bool = False) -> torch.Tensor:
    """Warp (B, 1, s, s) images by control displacements (B, 2, g, g); outside the image reads black (0)."""
    b, _, s, _ = images.shape
    lin = torch.linspace(-1.0, 1.0, s, device=images.device)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    ident = torch.stack([xx, yy], dim=-1).expand(b, s, s, 2)
    field = dense_field(ctrl, s, separable)
    return F.grid_sample(images, ident + field, mode=mode, padding_mode="zeros", align_corners=True)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, s, s) images (replicated borders); sigma <= 0 returns x."""
    r = int(3 * sigma)
    if r < 1:
        return x
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
    per_pair: bool = False,
    separable: bool = False,
) -> torch.Tensor:
    """Control displacements (P, 2, grid, grid) that warp each moving image (P, 1, r, r) onto its fixed image.

    `per_pair`: every pair's loss is its own mean (summed over pairs), so a pair's field does not depend on
    which other pairs share the batch (chunking and pool size leave it unchanged); otherwise one mean over
    the batch (the deformation model's historical objective). `separable`: see `dense_field`.
    """
    m, f = blur(moving, sigma), blur(fixed, sigma)
    ctrl = torch.zeros(len(moving), 2, grid, grid, device=moving.device, requires_grad=True)
    opt = torch.optim.Adam([ctrl], lr=lr)
    n = len(moving) if per_pair else 1
    for _ in range(steps):
        bend = (ctrl[..., 1:, :] - ctrl[..., :-1, :]).square().mean() + (ctrl[..., 1:] - ctrl[..., :-1]).square().mean()
        loss = (warp(m, ctrl, separable=separable) - f).square().mean() + penalty * ctrl.square().mean() + smooth * bend
        opt.zero_grad(set_to_none=True)
        (loss * n).backward()
        opt.step()
    return ctrl.detach()


def registered_rms(
    moving: torch.Tensor, fixed: torch.Tensor, *, sigma: float = 1.0, chunk: int = 4096, **kw
) -> torch.Tensor:
    """Root mean squared difference (P,) of each blurred fixed image and its blurred moving image after
    registration (`register` with `per_pair` and the separable field, in chunks of `chunk` pairs: the result
    does not depend on the chunking). Each image is blurred once; `kw` go to `register`."""
    out = []
    for i in range(0, len(moving), chunk):
        m, f = blur(moving[i : i + chunk], sigma), blur(fixed[i : i + chunk], sigma)
        ctrl = register(m, f, sigma=0.0, per_pair=True, separable=True, **kw)  # already blurred
        with torch.no_grad():
            out.append((warp(m, ctrl, separable=True) - f).square().flatten(1).mean(1).sqrt())
    return torch.cat(out) if out else torch.zeros(0)
