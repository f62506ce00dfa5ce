"""Membership benchmarks in the ImageCLEFmedical GANs 2023 layout, with a generator really trained on the used images.

`build_benchmark(out_dir, level=..., seed=...)`:

1. takes real images (`fingerprint.benchdata.realimages`): procedural CT-like
   slices (`fingerprint.benchdata.phantom`, one patient per image or several
   neighbouring slices per patient), or any folder of images (`real_dir`,
   converted to 8-bit gray at `image_size`);
2. splits them at random into dev used / dev not used / test used / test not used;
3. trains a generator of the chosen family (`fingerprint.benchdata.generators`,
   default `vae`) on the union of the dev and test used images only;
4. samples the dev and test synthetic images from it, rejecting (and
   resampling) any sample whose pixel correlation with any real image
   exceeds `max_correlation`, so no synthetic image is a near-copy;
5. writes the challenge layout (below) in a temporary folder, measures the
   difficulty on the files written (`fingerprint.benchdata.difficulty`), and
   renames the folder into place.

```
OUT/dev/generated/generated_0001.png ...   OUT/dev/used/used_0001.png ...
OUT/dev/not_used/not_used_0001.png ...
OUT/test/generated_1/generated_00001.png ...
OUT/test/real_unknown_1/real_unknown_0001.png ...  (used and not used, shuffled)
OUT/test_truth.csv     figure_id,label (1 = used), beside test/, never inside it
OUT/real_sources.csv   figure_id,folder,source (phantom patient/slice or source file)
OUT/synth.json         every parameter, the seed, training curves, timings, difficulty
```

Difficulty levels (`LEVELS`) differ only in how closely the generator fits
its training set; their measured pixel-NN AUCs are in docs/benchmark-data.md.
`run_synth(SynthConfig)` is the `fingerprint synth` stage.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fingerprint.benchdata.cases import AUDIT_CASES, build_audit_case, build_subsets
from fingerprint.benchdata.generators import default_threads, families, family_accelerator, get_family
from fingerprint.benchdata.generators.vae import GeneratorConfig
from fingerprint.benchdata.layout import sample_and_write
from fingerprint.benchdata.realimages import RealImages, folder_images, phantom_images
from fingerprint.config import check_fields, fail, option
from fingerprint.distributed import set_threads
from fingerprint.utils import FingerprintError, check_writable, is_main_process, read_json
from fingerprint.vocab import MIXED_PRECISION

log = logging.getLogger(__name__)


@dataclass
class SynthParams:
    """Everything that defines a benchmark build; `LEVELS` presets override some of it."""

    level: str = "medium"
    seed: int = 0
    image_size: int = 256
    dev_generated: int = 500
    dev_used: int = 80
    dev_not_used: int = 80
    test_generated: int = 2000
    test_used: int = 100
    test_not_used: int = 100
    real_dir: str | None = None  # None: procedural phantoms
    slices_per_patient: int = 1  # phantoms only: > 1 puts neighbouring slices of one patient in the pool
    tb_fraction: float = 0.5  # phantoms only
    noise: float = 1.0  # phantoms only: scanner-noise scale
    max_correlation: float = 0.99  # synthetic samples above this pixel correlation with a real image are redrawn
    threads: int | None = None  # torch CPU threads; None: the family's default (generators.default_threads)
    family: str = "vae"  # generator family (fingerprint.benchdata.generators)
    generator: Any = field(default_factory=GeneratorConfig)  # the family's config

    @property
    def n_real(self) -> int:
        return self.dev_used + self.dev_not_used + self.test_used + self.test_not_used


#: Level presets: overrides of `SynthParams` (the `generator` entry overrides `GeneratorConfig`).
LEVELS: dict[str, dict[str, Any]] = {
    # seconds on one core: small images and counts, a short fit; for tests and smoke runs
    "tiny": {
        "image_size": 64,
        "dev_generated": 40,
        "dev_used": 12,
        "dev_not_used": 12,
        "test_generated": 60,
        "test_used": 10,
        "test_not_used": 10,
        "generator": {
            "resolution": 32,
            "latent_dim": 16,
            "hidden": 128,
            "epochs": 60,
            "batch_size": 16,
            "components": 11,
            "temperature": 0.5,
            "upsampler_steps": 20,
            "upsampler_width": 8,
            "upsampler_patch": 32,
        },
    },
    # long training, a latent mixture with a mode per two training images: samples sit near training images
    "easy": {"generator": {"epochs": 200, "components": 90, "temperature": 1.0}},
    # moderate training, 12 latent modes
    "medium": {"generator": {"epochs": 90, "components": 12, "temperature": 1.0}},
    # short training (the decoder has not fitted single images yet), 8 latent modes
    "hard": {"generator": {"epochs": 65, "components": 8, "temperature": 1.0}},
}

_SYNTH_FIELDS = {f.name for f in fields(SynthParams)} - {"generator"}


def resolve_params(
    level: str = "medium", *, seed: int = 0, real_dir: str | os.PathLike | None = None, **overrides: Any
) -> SynthParams:
    """The parameters of a build: `SynthParams` defaults <- level preset <- overrides (flat names).

    An override is any `SynthParams` or `GeneratorConfig` field name; None means "not given".
    """
    if level not in LEVELS:
        raise FingerprintError(f"unknown level {level!r} (choose from {', '.join(LEVELS)})")
    preset = dict(LEVELS[level])
    family = get_family(overrides.get("family") or "vae")
    gen_fields = {f.name for f in fields(family.config)}
    # a level's generator preset (the family's own when it has them) applies to the fields the family has
    gen_preset = preset.pop("generator", {})
    gen_preset = gen_preset if family.levels is None else family.levels.get(level, {})
    gen_over = {k: v for k, v in gen_preset.items() if k in gen_fields}
    top = {**preset, "level": level, "seed": int(seed), "real_dir": None if real_dir is None else str(real_dir)}
    for key, value in overrides.items():
        if value is None:
            continue
        if key in _SYNTH_FIELDS:
            top[key] = value
        elif key in gen_fields:
            gen_over[key] = value
        else:
            raise FingerprintError(f"unknown benchmark parameter {key!r}")
    params = replace(SynthParams(), **top, generator=family.config(**gen_over))
    if params.threads is None:
        params.threads = default_threads(family)
    _check(params)
    return params


def _check(p: SynthParams) -> None:
    """Errors name the `fingerprint synth` options (`synth.<field>`)."""
    for name in ("dev_generated", "dev_used", "dev_not_used", "test_generated", "test_used", "test_not_used"):
        if getattr(p, name) < 1:
            raise fail(SynthConfig, name, f"must be >= 1, got {getattr(p, name)}")
    if p.image_size < 16:
        raise fail(SynthConfig, "image_size", f"must be >= 16, got {p.image_size}")
    r = getattr(p.generator, "resolution", 1)
    if p.image_size % r or r > p.image_size:
        raise fail(SynthConfig, "image_size", f"{p.image_size} must be a multiple of the generator resolution {r}")
    if p.slices_per_patient < 1:
        raise fail(SynthConfig, "slices_per_patient", f"must be >= 1, got {p.slices_per_patient}")
    if p.real_dir is not None and p.slices_per_patient != 1:
        raise fail(SynthConfig, "slices_per_patient", "applies to the phantom source only, not to synth.real_dir")
    if p.threads < 1:
        raise fail(SynthConfig, "threads", f"must be >= 1, got {p.threads}")
    if not 0.0 < p.max_correlation <= 1.0:
        raise fail(SynthConfig, "max_correlation", f"must be in (0, 1], got {p.max_correlation}")
    if p.real_dir is not None and not Path(p.real_dir).is_dir():
        raise FingerprintError(f"{p.real_dir}: real-image folder not found")


def _opt(help: str, **kw: Any) -> Any:
    """An override option: None means the level preset's (or the default) value."""
    return option(None, help=help, **kw)


@dataclass(kw_only=True)
class SynthConfig:
    """Options of `fingerprint synth`; every None takes the level preset's value."""

    SECTION = "synth"

    out: Path = option(positional=True, help="output folder (refused if it exists, unless force)")
    level: str = option(
        "medium", choices=tuple(LEVELS), help="difficulty preset: easy, medium, hard; tiny = small and fast, for tests"
    )
    seed: int = option(0, help="random seed; same seed and machine = same files")
    real_dir: Path | None = option(
        None, help="use the images in this folder (any format, converted to 8-bit gray) instead of the phantoms"
    )
    force: bool = option(False, help="replace the output folder if it exists")
    generator: str | None = _opt(
        "generator family (fingerprint.benchdata.generators): vae (default; blurred), sharp (VAE + deformations + "
        "adversarial refiner; sharp edges and lung texture, several times the build time), gan (DCGAN trained "
        "adversarially with DiffAugment) or ddpm (diffusion model; needs fingerprint[gpu-gen], and a GPU above "
        "--level tiny)"
    )
    # counts
    image_size: int | None = _opt("side of the square 8-bit images (default 256; tiny: 64)")
    dev_generated: int | None = _opt("synthetic images in dev/generated (default 500)")
    dev_used: int | None = _opt("real images in dev/used (default 80)")
    dev_not_used: int | None = _opt("real images in dev/not_used (default 80)")
    test_generated: int | None = _opt("synthetic images in test/generated_1 (default 2000; the challenge had 10,000)")
    test_used: int | None = _opt("used images among test/real_unknown_1 (default 100)")
    test_not_used: int | None = _opt("not-used images among test/real_unknown_1 (default 100)")
    # phantoms
    slices_per_patient: int | None = _opt(
        "neighbouring slices per phantom patient (default 1); > 1 makes the hard case where a not-used image's "
        "patient has another slice among the used"
    )
    tb_fraction: float | None = _opt("share of phantom patients with tuberculosis-like findings (default 0.5)")
    noise: float | None = _opt("phantom scanner-noise scale, 0 = none (default 1)")
    # generator (vae, and the sharp family's coarse VAE)
    epochs: int | None = _opt("VAE training epochs (level preset)")
    components: int | None = _opt("latent Gaussian-mixture components (level preset; more = closer to training)")
    temperature: float | None = _opt("latent sampling temperature (level preset)")
    resolution: int | None = _opt("generator's internal resolution (default 64)")
    latent_dim: int | None = _opt("VAE latent dimension (default 32)")
    hidden: int | None = _opt("VAE hidden units per layer (default 512)")
    kl_weight: float | None = _opt("weight of the KL term (default 0.002)")
    batch_size: int | None = _opt("VAE batch size (default 32)")
    lr: float | None = _opt("VAE learning rate (default 0.002)")
    upsampler_steps: int | None = _opt("training steps of the learned upsampler (default 200)")
    # memorisation control (vae and sharp)
    memorised_share: float | None = _opt("share of samples drawn at a used image (vae default 0; sharp: level preset)")
    zipf: float | None = _opt("Zipf exponent of which used images memorised samples copy (default 1)")
    closeness: float | None = _opt("vae: memorised kernel width in posterior standard deviations (default 0.5)")
    # generator (sharp)
    modes: int | None = _opt("sharp: used images that novel samples start from, 0 = all (level preset)")
    warp_novel: float | None = _opt("sharp: bend of novel samples (default 1; hard 1.25)")
    warp_memorised: float | None = _opt("sharp: bend of memorised samples (default 0.3)")
    refiner_steps: int | None = _opt("sharp: adversarial refiner training steps (default 600)")
    adv_weight: float | None = _opt("sharp: weight of the refiner's adversarial loss (default 0.15)")
    calibrate: bool | None = _opt(
        "sharp, gan: calibrate the memorisation (sharp: modes and memorised_share) to the level's pixel-NN AUC target"
    )
    # generator (gan)
    gan_steps: int | None = _opt("gan: adversarial training steps (default 600)")
    width: int | None = _opt("gan: channels of the full-resolution layer, doubling per step down (default 16)")
    augment: float | None = _opt(
        "gan: DiffAugment probability per augmentation and image (easy 0, medium 0.3, hard 0.6)"
    )
    invert_steps: int | None = _opt("gan: steps refining the used images' latent points after training (default 40)")
    recon_weight: float | None = _opt(
        "gan: weight of the L1 pull of each used image's latent point (easy 5, medium 3, hard 1)"
    )
    # generator (ddpm; needs fingerprint[gpu-gen] and a GPU above --level tiny)
    ddpm_steps: int | None = _opt("ddpm: diffusion training steps (default 20000; tiny: 20)")
    sample_steps: int | None = _opt("ddpm: DDIM sampling steps (default 50)")
    mixed_precision: str | None = _opt(
        "generator training precision; bf16/fp16 are for GPUs (default no = fp32)", choices=MIXED_PRECISION
    )
    max_correlation: float | None = _opt(
        "redraw synthetic samples whose pixel correlation with any real image is above this (default 0.99)"
    )
    threads: int | None = _opt(
        "CPU threads for torch (default: vae 1; sharp and gan the cores per process, at most 4); fixed, so builds "
        "repeat"
    )
    cpu: bool | None = _opt("train on the CPU even if a GPU is present")
    progress: bool = option(True, help="progress bars")
    # collection-level benchmarks (fingerprint.benchdata.cases)
    audit_case: str | None = _opt(
        "also write an audit case in OUT/audit/ (candidate + reference drawn from the test split)",
        choices=tuple(AUDIT_CASES),
    )
    audit_fraction: float | None = _opt("partial audit case: share of the candidate that was used (default 0.5)")
    candidate: int | None = _opt("audit case: candidate images (default 50)", min=1)
    reference: int | None = _opt("audit case: reference images, none used (default 100)", min=1)
    subsets: int | None = _opt(
        "build this many real subsets, each training its own generator, and one mixed generated pool "
        "(attribution; replaces the test split)",
        min=2,
    )
    subset_size: int | None = _opt("subsets: real images per subset (default 50; tiny: 16)", min=2)
    subset_generated: int | None = _opt("subsets: generated images per generator (default 100; tiny: 30)", min=1)
    outside: bool = option(True, help="subsets: add a generator trained on reals in no subset (its images: 'none')")
    null_size: int | None = _opt("subsets: held-out reals in no subset (default: the subsets' total)", min=0)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.generator is not None and self.generator not in families():
            raise fail(self, "generator", f"must be one of {', '.join(families())}, got {self.generator!r}")
        if self.audit_case is not None and self.subsets is not None:
            raise fail(self, "audit_case", "and synth.subsets build different benchmarks: give one")

    def overrides(self) -> dict[str, Any]:
        """The SynthParams / generator-config overrides (None = not given)."""
        fixed = {"out", "level", "seed", "real_dir", "force", "progress", "generator", *_CASE_FIELDS}
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in fixed}
        return values | {"family": self.generator}


_CASE_FIELDS = ("audit_case", "audit_fraction", "candidate", "reference", "subsets", "subset_size",
                "subset_generated", "outside", "null_size")  # fmt: skip


def run_synth(cfg: SynthConfig) -> dict:
    """Build the benchmark described by `cfg` (an audit case or subsets when asked); returns its synth.json."""
    check_writable(Path(cfg.out).parent)  # before training the generator
    common = {"level": cfg.level, "seed": cfg.seed, "real_dir": cfg.real_dir, "force": cfg.force}
    if cfg.subsets is not None:
        return build_subsets(
            cfg.out, n_subsets=cfg.subsets, subset_size=cfg.subset_size, subset_generated=cfg.subset_generated,
            outside=cfg.outside, null_size=cfg.null_size, progress=cfg.progress, **common, **cfg.overrides(),
        )  # fmt: skip
    if cfg.audit_case is not None:
        return build_audit_case(
            cfg.out, case=cfg.audit_case, fraction=cfg.audit_fraction, n_candidate=cfg.candidate or 50,
            n_reference=cfg.reference or 100, progress=cfg.progress, **common, **cfg.overrides(),
        )  # fmt: skip
    return build_benchmark(cfg.out, progress=cfg.progress, **common, **cfg.overrides())


def build_benchmark(
    out_dir: str | os.PathLike,
    *,
    level: str = "medium",
    seed: int = 0,
    real_dir: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = True,
    accelerator=None,
    **overrides: Any,
) -> dict:
    """Build a membership benchmark in `out_dir`; return the content of its synth.json.

    `overrides` are `SynthParams` / `GeneratorConfig` field names (e.g.
    `dev_generated=100`, `epochs=50`, `slices_per_patient=3`, `family="vae"`).
    `out_dir` must not exist unless `force`; it is built under a temporary name
    and renamed when complete. Under a multi-process Accelerate launch every
    rank trains and rank 0 samples and writes.
    """
    out_dir = Path(out_dir)
    params = resolve_params(level, seed=seed, real_dir=real_dir, **overrides)
    if out_dir.exists() and not force:
        raise FingerprintError(f"{out_dir}: already exists (use synth.force to replace it)")
    if out_dir.exists() and not out_dir.is_dir():
        raise FingerprintError(f"{out_dir}: exists and is not a folder")
    prev_threads = torch.get_num_threads()
    set_threads(params.threads)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    try:
        accelerator = accelerator or family_accelerator(params.generator)
        main = accelerator.is_main_process and is_main_process()
        t0 = time.perf_counter()
        real = folder_images(params) if params.real_dir else phantom_images(params, progress and main)
        timings["real_images"] = time.perf_counter() - t0
        split = _split(params, real)
        used_idx = np.concatenate([split["dev_used"], split["test_used"]])
        log.info("training the generator on %d used images (%s level, seed %d)", len(used_idx), level, params.seed)
        t0 = time.perf_counter()
        train = get_family(params.family).train
        gen, history = train(
            real.images[used_idx], params.generator, seed=params.seed, accelerator=accelerator, progress=progress
        )
        timings["training"] = time.perf_counter() - t0
        if hasattr(gen, "calibrate"):  # memorisation set to the level's leakage target (generators.calibrate)
            t0 = time.perf_counter()
            test = np.concatenate([split["test_used"], split["test_not_used"]])
            labels = np.r_[np.ones(len(split["test_used"]), int), np.zeros(len(split["test_not_used"]), int)]
            history["calibration"] = gen.calibrate(
                real.images[test], labels, level=params.level, n=params.test_generated, seed=params.seed
            )
            timings["calibration"] = time.perf_counter() - t0
        if main:
            sample_and_write(out_dir, params, real, split, gen, history, timings, t_all)
        accelerator.wait_for_everyone()
    finally:
        torch.set_num_threads(prev_threads)
    return read_json(out_dir / "synth.json")


def _split(p: SynthParams, real: RealImages) -> dict[str, np.ndarray]:
    """Random assignment of the real pool to the four roles (seeded)."""
    perm = np.random.default_rng([p.seed & 0xFFFFFFFF, 0x5917]).permutation(len(real.images))
    out, k = {}, 0
    for name in ("dev_used", "dev_not_used", "test_used", "test_not_used"):
        n = getattr(p, name)
        out[name] = perm[k : k + n]
        k += n
    return out
