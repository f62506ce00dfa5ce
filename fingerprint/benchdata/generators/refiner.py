"""An adversarially trained x4 refiner: coarse 64 px generator output -> sharp 256 px image.

The "sharp" family's second stage. Its first stage (the coarse VAE of
`fingerprint.benchdata.generators.vae.VAE`) fixes the anatomy at 64 px, where a CPU trains it in
seconds but where a 256 px image's fine structure (vessels, bronchus walls,
rib cortex, scanner noise) cannot be represented; the refiner draws that
structure.

- `Refiner`: an ESPCN-style network (Shi et al. 2016: most convolutions at the
  low resolution) going up in two x2 resize-convolution steps, with noise
  injected at 64, 128 and 256 px (as StyleGAN's per-pixel noise, Karras et al.
  2019) so that it can draw stochastic texture; its output is the bilinear
  upsampling of the coarse image plus a learned residual.
- `PatchDiscriminator`: a PatchGAN (Isola et al. 2017, pix2pix) of four
  strided convolutions with spectral normalisation (Miyato et al. 2018); each
  output logit judges a ~46 px patch, which is what "sharp and locally
  plausible" means.
- `train_refiner`: conditional GAN training on pairs (coarse version of a
  training image -> the training image), on random crops, with an L1 term
  (pix2pix) and the least-squares adversarial loss (Mao et al. 2017, LSGAN).
  The weights that sample are an exponential moving average of the trained
  ones (`ema`, as in GAN practice: Karras et al. 2018, Yazici et al. 2019),
  which steadies a short adversarial run. The coarse inputs are the VAE's own reconstructions of the training images
  from posterior samples (`coarse_fn`), so the refiner learns on exactly the
  kind of input it gets when sampling, and it sees the used images only.

Training runs through an Accelerate `Accelerator` (models and optimisers
prepared; each rank takes its share of every batch), seeded.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


@dataclass
class RefinerConfig:
    """How the refiner and its discriminator are built and trained."""

    width: int = 32  # channels at the coarse resolution (half of it at 2x)
    steps: int = 600
    batch: int = 8
    crop: int = 128  # full-resolution crop side (a multiple of 4)
    lr: float = 2e-4
    l1_weight: float = 1.0
    adv_weight: float = 0.15
    warmup: int = 60  # L1-only steps before the adversarial term starts
    d_width: int = 32
    ema: float = 0.98  # decay of the weight average that samples (0 = the last weights)


class Refiner(nn.Module):
    """Coarse (B, 1, r, r) in [0, 1] -> (B, 1, 4r, 4r): bilinear x4 + a residual drawn by two sub-pixel steps."""

    def __init__(self, width: int = 32):
        super().__init__()
        w, h = width, max(8, width // 2)
        self.head = nn.Sequential(
            nn.Conv2d(2, w, 3, 1, 1),
            nn.SiLU(),
            nn.Conv2d(w, w, 3, 1, 1),
            nn.SiLU(),
            nn.Conv2d(w, w, 3, 1, 1),
            nn.SiLU(),
        )
        # resize-convolution (nearest x2, then 3x3 conv): the same multiply-adds as a sub-pixel conv, without its
        # checkerboard (Odena et al. 2016, "Deconvolution and checkerboard artifacts")
        self.up1 = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w, h, 3, 1, 1), nn.SiLU())
        self.mid = nn.Sequential(nn.Conv2d(h + 1, h, 3, 1, 1), nn.SiLU(), nn.Conv2d(h, h, 3, 1, 1), nn.SiLU())
        self.up2 = nn.Upsample(scale_factor=2, mode="nearest")
        self.out = nn.Conv2d(h + 1, 1, 3, 1, 1)  # + a full-resolution noise channel: pixel-scale scanner noise
        with torch.no_grad():
            self.out.weight.mul_(0.1)

    def forward(self, coarse: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        b, _, r, _ = coarse.shape
        n1 = torch.randn((b, 1, r, r), generator=generator, device="cpu").to(coarse)
        n2 = torch.randn((b, 1, 2 * r, 2 * r), generator=generator, device="cpu").to(coarse)
        n4 = torch.randn((b, 1, 4 * r, 4 * r), generator=generator, device="cpu").to(coarse)
        x = self.head(torch.cat([coarse * 2 - 1, n1], 1))
        x = self.mid(torch.cat([self.up1(x), n2], 1))
        base = F.interpolate(coarse, scale_factor=4, mode="bilinear", align_corners=False)
        return base + self.out(torch.cat([self.up2(x), n4], 1))


class PatchDiscriminator(nn.Module):
    """PatchGAN with spectral norm: (B, 1, s, s) in [0, 1] -> (B, 1, s/8 - 1, s/8 - 1) logits."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            spectral_norm(nn.Conv2d(1, w, 4, 2, 1)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(w, 2 * w, 4, 2, 1)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(2 * w, 4 * w, 4, 2, 1)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(4 * w, 1, 3, 1, 0)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1)


def _lr_at(step: int, total: int, base: float) -> float:
    """Constant, then cosine decay over the last half to 10%."""
    half = total // 2
    if step < half:
        return base
    p = (step - half) / max(1, total - half)
    return base * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * p)))


def train_refiner(
    n: int, size: int, pairs_fn, cfg: RefinerConfig, *, seed: int, accelerator, curve: list, progress: bool = False
) -> Refiner:
    """Train a `Refiner` on pairs from `n` training images of side `size`.

    `pairs_fn(idx, generator)` returns (coarse (k, 1, size/4, size/4), target
    (k, 1, size, size)) in [0, 1] for training images `idx` (e.g. the VAE
    decoding of a posterior sample of each and the image itself, both warped
    by one random field); crops are cut at matching positions. One record per
    20 steps goes to `curve`.
    """
    from tqdm import tqdm

    rank, world = accelerator.process_index, accelerator.num_processes
    torch.manual_seed(seed * 31 + 5)
    # channels_last: the oneDNN / cuDNN fast path for these narrow convolutions (about 1.3x on a CPU)
    g_net = Refiner(cfg.width).to(memory_format=torch.channels_last)
    d_net = PatchDiscriminator(cfg.d_width).to(memory_format=torch.channels_last)
    opt_g = torch.optim.Adam(g_net.parameters(), lr=cfg.lr, betas=(0.5, 0.99))
    opt_d = torch.optim.Adam(d_net.parameters(), lr=cfg.lr, betas=(0.5, 0.99))
    g_net, d_net, opt_g, opt_d = accelerator.prepare(g_net, d_net, opt_g, opt_d)
    gen = torch.Generator().manual_seed(seed * 104729 + 29)
    noise_gen = torch.Generator().manual_seed(seed * 7907 + rank)
    crop, c4 = cfg.crop, cfg.crop // 4
    bs = max(cfg.batch, world)
    sums = torch.zeros(3)
    ema = copy.deepcopy(accelerator.unwrap_model(g_net)).requires_grad_(False)
    for step in tqdm(range(cfg.steps), desc="refiner", unit="step", disable=not progress):
        idx = torch.randint(0, n, (bs,), generator=gen)
        # crops centred on the middle 3/4 of the image, where the patient is (corners are mostly air)
        lo, hi = size // 16, (size - crop) // 4 + 1 - size // 16
        lo, hi = (lo, hi) if hi > lo else (0, (size - crop) // 4 + 1)
        oy = torch.randint(lo, hi, (bs,), generator=gen)
        ox = torch.randint(lo, hi, (bs,), generator=gen)
        mine = list(range(rank, bs, world))
        coarse_all, hr_all = pairs_fn(idx, gen)
        coarse = torch.stack([coarse_all[k, :, oy[k] : oy[k] + c4, ox[k] : ox[k] + c4] for k in mine])
        target = torch.stack([hr_all[k, :, 4 * oy[k] : 4 * oy[k] + crop, 4 * ox[k] : 4 * ox[k] + crop] for k in mine])
        coarse, target = (t.to(accelerator.device, memory_format=torch.channels_last) for t in (coarse, target))
        for o in (opt_g, opt_d):
            for grp in o.param_groups:
                grp["lr"] = _lr_at(step, cfg.steps, cfg.lr)
        fake = g_net(coarse, noise_gen)
        adv_on = step >= cfg.warmup and cfg.adv_weight > 0
        if adv_on:  # discriminator step (least squares: real -> 1, fake -> 0)
            d_loss = (d_net(target) - 1).square().mean() + d_net(fake.detach()).square().mean()
            opt_d.zero_grad(set_to_none=True)
            accelerator.backward(d_loss)
            opt_d.step()
        l1 = F.l1_loss(fake, target)
        g_adv = (d_net(fake) - 1).square().mean() if adv_on else torch.zeros((), device=fake.device)
        loss = cfg.l1_weight * l1 + cfg.adv_weight * g_adv
        opt_g.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        opt_g.step()
        with torch.no_grad():
            decay = cfg.ema if step >= cfg.warmup else 0.0
            for pe, pt in zip(ema.parameters(), accelerator.unwrap_model(g_net).parameters()):
                pe.lerp_(pt.detach(), 1.0 - decay)
        sums += torch.stack(
            [l1.detach().cpu(), g_adv.detach().cpu(), d_loss.detach().cpu() if adv_on else torch.zeros(())]
        )
        if (step + 1) % 20 == 0 or step + 1 == cfg.steps:
            k = (step % 20) + 1
            curve.append(
                {
                    "step": step + 1,
                    "l1": round(float(sums[0]) / k, 6),
                    "g_adv": round(float(sums[1]) / k, 5),
                    "d": round(float(sums[2]) / k, 5),
                }
            )
            sums.zero_()
    return ema if cfg.ema > 0 else accelerator.unwrap_model(g_net)


@torch.no_grad()
def refine(refiner: Refiner, coarse: torch.Tensor, *, seed: int, batch: int = 64) -> torch.Tensor:
    """Refine coarse images (n, 1, r, r) -> (n, 1, 4r, 4r) in [0, 1]; the noise is seeded by `seed` and the order."""
    refiner.eval().to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(seed)
    dev = next(refiner.parameters()).device
    out = [
        refiner(coarse[i : i + batch].to(dev, memory_format=torch.channels_last), gen).clamp_(0, 1).cpu()
        for i in range(0, len(coarse), batch)
    ]
    return torch.cat(out)
