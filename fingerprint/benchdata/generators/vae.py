"""The `vae` generator family: a fully connected VAE with a latent mixture and a learned upsampling head.

The generator is trained on the "used" images only, and synthetic images come
from sampling it; nothing at sampling time reads a real image, so whatever
links a synthetic image to a used one is what the model learned.

Three learned parts:

1. `VAE` at a low internal resolution (`resolution`, e.g. 64): a fully
   connected encoder to a `latent_dim` Gaussian posterior and a fully
   connected decoder (two hidden layers of `hidden` units each), trained with
   reconstruction MSE + `kl_weight` x KL on the training images downsampled
   by area averaging.
2. A latent density fitted after training (ex-post density estimation, as in
   Ghosh et al. 2020, "From variational to deterministic autoencoders"): a
   diagonal Gaussian mixture with `components` components over the encoder
   means of the training images. Sampling draws a component, then
   `mean + temperature * std * noise`. Many components and a low temperature
   keep samples close to the training codes (a generator that memorises);
   few components and a high temperature spread them out.
3. `Upsampler`: an ESPCN-style head (convolutions at low resolution, then
   pixel shuffle) that adds a learned residual to the bilinear upsampling,
   trained on random patches of the training images to map their
   area-downsampled version back to full resolution. It lets a generator
   trained cheaply at 64x64 emit full-size (e.g. 256x256) images.

Memorisation control (`memorised_share`, default 0 = off): each sample is,
with that probability, drawn from a narrow kernel N(mu_i, (closeness *
sigma_i)^2) at the posterior of a used image i picked with Zipf weights over a
seeded ranking (`zipf_weights`): a generator that reproduces a few training
images often and most rarely (Feldman 2020; Carlini et al. 2023). With a
single novel component at a low temperature (`components 1`,
`temperature 0.5`) the memorised share alone sets the leakage
(docs/benchmark-data.md).

Training uses Accelerate (`prepare` on model and optimiser; batches are held
in memory and split by rank), so the same code runs on the CPU, one GPU, or
several processes. It is seeded and runs with deterministic algorithms where
torch has them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.mixture import GaussianMixture
from torch import nn
from tqdm import tqdm

from fingerprint.benchdata.generators import family_accelerator, register_family
from fingerprint.core.config import check_fields, fail, option
from fingerprint.core.errors import FingerprintError
from fingerprint.core.logs import is_main_process
from fingerprint.core.vocab import MIXED_PRECISION

log = logging.getLogger(__name__)


@dataclass
class GeneratorConfig:
    """How the vae generator is built, trained and sampled (docs/benchmark-data.md has the levels).

    Its fields are `fingerprint synth` options, so errors name them as `synth.<field>`.
    """

    SECTION = "synth"

    resolution: int = option(64, min=4, help="generator's internal resolution (divides the image size)")
    latent_dim: int = option(32, min=1, help="VAE latent dimension")
    hidden: int = option(512, min=1, help="VAE hidden units per layer (encoder and decoder)")
    epochs: int = option(90, min=0, help="VAE training epochs")
    batch_size: int = option(32, min=1, help="VAE batch size")
    lr: float = option(2e-3, help="VAE learning rate")
    kl_weight: float = option(0.002, help="weight of the KL term")
    components: int = option(12, min=1, help="latent Gaussian-mixture components (capped at the training images)")
    temperature: float = option(1.0, min=0, help="scale of the latent noise when sampling")
    memorised_share: float = option(0.0, min=0, help="share of samples drawn at a used image's code, in [0, 1]")
    zipf: float = option(1.0, min=0, help="Zipf exponent of which used images memorised samples copy")
    closeness: float = option(0.5, min=0, help="memorised kernel width, in posterior standard deviations")
    upsampler_steps: int = option(200, min=0, help="training steps of the learned upsampler")
    upsampler_width: int = option(16, min=1, help="channels of the upsampler's convolutions")
    upsampler_batch: int = option(16, min=1, help="patches per upsampler step")
    upsampler_patch: int = option(64, min=1, help="full-resolution patch side for training the upsampler")
    mixed_precision: str = option("no", choices=MIXED_PRECISION, help="training precision (bf16/fp16 are for GPUs)")
    cpu: bool = option(False, help="train on the CPU even when a GPU is present")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.memorised_share > 1:
            raise fail(self, "memorised_share", f"must be in [0, 1], got {self.memorised_share}")


def zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Weights proportional to rank^(-exponent) over a random ranking of n items (exponent 0 = uniform)."""
    w = (rng.permutation(n) + 1).astype(np.float64) ** (-exponent)
    return w / w.sum()


@dataclass
class LatentMemory:
    """The memorised part of the latent density: used images' posterior means and sds, Zipf weights."""

    codes: np.ndarray  # (n, d)
    stds: np.ndarray  # (n, d)
    weights: np.ndarray  # (n,)

    def sample(self, n: int, rng: np.random.Generator, closeness: float) -> np.ndarray:
        src = rng.choice(len(self.codes), size=n, p=self.weights)
        return (self.codes[src] + closeness * self.stds[src] * rng.standard_normal((n, self.codes.shape[1]))).astype(
            np.float32
        )


class VAE(nn.Module):
    """Fully connected VAE (as in Kingma & Welling 2014) on (B, 1, r, r) images in [0, 1]; r = cfg.resolution.

    Dense layers keep a training step cheap on CPUs (a 64x64 step is a few
    matrix products) while giving the decoder the capacity to fit, or
    memorise, a few hundred images.
    """

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        d, h, r = cfg.resolution**2, cfg.hidden, cfg.resolution
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(d, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU())
        self.to_stats = nn.Linear(h, 2 * cfg.latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(cfg.latent_dim, h),
            nn.SiLU(),
            nn.Linear(h, h),
            nn.SiLU(),
            nn.Linear(h, d),
            nn.Unflatten(1, (1, r, r)),
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.to_stats(self.encoder(x)).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 6.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar


class Upsampler(nn.Module):
    """Learned x`factor` upsampling: bilinear upsampling plus a residual predicted at low resolution."""

    def __init__(self, factor: int, width: int):
        super().__init__()
        self.factor = factor
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 5, 1, 2),
            nn.SiLU(),
            nn.Conv2d(width, width, 3, 1, 1),
            nn.SiLU(),
            nn.Conv2d(width, factor * factor, 3, 1, 1),
            nn.PixelShuffle(factor),
        )

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        base = (
            lr
            if self.factor == 1
            else F.interpolate(lr, scale_factor=self.factor, mode="bilinear", align_corners=False)
        )
        return base + self.net(lr)


@dataclass
class LatentMixture:
    """A diagonal Gaussian mixture over latent codes."""

    weights: np.ndarray  # (k,)
    means: np.ndarray  # (k, d)
    stds: np.ndarray  # (k, d)

    def sample(self, n: int, rng: np.random.Generator, temperature: float) -> np.ndarray:
        comp = rng.choice(len(self.weights), size=n, p=self.weights)
        noise = rng.standard_normal((n, self.means.shape[1]))
        return (self.means[comp] + temperature * self.stds[comp] * noise).astype(np.float32)


def fit_latent_mixture(codes: np.ndarray, components: int, *, seed: int = 0) -> LatentMixture:
    """Fit the ex-post latent density: a diagonal GMM with min(components, n) components."""
    codes = np.asarray(codes, np.float64)
    k = max(1, min(components, len(codes)))
    reg = 1e-6 + 1e-3 * float(codes.var(axis=0).mean())
    gmm = GaussianMixture(
        k,
        covariance_type="diag",
        reg_covar=reg,
        random_state=seed % (2**32),
        max_iter=200,
        n_init=1,
        init_params="k-means++",
    )
    gmm.fit(codes)
    w = gmm.weights_ / gmm.weights_.sum()
    return LatentMixture(
        weights=w, means=gmm.means_.astype(np.float32), stds=np.sqrt(gmm.covariances_).astype(np.float32)
    )


class Generator:
    """The trained generator: latent mixture -> VAE decoder -> upsampler -> uint8 images."""

    def __init__(
        self,
        cfg: GeneratorConfig,
        vae: VAE,
        upsampler: Upsampler,
        mixture: LatentMixture,
        out_size: int,
        device: torch.device | str = "cpu",
        memory: LatentMemory | None = None,
    ):
        self.cfg = cfg
        self.vae = vae.eval()
        self.upsampler = upsampler.eval()
        self.mixture = mixture
        self.out_size = out_size
        self.device = torch.device(device)
        self.memory = memory

    def sample_latents(self, n: int, rng: np.random.Generator, temperature: float | None = None) -> np.ndarray:
        z = self.mixture.sample(n, rng, self.cfg.temperature if temperature is None else temperature)
        if self.memory is None or self.cfg.memorised_share <= 0:
            return z
        memorised = rng.random(n) < self.cfg.memorised_share
        return np.where(memorised[:, None], self.memory.sample(n, rng, self.cfg.closeness), z)

    @torch.no_grad()
    def decode(self, z: np.ndarray, batch_size: int = 128) -> np.ndarray:
        """Latent codes (n, d) -> uint8 images (n, out_size, out_size)."""
        out = np.empty((len(z), self.out_size, self.out_size), np.uint8)
        for i in range(0, len(z), batch_size):
            zb = torch.from_numpy(np.ascontiguousarray(z[i : i + batch_size])).to(self.device)
            img = self.upsampler(self.vae.decode(zb)).clamp_(0.0, 1.0)
            out[i : i + len(zb)] = (img[:, 0] * 255.0).round_().to(torch.uint8).cpu().numpy()
        return out

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` synthetic uint8 images from the generator's latent density, drawing from `rng`."""
        return self.decode(self.sample_latents(n, rng))

    def sample(self, n: int, *, seed: int = 0, temperature: float | None = None) -> np.ndarray:
        """`n` synthetic uint8 images, reproducible from `seed`."""
        return self.decode(self.sample_latents(n, np.random.default_rng([seed & 0xFFFFFFFF, 0x5A3]), temperature))


@contextlib.contextmanager
def deterministic():
    """Deterministic torch algorithms (warn where none exists) for the duration of the block."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS on GPUs
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_bench = torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)
        torch.backends.cudnn.benchmark = prev_bench


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).unsqueeze(1)


def _lr_at(step: int, total: int, base: float) -> float:
    """Short linear warm-up, then cosine decay to 5% of the base rate."""
    warm = max(1, total // 20)
    if step < warm:
        return base * (step + 1) / warm
    p = (step - warm) / max(1, total - warm)
    return base * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * p)))


def summarize(history: dict) -> dict:
    """What synth.json records about a vae generator: its curves, mixture size, timings, where it trained."""
    return {
        "model": "fully connected VAE + latent Gaussian mixture + learned upsampler",
        "curve": history["vae"],
        "upsampler_curve": history["upsampler"],
        "mixture_components": history["mixture_components"],
        "seconds": {k: history[k] for k in ("vae_seconds", "mixture_seconds", "upsampler_seconds")},
        "world_size": history["world_size"],
        "device": history["device"],
    }


@register_family(
    "vae", GeneratorConfig, help="fully connected VAE + latent mixture + learned upsampler", summarize=summarize
)
def train_generator(
    images: np.ndarray,
    cfg: GeneratorConfig,
    *,
    seed: int = 0,
    accelerator=None,
    progress: bool = True,
) -> tuple[Generator, dict]:
    """Train the VAE, latent mixture and upsampler on uint8 images (n, s, s); return the generator and history.

    The history holds the training curves: one record per epoch for the VAE
    (`loss`, `recon`, `kl`) and one per 10 upsampler steps (`l1`), plus timings.
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1] != images.shape[2] or images.dtype != np.uint8:
        raise FingerprintError(f"generator training needs uint8 (n, s, s) images, got {images.dtype} {images.shape}")
    n, size = images.shape[0], images.shape[1]
    if size < cfg.resolution or size % cfg.resolution:
        raise FingerprintError(f"image size {size} must be a multiple of the generator resolution {cfg.resolution}")
    if n < 2:
        raise FingerprintError(f"generator training needs at least 2 images, got {n}")
    accelerator = accelerator or family_accelerator(cfg)
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process and is_main_process()
    factor = size // cfg.resolution
    history: dict = {"vae": [], "upsampler": [], "world_size": world, "device": str(accelerator.device)}
    hr = _to_tensor(images)
    lr_images = F.interpolate(hr, size=(cfg.resolution, cfg.resolution), mode="area") if factor > 1 else hr
    with deterministic():
        torch.manual_seed(seed)
        vae = VAE(cfg)
        ups = Upsampler(factor, cfg.upsampler_width)
        t0 = time.perf_counter()
        vae = _train_vae(vae, lr_images, cfg, seed, accelerator, rank, world, history["vae"], progress and main)
        history["vae_seconds"] = round(time.perf_counter() - t0, 3)

        t0 = time.perf_counter()
        vae.eval()
        with torch.no_grad():
            stats = [vae.encode(lr_images[i : i + 256].to(accelerator.device)) for i in range(0, n, 256)]
        codes = torch.cat([m.float().cpu() for m, _ in stats]).numpy()
        stds = torch.cat([(0.5 * v.float()).exp().cpu() for _, v in stats]).numpy()
        mixture = fit_latent_mixture(codes, cfg.components, seed=seed)
        memory = LatentMemory(codes, stds, zipf_weights(n, cfg.zipf, np.random.default_rng([seed & 0xFFFFFFFF, 0x21F])))
        history["mixture_seconds"] = round(time.perf_counter() - t0, 3)
        history["mixture_components"] = len(mixture.weights)

        t0 = time.perf_counter()
        ups = _train_upsampler(
            ups, hr, factor, cfg, seed, accelerator, rank, world, history["upsampler"], progress and main
        )
        history["upsampler_seconds"] = round(time.perf_counter() - t0, 3)
    gen = Generator(cfg, vae.float(), ups.float(), mixture, size, device=accelerator.device, memory=memory)
    return gen, history


def _train_vae(vae, x_all, cfg, seed, accelerator, rank, world, curve, progress) -> VAE:
    n = len(x_all)
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.lr)
    model, opt = accelerator.prepare(vae, opt)
    model.train()
    bs = max(cfg.batch_size, world)
    steps_per_epoch = sum(1 for i in range(0, n, bs) if n - i >= world)
    total = cfg.epochs * steps_per_epoch
    pixels = x_all.shape[-1] * x_all.shape[-2]
    torch.manual_seed(seed * 1000 + rank + 1)  # reparameterisation noise differs by rank, fixed by seed
    step = 0
    bar = tqdm(range(cfg.epochs), desc="generator", unit="epoch", disable=not progress)
    for epoch in bar:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        sums = torch.zeros(3, device=accelerator.device)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            if len(idx) < world:
                continue
            x = x_all[idx[rank::world]].to(accelerator.device)
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total, cfg.lr)
            recon, mu, logvar = model(x)
            rec = F.mse_loss(recon.float(), x)
            kl = (-0.5 * (1 + logvar.float() - mu.float() ** 2 - logvar.float().exp())).sum(1).mean() / pixels
            loss = rec + cfg.kl_weight * kl
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            opt.step()
            sums += torch.stack([loss.detach(), rec.detach(), kl.detach()]) * len(x)
            step += 1
        sums = accelerator.reduce(sums, reduction="sum")
        n_seen = sum(len(perm[i : i + bs]) for i in range(0, n, bs) if n - i >= world)
        loss, rec, kl = (sums / n_seen).tolist()
        curve.append({"epoch": epoch + 1, "loss": round(loss, 7), "recon": round(rec, 7), "kl": round(kl, 7)})
        bar.set_postfix(loss=f"{loss:.5f}")
    return accelerator.unwrap_model(model)


def _train_upsampler(ups, hr, factor, cfg, seed, accelerator, rank, world, curve, progress) -> Upsampler:
    n, size = hr.shape[0], hr.shape[-1]
    patch = min(size, max(factor, cfg.upsampler_patch // factor * factor))
    opt = torch.optim.Adam(ups.parameters(), lr=1e-3)
    model, opt = accelerator.prepare(ups, opt)
    model.train()
    gen = torch.Generator().manual_seed(seed * 104729 + 17)
    bs = max(cfg.upsampler_batch, world)
    run = 0.0
    bar = tqdm(range(cfg.upsampler_steps), desc="upsampler", unit="step", disable=not progress)
    for step in bar:
        # the same draw on every rank; each rank trains on its share of the patches
        img = torch.randint(0, n, (bs,), generator=gen)
        oy = torch.randint(0, (size - patch) // factor + 1, (bs,), generator=gen) * factor
        ox = torch.randint(0, (size - patch) // factor + 1, (bs,), generator=gen) * factor
        mine = range(rank, bs, world)
        target = torch.stack([hr[img[k], :, oy[k] : oy[k] + patch, ox[k] : ox[k] + patch] for k in mine])
        target = target.to(accelerator.device)
        low = F.avg_pool2d(target, factor) if factor > 1 else target
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg.upsampler_steps, 1e-3)
        loss = F.l1_loss(model(low).float(), target)
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        opt.step()
        run += float(accelerator.reduce(loss.detach(), reduction="mean"))
        if (step + 1) % 10 == 0 or step + 1 == cfg.upsampler_steps:
            k = (step % 10) + 1
            curve.append({"step": step + 1, "l1": round(run / k, 7)})
            bar.set_postfix(l1=f"{run / k:.5f}")
            run = 0.0
    return accelerator.unwrap_model(model)
