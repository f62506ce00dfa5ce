"""Pack image sets into WebDataset tar shards, and read them back (`run_pack(PackConfig)`, `run_inspect`).

`pack` turns an image folder (ImageCLEF dev/test layouts, the seed's naming,
or a CSV/JSONL manifest; see `fingerprint.sources`) into `shard-NNNNNN.tar`
files plus `manifest.json`; `decode_sample` turns one raw WebDataset sample
back into (key, uint8 HxW pixels, record). Every later stage reads images
through these shards, so the format (spec in shards/README.md) is the
project's one data contract. Tars are deterministic (fixed member metadata,
seeded sample order), so the same input and seed give byte-identical shards.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import tarfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import webdataset as wds
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from fingerprint import __version__
from fingerprint.config import check_fields, exists_error, option
from fingerprint.sources import (
    ENCODINGS,
    LAYOUTS,
    SourceImage,
    encode_pixels,
    find_sources,
    load_image,
    make_keys,
    pixel_sha256,
    unreadable_reason,
)
from fingerprint.utils import (
    FingerprintError,
    JsonlLogger,
    atomic_path,
    is_main_process,
    read_json,
    sha256_bytes,
    sha256_file,
    write_json,
)
from fingerprint.vocab import LABELS, ROLES

log = logging.getLogger(__name__)

#: Default stored encoding; chosen by benchmarks/bench_stream.py (see shards/README.md).
DEFAULT_ENCODING = "npy"
DEFAULT_MAX_COUNT = 64
DEFAULT_MAX_SIZE = 256 * 1024 * 1024
SHARD_PATTERN = "shard-%06d.tar"
FORMAT = "fingerprint-shards"
FORMAT_VERSION = 1
_TAR_USER = "fingerprint"


def parse_size(text: str) -> int:
    """'256M', '1.5G', '100000' -> bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = str(text).strip().lower().removesuffix("b")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise ValueError(f"not a size: {text!r}") from None


@dataclass(kw_only=True)
class PackConfig:
    """Options of the pack stage (`fingerprint pack`)."""

    SECTION = "pack"

    src: Path = option(positional=True, help="input folder (or the folder a manifest's paths are relative to)")
    out: Path = option(positional=True, help="output folder for shard-NNNNNN.tar + manifest.json")
    layout: str = option(
        "auto",
        choices=LAYOUTS,
        help="input layout: dev (generated/ used/ not_used/), test (generated_1/ real_unknown_1/), "
        "seed (generated/ real_used/ real_unused/), manifest; auto detects it",
    )
    manifest: Path | None = option(
        None, help="CSV (header path,role,label) or JSONL file listing the images; paths relative to its folder"
    )
    image_size: int = option(256, min=8, help="images of another size are resized to this square size")
    encoding: str = option(DEFAULT_ENCODING, choices=ENCODINGS, help="stored image encoding (see shards/README.md)")
    max_count: int = option(DEFAULT_MAX_COUNT, min=1, help="samples per shard at most")
    max_size: int = option(
        DEFAULT_MAX_SIZE,
        min=1,
        parse=parse_size,
        help="payload bytes per shard at most, e.g. 256M (a shard may exceed it by one sample)",
    )
    strict: bool = option(False, help="an unreadable image is an error instead of a counted skip")
    force: bool = option(False, help="replace an existing output folder")
    seed: int = option(0, help="seed of the sample order")
    log: Path | None = option(None, help="append a JSON-lines timing record to this file")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(kw_only=True)
class InspectConfig:
    """Options of `fingerprint inspect`."""

    SECTION = "inspect"

    shards: Path = option(positional=True, help="folder written by 'fingerprint pack'")
    verify: bool = option(
        False, help="re-read every sample and check shard sha256, pixel_sha256 and (for stored source PNGs) sha256"
    )
    json: bool = option(False, help="print the summary as JSON")
    seed: int = option(0, help="unused by inspect (every command takes a seed)")

    def __post_init__(self) -> None:
        check_fields(self)


def run_pack(cfg: PackConfig) -> dict[str, Any]:
    """Pack `cfg.src` into `cfg.out`; returns the manifest (plus the seconds it took)."""
    t0 = time.perf_counter()
    man = pack(
        cfg.src,
        cfg.out,
        layout=cfg.layout,
        image_size=cfg.image_size,
        encoding=cfg.encoding,
        max_count=cfg.max_count,
        max_size=cfg.max_size,
        seed=cfg.seed,
        strict=cfg.strict,
        force=cfg.force,
        manifest=cfg.manifest,
    )
    seconds = time.perf_counter() - t0
    JsonlLogger(cfg.log).log(
        stage="pack",
        seconds=round(seconds, 3),
        images=man["count"],
        images_per_s=round(man["count"] / max(seconds, 1e-9), 1),
        skipped=man["n_skipped"],
        shards=len(man["shards"]),
        out=str(cfg.out),
    )
    return {**man, "seconds": seconds}


def run_inspect(cfg: InspectConfig) -> dict[str, Any]:
    """`summarize(cfg.shards)`, with a `verify` entry ({ok, checked, problems}) when asked."""
    summary = summarize(cfg.shards)
    if cfg.verify:
        result = verify(cfg.shards)
        summary["verify"] = {"ok": result["ok"], "checked": result["checked"], "problems": result["problems"]}
    return summary


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
    The keyword arguments are the PackConfig fields of the same names.
    """
    src, out = Path(src), Path(out)
    cfg = PackConfig(
        src=src, out=out, layout=layout, manifest=manifest, image_size=image_size, encoding=encoding,
        max_count=max_count, max_size=max_size, strict=strict, force=force, seed=seed,
    )  # fmt: skip
    if out.exists() and not force:
        raise exists_error(cfg, out)
    if out.resolve() == src.resolve() or out.resolve() in src.resolve().parents:
        raise FingerprintError(f"{out}: output folder must not be the input folder or hold it")
    layout, images = find_sources(src, layout, manifest)
    keys = make_keys(images)
    order = list(range(len(images)))
    random.Random(seed).shuffle(order)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        sink = _ShardSink(tmp, max_count, max_size)
        try:
            counts, skipped, n_converted = _write_samples(sink, images, keys, order, cfg)
        finally:
            sink.close()
        if not sink.shards:
            raise FingerprintError(f"{src}: no readable images ({len(skipped)} skipped)")
        man = _manifest(cfg, layout, sink, tmp, counts, skipped, n_converted)
        write_json(tmp / "manifest.json", man)
    log.info(
        "packed %d images into %d shards in %s (%d converted, %d skipped)",
        *(man["count"], len(man["shards"]), out, n_converted, len(skipped)),
    )
    return man


def _write_samples(
    sink: _ShardSink, images: list[SourceImage], keys: list[str], order: list[int], cfg: PackConfig
) -> tuple[Counter, list[dict[str, str]], int]:
    """Read, convert and write every image in `order`; returns (role/label counts, skipped, converted)."""
    skipped: list[dict[str, str]] = []
    counts: Counter = Counter()
    n_converted = 0
    for i in tqdm(order, desc=f"pack {cfg.src.name}", unit="img", disable=not is_main_process()):
        item, key = images[i], keys[i]
        try:
            data = item.path.read_bytes()
            pixels, info, unchanged = load_image(data, cfg.image_size)
        except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError) as e:
            reason = unreadable_reason(e)
            if cfg.strict:
                raise FingerprintError(f"{item.path}: unreadable image ({reason})") from None
            log.warning("skipping %s: unreadable image (%s)", item.path, reason)
            skipped.append({"path": item.rel, "reason": reason})
            continue
        stored = data if (unchanged and cfg.encoding == "png") else encode_pixels(pixels, cfg.encoding)
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
        files = {"json": json.dumps(record, sort_keys=True).encode(), cfg.encoding: stored}
        sink.write(key, files, f"{item.role}/{item.label}")
        counts[(item.role, item.label)] += 1
    return counts, skipped, n_converted


def _manifest(
    cfg: PackConfig, layout: str, sink: _ShardSink, tmp: Path, counts: Counter, skipped: list, n_converted: int
) -> dict[str, Any]:
    shards = []
    for s in sink.shards:
        p = tmp / s["name"]
        shards.append({"name": s["name"], "count": s["count"], "bytes": p.stat().st_size,
                       "sha256": sha256_file(p), "groups": dict(sorted(s["groups"].items()))})  # fmt: skip
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tool_version": __version__,
        "source": str(cfg.src),
        "layout": layout,
        "encoding": cfg.encoding,
        "image_size": cfg.image_size,
        "seed": cfg.seed,
        "max_count": cfg.max_count,
        "max_size": cfg.max_size,
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
        raise FingerprintError(f"{where}: cannot decode image ({unreadable_reason(e)})") from None
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
