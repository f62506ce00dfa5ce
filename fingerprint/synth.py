"""Membership benchmarks in the ImageCLEFmedical GANs 2023 layout, with a generator really trained on the used images.

`build_benchmark(out_dir, level=..., seed=...)`:

1. takes real images: procedural CT-like slices (`fingerprint.phantom`, one
   patient per image or several neighbouring slices per patient), or any
   folder of images (`real_dir`, converted to 8-bit gray at `image_size`);
2. splits them at random into dev used / dev not used / test used / test not used;
3. trains the generator (`fingerprint.generator`) on the union of the dev and
   test used images only;
4. samples the dev and test synthetic images from it, rejecting (and
   resampling) any sample whose pixel correlation with any real image
   exceeds `max_correlation`, so no synthetic image is a near-copy;
5. writes the challenge layout (below) in a temporary folder, measures the
   difficulty on the files written (ROC-AUC of the plain pixel-space
   nearest-synthetic-neighbour distance, on dev and on test), and renames the
   folder into place.

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
from PIL import Image, UnidentifiedImageError

from fingerprint import __version__
from fingerprint.generator import GeneratorConfig, make_accelerator, train_generator
from fingerprint.metrics import read_truth
from fingerprint.phantom import PhantomConfig, generate
from fingerprint.utils import FingerprintError, atomic_path, is_main_process, read_json, write_json

log = logging.getLogger(__name__)

FORMAT = "fingerprint-synth/1"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pgm", ".ppm")


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
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)

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
_GEN_FIELDS = {f.name for f in fields(GeneratorConfig)}


def resolve_params(
    level: str = "medium", *, seed: int = 0, real_dir: str | os.PathLike | None = None, **overrides: Any
) -> SynthParams:
    """The parameters of a build: `SynthParams` defaults <- level preset <- overrides (flat names).

    An override is any `SynthParams` or `GeneratorConfig` field name; None means "not given".
    """
    if level not in LEVELS:
        raise FingerprintError(f"unknown level {level!r} (choose from {', '.join(LEVELS)})")
    preset = dict(LEVELS[level])
    gen_over = dict(preset.pop("generator", {}))
    top = {**preset, "level": level, "seed": int(seed), "real_dir": None if real_dir is None else str(real_dir)}
    for key, value in overrides.items():
        if value is None:
            continue
        if key in _SYNTH_FIELDS:
            top[key] = value
        elif key in _GEN_FIELDS:
            gen_over[key] = value
        else:
            raise FingerprintError(f"unknown benchmark parameter {key!r}")
    try:
        gen = replace(GeneratorConfig(), **gen_over)
        params = replace(SynthParams(), **top, generator=gen)
    except ValueError as e:
        raise FingerprintError(str(e)) from None
    _check(params)
    return params


def _check(p: SynthParams) -> None:
    for name in ("dev_generated", "dev_used", "dev_not_used", "test_generated", "test_used", "test_not_used"):
        if getattr(p, name) < 1:
            raise FingerprintError(f"{name.replace('_', '-')} must be >= 1, got {getattr(p, name)}")
    if p.image_size < 16:
        raise FingerprintError(f"image-size must be >= 16, got {p.image_size}")
    r = p.generator.resolution
    if p.image_size % r or r > p.image_size:
        raise FingerprintError(f"image-size {p.image_size} must be a multiple of the generator resolution {r}")
    if p.slices_per_patient < 1:
        raise FingerprintError(f"slices-per-patient must be >= 1, got {p.slices_per_patient}")
    if p.real_dir is not None and p.slices_per_patient != 1:
        raise FingerprintError("--slices-per-patient applies to the phantom source only, not to --real-dir")
    if p.threads < 1:
        raise FingerprintError(f"threads must be >= 1, got {p.threads}")
    if not 0.0 < p.max_correlation <= 1.0:
        raise FingerprintError(f"max-correlation must be in (0, 1], got {p.max_correlation}")
    if p.real_dir is not None and not Path(p.real_dir).is_dir():
        raise FingerprintError(f"{p.real_dir}: real-image folder not found")


# ---------------------------------------------------------------- real images


@dataclass
class RealImages:
    images: np.ndarray  # uint8 (n, s, s)
    sources: list[str]  # where each came from
    group: np.ndarray  # patient id (phantoms) or image index (folder); images of one group are one person
    skipped: dict[str, int]


def phantom_images(p: SynthParams, progress: bool = False) -> RealImages:
    cfg = PhantomConfig(
        size=p.image_size, tb_fraction=p.tb_fraction, slices_per_patient=p.slices_per_patient, noise=p.noise
    )
    ps = generate(p.n_real, seed=p.seed, config=cfg, progress=progress)
    sources = [f"phantom:patient={int(a)},slice={int(b)}" for a, b in zip(ps.patient, ps.slice)]
    return RealImages(ps.images, sources, ps.patient.copy(), {})


def to_gray(img: Image.Image, size: int) -> tuple[np.ndarray, str | None]:
    """Convert any PIL image to uint8 gray (size x size): centre square crop, then bicubic resize.

    16-bit and float images are scaled from their own min..max to 0..255.
    Returns the pixels and a description of the conversion (None if none was needed).
    """
    notes = []
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
        notes.append(f"{lo:g}..{hi:g} scaled to 0..255")
    elif img.mode != "L":
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")
            bg = Image.new("RGBA", img.size, (0, 0, 0, 255))
            img = Image.alpha_composite(bg, img)
            notes.append("alpha composited on black")
        notes.append(f"{img.mode} to L")
        img = img.convert("L")
    w, h = img.size
    if w != h:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
        notes.append(f"centre crop {w}x{h} to {s}x{s}")
    if img.size != (size, size):
        notes.append(f"resize {img.size[0]} to {size}")
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, np.uint8).copy(), ("; ".join(notes) or None)


def folder_images(p: SynthParams) -> RealImages:
    """Read `real_dir` recursively; unreadable files and exact duplicates are counted and skipped."""
    root = Path(p.real_dir)
    files = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FingerprintError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    order = np.random.default_rng([p.seed & 0xFFFFFFFF, 0xF01D]).permutation(len(files))
    images, sources, seen = [], [], set()
    skipped = {"unreadable": 0, "duplicate": 0}
    for k in order:
        if len(images) == p.n_real:
            break
        f = files[k]
        try:
            with Image.open(f) as im:
                im.load()
                arr, _ = to_gray(im, p.image_size)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
            skipped["unreadable"] += 1
            log.warning(
                "%s: skipped, cannot read image (%s)", f, str(e).splitlines()[0] if str(e) else type(e).__name__
            )
            continue
        digest = arr.tobytes()
        if digest in seen:
            skipped["duplicate"] += 1
            continue
        seen.add(digest)
        images.append(arr)
        sources.append(str(f.relative_to(root)))
    if len(images) < p.n_real:
        raise FingerprintError(
            f"{root}: {len(images)} usable images ({skipped['unreadable']} unreadable, {skipped['duplicate']} "
            f"duplicates skipped), need {p.n_real} (dev used + dev not used + test used + test not used); "
            f"lower --dev-used/--dev-not-used/--test-used/--test-not-used"
        )
    return RealImages(np.stack(images), sources, np.arange(len(images)), skipped)


# ---------------------------------------------------------------- sampling


def _unit_rows(x: np.ndarray):
    """Images as rows, centred and scaled to unit norm (constant rows stay zero): a float32 torch tensor."""
    import torch

    v = torch.from_numpy(x.reshape(len(x), -1).astype(np.float32))
    v -= v.mean(dim=1, keepdim=True)
    norm = v.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, v / norm.clamp_min(1e-12), torch.zeros_like(v))


def sample_checked(
    gen, n: int, real: np.ndarray, *, seed: int, max_correlation: float, batch: int = 256
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
        imgs = gen.decode(gen.sample_latents(min(batch, need), rng))
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


# ---------------------------------------------------------------- difficulty


def nearest_distances(real: np.ndarray, generated: np.ndarray, chunk: int = 512) -> np.ndarray:
    """L2 distance (pixels scaled to [0, 1]) from each real image to its nearest generated image."""
    import torch

    r = torch.from_numpy(real.reshape(len(real), -1).astype(np.float32) / 255.0)
    rn = (r * r).sum(1)
    best = torch.full((len(r),), float("inf"))
    for i in range(0, len(generated), chunk):
        g = torch.from_numpy(generated[i : i + chunk].reshape(-1, r.shape[1]).astype(np.float32) / 255.0)
        d = rn[:, None] + (g * g).sum(1)[None, :] - 2.0 * (r @ g.T)
        best = torch.minimum(best, d.min(dim=1).values)
    return best.clamp_min(0.0).sqrt().numpy()


def pixel_nn_auc(real: np.ndarray, labels: np.ndarray, generated: np.ndarray) -> float:
    """ROC-AUC of score = -(L2 distance to the nearest generated image), label 1 = used."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(labels), -nearest_distances(real, generated)))


def _read_folder(folder: Path, prefix: str) -> tuple[list[str], np.ndarray]:
    files = sorted(folder.glob(f"{prefix}_*.png"))
    if not files:
        raise FingerprintError(f"{folder}: no {prefix}_*.png images")
    arrs = []
    for f in files:
        try:
            with Image.open(f) as im:
                arrs.append(np.asarray(im.convert("L"), np.uint8))
        except (OSError, UnidentifiedImageError) as e:
            raise FingerprintError(f"{f}: cannot read image ({e})") from None
    shapes = {a.shape for a in arrs}
    if len(shapes) != 1:
        raise FingerprintError(f"{folder}: images of different sizes {sorted(shapes)}")
    return [f.stem for f in files], np.stack(arrs)


def measure_difficulty(root: str | os.PathLike) -> dict:
    """Pixel-NN ROC-AUC of a benchmark folder in the 2023 layout (dev labels; test via test_truth.csv)."""
    root = Path(root)
    _, gen = _read_folder(root / "dev" / "generated", "generated")
    _, used = _read_folder(root / "dev" / "used", "used")
    _, not_used = _read_folder(root / "dev" / "not_used", "not_used")
    dev = pixel_nn_auc(np.concatenate([used, not_used]), np.r_[np.ones(len(used)), np.zeros(len(not_used))], gen)
    out = {"dev": round(dev, 4)}
    truth_file = root / "test_truth.csv"
    if truth_file.is_file():
        truth = read_truth(truth_file)
        _, tgen = _read_folder(root / "test" / "generated_1", "generated")
        keys, unknown = _read_folder(root / "test" / "real_unknown_1", "real_unknown")
        missing = [k for k in keys if k not in truth]
        if missing:
            raise FingerprintError(f"{truth_file}: no label for {missing[0]} ({len(missing)} missing)")
        out["test"] = round(pixel_nn_auc(unknown, np.array([truth[k] for k in keys]), tgen), 4)
    return out


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
    `dev_generated=100`, `epochs=50`, `slices_per_patient=3`). `out_dir` must
    not exist unless `force`; it is built under a temporary name and renamed
    when complete. Under a multi-process Accelerate launch every rank trains
    and rank 0 samples and writes.
    """
    import torch

    from fingerprint.utils import set_threads

    out_dir = Path(out_dir)
    params = resolve_params(level, seed=seed, real_dir=real_dir, **overrides)
    if out_dir.exists() and not force:
        raise FingerprintError(f"{out_dir}: already exists (use --force to replace it)")
    if out_dir.exists() and not out_dir.is_dir():
        raise FingerprintError(f"{out_dir}: exists and is not a folder")
    prev_threads = torch.get_num_threads()
    set_threads(params.threads)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    try:
        accelerator = accelerator or make_accelerator(params.generator)
        main = accelerator.is_main_process and is_main_process()
        t0 = time.perf_counter()
        real = folder_images(params) if params.real_dir else phantom_images(params, progress and main)
        timings["real_images"] = time.perf_counter() - t0
        split = _split(params, real)
        used_idx = np.concatenate([split["dev_used"], split["test_used"]])
        log.info("training the generator on %d used images (%s level, seed %d)", len(used_idx), level, params.seed)
        t0 = time.perf_counter()
        gen, history = train_generator(
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
    import torch

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
        "generator": {
            "model": "fully connected VAE + latent Gaussian mixture + learned upsampler",
            "curve": history["vae"],
            "upsampler_curve": history["upsampler"],
            "mixture_components": history["mixture_components"],
            "seconds": {k: history[k] for k in ("vae_seconds", "mixture_seconds", "upsampler_seconds")},
            "world_size": history["world_size"],
            "device": history["device"],
        },
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
