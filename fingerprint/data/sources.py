"""What goes into shards: input layouts (2023 dev/test, the seed's naming, CSV/JSONL manifests), image conversion.

`find_sources` lists an input folder's images with their role and label,
`make_keys` gives each a unique dot-free key (the file stem; it becomes the
figure id of run files), and `load_image` decodes any image to 8-bit
grayscale at the packing size, recording what was converted.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import sha256_bytes
from fingerprint.core.intensity import significant_depth
from fingerprint.core.vocab import LABELS, ROLES

ENCODINGS = ("png", "npy")
LAYOUTS = ("auto", "dev", "test", "seed", "manifest")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
MANIFEST_NAMES = ("manifest.csv", "manifest.jsonl")


@dataclass(frozen=True)
class SourceImage:
    """One input image: where it is and what it is."""

    path: Path  # the file (a link is kept as the link: reading follows it)
    rel: str  # path relative to the input root (posix), recorded in the shard
    role: str
    label: str
    problem: str | None = None  # why it cannot be read (a broken or refused link): a counted skip at pack


LINKS = ("follow", "inside")


# ----------------------------------------------------------------------------- layouts


def _link_problem(p: Path, root: Path, links: str) -> str | None:
    """Why the file (or link) `p` cannot be used: a broken link, a loop, or a link out of `root` when refused."""
    try:
        target = p.resolve(strict=True)
    except FileNotFoundError:
        return f"broken link (its target {os.readlink(p) if p.is_symlink() else p} does not exist)"
    except (OSError, RuntimeError) as e:  # a link loop
        return f"link cannot be followed ({type(e).__name__}: {e})"
    if links == "inside" and root not in target.parents:
        return f"link leads outside the input folder, to {target} (links = inside)"
    return None


def _image_files(folder: Path, root: Path, links: str = "follow") -> list[tuple[Path, str | None]]:
    """(file, problem) for the image files under `folder`, sorted by path.

    Walks recursively, following links to files and folders (a folder reached
    twice through links is walked once); hidden entries are left out. A link
    that cannot be followed (broken, a loop, or leading out of `root` with
    `links` = inside) is listed with its problem rather than dropped.
    """
    out: list[tuple[Path, str | None]] = []
    if _link_problem(folder, root, links) is not None and folder.is_symlink():
        return [(folder, _link_problem(folder, root, links))]
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        base = Path(dirpath)
        kept = []
        for d in sorted(dirnames):
            problem = _link_problem(base / d, root, links) if (base / d).is_symlink() else None
            if d.startswith("."):
                continue
            if problem is not None:
                out.append((base / d, problem))
            else:
                kept.append(d)
        dirnames[:] = kept
        for name in filenames:
            p = base / name
            if name.startswith(".") or p.suffix.lower() not in IMAGE_EXTS:
                continue
            problem = _link_problem(p, root, links) if p.is_symlink() else None
            if problem is None and not p.is_file():
                continue
            out.append((p, problem))
    return sorted(out, key=lambda fp: fp[0].as_posix())


def list_images(folder: str | os.PathLike, links: str = "follow") -> list[tuple[Path, str | None]]:
    """(file, problem) for the image files under `folder`, links followed (see `_image_files`), sorted by path."""
    base = Path(os.path.abspath(folder))
    return _image_files(base, base.resolve(), links)


def _layout_folders(src: Path, layout: str) -> list[tuple[Path, str, str]]:
    """(folder, role, label) for the folder layouts; empty when `src` does not match."""

    def d(name: str) -> Path:
        return src / name

    if layout == "dev":
        spec = [("generated", "generated", "unknown"), ("used", "real", "used"), ("not_used", "real", "not_used")]
        return [(d(n), r, lab) for n, r, lab in spec if d(n).is_dir()]
    if layout == "seed":
        spec = [
            ("generated", "generated", "unknown"),
            ("real_used", "real", "used"),
            ("real_unused", "real", "not_used"),
        ]
        return [(d(n), r, lab) for n, r, lab in spec if d(n).is_dir()]
    if layout == "test":
        out = []
        for p in sorted(src.iterdir()):
            if p.is_dir() and re.fullmatch(r"generated(_\d+)?", p.name):
                out.append((p, "generated", "unknown"))
            elif p.is_dir() and re.fullmatch(r"real_unknown(_\d+)?", p.name):
                out.append((p, "real", "unknown"))
        return out
    raise ValueError(layout)


def _find_manifest(src: Path) -> Path | None:
    for name in MANIFEST_NAMES:
        if (src / name).is_file():
            return src / name
    return None


def detect_layout(src: str | os.PathLike) -> str:
    """Name the layout of `src` (dev, test, seed or manifest); FingerprintError if none or several match."""
    src = Path(src)
    if not src.is_dir():
        raise FingerprintError(f"{src}: input folder not found")
    names = {p.name for p in src.iterdir() if p.is_dir()}
    found = []
    if names & {"used", "not_used"}:
        found.append("dev")
    if names & {"real_used", "real_unused"}:
        found.append("seed")
    if any(re.fullmatch(r"real_unknown(_\d+)?", n) for n in names):
        found.append("test")
    if _find_manifest(src) is not None:
        found.append("manifest")
    if not found:
        raise FingerprintError(
            f"{src}: no known layout (expected used/ + not_used/ + generated/ (dev), "
            "real_unknown_1/ + generated_1/ (test), real_used/ + real_unused/ + generated/ (seed), "
            "or manifest.csv/manifest.jsonl; or set pack.manifest)"
        )
    if len(found) > 1:
        raise FingerprintError(f"{src}: matches several layouts ({', '.join(found)}); choose one with pack.layout")
    return found[0]


def _read_manifest_rows(manifest: Path) -> list[dict[str, str]]:
    """Rows {path, role, label} of a CSV (with header) or JSONL manifest."""
    rows: list[dict[str, str]] = []
    try:
        if manifest.suffix.lower() == ".jsonl":
            for n, line in enumerate(manifest.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise FingerprintError(f"{manifest}: line {n}: not valid JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise FingerprintError(f"{manifest}: line {n}: expected a JSON object")
                rows.append({k: ("" if v is None else str(v)) for k, v in obj.items()} | {"_line": str(n)})
        else:
            with open(manifest, newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames is None or "path" not in [c.strip() for c in reader.fieldnames]:
                    raise FingerprintError(f"{manifest}: CSV manifest needs a header with columns path,role,label")
                for n, row in enumerate(reader, 2):
                    rows.append({(k or "").strip(): (v or "").strip() for k, v in row.items()} | {"_line": str(n)})
    except OSError as e:
        raise FingerprintError(f"{manifest}: cannot read manifest ({e.strerror})") from None
    return rows


def _manifest_sources(manifest: Path, links: str = "follow") -> list[SourceImage]:
    root = manifest.parent.resolve()
    out = []
    for row in _read_manifest_rows(manifest):
        where = f"{manifest}: line {row['_line']}"
        path, role, label = row.get("path", ""), row.get("role", ""), row.get("label", "")
        if not path:
            raise FingerprintError(f"{where}: empty path")
        if role not in ROLES:
            raise FingerprintError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
        label = label or "unknown"
        if label not in LABELS:
            raise FingerprintError(f"{where}: label {label!r} is not one of {', '.join(LABELS)}")
        p = Path(path)
        if p.is_absolute():
            raise FingerprintError(f"{where}: path {path!r} must be relative to the manifest")
        rel = os.path.normpath(p.as_posix())
        if rel == ".." or rel.startswith("../"):
            raise FingerprintError(f"{where}: path {path!r} leaves the manifest's folder")
        full = root / rel
        problem = _link_problem(full, root, links) if full.is_symlink() else None
        out.append(SourceImage(full, Path(rel).as_posix(), role, label, problem))
    if not out:
        raise FingerprintError(f"{manifest}: manifest lists no images")
    return out


def find_sources(
    src: str | os.PathLike, layout: str = "auto", manifest: str | os.PathLike | None = None, links: str = "follow"
) -> tuple[str, list[SourceImage]]:
    """List the images of `src` with role and label, sorted by relative path; returns (layout, images).

    Links to files and folders are followed (`links` = inside: only those
    that stay inside `src`). An image whose link cannot be followed is
    listed with its `problem`, for the caller to count and list as skipped.
    """
    src = Path(src)
    if layout not in LAYOUTS:
        raise FingerprintError(f"unknown layout {layout!r} (choose from {', '.join(LAYOUTS)})")
    if links not in LINKS:
        raise FingerprintError(f"unknown links rule {links!r} (choose from {', '.join(LINKS)})")
    if manifest is not None:
        if layout not in ("auto", "manifest"):
            raise FingerprintError(f"pack.manifest cannot be combined with pack.layout {layout}")
        manifest = Path(manifest)
        if not manifest.is_file():
            raise FingerprintError(f"{manifest}: manifest file not found")
        return "manifest", sorted(_manifest_sources(manifest, links), key=lambda s: s.rel)
    if not src.is_dir():
        raise FingerprintError(f"{src}: input folder not found")
    if layout == "auto":
        layout = detect_layout(src)
    if layout == "manifest":
        found = _find_manifest(src)
        if found is None:
            raise FingerprintError(f"{src}: no manifest.csv or manifest.jsonl (or set pack.manifest)")
        return layout, sorted(_manifest_sources(found, links), key=lambda s: s.rel)
    base = Path(os.path.abspath(src))  # absolute, links kept: a linked folder's files are named as the user sees them
    folders = _layout_folders(base, layout)
    if not folders:
        raise FingerprintError(f"{src}: no folders of the {layout} layout found")
    root = base.resolve()
    images = []
    for folder, role, label in folders:
        for p, problem in _image_files(folder, root, links):
            images.append(SourceImage(p, p.relative_to(base).as_posix(), role, label, problem))
    if not images:
        raise FingerprintError(f"{src}: the {layout} layout's folders hold no images")
    return layout, sorted(images, key=lambda s: s.rel)


#: characters a key (a WebDataset key, and for real images the run file's figure id) cannot hold
_NOT_IN_KEYS = re.compile(r"[.,\s/\\\"]")


def make_keys(images: list[SourceImage]) -> list[str]:
    """Unique dot-free keys from file stems, in the given (path-sorted) order.

    A real image's key is its file stem, unchanged, because it is the figure
    id of run files: a real image whose stem cannot be one (a dot, comma,
    double quote or whitespace in it: CSV writers would quote it), or whose stem another image of either role also has,
    is a FingerprintError naming both files. Generated images never appear in
    run files: a repeated or unusable stem gets `<stem>_2`, `<stem>_3`, ...
    (dots and whitespace as `_`), never a name another file has, and `pack`
    lists these renames in its manifest.
    """
    owner: dict[str, SourceImage] = {}
    for s in images:
        if s.role != "real":
            continue
        stem = Path(s.rel).stem
        if not stem or _NOT_IN_KEYS.search(stem):
            raise FingerprintError(
                f"{s.path}: a real image's file name is its figure id and cannot hold dots, commas, quotes or "
                "whitespace (rename the file)"
            )
        if stem in owner:
            raise FingerprintError(f"{s.path}: same name as {owner[stem].path} (real images need unique file names)")
        owner[stem] = s
    for s in images:
        stem = Path(s.rel).stem
        if s.role != "real" and stem in owner:
            raise FingerprintError(
                f"{s.path}: a {s.role} image with the same name as the real image {owner[stem].path} "
                "(rename one of them: a real image's name is its figure id)"
            )
    base = [
        Path(s.rel).stem if s.role == "real" else (_NOT_IN_KEYS.sub("_", Path(s.rel).stem) or "image") for s in images
    ]
    stems = set(base)
    taken: set[str] = set()
    keys: list[str] = []
    for b in base:
        key, n = b, 2
        while key in taken:
            key = f"{b}_{n}"
            n += 1
            if key in stems:
                key = b
        taken.add(key)
        keys.append(key)
    return keys


# ----------------------------------------------------------------------------- conversion

INTENSITY_RULES = ("depth", "full")
#: default limit on the memory one image may take to decode and convert (`pack.max_image_memory`)
DEFAULT_MAX_IMAGE_MEMORY = 512 << 20


@dataclass(frozen=True)
class Intensity:
    """How images with more than 8 bits per pixel are mapped to the model's range [0, 1].

    `depth` (the default): by the image's own significant bit depth, the
    smallest of 10, 12, 14 or 16 bits that holds its largest value (12-bit CT
    values 0..4095 in a 16-bit container: value / 4095); `full`: by the
    container's range (value / 65535); `window` (LO, HI), which overrides the
    rule: LO..HI to 0..1, clipped (a CT window on the stored values). 8-bit
    images are never rescaled.
    """

    rule: str = "depth"
    window: tuple[float, float] | None = None

    def describe(self) -> dict[str, Any]:
        """The manifest's record of the rule."""
        if self.window is not None:
            return {"rule": "window", "window": list(self.window)}
        return {"rule": self.rule}


def parse_window(text: str | None) -> tuple[float, float] | None:
    """'LO,HI' -> (LO, HI) with LO < HI, both finite; None for None or ''."""
    if text is None or str(text).strip() == "":
        return None
    parts = [t.strip() for t in str(text).split(",")]
    try:
        lo, hi = (float(t) for t in parts)
    except ValueError:
        raise ValueError(f"not a window LO,HI: {text!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"not a window LO,HI with LO < HI: {text!r}")
    return lo, hi


_WIDE = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _unit(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(arr - lo) / (hi - lo), clipped to [0, 1], in place (arr is a float64 working copy)."""
    arr -= lo
    arr *= 1.0 / (hi - lo) if hi > lo else 0.0
    return np.clip(arr, 0.0, 1.0, out=arr)


def _wide_to_unit(arr: np.ndarray, intensity: Intensity) -> tuple[np.ndarray, int | None, str]:
    """A wide image's values (a float64 working copy, changed in place) mapped to [0, 1]; returns (values, the
    detected depth or None, what was done)."""
    lo, hi = float(arr.min()), float(arr.max())
    depth = significant_depth(hi) if 0 <= lo and hi <= 65535 else None
    if intensity.window is not None:
        wlo, whi = intensity.window
        return _unit(arr, wlo, whi), depth, f"window {wlo:g}..{whi:g}"
    if depth is None:  # signed or 32-bit values: no bit depth to scale by
        return _unit(arr, lo, hi), None, f"min-max {lo:g}..{hi:g}"
    if intensity.rule == "full":
        return _unit(arr, 0.0, 65535.0), depth, "value/65535"
    top = (1 << depth) - 1
    return _unit(arr, 0.0, float(top)), depth, f"{depth}-bit (value/{top})"


def _quantise(unit: np.ndarray, bits: int) -> np.ndarray:
    """[0, 1] values (changed in place) as uint8 or uint16."""
    unit *= (1 << bits) - 1
    return np.rint(unit, out=unit).astype(np.uint16 if bits == 16 else np.uint8)


def _to_gray(img: Image.Image, intensity: Intensity, store_bits: int) -> tuple[np.ndarray, int, list[str]]:
    """Pixels as uint8 HxW (uint16 for a wide image when `store_bits` is 16), the source's depth, and the steps."""
    mode = img.mode
    if mode == "L":
        return np.asarray(img, dtype=np.uint8), 8, []
    bits = 16 if store_bits == 16 else 8
    if mode in _WIDE:
        unit, depth, how = _wide_to_unit(np.asarray(img).astype(np.float64), intensity)
        return _quantise(unit, bits), depth or 16, [f"{mode}->{bits}-bit ({how})"]
    if mode == "F":
        arr = np.asarray(img).astype(np.float64)
        lo, hi = (float(arr.min()), float(arr.max())) if intensity.window is None else intensity.window
        how = "window" if intensity.window is not None else f"min-max {lo:g}..{hi:g}"
        return _quantise(_unit(arr, lo, hi), bits), 32, [f"F->{bits}-bit ({how})"]
    return np.asarray(img.convert("L"), dtype=np.uint8), 8, [f"{mode}->L"]


def _resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize to size x size, in the pixels' own depth (uint8 or uint16)."""
    if pixels.dtype == np.uint8:
        img = Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8)
    img = Image.fromarray(pixels.astype(np.float32), mode="F").resize((size, size), Image.Resampling.BILINEAR)
    return np.clip(np.rint(np.asarray(img)), 0, 65535).astype(np.uint16)


def decode_bytes(mode: str, size: tuple[int, int]) -> int:
    """An estimate of the memory decoding and converting one image takes: width x height x (bytes per decoded
    pixel + 12), the decoded pixels plus a float64 working copy and the converted pixels."""
    w, h = size
    per_pixel = {"1": 1, "L": 1, "P": 1, "LA": 2, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}.get(mode, 4)
    return w * h * (per_pixel + 12)


class TooLarge(ValueError):
    """An image that would take more memory to decode than the limit allows."""


def load_image(
    data: bytes,
    image_size: int,
    *,
    intensity: Intensity | None = None,
    store_bits: int = 16,
    max_bytes: int | None = DEFAULT_MAX_IMAGE_MEMORY,
) -> tuple[np.ndarray, dict[str, Any], bool]:
    """Decode image bytes to gray HxW at image_size x image_size.

    8-bit sources give uint8 pixels. Wider sources (16-bit PNG and TIFF,
    12-bit values in 16-bit containers, 32-bit integer TIFF) are mapped to
    [0, 1] by `intensity` and kept at 16 bits (uint16) when `store_bits` is
    16, else quantised to 8 bits. Returns (pixels, info, unchanged);
    `unchanged` is True when the bytes are already an 8-bit grayscale PNG of
    the right size, so they can be stored as they are. Raises TooLarge
    before decoding when the image would need more than `max_bytes`, and
    OSError/ValueError/UnidentifiedImageError on bad data.
    """
    intensity = intensity or Intensity()
    with Image.open(io.BytesIO(data)) as img:
        fmt, mode, (w, h) = img.format, img.mode, img.size
        need = decode_bytes(mode, (w, h))
        if max_bytes is not None and need > max_bytes:
            raise TooLarge(
                f"{w}x{h} {mode} needs about {need >> 20} MiB to decode, over the {max_bytes >> 20} MiB limit"
            )
        img.load()
        pixels, depth, steps = _to_gray(img, intensity, store_bits)
    if pixels.ndim != 2:
        raise ValueError(f"unexpected pixel array shape {pixels.shape}")
    if (w, h) != (image_size, image_size):
        pixels = _resize(pixels, image_size)
        steps.append(f"{w}x{h}->{image_size}x{image_size} (bilinear)")
    unchanged = fmt == "PNG" and not steps
    if fmt != "PNG":
        steps.append(f"{fmt}->stored")
    info: dict[str, Any] = {"orig_size": [w, h], "orig_mode": mode, "converted": "; ".join(steps) if steps else None}
    if depth != 8:  # 8-bit records stay as they were
        info |= {"bit_depth": depth, "stored_bits": 16 if pixels.dtype == np.uint16 else 8}
    return np.ascontiguousarray(pixels), info, unchanged


def unreadable_reason(e: BaseException) -> str:
    """One line saying why an image could not be read."""
    if isinstance(e, UnidentifiedImageError):
        return "not a recognised image format"
    if isinstance(e, TooLarge):
        return f"too large: {e}"
    if isinstance(e, MemoryError):
        return "out of memory while decoding"
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def encode_pixels(pixels: np.ndarray, encoding: str) -> bytes:
    """uint8 (or uint16) HxW -> stored bytes (8-bit or 16-bit gray PNG, or .npy)."""
    buf = io.BytesIO()
    if encoding == "png":
        Image.fromarray(pixels, mode="L" if pixels.dtype == np.uint8 else None).save(buf, format="PNG")
    elif encoding == "npy":
        np.save(buf, pixels, allow_pickle=False)
    else:
        raise FingerprintError(f"unknown encoding {encoding!r} (choose from {', '.join(ENCODINGS)})")
    return buf.getvalue()


def pixel_sha256(pixels: np.ndarray) -> str:
    """sha256 of the uint8 HxW array's C-order bytes (uint16: little-endian bytes)."""
    dtype = np.dtype("<u2") if pixels.dtype == np.uint16 else np.uint8
    return sha256_bytes(np.ascontiguousarray(pixels, dtype=dtype).tobytes())
