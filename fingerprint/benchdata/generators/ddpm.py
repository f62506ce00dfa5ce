"""The `ddpm` generator family (GPU-grade): a denoising diffusion model (diffusers UNet2DModel), from scratch.

Optional dependency: `diffusers` (extra `fingerprint[gpu-gen]`), imported only
inside this family, so the package and CI work without it. On a CPU it runs at
image sizes up to 64 px only (`--level tiny`); larger builds need `--device`
cuda (a GPU visible to torch) and are meant for `accelerate launch`.

- Model: `diffusers.UNet2DModel` (the DDPM U-Net of Ho et al. 2020, with
  self-attention at the low resolutions) on 1-channel images in [-1, 1],
  epsilon prediction, 1000-step linear-beta `DDPMScheduler` for training;
  `DDIMScheduler` (Song et al. 2021, eta = 0) with `sample_steps` steps for
  sampling. Weights are averaged (`diffusers.training_utils.EMAModel`); the
  average samples. The recipe is diffusers' `train_unconditional.py`.
- Memorisation you can control: the U-Net is conditioned on the index of the
  training image (`num_class_embeds` = n + 1), replaced by the "null" class n
  for `cond_drop` of the training steps (classifier-free guidance training,
  Ho & Salimans 2021). A sample is, with probability `memorised_share`, drawn
  from the class of a Zipf-chosen used image (a conditioned diffusion model
  reproduces what its condition points to: Somepalli et al. 2023, Carlini et
  al. 2023), otherwise from the null class. Sampling reads learned
  embeddings, never an image.
- Training: Accelerate (`prepare` on model, optimiser, loader and schedule;
  bf16/fp16 autocast via `mixed_precision`; under `accelerate launch` each
  process takes its share of the batches), AdamW with linear warm-up, seeded.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fingerprint.benchdata.generators import family_accelerator, register_family
from fingerprint.benchdata.generators.vae import zipf_weights
from fingerprint.core.config import check_fields, option
from fingerprint.core.errors import FingerprintError
from fingerprint.core.vocab import MIXED_PRECISION

CPU_MAX_SIZE = 64


@dataclass
class DDPMConfig:
    """How the ddpm generator is built, trained and sampled; fields are `fingerprint synth` options."""

    SECTION = "synth"

    ddpm_width: int = option(32, min=1, help="U-Net channels at full resolution (x2 per level, at most x8)")
    ddpm_depth: int = option(5, min=1, help="U-Net resolution levels")
    layers_per_block: int = option(2, min=1, help="ResNet layers per U-Net block")
    attention_from: int = option(3, min=0, help="U-Net level from which blocks have self-attention")
    mid_attention: bool = option(True, help="self-attention in the U-Net's middle block")
    ddpm_steps: int = option(20000, min=1, help="diffusion training steps")
    batch_size: int = option(32, min=1, help="training batch size")
    lr: float = option(2e-4, help="AdamW learning rate")
    warmup: int = option(500, min=0, help="linear warm-up steps")
    ema_decay: float = option(0.999, min=0, help="decay of the weight average that samples")
    cond_drop: float = option(0.2, min=0, help="share of steps trained on the null class")
    train_timesteps: int = option(1000, min=2, help="diffusion timesteps")
    sample_steps: int = option(50, min=1, help="DDIM sampling steps")
    sample_batch: int = option(250, min=1, help="images per sampling batch")
    memorised_share: float = option(0.05, min=0, help="share of samples drawn from a used image's class")
    zipf: float = option(1.0, min=0, help="Zipf exponent of which used images memorised samples come from")
    mixed_precision: str = option("no", choices=MIXED_PRECISION, help="training precision (bf16/fp16 are for GPUs)")
    cpu: bool = option(False, help="train on the CPU even when a GPU is present")

    def __post_init__(self) -> None:
        check_fields(self)


#: tiny: a CPU smoke run (the path, not the quality: its samples are noise); other levels: GPU defaults
LEVELS = {
    "tiny": {"ddpm_width": 16, "ddpm_depth": 2, "layers_per_block": 1, "mid_attention": False, "ddpm_steps": 20,
             "batch_size": 8, "warmup": 5, "sample_steps": 5, "memorised_share": 0.5, "zipf": 0.5},
}  # fmt: skip


def _diffusers():
    try:
        import diffusers
        from diffusers.training_utils import EMAModel
    except ImportError as e:
        raise FingerprintError(f"the ddpm family needs diffusers: pip install 'fingerprint[gpu-gen]' ({e})") from None
    return diffusers, EMAModel


def make_unet(cfg: DDPMConfig, size: int, n_classes: int):
    """The U-Net: `ddpm_depth` levels, attention from `attention_from`, a class embedding per used image + null."""
    diffusers, _ = _diffusers()
    channels = tuple(cfg.ddpm_width * min(2**i, 8) for i in range(cfg.ddpm_depth))
    down = tuple("AttnDownBlock2D" if i >= cfg.attention_from else "DownBlock2D" for i in range(cfg.ddpm_depth))
    up = tuple("AttnUpBlock2D" if i >= cfg.attention_from else "UpBlock2D" for i in reversed(range(cfg.ddpm_depth)))
    return diffusers.UNet2DModel(
        sample_size=size, in_channels=1, out_channels=1, block_out_channels=channels,
        layers_per_block=cfg.layers_per_block, down_block_types=down, up_block_types=up,
        num_class_embeds=n_classes + 1, norm_num_groups=min(32, channels[0]), add_attention=cfg.mid_attention,
    )  # fmt: skip


class DDPMGenerator:
    """Class (used image or null) + seeded noise -> DDIM sampling with the averaged U-Net -> uint8."""

    def __init__(self, unet, cfg: DDPMConfig, weights: np.ndarray, size: int, device, dtype):
        diffusers, _ = _diffusers()
        self.unet, self.cfg, self.weights, self.size, self.device, self.dtype = (
            unet.eval(),
            cfg,
            weights,
            size,
            device,
            dtype,
        )
        self.scheduler = diffusers.DDIMScheduler(
            num_train_timesteps=cfg.train_timesteps, beta_schedule="linear", clip_sample=True
        )
        self.null = len(weights)

    @torch.no_grad()
    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` uint8 images, drawing randomness (classes, noise seeds) from `rng` only."""
        memorised = rng.random(n) < self.cfg.memorised_share
        cls = np.where(memorised, rng.choice(len(self.weights), size=n, p=self.weights), self.null)
        noise_seed = int(rng.integers(0, 2**31))
        out = np.empty((n, self.size, self.size), np.uint8)
        gen = torch.Generator().manual_seed(noise_seed)
        for i in range(0, n, self.cfg.sample_batch):
            c = torch.as_tensor(cls[i : i + self.cfg.sample_batch]).to(self.device)
            x = torch.randn((len(c), 1, self.size, self.size), generator=gen).to(self.device)
            self.scheduler.set_timesteps(self.cfg.sample_steps)
            for t in self.scheduler.timesteps:
                with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                    eps = self.unet(x, t, class_labels=c).sample
                x = self.scheduler.step(eps.float(), t, x).prev_sample
            out[i : i + len(c)] = ((x[:, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
        return out


def _train_loop(unet, ema, loader, opt, sched, cfg: DDPMConfig, n: int, seed: int, accelerator, progress) -> list:
    diffusers, _ = _diffusers()
    noise_sched = diffusers.DDPMScheduler(num_train_timesteps=cfg.train_timesteps, beta_schedule="linear")
    g = torch.Generator().manual_seed(seed * 1000 + accelerator.process_index + 1)
    curve, step, run = [], 0, 0.0
    bar = tqdm(total=cfg.ddpm_steps, desc="ddpm", disable=not (progress and accelerator.is_main_process))
    unet.train()
    while step < cfg.ddpm_steps:
        for xb, cls in loader:
            noise = torch.randn(xb.shape, generator=g).to(xb.device)
            t = torch.randint(0, cfg.train_timesteps, (len(xb),), generator=g).to(xb.device)
            drop = torch.rand(len(xb), generator=g).to(xb.device) < cfg.cond_drop
            with accelerator.autocast():
                pred = unet(noise_sched.add_noise(xb, noise, t), t, class_labels=torch.where(drop, n, cls)).sample
            loss = F.mse_loss(pred.float(), noise)
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            sched.step()
            ema.step(accelerator.unwrap_model(unet).parameters())
            run, step = run + float(loss.detach()), step + 1
            bar.update(1)
            if step % 50 == 0 or step == cfg.ddpm_steps:
                curve.append({"step": step, "loss": round(run / (50 if step % 50 == 0 else step % 50), 6)})
                run = 0.0
            if step >= cfg.ddpm_steps:
                break
    bar.close()
    return curve


@register_family("ddpm", DDPMConfig, help="diffusion model (diffusers UNet2DModel; needs fingerprint[gpu-gen])",
                 levels=LEVELS)  # fmt: skip
def train_ddpm(images: np.ndarray, cfg: DDPMConfig, *, seed: int = 0, accelerator=None, progress: bool = True):
    """Train on uint8 images (n, s, s) -> (DDPMGenerator, history)."""
    _, EMAModel = _diffusers()
    images = np.asarray(images)
    n, size = len(images), images.shape[-1]
    accelerator = accelerator or family_accelerator(cfg)
    if accelerator.device.type == "cpu" and size > CPU_MAX_SIZE:
        raise FingerprintError(f"the ddpm family needs a GPU for {size} px images (on a CPU: --level tiny)")
    if size % 2 ** (cfg.ddpm_depth - 1):
        raise FingerprintError(
            f"image size {size} must be divisible by 2^(ddpm_depth - 1) = {2 ** (cfg.ddpm_depth - 1)}"
        )
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    unet = make_unet(cfg, size, n)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup)))
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(127.5).sub_(1.0).unsqueeze(1)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, torch.arange(n)), batch_size=min(cfg.batch_size, n), shuffle=True,
        drop_last=True, generator=torch.Generator().manual_seed(seed), pin_memory=torch.cuda.is_available(),
    )  # fmt: skip
    unet, opt, loader, sched = accelerator.prepare(unet, opt, loader, sched)
    ema.to(accelerator.device)
    curve = _train_loop(unet, ema, loader, opt, sched, cfg, n, seed, accelerator, progress)
    model = accelerator.unwrap_model(unet)
    ema.copy_to(model.parameters())
    weights = zipf_weights(n, cfg.zipf, np.random.default_rng([seed & 0xFFFFFFFF, 0x21F]))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)
    history = {"curve": curve, "seconds": {"ddpm": round(time.perf_counter() - t0, 3)},
               "world_size": accelerator.num_processes, "device": str(accelerator.device),
               "parameters": sum(p.numel() for p in model.parameters()), "sampling": asdict(cfg)}  # fmt: skip
    return DDPMGenerator(model, cfg, weights, size, accelerator.device, dtype), history
