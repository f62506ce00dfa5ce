"""`fingerprint synth`: its options (`SynthConfig`) and `run_synth`, which builds a benchmark, an audit case or subsets.

The build itself is `fingerprint.benchdata.benchmark.build_benchmark`; audit
cases and subsets are `fingerprint.benchdata.cases`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fingerprint.benchdata.benchmark import build_benchmark
from fingerprint.benchdata.cases import AUDIT_CASES, build_audit_case, build_subsets
from fingerprint.benchdata.generators import families
from fingerprint.benchdata.layout import BIT_DEPTHS
from fingerprint.benchdata.params import LEVELS
from fingerprint.core.config import check_fields, fail, option
from fingerprint.core.files import check_writable
from fingerprint.core.vocab import MIXED_PRECISION

log = logging.getLogger(__name__)


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
    bit_depth: int = option(
        8,
        choices=BIT_DEPTHS,
        help="write the images at this depth: 12 (12-bit values in 16-bit PNGs, as CT slices are stored) or 16; "
        "the 8-bit images widened with seeded dither (the benchmark only, not audit cases or subsets)",
    )
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
        if self.bit_depth != 8 and (self.audit_case is not None or self.subsets is not None):
            raise fail(self, "bit_depth", "applies to the benchmark layout only, not to audit cases or subsets")
        if self.audit_case is not None and self.subsets is not None:
            raise fail(self, "audit_case", "and synth.subsets build different benchmarks: give one")

    def overrides(self) -> dict[str, Any]:
        """The SynthParams / generator-config overrides (None = not given)."""
        fixed = {"out", "level", "seed", "real_dir", "force", "progress", "generator", "bit_depth", *_CASE_FIELDS}
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
    return build_benchmark(cfg.out, progress=cfg.progress, bit_depth=cfg.bit_depth, **common, **cfg.overrides())
