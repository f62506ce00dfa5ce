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

import csv
import io
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fingerprint import __version__
from fingerprint.benchdata.difficulty import measure_difficulty
from fingerprint.benchdata.generators import TrainedGenerator, families, family_accelerator, get_family
from fingerprint.benchdata.generators.vae import GeneratorConfig
from fingerprint.benchdata.realimages import RealImages, folder_images, phantom_images
from fingerprint.config import check_fields, fail, option
from fingerprint.distributed import set_threads
from fingerprint.utils import FingerprintError, atomic_path, is_main_process, read_json, write_json
from fingerprint.vocab import MIXED_PRECISION

log = logging.getLogger(__name__)

FORMAT = "fingerprint-synth/1"


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
    threads: int = 1  # torch CPU threads; fixed so runs repeat exactly (more threads than free cores slow torch down)
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
    # a level's generator preset applies to the fields the family has
    gen_over = {k: v for k, v in preset.pop("generator", {}).items() if k in gen_fields}
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
    generator: str | None = _opt("generator family (fingerprint.benchdata.generators; default vae)")
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
    # generator (vae)
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
    mixed_precision: str | None = _opt(
        "generator training precision; bf16/fp16 are for GPUs (default no = fp32)", choices=MIXED_PRECISION
    )
    max_correlation: float | None = _opt(
        "redraw synthetic samples whose pixel correlation with any real image is above this (default 0.99)"
    )
    threads: int | None = _opt("CPU threads for torch (default 1: repeatable and fastest on a shared machine)")
    cpu: bool | None = _opt("train on the CPU even if a GPU is present")
    progress: bool = option(True, help="progress bars")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.generator is not None and self.generator not in families():
            raise fail(self, "generator", f"must be one of {', '.join(families())}, got {self.generator!r}")

    def overrides(self) -> dict[str, Any]:
        """The SynthParams / generator-config overrides (None = not given)."""
        fixed = {"out", "level", "seed", "real_dir", "force", "progress", "generator"}
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in fixed}
        return values | {"family": self.generator}


def run_synth(cfg: SynthConfig) -> dict:
    """Build the benchmark described by `cfg`; returns the content of its synth.json."""
    return build_benchmark(
        cfg.out, level=cfg.level, seed=cfg.seed, real_dir=cfg.real_dir, force=cfg.force, progress=cfg.progress,
        **cfg.overrides(),
    )  # fmt: skip


# ---------------------------------------------------------------- sampling


def _unit_rows(x: np.ndarray):
    """Images as rows, centred and scaled to unit norm (constant rows stay zero): a float32 torch tensor."""
    v = torch.from_numpy(x.reshape(len(x), -1).astype(np.float32))
    v -= v.mean(dim=1, keepdim=True)
    norm = v.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, v / norm.clamp_min(1e-12), torch.zeros_like(v))


def sample_checked(
    gen: TrainedGenerator, n: int, real: np.ndarray, *, seed: int, max_correlation: float, batch: int = 256
) -> tuple[np.ndarray, dict]:
    """Draw `n` samples, redrawing any whose pixel correlation with a real image exceeds `max_correlation`
    (or that equals one exactly). Returns the images and rejection statistics."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 0x5A3])
    real_u = _unit_rows(real)
    real_bytes = {r.tobytes() for r in real}
    out: list[np.ndarray] = []
    rejected, drawn, max_kept = 0, 0, -1.0
    while sum(len(o) for o in out) < n:
        need = n - sum(len(o) for o in out)
        imgs = gen.draw(min(batch, need), rng)
        drawn += len(imgs)
        corr = (_unit_rows(imgs) @ real_u.T).max(dim=1).values.numpy()
        ok = corr <= max_correlation
        ok &= np.array([im.tobytes() not in real_bytes for im in imgs])
        rejected += int((~ok).sum())
        if ok.any():
            out.append(imgs[ok])
            max_kept = max(max_kept, float(corr[ok].max()))
        if rejected > 10 * n + 100:
            raise FingerprintError(
                f"the generator keeps reproducing real images (rejected {rejected} of {drawn} samples with "
                f"pixel correlation > {max_correlation}); raise --temperature or lower --epochs"
            )
    return np.concatenate(out)[:n], {"drawn": drawn, "rejected": rejected, "max_kept_correlation": round(max_kept, 5)}


# ---------------------------------------------------------------- writing


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, "L").save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def _write_pngs(folder: Path, prefix: str, images: np.ndarray, digits: int, pool: ThreadPoolExecutor) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    width = max(digits, len(str(len(images))))
    keys = [f"{prefix}_{i + 1:0{width}d}" for i in range(len(images))]

    def write(k: int) -> None:
        (folder / f"{keys[k]}.png").write_bytes(_png_bytes(images[k]))

    list(pool.map(write, range(len(images))))
    return keys


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
        if main:
            _sample_and_write(out_dir, params, real, split, gen, history, timings, t_all)
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


def _sample_and_write(
    out_dir: Path, p: SynthParams, real: RealImages, split: dict, gen, history: dict, timings: dict, t_all: float
) -> None:
    t0 = time.perf_counter()
    dev_gen, dev_rej = sample_checked(
        gen, p.dev_generated, real.images, seed=p.seed * 2 + 1, max_correlation=p.max_correlation
    )
    test_gen, test_rej = sample_checked(
        gen, p.test_generated, real.images, seed=p.seed * 2 + 2, max_correlation=p.max_correlation
    )
    timings["sampling"] = time.perf_counter() - t0

    # the test real images: used and not used, shuffled together
    test_idx = np.concatenate([split["test_used"], split["test_not_used"]])
    test_lab = np.r_[np.ones(len(split["test_used"]), int), np.zeros(len(split["test_not_used"]), int)]
    order = np.random.default_rng([p.seed & 0xFFFFFFFF, 0x7E57]).permutation(len(test_idx))
    test_idx, test_lab = test_idx[order], test_lab[order]

    used_groups = set(real.group[np.concatenate([split["dev_used"], split["test_used"]])].tolist())
    not_used = np.concatenate([split["dev_not_used"], split["test_not_used"]])
    siblings = int(sum(g in used_groups for g in real.group[not_used].tolist()))

    with atomic_path(out_dir) as tmp:
        t0 = time.perf_counter()
        tmp.mkdir(parents=True)
        sources: list[tuple[str, str, str]] = []
        with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
            for folder, prefix, idx, digits in (
                ("dev/used", "used", split["dev_used"], 4),
                ("dev/not_used", "not_used", split["dev_not_used"], 4),
                ("test/real_unknown_1", "real_unknown", test_idx, 4),
            ):
                keys = _write_pngs(tmp / folder, prefix, real.images[idx], digits, pool)
                sources += [(k, folder, real.sources[i]) for k, i in zip(keys, idx)]
            _write_pngs(tmp / "dev" / "generated", "generated", dev_gen, 4, pool)
            _write_pngs(tmp / "test" / "generated_1", "generated", test_gen, 5, pool)
        unknown_keys = [s[0] for s in sources if s[1] == "test/real_unknown_1"]
        truth = "figure_id,label\n" + "".join(f"{k},{int(y)}\n" for k, y in zip(unknown_keys, test_lab))
        (tmp / "test_truth.csv").write_text(truth)
        src = io.StringIO()
        w = csv.writer(src, lineterminator="\n")
        w.writerow(["figure_id", "folder", "source"])
        w.writerows(sources)
        (tmp / "real_sources.csv").write_text(src.getvalue())
        timings["writing"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        difficulty = measure_difficulty(tmp)
        timings["difficulty"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_all
        info = _info(p, real, history, dev_rej, test_rej, difficulty, timings, siblings)
        write_json(tmp / "synth.json", info)
    log.info(
        "wrote %s: pixel-NN AUC dev %.3f, test %.3f (%.0f s)",
        out_dir,
        difficulty["dev"],
        difficulty["test"],
        timings["total"],
    )


def _info(
    p: SynthParams,
    real: RealImages,
    history: dict,
    dev_rej: dict,
    test_rej: dict,
    difficulty: dict,
    timings: dict,
    siblings: int,
) -> dict:
    params = asdict(p)
    return {
        "format": FORMAT,
        "level": p.level,
        "seed": p.seed,
        "params": params,
        "source": "real_dir" if p.real_dir else "phantom",
        "counts": {
            "dev": {"generated": p.dev_generated, "used": p.dev_used, "not_used": p.dev_not_used},
            "test": {
                "generated": p.test_generated,
                "real_unknown": p.test_used + p.test_not_used,
                "used": p.test_used,
                "not_used": p.test_not_used,
            },
            "generator_training_images": p.dev_used + p.test_used,
        },
        "layout": {
            "dev": {"generated": "dev/generated", "used": "dev/used", "not_used": "dev/not_used"},
            "test": {"generated": "test/generated_1", "real_unknown": "test/real_unknown_1"},
            "truth": "test_truth.csv",
            "sources": "real_sources.csv",
        },
        "real_images": {
            "skipped": real.skipped,
            "groups": int(len(np.unique(real.group))),
            "not_used_with_used_sibling": siblings,  # not-used images whose patient has a used slice
        },
        "generator": {"family": p.family, **get_family(p.family).summarize(history)},
        "near_duplicates": {
            "max_correlation": p.max_correlation,
            "dev": dev_rej,
            "test": test_rej,
            "rejected": dev_rej["rejected"] + test_rej["rejected"],
        },
        "difficulty": {
            "pixel_nn_auc": difficulty,
            "method": "ROC-AUC of -(L2 distance to the nearest generated image), pixels in [0, 1]",
        },
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "environment": {
            "fingerprint": __version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "threads": torch.get_num_threads(),
        },
    }
