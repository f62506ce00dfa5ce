"""Real images for a benchmark: procedural CT-like phantoms, or any folder of images converted to 8-bit gray.

Each image carries a group (its phantom patient, or the image itself for a
folder), so the builder can report how many not-used images have a sibling
slice among the used ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fingerprint.benchdata.anatomy import PhantomConfig
from fingerprint.benchdata.params import SynthParams
from fingerprint.benchdata.phantom import generate
from fingerprint.core.errors import FingerprintError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pgm", ".ppm")


@dataclass
class RealImages:
    """A pool of real images with where each came from."""

    images: np.ndarray  # uint8 (n, s, s)
    sources: list[str]  # where each came from
    group: np.ndarray  # patient id (phantoms) or image index (folder); images of one group are one person
    skipped: dict[str, int]


def phantom_images(p: SynthParams, progress: bool = False) -> RealImages:
    """`p.n_real` phantom slices (groups = patients)."""
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
            "lower synth.dev_used/dev_not_used/test_used/test_not_used"
        )
    return RealImages(np.stack(images), sources, np.arange(len(images)), skipped)
