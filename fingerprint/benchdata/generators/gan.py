"""The `gan` generator family: a DCGAN trained adversarially, end to end, on the used images.

- `GanGenerator`: DCGAN-style (Radford et al. 2016): a latent vector -> 4x4
  map -> transposed-convolution x2 steps to `resolution` px (64 by default;
  128 or 256 on a GPU), pixel-wise feature normalisation after each step
  (Karras et al. 2018) instead of batch norm, so a sample does not depend on
  the batch it is drawn in.
- `GanDiscriminator`: strided convolutions with spectral normalisation
  (Miyato et al. 2018), mirroring the generator.
- Training: the non-saturating logistic loss (Goodfellow et al. 2014) with
  DiffAugment (Zhao et al. 2020: translation, cutout, brightness and contrast
  applied to real and generated images alike, in both the discriminator and
  the generator step), each applied to an image with probability `augment`;
  the weights that sample are an exponential moving average of the trained
  ones. It runs through an Accelerate `Accelerator` (mixed precision on a
  GPU; each rank takes its share of every batch), channels_last, seeded.
- Above `resolution`, the vae family's learned upsampler (L1-trained on
  patches of the used images) brings samples to the image size.

Memorisation: a GAN trained on few images replicates some of them (Feng et
al. 2021, "When do GANs replicate?"), which a short CPU run does not reach on
its own. Each used image therefore owns a latent point, learned jointly with
the generator, whose image is pulled toward it by an L1 term of weight
`recon_weight` (latent optimisation as in GLO, Bojanowski et al. 2018, added
to the adversarial loss); the points are kept on the sphere where Gaussian
latents live. After training they are refined through the averaged generator
(latent recovery, Webster et al. 2019). A sample is "memorised" with
probability `memorised_share`: its latent is the point of a used image drawn
with Zipf weights (real generators memorise unevenly), plus `closeness` x
Gaussian noise; otherwise it is a fresh Gaussian latent. Either way the image
is the generator's output, never a training image. Per build,
`memorised_share` is calibrated to the level's pixel-NN AUC target
(`calibrate` module) at the generator's resolution; training length,
augmentation and the reconstruction weight are the level presets (`LEVELS`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm
from tqdm import tqdm

from fingerprint.benchdata.generators import family_accelerator, register_family
from fingerprint.benchdata.generators.calibrate import TARGETS, auc_at, choose_alpha, distance_matrix
from fingerprint.benchdata.generators.vae import Upsampler, _train_upsampler, deterministic, zipf_weights
from fingerprint.core.config import check_fields, fail, option
from fingerprint.core.errors import FingerprintError
from fingerprint.core.logs import is_main_process
from fingerprint.core.vocab import MIXED_PRECISION


@dataclass
class GanConfig:
    """How the GAN is built, trained and sampled; fields are `fingerprint synth` options."""

    SECTION = "synth"

    resolution: int = option(64, min=16, help="GAN side in pixels, a power of two dividing the image size")
    latent_dim: int = option(64, min=1, help="GAN latent dimension")
    width: int = option(16, min=1, help="channels of the GAN's full-resolution layer (doubling per step down, to 8x)")
    gan_steps: int = option(600, min=1, help="adversarial training steps (level preset)")
    batch_size: int = option(16, min=1, help="GAN batch size")
    lr: float = option(1e-3, help="GAN learning rate (generator and discriminator; high for short CPU runs)")
    augment: float = option(0.3, min=0, help="DiffAugment: probability of each augmentation per image (level preset)")
    ema: float = option(0.98, min=0, help="decay of the generator weight average that samples (0 = last weights)")
    memorised_share: float = option(0.05, min=0, help="share of samples drawn at a used image's recovered latent")
    zipf: float = option(1.0, min=0, help="Zipf exponent of which used images memorised samples copy")
    closeness: float = option(0.15, min=0, help="latent noise around a recovered latent, in latent units")
    recon_weight: float = option(3.0, min=0, help="weight of the L1 pull of each used image's latent point to it")
    invert_steps: int = option(40, min=0, help="steps refining the used images' latent points after training")
    calibrate: bool = option(True, help="set memorised_share per build to the level's pixel-NN AUC target")
    max_memorised_share: float = option(0.5, min=0, help="calibration: largest memorised share searched")
    upsampler_steps: int = option(150, min=0, help="training steps of the learned upsampler (above resolution)")
    upsampler_width: int = option(16, min=1, help="channels of the upsampler's convolutions")
    upsampler_batch: int = option(16, min=1, help="patches per upsampler step")
    upsampler_patch: int = option(64, min=1, help="full-resolution patch side for training the upsampler")
    mixed_precision: str = option("no", choices=MIXED_PRECISION, help="training precision (bf16/fp16 are for GPUs)")
    cpu: bool = option(False, help="train on the CPU even when a GPU is present")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.resolution & (self.resolution - 1):
            raise fail(self, "resolution", f"must be a power of two for the gan family, got {self.resolution}")
        for name in ("memorised_share", "augment", "max_memorised_share"):
            if getattr(self, name) > 1:
                raise fail(self, name, f"must be in [0, 1], got {getattr(self, name)}")
        if self.ema >= 1:
            raise fail(self, "ema", f"must be in [0, 1), got {self.ema}")


#: Level presets of the gan family (override `GanConfig`; replace the vae presets of synth.LEVELS). Less
#: augmentation and a wider, longer-trained network memorise more; `memorised_share` is a starting value that a
#: build at a level with a target (`calibrate.TARGETS`) calibrates unless `calibrate` is off.
LEVELS = {
    "tiny": {"resolution": 32, "latent_dim": 32, "width": 8, "gan_steps": 200, "batch_size": 8, "invert_steps": 20,
             "upsampler_steps": 20, "upsampler_width": 8, "upsampler_patch": 32, "memorised_share": 0.3,
             "recon_weight": 5.0},
    "easy": {"augment": 0.0, "recon_weight": 5.0, "memorised_share": 0.3},
    "medium": {"augment": 0.3, "recon_weight": 3.0, "memorised_share": 0.1},
    "hard": {"augment": 0.6, "recon_weight": 1.0, "memorised_share": 0.02},
}  # fmt: skip


def _channels(resolution: int, width: int) -> list[int]:
    """Channels per stage from 4x4 up to `resolution`: width at the top, doubling per step down, at most 8 x width."""
    steps = int(math.log2(resolution)) - 2
    return [width * min(2 ** (steps - i), 8) for i in range(steps + 1)]


class PixelNorm(nn.Module):
    """Each pixel's feature vector scaled to unit mean square (Karras et al. 2018)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class GanGenerator(nn.Module):
    """Latent (B, d) -> image (B, 1, r, r) in [-1, 1]."""

    def __init__(self, latent_dim: int, resolution: int, width: int):
        super().__init__()
        ch = _channels(resolution, width)
        self.fc = nn.Linear(latent_dim, ch[0] * 16)
        layers: list[nn.Module] = [PixelNorm(), nn.LeakyReLU(0.2)]
        for a, b in zip(ch[:-1], ch[1:]):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1), PixelNorm(), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(ch[-1], 1, 3, 1, 1)
        self.c0 = ch[0]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(len(z), self.c0, 4, 4).contiguous(memory_format=torch.channels_last)
        return torch.tanh(self.out(self.body(x)))


class GanDiscriminator(nn.Module):
    """Image (B, 1, r, r) in [-1, 1] -> one logit per image."""

    def __init__(self, resolution: int, width: int):
        super().__init__()
        ch = _channels(resolution, width)[::-1]
        layers: list[nn.Module] = [spectral_norm(nn.Conv2d(1, ch[0], 3, 1, 1)), nn.LeakyReLU(0.2)]
        for a, b in zip(ch[:-1], ch[1:]):
            layers += [spectral_norm(nn.Conv2d(a, b, 4, 2, 1)), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)
        self.head = spectral_norm(nn.Linear(ch[-1] * 16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1)).squeeze(1)


def diff_augment(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """DiffAugment on (B, 1, r, r) in [-1, 1]: brightness, contrast, translation (up to r/8, zero padding) and
    cutout (an r/2 square), each applied to an image with probability p; differentiable, seeded by `gen`."""
    if p <= 0:
        return x
    b, _, r, _ = x.shape

    def draw(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=gen).to(x.device)

    on = [(draw(b) < p).to(x.dtype).view(b, 1, 1, 1) for _ in range(4)]
    x = x + on[0] * (draw(b, 1, 1, 1).to(x.dtype) - 0.5)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + (x - mean) * (1 + on[1] * (draw(b, 1, 1, 1).to(x.dtype) - 0.5))
    s = max(1, r // 8)
    shift = ((draw(b, 2) * (2 * s + 1)).long() - s) * on[2].view(b, 1).long()
    ar = torch.arange(r, device=x.device)
    rows = (ar.view(1, r) - shift[:, :1]).clamp(-1, r)  # -1 and r index the zero padding
    cols = (ar.view(1, r) - shift[:, 1:]).clamp(-1, r)
    pad = F.pad(x, (1, 1, 1, 1))
    x = pad[torch.arange(b, device=x.device).view(b, 1, 1), 0, rows.view(b, r, 1) + 1, cols.view(b, 1, r) + 1]
    x = x.unsqueeze(1)
    half = r // 2
    cy, cx = (draw(b, 1) * r).long(), (draw(b, 1) * r).long()
    inside_y = ((ar.view(1, r) - cy).abs() < half // 2 + 1).view(b, 1, r, 1)
    inside_x = ((ar.view(1, r) - cx).abs() < half // 2 + 1).view(b, 1, 1, r)
    cut = (inside_y & inside_x).to(x.dtype) * on[3]
    return (x * (1 - cut)).contiguous(memory_format=torch.channels_last)


def _lr_at(step: int, total: int, base: float) -> float:
    """Constant, then linear decay over the last quarter to 20%."""
    start = total * 3 // 4
    return base if step < start else base * (1.0 - 0.8 * (step - start) / max(1, total - start))


def _on_sphere(z: torch.Tensor) -> torch.Tensor:
    """Rows scaled to norm sqrt(d), where d-dimensional Gaussian latents concentrate."""
    return z * (z.shape[1] ** 0.5 / z.norm(dim=1, keepdim=True).clamp_min(1e-6))


def train_adversarial(x_all: torch.Tensor, cfg: GanConfig, *, seed: int, accelerator, curve: list, progress: bool):
    """Train `GanGenerator` against `GanDiscriminator` on images (n, 1, r, r) in [-1, 1], with each image's
    latent point pulled to it; return the averaged generator and the latent points (n, d). One record per
    `log_every` steps goes to `curve`: mean D loss, G's adversarial and L1 terms, D's mean sigmoid output on
    real and generated images."""
    rank, world = accelerator.process_index, accelerator.num_processes
    n, r = len(x_all), x_all.shape[-1]
    torch.manual_seed(seed * 31 + 11)
    g_net = GanGenerator(cfg.latent_dim, r, cfg.width).to(memory_format=torch.channels_last)
    d_net = GanDiscriminator(r, cfg.width).to(memory_format=torch.channels_last)
    opt_g = torch.optim.Adam(g_net.parameters(), lr=cfg.lr, betas=(0.5, 0.99))
    opt_d = torch.optim.Adam(d_net.parameters(), lr=cfg.lr, betas=(0.5, 0.99))
    ema = copy.deepcopy(g_net).requires_grad_(False).to(accelerator.device)
    points = _on_sphere(torch.randn((n, cfg.latent_dim), generator=torch.Generator().manual_seed(seed * 37 + 1)))
    points = points.to(accelerator.device).requires_grad_(True)
    opt_z = torch.optim.Adam([points], lr=0.01)
    g_net, d_net, opt_g, opt_d = accelerator.prepare(g_net, d_net, opt_g, opt_d)
    data_gen = torch.Generator().manual_seed(seed * 104729 + 3)  # the same on every rank
    aug_gen = torch.Generator().manual_seed(seed * 7907 + 101 + rank)
    bs = max(cfg.batch_size, world)
    mine = slice(rank, bs, world)
    log_every = max(1, cfg.gan_steps // 100)
    sums = torch.zeros(5)
    for step in tqdm(range(cfg.gan_steps), desc="gan", unit="step", disable=not progress):
        idx_all = torch.randint(0, n, (bs,), generator=data_gen).to(points.device)
        idx = idx_all[mine]
        z = torch.randn((bs, cfg.latent_dim), generator=data_gen)[mine]
        real = x_all[idx.cpu()].to(accelerator.device, memory_format=torch.channels_last)
        z = z.to(accelerator.device)
        for o in (opt_g, opt_d):
            for grp in o.param_groups:
                grp["lr"] = _lr_at(step, cfg.gan_steps, cfg.lr)
        with accelerator.autocast():  # one generator pass (DDP: one forward per backward): samples, then points
            out = g_net(torch.cat([z, points[idx]]) if cfg.recon_weight > 0 else z)
            fake, recon = out[: len(z)], out[len(z) :]
            both = d_net(diff_augment(torch.cat([real, fake.detach()]), cfg.augment, aug_gen)).float()
            d_real, d_fake = both[: len(real)], both[len(real) :]
            d_loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        opt_d.zero_grad(set_to_none=True)
        accelerator.backward(d_loss)
        opt_d.step()
        with accelerator.autocast():
            g_loss = F.softplus(-d_net(diff_augment(fake, cfg.augment, aug_gen)).float()).mean()
            l1 = F.l1_loss(recon.float(), real) if cfg.recon_weight > 0 else torch.zeros((), device=z.device)
        opt_g.zero_grad(set_to_none=True)
        opt_z.zero_grad(set_to_none=True)
        accelerator.backward(g_loss + cfg.recon_weight * l1)
        opt_g.step()
        if cfg.recon_weight > 0:  # every rank applies the summed gradient of all ranks' rows: the same points
            if world > 1:
                points.grad = accelerator.reduce(points.grad, reduction="sum")
            opt_z.step()
            with torch.no_grad():
                points[idx_all] = _on_sphere(points[idx_all])
        with torch.no_grad():
            for pe, pt in zip(ema.parameters(), accelerator.unwrap_model(g_net).parameters()):
                pe.lerp_(pt.detach().float(), 1.0 - cfg.ema)
        with torch.no_grad():
            p_real, p_fake = torch.sigmoid(d_real).mean(), torch.sigmoid(d_fake).mean()
            sums += torch.stack([d_loss, g_loss, l1, p_real, p_fake]).detach().float().cpu()
        if (step + 1) % log_every == 0 or step + 1 == cfg.gan_steps:
            k = step % log_every + 1
            s = accelerator.reduce(sums.to(accelerator.device), reduction="mean").cpu() / k
            curve.append({"step": step + 1, "d_loss": round(float(s[0]), 5), "g_loss": round(float(s[1]), 5),
                          "l1": round(float(s[2]), 5), "d_real": round(float(s[3]), 4),
                          "d_fake": round(float(s[4]), 4)})  # fmt: skip
            sums.zero_()
    return ema, points.detach().cpu()


def recover_latents(g: GanGenerator, x: torch.Tensor, start: torch.Tensor, cfg: GanConfig):
    """Latent recovery: the latent points `start` (n, d) of images x (n, 1, r, r) in [-1, 1], refined by
    `invert_steps` Adam steps on the L1 pixel error through the frozen generator `g`, kept on the sphere.
    Returns the latents (n, d) and the final per-image RMS pixel error (pixels in [0, 1])."""
    dev = next(g.parameters()).device
    x = x.to(dev)
    z = start.clone().to(dev).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.01)
    for _ in range(cfg.invert_steps):
        loss = (g(z).float() - x).abs().mean(dim=(1, 2, 3)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            z.copy_(_on_sphere(z))
    with torch.no_grad():
        rms = torch.cat([((g(z[i : i + 256]).float() - x[i : i + 256]) / 2).square().mean(dim=(1, 2, 3)).sqrt()
                         for i in range(0, len(z), 256)])  # fmt: skip
    return z.detach().cpu().numpy(), rms.cpu().numpy()


class GanSampler:
    """Gaussian or recovered latents -> averaged generator -> upsampler (above its resolution) -> uint8."""

    def __init__(self, cfg: GanConfig, g: GanGenerator, ups: Upsampler | None, latents: np.ndarray, seed: int):
        self.cfg, self.g, self.ups = cfg, g.float().eval(), None if ups is None else ups.float().eval()
        self.latents = latents
        self.weights = zipf_weights(len(latents), cfg.zipf, np.random.default_rng([seed & 0xFFFFFFFF, 0x21F]))
        self.last_sources: np.ndarray | None = None  # each sample's used image if memorised, else -1

    def slots(self, n: int, rng: np.random.Generator) -> dict:
        """Everything random about n output slots, drawn once: the memorisation draw, the memorised source and
        the latent noise (the knobs act at render)."""
        return {"u": rng.random(n), "src": rng.choice(len(self.latents), size=n, p=self.weights),
                "eps": rng.standard_normal((n, self.cfg.latent_dim)).astype(np.float32)}  # fmt: skip

    def _z(self, slots: dict, memorised: np.ndarray) -> np.ndarray:
        mem = self.latents[slots["src"]] + self.cfg.closeness * slots["eps"]
        return np.where(memorised[:, None], mem, slots["eps"]).astype(np.float32)

    @torch.no_grad()
    def _small(self, z: np.ndarray, batch: int = 256) -> torch.Tensor:
        """Generator images (n, 1, r, r) in [0, 1] of latents z."""
        dev = next(self.g.parameters()).device
        out = [self.g(torch.from_numpy(z[i : i + batch]).to(dev)).float().cpu() for i in range(0, len(z), batch)]
        return torch.cat(out).add_(1).div_(2)

    @torch.no_grad()
    def render(self, slots: dict, batch: int = 128) -> np.ndarray:
        """uint8 images of the slots at the current `memorised_share`; `last_sources`: the used image each
        memorised slot was drawn at, -1 for a fresh latent."""
        memorised = slots["u"] < self.cfg.memorised_share
        self.last_sources = np.where(memorised, slots["src"], -1)
        small = self._small(self._z(slots, memorised))
        if self.ups is not None:
            dev = next(self.ups.parameters()).device
            small = torch.cat(
                [self.ups(small[i : i + batch].to(dev)).float().cpu() for i in range(0, len(small), batch)]
            )
        return (small[:, 0].clamp_(0, 1) * 255.0).round_().to(torch.uint8).numpy()

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` synthetic uint8 images, drawing randomness from `rng` only."""
        return self.render(self.slots(n, rng))

    def calibrate(self, real: np.ndarray, labels: np.ndarray, *, level: str, n: int, seed: int) -> dict | None:
        """Set `memorised_share` so that n samples' pixel-NN AUC on (real, labels), at the generator's
        resolution, meets the level's target; None where the level has no target or calibration is off."""
        if not self.cfg.calibrate or level not in TARGETS:
            return None
        target, r = TARGETS[level][0], self.cfg.resolution
        slots = self.slots(n, np.random.default_rng([seed & 0xFFFFFFFF, 0xCA1]))
        small = F.interpolate(torch.from_numpy(real).float().unsqueeze(1), size=(r, r), mode="area")
        small = small[:, 0].round().to(torch.uint8).numpy()

        def dist(memorised: np.ndarray) -> np.ndarray:
            return distance_matrix(small, (self._small(self._z(slots, memorised))[:, 0] * 255).round().byte().numpy())

        d_novel, d_mem = dist(np.zeros(n, bool)), dist(np.ones(n, bool))
        share, curve = choose_alpha(d_novel, d_mem, slots["u"], labels, target, self.cfg.max_memorised_share)
        self.cfg.memorised_share = share
        return {"target": target, "range": TARGETS[level][1], "memorised_share": share,
                "auc_novel_only": round(auc_at(0.0, d_novel, d_mem, slots["u"], labels), 4),
                "auc_all_memorised": round(auc_at(1.0, d_novel, d_mem, slots["u"], labels), 4),
                "alpha_curve": curve, "proxy": f"generator at {r} px, {n} samples"}  # fmt: skip


def summarize(history: dict) -> dict:
    """What synth.json records about a gan generator: the adversarial curve, latent recovery, calibration."""
    cal = history.get("calibration") or {}
    sampling = {**history["sampling"], **({"memorised_share": cal["memorised_share"]} if cal else {})}
    keys = ("network", "curve", "recovery", "upsampler_curve", "seconds", "world_size", "device")
    model = "DCGAN (adversarial, DiffAugment, a latent point per used image) + learned upsampler"
    return {"model": model, **{k: history[k] for k in keys}, "sampling": sampling,
            "calibration": history.get("calibration")}  # fmt: skip


@register_family("gan", GanConfig, help="DCGAN trained adversarially with DiffAugment + learned upsampler",
                 summarize=summarize, levels=LEVELS, max_threads=4)  # fmt: skip
def train_gan(images: np.ndarray, cfg: GanConfig, *, seed: int = 0, accelerator=None, progress: bool = True):
    """Train the GAN (and the upsampler above its resolution) on uint8 images (n, s, s); recover the used
    images' latents; return the sampler and the history."""
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1] != images.shape[2] or images.dtype != np.uint8:
        raise FingerprintError(f"the gan family needs uint8 (n, s, s) images, got {images.dtype} {images.shape}")
    n, size, r = len(images), images.shape[-1], cfg.resolution
    if size % r:
        raise FingerprintError(f"image size {size} must be a multiple of the gan resolution {r}")
    if n < 2:
        raise FingerprintError(f"gan training needs at least 2 images, got {n}")
    accelerator = accelerator or family_accelerator(cfg)
    progress = progress and accelerator.is_main_process and is_main_process()
    hr = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).unsqueeze(1)
    low = F.interpolate(hr, size=(r, r), mode="area") if size > r else hr
    x = (low * 2 - 1).contiguous(memory_format=torch.channels_last)
    history: dict = {"curve": [], "upsampler_curve": [], "seconds": {}, "world_size": accelerator.num_processes,
                     "device": str(accelerator.device)}  # fmt: skip
    # deterministic algorithms, without filling every new tensor with NaN first (a third of a CPU step here)
    fill, torch.utils.deterministic.fill_uninitialized_memory = (
        torch.utils.deterministic.fill_uninitialized_memory,
        False,
    )
    with deterministic():
        t0 = time.perf_counter()
        g, points = train_adversarial(x, cfg, seed=seed, accelerator=accelerator, curve=history["curve"],
                                      progress=progress)  # fmt: skip
        history["seconds"]["gan"] = round(time.perf_counter() - t0, 3)
        history["network"] = {
            "generator_params": sum(p.numel() for p in g.parameters()),
            "channels": _channels(r, cfg.width), "resolution": r,
        }  # fmt: skip
        t0 = time.perf_counter()
        latents, rms = recover_latents(g, x, points, cfg)
        history["recovery"] = {"rms_mean": round(float(rms.mean()), 5), "rms_median": round(float(np.median(rms)), 5)}
        history["seconds"]["recovery"] = round(time.perf_counter() - t0, 3)
        ups = None
        if size > r:
            t0 = time.perf_counter()
            torch.manual_seed(seed * 17 + 5)
            ups = Upsampler(size // r, cfg.upsampler_width)
            ups = _train_upsampler(ups, hr, size // r, cfg, seed, accelerator, accelerator.process_index,
                                   accelerator.num_processes, history["upsampler_curve"], progress)  # fmt: skip
            history["seconds"]["upsampler"] = round(time.perf_counter() - t0, 3)
    torch.utils.deterministic.fill_uninitialized_memory = fill
    history["sampling"] = {k: getattr(cfg, k) for k in ("memorised_share", "zipf", "closeness")}
    return GanSampler(cfg, g, ups, latents, seed), history
