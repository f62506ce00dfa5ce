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
from fingerprint.core.vocab import LABELS, ROLES

ENCODINGS = ("png", "npy")
LAYOUTS = ("auto", "dev", "test", "seed", "manifest")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
MANIFEST_NAMES = ("manifest.csv", "manifest.jsonl")


@dataclass(frozen=True)
class SourceImage:
    """One input image: where it is and what it is."""

    path: Path  # absolute path of the file
    rel: str  # path relative to the input root (posix), recorded in the shard
    role: str
    label: str


# ----------------------------------------------------------------------------- layouts


def _image_files(folder: Path) -> list[Path]:
    """Image files under `folder` (recursive, hidden files skipped), sorted by path."""
    files = []
    for p in folder.rglob("*"):
        if any(part.startswith(".") for part in p.relative_to(folder).parts):
            continue
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS:
            files.append(p)
    return sorted(files, key=lambda p: p.as_posix())


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


def _manifest_sources(manifest: Path) -> list[SourceImage]:
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
        full = (root / p).resolve()
        try:
            rel = full.relative_to(root).as_posix()
        except ValueError:
            raise FingerprintError(f"{where}: path {path!r} leaves the manifest's folder") from None
        out.append(SourceImage(full, rel, role, label))
    if not out:
        raise FingerprintError(f"{manifest}: manifest lists no images")
    return out


def find_sources(
    src: str | os.PathLike, layout: str = "auto", manifest: str | os.PathLike | None = None
) -> tuple[str, list[SourceImage]]:
    """List the images of `src` with role and label, sorted by relative path; returns (layout, images)."""
    src = Path(src)
    if layout not in LAYOUTS:
        raise FingerprintError(f"unknown layout {layout!r} (choose from {', '.join(LAYOUTS)})")
    if manifest is not None:
        if layout not in ("auto", "manifest"):
            raise FingerprintError(f"pack.manifest cannot be combined with pack.layout {layout}")
        manifest = Path(manifest)
        if not manifest.is_file():
            raise FingerprintError(f"{manifest}: manifest file not found")
        return "manifest", sorted(_manifest_sources(manifest), key=lambda s: s.rel)
    if not src.is_dir():
        raise FingerprintError(f"{src}: input folder not found")
    if layout == "auto":
        layout = detect_layout(src)
    if layout == "manifest":
        found = _find_manifest(src)
        if found is None:
            raise FingerprintError(f"{src}: no manifest.csv or manifest.jsonl (or set pack.manifest)")
        return layout, sorted(_manifest_sources(found), key=lambda s: s.rel)
    folders = _layout_folders(src, layout)
    if not folders:
        raise FingerprintError(f"{src}: no folders of the {layout} layout found")
    root = src.resolve()
    images = []
    for folder, role, label in folders:
        for p in _image_files(folder):
            images.append(SourceImage(p.resolve(), p.resolve().relative_to(root).as_posix(), role, label))
    if not images:
        raise FingerprintError(f"{src}: the {layout} layout's folders hold no images")
    return layout, sorted(images, key=lambda s: s.rel)


#: characters a key (a WebDataset key, and for real images the run file's figure id) cannot hold
_NOT_IN_KEYS = re.compile(r"[.,\s/\\]")


def make_keys(images: list[SourceImage]) -> list[str]:
    """Unique dot-free keys from file stems, in the given (path-sorted) order.

    A real image's key is its file stem, unchanged, because it is the figure
    id of run files: a real image whose stem cannot be one (a dot, comma or
    whitespace in it), or whose stem another image of either role also has,
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
                f"{s.path}: a real image's file name is its figure id and cannot hold dots, commas or whitespace "
                "(rename the file)"
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


def _to_uint8_gray(img: Image.Image) -> tuple[np.ndarray, list[str]]:
    """Pixels as uint8 HxW and what was done to get them."""
    steps: list[str] = []
    mode = img.mode
    if mode == "L":
        return np.asarray(img, dtype=np.uint8), steps
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        arr = np.asarray(img).astype(np.uint32)
        steps.append(f"{mode}->L (value/257)")
        return ((arr * 255 + 32767) // 65535).astype(np.uint8), steps
    if mode in ("I", "F"):
        arr = np.asarray(img).astype(np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        steps.append(f"{mode}->L (min-max {lo:g}..{hi:g})")
        if hi <= lo:
            return np.zeros(arr.shape, np.uint8), steps
        return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8), steps
    steps.append(f"{mode}->L")
    return np.asarray(img.convert("L"), dtype=np.uint8), steps


def load_image(data: bytes, image_size: int) -> tuple[np.ndarray, dict[str, Any], bool]:
    """Decode image bytes to uint8 HxW at image_size x image_size.

    Returns (pixels, info, unchanged); `unchanged` is True when the bytes are
    already an 8-bit grayscale PNG of the right size, so they can be stored
    as they are. Raises OSError/ValueError/UnidentifiedImageError on bad data.
    """
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        fmt, mode, (w, h) = img.format, img.mode, img.size
        pixels, steps = _to_uint8_gray(img)
    if pixels.ndim != 2:
        raise ValueError(f"unexpected pixel array shape {pixels.shape}")
    if (w, h) != (image_size, image_size):
        resized = Image.fromarray(pixels, mode="L").resize((image_size, image_size), Image.Resampling.BILINEAR)
        pixels = np.asarray(resized, dtype=np.uint8)
        steps.append(f"{w}x{h}->{image_size}x{image_size} (bilinear)")
    unchanged = fmt == "PNG" and not steps
    if fmt != "PNG":
        steps.append(f"{fmt}->stored")
    info = {"orig_size": [w, h], "orig_mode": mode, "converted": "; ".join(steps) if steps else None}
    return np.ascontiguousarray(pixels), info, unchanged


def unreadable_reason(e: BaseException) -> str:
    """One line saying why an image could not be read."""
    if isinstance(e, UnidentifiedImageError):
        return "not a recognised image format"
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def encode_pixels(pixels: np.ndarray, encoding: str) -> bytes:
    """uint8 HxW -> stored bytes (8-bit gray PNG or .npy)."""
    buf = io.BytesIO()
    if encoding == "png":
        Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    elif encoding == "npy":
        np.save(buf, pixels, allow_pickle=False)
    else:
        raise FingerprintError(f"unknown encoding {encoding!r} (choose from {', '.join(ENCODINGS)})")
    return buf.getvalue()


def pixel_sha256(pixels: np.ndarray) -> str:
    """sha256 of the uint8 HxW array's C-order bytes."""
    return sha256_bytes(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
