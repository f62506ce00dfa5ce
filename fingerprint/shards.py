"""Pack image sets into WebDataset tar shards, and read them back.

`pack` turns an image folder (ImageCLEF dev/test layouts, the seed's naming,
or a CSV/JSONL manifest) into `shard-NNNNNN.tar` files plus `manifest.json`;
`decode_sample` turns one raw WebDataset sample back into (key, uint8 HxW
pixels, record). Every later stage reads images through these shards, so the
format (spec in shards/README.md) is the project's one data contract.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import random
import re
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import webdataset as wds
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from fingerprint import __version__
from fingerprint.utils import (
    FingerprintError,
    atomic_path,
    is_main_process,
    read_json,
    sha256_bytes,
    sha256_file,
    write_json,
)

log = logging.getLogger(__name__)

ROLES = ("real", "generated")
LABELS = ("used", "not_used", "unknown")
ENCODINGS = ("png", "npy")
LAYOUTS = ("auto", "dev", "test", "seed", "manifest")
#: Default stored encoding; chosen by benchmarks/bench_stream.py (see shards/README.md).
DEFAULT_ENCODING = "npy"
DEFAULT_MAX_COUNT = 64
DEFAULT_MAX_SIZE = 256 * 1024 * 1024
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
MANIFEST_NAMES = ("manifest.csv", "manifest.jsonl")
SHARD_PATTERN = "shard-%06d.tar"
FORMAT = "fingerprint-shards"
FORMAT_VERSION = 1
_TAR_USER = "fingerprint"


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
            "or manifest.csv/manifest.jsonl; or pass --manifest FILE)"
        )
    if len(found) > 1:
        raise FingerprintError(f"{src}: matches several layouts ({', '.join(found)}); choose one with --layout")
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
            raise FingerprintError(f"--manifest cannot be combined with --layout {layout}")
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
            raise FingerprintError(f"{src}: no manifest.csv or manifest.jsonl (or pass --manifest FILE)")
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


def make_keys(images: list[SourceImage]) -> list[str]:
    """Unique dot-free keys from file stems, in the given (path-sorted) order.

    A repeated stem keeps its name on its first file; later files get
    `<stem>_2`, `<stem>_3`, ..., skipping names that are another file's stem.
    """
    base = [re.sub(r"[.\s/\\]", "_", Path(s.rel).stem) or "image" for s in images]
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


def _reason(e: BaseException) -> str:
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


# ----------------------------------------------------------------------------- packing


class _ShardSink:
    """Writes samples into shard-NNNNNN.tar files in `folder` with WebDataset's TarWriter, splitting by count and size.

    Members get mtime 0, uid/gid 0, user/group "fingerprint" and mode 0444, so
    the same samples give byte-identical tars.
    """

    def __init__(self, folder: Path, max_count: int, max_size: int):
        self.folder, self.max_count, self.max_size = folder, max_count, max_size
        self.shards: list[dict[str, Any]] = []
        self.writer: wds.TarWriter | None = None

    def _open(self) -> None:
        self.close()
        name = SHARD_PATTERN % len(self.shards)
        self.writer = wds.TarWriter(
            str(self.folder / name),
            encoder=False,
            user=_TAR_USER,
            group=_TAR_USER,
            mode=0o444,
            mtime=0,
            format="PAX_FORMAT",
        )
        self.shards.append({"name": name, "count": 0, "payload": 0, "groups": Counter()})

    def write(self, key: str, files: dict[str, bytes], group: str) -> None:
        cur = self.shards[-1] if self.shards else None
        if cur is None or self.writer is None or cur["count"] >= self.max_count or cur["payload"] >= self.max_size:
            self._open()
            cur = self.shards[-1]
        assert self.writer is not None
        cur["payload"] += self.writer.write({"__key__": key, **files})
        cur["count"] += 1
        cur["groups"][group] += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def pack(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    layout: str = "auto",
    image_size: int = 256,
    encoding: str = DEFAULT_ENCODING,
    max_count: int = DEFAULT_MAX_COUNT,
    max_size: int = DEFAULT_MAX_SIZE,
    seed: int = 0,
    strict: bool = False,
    force: bool = False,
    manifest: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Pack the images of `src` into shards in `out`; returns the manifest written to out/manifest.json.

    Samples are ordered by a seeded shuffle of the path-sorted list, so shards
    mix roles and labels and the same input + seed gives byte-identical tars.
    Everything is written into a temporary folder renamed to `out` at the end.
    """
    src, out = Path(src), Path(out)
    if encoding not in ENCODINGS:
        raise FingerprintError(f"unknown encoding {encoding!r} (choose from {', '.join(ENCODINGS)})")
    if image_size < 8:
        raise FingerprintError(f"--image-size must be at least 8, got {image_size}")
    if max_count < 1 or max_size < 1:
        raise FingerprintError("--max-count and --max-size must be positive")
    if out.exists() and not force:
        raise FingerprintError(f"{out}: already exists (use --force to replace it)")
    if out.resolve() == src.resolve() or out.resolve() in src.resolve().parents:
        raise FingerprintError(f"{out}: output folder must not be the input folder or hold it")
    layout, images = find_sources(src, layout, manifest)
    keys = make_keys(images)
    order = list(range(len(images)))
    random.Random(seed).shuffle(order)

    skipped: list[dict[str, str]] = []
    counts: Counter = Counter()
    n_converted = 0
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        sink = _ShardSink(tmp, max_count, max_size)
        try:
            for i in tqdm(order, desc=f"pack {src.name}", unit="img", disable=not is_main_process()):
                item, key = images[i], keys[i]
                try:
                    data = item.path.read_bytes()
                    pixels, info, unchanged = load_image(data, image_size)
                except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError) as e:
                    reason = _reason(e)
                    if strict:
                        raise FingerprintError(f"{item.path}: unreadable image ({reason})") from None
                    log.warning("skipping %s: unreadable image (%s)", item.path, reason)
                    skipped.append({"path": item.rel, "reason": reason})
                    continue
                stored = data if (unchanged and encoding == "png") else encode_pixels(pixels, encoding)
                n_converted += info["converted"] is not None
                record = {
                    "key": key,
                    "role": item.role,
                    "label": item.label,
                    "path": item.rel,
                    **info,
                    "sha256": sha256_bytes(data),
                    "pixel_sha256": pixel_sha256(pixels),
                    "size": [int(pixels.shape[0]), int(pixels.shape[1])],
                }
                files = {"json": json.dumps(record, sort_keys=True).encode(), encoding: stored}
                sink.write(key, files, f"{item.role}/{item.label}")
                counts[(item.role, item.label)] += 1
        finally:
            sink.close()
        if not sink.shards:
            raise FingerprintError(f"{src}: no readable images ({len(skipped)} skipped)")
        shards = []
        for s in sink.shards:
            p = tmp / s["name"]
            shards.append(
                {
                    "name": s["name"],
                    "count": s["count"],
                    "bytes": p.stat().st_size,
                    "sha256": sha256_file(p),
                    "groups": dict(sorted(s["groups"].items())),
                }
            )
        man = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tool_version": __version__,
            "source": str(src),
            "layout": layout,
            "encoding": encoding,
            "image_size": image_size,
            "seed": seed,
            "max_count": max_count,
            "max_size": max_size,
            "order": "shuffled",
            "count": sum(counts.values()),
            "counts": {
                "role": {r: n for r in ROLES if (n := sum(v for (rr, _), v in counts.items() if rr == r))},
                "label": {lab: n for lab in LABELS if (n := sum(v for (_, ll), v in counts.items() if ll == lab))},
                "role_label": {f"{r}/{lab}": counts[(r, lab)] for r in ROLES for lab in LABELS if counts[(r, lab)]},
            },
            "converted": n_converted,
            "n_skipped": len(skipped),
            "skipped": skipped,
            "shards": shards,
        }
        write_json(tmp / "manifest.json", man)
    log.info(
        "packed %d images into %d shards in %s (%d converted, %d skipped)",
        man["count"],
        len(shards),
        out,
        n_converted,
        len(skipped),
    )
    return man


# ----------------------------------------------------------------------------- reading


def read_manifest(shards_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and check `shards_dir/manifest.json`."""
    d = Path(shards_dir)
    path = d / "manifest.json"
    if not d.is_dir():
        raise FingerprintError(f"{d}: shard folder not found")
    if not path.is_file():
        raise FingerprintError(f"{d}: no manifest.json (not a folder written by 'fingerprint pack')")
    man = read_json(path)
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise FingerprintError(f"{path}: not a fingerprint shard manifest")
    if man.get("format_version", 0) > FORMAT_VERSION:
        raise FingerprintError(f"{path}: format version {man.get('format_version')} is newer than this tool reads")
    return man


def shard_urls(shards_dir: str | os.PathLike) -> list[str]:
    """Sorted paths of the shard tars in `shards_dir`; checks them against the manifest when there is one."""
    d = Path(shards_dir)
    if not d.is_dir():
        raise FingerprintError(f"{d}: shard folder not found")
    urls = sorted(str(p) for p in d.glob("*.tar"))
    if (d / "manifest.json").is_file():
        man = read_manifest(d)
        listed = [s["name"] for s in man["shards"]]
        missing = [n for n in listed if not (d / n).is_file()]
        if missing:
            raise FingerprintError(
                f"{d / missing[0]}: shard listed in manifest.json is missing ({len(missing)} missing)"
            )
        urls = [str(d / n) for n in sorted(listed)]
    if not urls:
        raise FingerprintError(f"{d}: no .tar shards found")
    return urls


def manifest_for(urls: list[str]) -> dict[str, Any] | None:
    """The manifest of the folder holding `urls`, if they all sit in one packed folder."""
    parents = {Path(u).parent for u in urls}
    if len(parents) != 1:
        return None
    d = parents.pop()
    return read_manifest(d) if (d / "manifest.json").is_file() else None


def iter_shard(url: str) -> Iterator[dict[str, Any]]:
    """Raw samples ({__key__, __url__, json, png|npy}) of one shard, read with WebDataset's tar reader.

    A missing end-of-archive marker (a shard cut at a member boundary reads
    as valid otherwise) or any read error becomes a FingerprintError naming the shard.
    """
    try:
        with open(url, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            tail = f.seek(size - 1024) >= 0 and f.read(1024) if size >= 1024 else b""
        if len(tail) != 1024 or tail.strip(b"\0"):
            raise FingerprintError(f"{url}: corrupt or truncated shard (no end-of-archive marker)")
        yield from wds.tarfile_samples([{"url": url}], handler=wds.reraise_exception)
    except FileNotFoundError:
        raise FingerprintError(f"{url}: shard not found") from None
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        reason = str(e.args[0]) if e.args else type(e).__name__
        raise FingerprintError(f"{url}: corrupt or truncated shard ({reason.split(' @ ')[0]})") from None


def decode_sample(sample: dict[str, Any]) -> tuple[str, np.ndarray, dict[str, Any]]:
    """Raw WebDataset sample -> (key, uint8 HxW pixels, record); FingerprintError naming shard and key."""
    key = sample.get("__key__", "?")
    where = f"{sample.get('__url__', '?')}: sample {key}"
    try:
        record = json.loads(sample["json"])
    except KeyError:
        raise FingerprintError(f"{where}: no json record") from None
    except (ValueError, TypeError) as e:
        raise FingerprintError(f"{where}: bad json record ({e})") from None
    try:
        if "npy" in sample:
            pixels = np.load(io.BytesIO(sample["npy"]), allow_pickle=False)
            if pixels.dtype != np.uint8 or pixels.ndim != 2:
                raise ValueError(f"npy array is {pixels.dtype} {pixels.shape}, expected uint8 HxW")
        elif "png" in sample:
            with Image.open(io.BytesIO(sample["png"])) as img:
                if img.mode != "L":
                    raise ValueError(f"png mode is {img.mode}, expected L")
                pixels = np.asarray(img, dtype=np.uint8)
        else:
            raise FingerprintError(f"{where}: no png or npy image")
    except (OSError, ValueError, UnidentifiedImageError, SyntaxError) as e:
        raise FingerprintError(f"{where}: cannot decode image ({_reason(e)})") from None
    if list(pixels.shape) != list(record.get("size", pixels.shape)):
        raise FingerprintError(f"{where}: image is {pixels.shape}, record says {record.get('size')}")
    return key, pixels, record


# ----------------------------------------------------------------------------- inspection


def summarize(shards_dir: str | os.PathLike) -> dict[str, Any]:
    """What `fingerprint inspect` prints: counts, encoding, image size, shards."""
    d = Path(shards_dir)
    man = read_manifest(d)
    urls = shard_urls(d)
    return {
        "folder": str(d),
        "count": man["count"],
        "counts": man["counts"],
        "encoding": man["encoding"],
        "image_size": man["image_size"],
        "layout": man["layout"],
        "shards": len(urls),
        "bytes": sum(Path(u).stat().st_size for u in urls),
        "converted": man.get("converted", 0),
        "skipped_at_pack": man.get("n_skipped", 0),
        "tool_version": man.get("tool_version"),
        "seed": man.get("seed"),
    }


def verify(shards_dir: str | os.PathLike, *, progress: bool = True) -> dict[str, Any]:
    """Re-check every shard's file hash and every sample's pixel (and source) checksum.

    Returns {"ok": bool, "checked": n, "problems": [one line each]}.
    """
    d = Path(shards_dir)
    man = read_manifest(d)
    problems: list[str] = []
    checked = 0
    seen: set[str] = set()
    encoding = man["encoding"]
    for shard in tqdm(man["shards"], desc="verify", unit="shard", disable=not (progress and is_main_process())):
        url = str(d / shard["name"])
        if not Path(url).is_file():
            problems.append(f"{url}: shard missing")
            continue
        if sha256_file(url) != shard["sha256"]:
            problems.append(f"{url}: shard sha256 differs from manifest.json")
        n = 0
        try:
            for sample in iter_shard(url):
                n += 1
                try:
                    key, pixels, rec = decode_sample(sample)
                except FingerprintError as e:
                    problems.append(str(e))
                    continue
                checked += 1
                where = f"{url}: sample {key}"
                if key in seen:
                    problems.append(f"{where}: duplicate key")
                seen.add(key)
                if rec.get("key") != key:
                    problems.append(f"{where}: record key is {rec.get('key')!r}")
                if encoding not in sample:
                    problems.append(f"{where}: no {encoding} member (manifest encoding)")
                if pixel_sha256(pixels) != rec.get("pixel_sha256"):
                    problems.append(f"{where}: pixel_sha256 mismatch")
                if encoding == "png" and rec.get("converted") is None and "png" in sample:
                    if sha256_bytes(sample["png"]) != rec.get("sha256"):
                        problems.append(f"{where}: sha256 of stored source bytes mismatch")
        except FingerprintError as e:
            problems.append(str(e))
        if n != shard["count"]:
            problems.append(f"{url}: holds {n} samples, manifest.json says {shard['count']}")
    if checked != man["count"] and not problems:
        problems.append(f"{d}: read {checked} samples, manifest.json says {man['count']}")
    return {"ok": not problems, "checked": checked, "problems": problems}
