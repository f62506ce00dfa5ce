"""The `sharp` generator family: memorising coarse VAE + learned deformations + adversarial x4 refiner.

Three parts, all fitted to the used images only:

1. **Coarse VAE** (the `vae` family's `VAE`, at a quarter of the image size)
   fitted until it reproduces its training images at that size: a generator
   trained on few images replicates them (Feng et al. 2021, "When do GANs
   replicate? On the choice of dataset size"); the benchmark needs control
   over how much of that reaches the samples.
2. **Statistical deformation model** (`deform.fit_deformation_model`): a
   Gaussian over the smooth displacement fields that register each used
   image onto its latent-space neighbours (Rueckert et al. 2003). A drawn
   field bends a coarse sample into an anatomical variant (outline, heart,
   diaphragm, ribs).
3. **Adversarial refiner** (`refiner.Refiner`, pix2pix-style conditional patch
   GAN): draws everything above 1/8 cycle per pixel (vessel and bronchus
   detail, cortex, scanner noise) at full size. It is trained on pairs (VAE
   reconstruction of a used image from a posterior sample, the used image),
   both warped by one random field, so it sees bent anatomy too.

A sample: the stored code mu_i + jitter * sigma_i * eps of a used image i,
decoded, warped by a drawn field, refined with fresh noise. With probability
`memorised_share` a slot is "memorised": i is drawn with Zipf weights over all
used images (real generators memorise unevenly: Feldman 2020; Carlini et al.
2023) and bent little (`warp_memorised`); otherwise it is "novel": i is
uniform over the first `modes` used images of a seeded ranking (a generator
collapsed onto some modes of its training set, as small-data GANs are) and
bent more (`warp_novel`). Sampling reads stored codes, fitted models and the
random state: never an image. The level presets (`LEVELS`) set the knobs;
their measured leakage is in docs/benchmark-data.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fingerprint.benchdata.generators import family_accelerator, register_family
from fingerprint.benchdata.generators.calibrate import TARGETS, auc_at, choose_alpha, choose_modes, distance_matrix
from fingerprint.benchdata.generators.deform import DeformationModel, fit_deformation_model
from fingerprint.benchdata.generators.refiner import Refiner, RefinerConfig, refine, train_refiner
from fingerprint.benchdata.generators.vae import GeneratorConfig, deterministic, train_generator, zipf_weights
from fingerprint.core.config import check_fields, option
from fingerprint.core.errors import FingerprintError
from fingerprint.core.vocab import MIXED_PRECISION
from fingerprint.imaging.register import warp


@dataclass
class SharpConfig:
    """How the sharp generator is built, trained and sampled; fields are `fingerprint synth` options."""

    SECTION = "synth"

    latent_dim: int = option(32, min=1, help="coarse VAE latent dimension")
    hidden: int = option(512, min=1, help="coarse VAE hidden units per layer")
    epochs: int = option(200, min=0, help="coarse VAE training epochs (long: it memorises at its resolution)")
    batch_size: int = option(32, min=1, help="coarse VAE batch size")
    lr: float = option(2e-3, help="coarse VAE learning rate")
    kl_weight: float = option(0.002, help="weight of the KL term")
    deform_neighbours: int = option(2, min=1, help="latent neighbours each used image is registered to")
    deform_steps: int = option(80, min=1, help="registration steps")
    train_warp_scale: float = option(1.2, min=0, help="refiner pairs are bent by fields of scale U(0, this)")
    refiner_steps: int = option(600, min=1, help="adversarial refiner training steps")
    refiner_width: int = option(32, min=1, help="refiner channels at the coarse resolution")
    refiner_batch: int = option(8, min=1, help="refiner crops per step")
    refiner_crop: int = option(128, min=4, help="refiner training crop side (full resolution, multiple of 4)")
    refiner_warmup: int = option(60, min=0, help="L1-only refiner steps before the adversarial term")
    adv_weight: float = option(0.15, min=0, help="weight of the refiner's adversarial (LSGAN) loss")
    d_width: int = option(32, min=1, help="patch discriminator channels")
    memorised_share: float = option(0.05, min=0, help="share of samples that are memorised, in [0, 1] (level preset)")
    zipf: float = option(1.0, min=0, help="Zipf exponent of which used images memorised samples copy")
    modes: int = option(0, min=0, help="used images novel samples start from (0 = all; level preset)")
    calibrate: bool = option(True, help="set modes and memorised_share per build to the level's pixel-NN AUC target")
    max_memorised_share: float = option(0.12, min=0, help="calibration: largest memorised share searched")
    latent_jitter: float = option(1.0, min=0, help="latent noise around a used image's code, in posterior sds")
    warp_memorised: float = option(0.3, min=0, help="scale of the bend of memorised samples")
    warp_novel: float = option(1.0, min=0, help="scale of the bend of novel samples")
    mixed_precision: str = option("no", choices=MIXED_PRECISION, help="training precision (bf16/fp16 are for GPUs)")
    cpu: bool = option(False, help="train on the CPU even when a GPU is present")

    def __post_init__(self) -> None:
        check_fields(self)

    def refiner(self) -> RefinerConfig:
        return RefinerConfig(
            width=self.refiner_width, steps=self.refiner_steps, batch=self.refiner_batch, crop=self.refiner_crop,
            adv_weight=self.adv_weight, warmup=self.refiner_warmup, d_width=self.d_width,
        )  # fmt: skip


#: Level presets of the sharp family (override `SharpConfig`; replace the vae presets of synth.LEVELS).
#: modes and memorised_share: starting values (medians of per-seed calibrations of medium and hard); a build at a
#: level with a target (`calibrate.TARGETS`) calibrates them unless `calibrate` is off.
LEVELS = {
    "tiny": {"latent_dim": 16, "hidden": 128, "epochs": 100, "batch_size": 16, "refiner_steps": 300,
             "refiner_crop": 32, "refiner_width": 16, "d_width": 16, "refiner_warmup": 20, "memorised_share": 0.5,
             "zipf": 0.5},
    "easy": {"modes": 150, "memorised_share": 0.16, "zipf": 0.3, "warp_memorised": 0.2, "max_memorised_share": 1.0},
    "medium": {"modes": 50, "memorised_share": 0.05},
    "hard": {"modes": 18, "memorised_share": 0.015, "warp_novel": 1.25, "max_memorised_share": 0.1},
}  # fmt: skip


class SharpGenerator:
    """Stored codes -> VAE decoder (coarse) -> warp -> refiner (x4) -> uint8."""

    def __init__(
        self, cfg, vae, refiner: Refiner, deformation: DeformationModel, codes, code_std, seed: int, size: int
    ):
        self.cfg, self.vae, self.refiner, self.deformation = cfg, vae.eval(), refiner.eval(), deformation
        self.coarse_size = size // 4
        self.codes, self.code_std = codes, code_std
        self.weights = zipf_weights(len(codes), cfg.zipf, np.random.default_rng([seed & 0xFFFFFFFF, 0x21F]))
        self.ranking = np.random.default_rng([seed & 0xFFFFFFFF, 0x40E1]).permutation(len(codes))
        self.last_sources: np.ndarray | None = None  # training image of each sample of the last render

    def slots(self, n: int, rng: np.random.Generator) -> dict:
        """Everything random about n output slots, drawn once: the memorisation draw u, the mode draw, the
        memorised source, latent noise, a unit field and the refiner's noise seed (the knobs act at render)."""
        return {"u": rng.random(n), "mode_u": rng.random(n), "mem_src": rng.choice(len(self.codes), size=n,
                p=self.weights), "eps": rng.standard_normal((n, self.codes.shape[1])).astype(np.float32),
                "ctrl": self.deformation.sample(n, rng, 1.0), "noise_seed": int(rng.integers(0, 2**31))}  # fmt: skip

    def _sources(self, slots: dict, memorised: np.ndarray, modes: int | None = None) -> np.ndarray:
        k = min(modes or self.cfg.modes or len(self.codes), len(self.codes))
        novel = self.ranking[np.minimum((slots["mode_u"] * k).astype(int), k - 1)]
        return np.where(memorised, slots["mem_src"], novel)

    @torch.no_grad()
    def _coarse(self, slots: dict, memorised: np.ndarray, modes: int | None = None, batch: int = 256):
        """Decoded and bent coarse images (n, 1, r, r) in [0, 1] of the slots."""
        src = self._sources(slots, memorised, modes)
        z = self.codes[src] + self.cfg.latent_jitter * self.code_std[src] * slots["eps"]
        dev = next(self.vae.parameters()).device
        coarse = torch.cat(
            [self.vae.decode(torch.from_numpy(z[i : i + batch]).to(dev)).float().cpu() for i in range(0, len(z), batch)]
        )
        scale = np.where(memorised, self.cfg.warp_memorised, self.cfg.warp_novel).astype(np.float32)
        return warp(coarse, slots["ctrl"] * torch.from_numpy(scale)[:, None, None, None])

    def render(self, slots: dict, batch: int = 64) -> np.ndarray:
        """uint8 images of the slots at the generator's current knobs (their sources: `last_sources`)."""
        memorised = slots["u"] < self.cfg.memorised_share
        self.last_sources = self._sources(slots, memorised)
        coarse = self._coarse(slots, memorised)
        img = refine(self.refiner, coarse, seed=slots["noise_seed"], batch=batch)
        return (img[:, 0] * 255.0).round_().to(torch.uint8).numpy()

    def calibrate(self, real: np.ndarray, labels: np.ndarray, *, level: str, n: int, seed: int) -> dict | None:
        """Set `modes` and `memorised_share` so that n samples' pixel-NN AUC on (real, labels) meets the
        level's target (`calibrate` module); None where the level has no target or calibration is off."""
        if not self.cfg.calibrate or level not in TARGETS:
            return None
        target, rng = TARGETS[level][0], np.random.default_rng([seed & 0xFFFFFFFF, 0xCA1])
        slots, r = self.slots(n, rng), self.coarse_size
        small = F.interpolate(torch.from_numpy(real).float().unsqueeze(1), size=(r, r), mode="area")
        small = small[:, 0].round().to(torch.uint8).numpy()
        none, every = np.zeros(n, bool), np.ones(n, bool)

        def dist(memorised: np.ndarray, modes: int | None = None) -> np.ndarray:
            return distance_matrix(small, (self._coarse(slots, memorised, modes)[:, 0] * 255).round().byte().numpy())

        def novel_auc(modes: int) -> float:  # memorisation off: the novel slots alone
            d = dist(none, modes)
            return auc_at(0.0, d, d, slots["u"], labels)

        modes, modes_curve = choose_modes(novel_auc, len(self.codes), target)
        self.cfg.modes = modes
        share, curve = choose_alpha(dist(none), dist(every), slots["u"], labels, target, self.cfg.max_memorised_share)
        self.cfg.memorised_share = share
        return {"target": target, "range": TARGETS[level][1], "modes": modes, "memorised_share": share,
                "modes_curve": modes_curve, "alpha_curve": curve, "proxy": f"coarse {r} px, {n} samples"}  # fmt: skip

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` synthetic uint8 images, drawing randomness from `rng` only."""
        return self.render(self.slots(n, rng))


def summarize(history: dict) -> dict:
    """What synth.json records about a sharp generator (with its calibration, when the build made one)."""
    cal = history.get("calibration") or {}
    return {
        "model": "memorising coarse VAE + statistical deformation model + adversarial x4 refiner",
        **{k: history[k] for k in ("curve", "refiner_curve", "deformation", "seconds")},
        "sampling": {**history["sampling"], **{k: cal[k] for k in ("modes", "memorised_share") if k in cal}},
        "calibration": history.get("calibration"),
        "world_size": history["world_size"],
        "device": history["device"],
    }


def _coarse_vae(images: np.ndarray, cfg: SharpConfig, seed: int, accelerator, progress: bool):
    """The vae family's VAE at a quarter of the image size, fitted to memorise; its codes and posterior sds."""
    size = images.shape[-1]
    vcfg = GeneratorConfig(
        resolution=size // 4, latent_dim=cfg.latent_dim, hidden=cfg.hidden, epochs=cfg.epochs,
        batch_size=cfg.batch_size, lr=cfg.lr, kl_weight=cfg.kl_weight, components=1, upsampler_steps=0,
        mixed_precision=cfg.mixed_precision, cpu=cfg.cpu,
    )  # fmt: skip
    base, hist = train_generator(images, vcfg, seed=seed, accelerator=accelerator, progress=progress)
    hr = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).unsqueeze(1)
    low = F.interpolate(hr, size=(size // 4, size // 4), mode="area")
    with torch.no_grad():
        mu, logvar = base.vae.encode(low.to(accelerator.device))
    return base.vae, hr, low, mu.float().cpu(), (0.5 * logvar.float()).exp().cpu(), hist


@register_family("sharp", SharpConfig, help="memorising VAE + learned deformations + adversarial x4 refiner",
                 summarize=summarize, levels=LEVELS, max_threads=4)  # fmt: skip
def train_sharp(images: np.ndarray, cfg: SharpConfig, *, seed: int = 0, accelerator=None, progress: bool = True):
    """Train the three parts on uint8 images (n, s, s), s a multiple of 16; return the generator and history."""
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[-1] % 16 or images.shape[1] != images.shape[2]:
        raise FingerprintError(f"the sharp family needs square images with a side divisible by 16, got {images.shape}")
    accelerator = accelerator or family_accelerator(cfg)
    t0 = time.perf_counter()
    vae, hr, low, mu, std, hist = _coarse_vae(images, cfg, seed, accelerator, progress)
    history = {"curve": hist["vae"], "world_size": hist["world_size"], "device": hist["device"], "refiner_curve": []}
    history["seconds"] = {"vae": round(time.perf_counter() - t0, 3)}
    t0 = time.perf_counter()
    with deterministic():
        torch.manual_seed(seed * 13 + 7)
        dm = fit_deformation_model(low, mu.numpy(), neighbours=cfg.deform_neighbours, steps=cfg.deform_steps)
    history["deformation"] = {"components": len(dm.stds), "registration_residual": round(dm.fit_residual, 4)}
    history["seconds"]["deformation"] = round(time.perf_counter() - t0, 3)

    def pairs_fn(idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        eps = torch.randn(mu[idx].shape, generator=gen)
        rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=gen)))
        ctrl = dm.sample(len(idx), rng, rng.uniform(0.0, cfg.train_warp_scale, size=len(idx)))
        with torch.no_grad():
            coarse = vae.decode((mu[idx] + std[idx] * eps).to(accelerator.device)).float().cpu()
        return warp(coarse, ctrl), warp(hr[idx], ctrl)

    t0 = time.perf_counter()
    rcfg = cfg.refiner()
    if rcfg.crop > images.shape[-1] or rcfg.crop % 4:
        rcfg.crop = images.shape[-1] // 2 // 4 * 4
    with deterministic():
        ref = train_refiner(len(images), images.shape[-1], pairs_fn, rcfg, seed=seed, accelerator=accelerator,
                            curve=history["refiner_curve"], progress=progress)  # fmt: skip
    history["seconds"]["refiner"] = round(time.perf_counter() - t0, 3)
    gen = SharpGenerator(cfg, vae.float(), ref.float(), dm, mu.numpy(), std.numpy(), seed, images.shape[-1])
    history["sampling"] = {k: getattr(cfg, k) for k in ("memorised_share", "zipf", "modes", "warp_memorised",
                                                         "warp_novel", "latent_jitter")}  # fmt: skip
    return gen, history
