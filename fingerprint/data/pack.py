"""The pack stage: image folders into deterministic WebDataset shards (`run_pack(PackConfig)`, `pack`).

`pack` lists the images of an input folder (`fingerprint.data.sources`: the 2023
dev/test layouts, the seed's naming, or a CSV/JSONL manifest), converts each
to 8-bit gray at the packing size, and writes them in a seeded shuffled
order into `shard-NNNNNN.tar` files (WebDataset's TarWriter; fixed member
metadata, so the same input and seed give byte-identical tars) plus
`manifest.json` (counts per shard and role/label, sizes, sha256), all in a
temporary folder renamed into place at the end. The format is in
`fingerprint.data.shards` and shards/README.md.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import webdataset as wds
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from fingerprint import __version__
from fingerprint.core.config import ConfigError, check_fields, exists_error, option
from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import atomic_path, check_writable, sha256_bytes, sha256_file, write_json
from fingerprint.core.logs import JsonlLogger, is_main_process
from fingerprint.core.vocab import LABELS, ROLES
from fingerprint.data import urls
from fingerprint.data.shards import (
    DEFAULT_ENCODING,
    DEFAULT_MAX_COUNT,
    DEFAULT_MAX_SIZE,
    FORMAT,
    FORMAT_VERSION,
    SHARD_PATTERN,
)
from fingerprint.data.sources import (
    DEFAULT_MAX_IMAGE_MEMORY,
    ENCODINGS,
    INTENSITY_RULES,
    LAYOUTS,
    LINKS,
    Intensity,
    SourceImage,
    encode_pixels,
    find_sources,
    load_image,
    make_keys,
    parse_window,
    pixel_sha256,
    unreadable_reason,
)

log = logging.getLogger(__name__)
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
    out: str = option(
        positional=True,
        help="output folder for shard-NNNNNN.tar + manifest.json: a local path, or an fsspec URL (s3://bucket/dev, "
        "needs the optional extra) written from a local temporary folder, manifest last",
    )
    layout: str = option(
        "auto",
        choices=LAYOUTS,
        help="input layout: dev (generated/ used/ not_used/), test (generated_1/ real_unknown_1/), "
        "seed (generated/ real_used/ real_unused/), manifest; auto detects it",
    )
    manifest: Path | None = option(
        None, help="CSV (header path,role,label) or JSONL file listing the images; paths relative to its folder"
    )
    image_size: int | None = option(
        None, min=8, help="square side stored (default: the first image's own size); other sizes are resized to it"
    )
    encoding: str = option(DEFAULT_ENCODING, choices=ENCODINGS, help="stored image encoding (see shards/README.md)")
    max_count: int = option(DEFAULT_MAX_COUNT, min=1, help="samples per shard at most")
    max_size: int = option(
        DEFAULT_MAX_SIZE,
        min=1,
        parse=parse_size,
        help="payload bytes per shard at most, e.g. 256M (a shard may exceed it by one sample)",
    )
    intensity: str = option(
        "depth",
        choices=INTENSITY_RULES,
        help="how images of more than 8 bits map to the model's range: depth (by the image's own bit depth: 12-bit "
        "values in a 16-bit file are value/4095) or full (value/65535); see --window",
    )
    window: str | None = option(
        None, help="LO,HI: map stored values LO..HI to black..white, clipped (a CT window); overrides --intensity"
    )
    bits: int = option(
        16,
        choices=(8, 16),
        help="stored depth of images of more than 8 bits: 16 keeps every grey level, 8 quantises them "
        "(8-bit images are always stored at 8 bits)",
    )
    links: str = option(
        "follow",
        choices=LINKS,
        help="links to files and folders: follow them, or only those that stay inside the input folder "
        "(inside); a link that cannot be followed is a counted skip",
    )
    max_image_memory: int = option(
        DEFAULT_MAX_IMAGE_MEMORY,
        min=1,
        parse=parse_size,
        help="an image that would take more memory than this to decode (width x height x (bytes per pixel + 12)) is "
        "a counted skip, e.g. 512M",
    )
    strict: bool = option(False, help="an unreadable image is an error instead of a counted skip")
    force: bool = option(False, help="replace an existing output folder")
    seed: int = option(0, help="seed of the sample order")
    log: Path | None = option(None, help="append a JSON-lines timing record to this file")

    def __post_init__(self) -> None:
        check_fields(self)
        try:
            parse_window(self.window)
        except ValueError as e:
            raise ConfigError(f"pack.window: {e}") from None

    def intensity_rule(self) -> Intensity:
        return Intensity(self.intensity, parse_window(self.window))


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
        intensity=cfg.intensity,
        window=cfg.window,
        bits=cfg.bits,
        links=cfg.links,
        max_image_memory=cfg.max_image_memory,
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
    image_size: int | None = None,
    encoding: str = DEFAULT_ENCODING,
    max_count: int = DEFAULT_MAX_COUNT,
    max_size: int = DEFAULT_MAX_SIZE,
    seed: int = 0,
    strict: bool = False,
    force: bool = False,
    manifest: str | os.PathLike | None = None,
    intensity: str = "depth",
    window: str | None = None,
    bits: int = 16,
    links: str = "follow",
    max_image_memory: int = DEFAULT_MAX_IMAGE_MEMORY,
) -> dict[str, Any]:
    """Pack the images of `src` into shards in `out`; returns the manifest written to out/manifest.json.

    Samples are ordered by a seeded shuffle of the path-sorted list, so shards
    mix roles and labels and the same input + seed gives byte-identical tars.
    Everything is written into a temporary folder renamed to `out` at the end;
    an fsspec URL `out` (`s3://bucket/dev`) is packed locally, then uploaded
    with the manifest last. The keyword arguments are the PackConfig fields.
    """
    if urls.is_url(out):
        return _pack_to_url(src, str(out), **{k: v for k, v in locals().items() if k not in ("src", "out")})
    src, out = Path(src), Path(out)
    cfg = PackConfig(
        src=src, out=out, layout=layout, manifest=manifest, image_size=image_size, encoding=encoding,
        max_count=max_count, max_size=max_size, strict=strict, force=force, seed=seed, intensity=intensity,
        window=window, bits=bits, links=links, max_image_memory=max_image_memory,
    )  # fmt: skip
    if out.exists() and not force:
        raise exists_error(cfg, out)
    if out.resolve() == src.resolve() or out.resolve() in src.resolve().parents:
        raise FingerprintError(f"{out}: output folder must not be the input folder or hold it")
    layout, images = find_sources(src, layout, manifest, links)
    keys = make_keys(images)
    renamed = [{"path": s.rel, "key": k} for s, k in zip(images, keys) if k != Path(s.rel).stem]
    if renamed:
        log.warning(
            "%d generated image(s) stored under another key than their file name (repeated or unusable names; "
            "listed in manifest.json 'renamed'), e.g. %s -> %s",
            len(renamed),
            renamed[0]["path"],
            renamed[0]["key"],
        )
    check_writable(out.parent)
    order = list(range(len(images)))
    random.Random(seed).shuffle(order)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        sink = _ShardSink(tmp, max_count, max_size)
        try:
            counts, skipped, n_converted, depths, size = _write_samples(sink, images, keys, order, cfg)
        finally:
            sink.close()
        if not sink.shards:
            raise FingerprintError(f"{src}: no readable images ({len(skipped)} skipped)")
        man = _manifest(cfg, layout, sink, tmp, counts, skipped, n_converted) | {"renamed": renamed, "image_size": size}
        man["intensity"] = _intensity_record(cfg, depths)
        write_json(tmp / "manifest.json", man)
    log.info(
        "packed %d images into %d shards in %s (%d converted, %d skipped)",
        *(man["count"], len(man["shards"]), out, n_converted, len(skipped)),
    )
    return man


def _pack_to_url(src: str | os.PathLike, out: str, *, force: bool, **options: Any) -> dict[str, Any]:
    """Pack into a local temporary folder, then upload it to the fsspec URL `out` (the manifest last)."""
    manifest = urls.join(out, "manifest.json")
    if urls.exists(manifest) and not force:
        raise exists_error(PackConfig(src=Path(src), out=out, force=force), out)
    with tempfile.TemporaryDirectory(prefix="fingerprint-pack-") as tmp:
        man = pack(src, Path(tmp) / "out", force=False, **options)
        if force:
            urls.remove_folder(out)
        urls.upload_folder(Path(tmp) / "out", out)
    log.info("uploaded %d shards + manifest.json to %s", len(man["shards"]), out)
    return man


def _own_size(data: bytes) -> int:
    """The longer side of an image (read from its header)."""
    with Image.open(io.BytesIO(data)) as img:
        return max(img.size)


def _write_samples(
    sink: _ShardSink, images: list[SourceImage], keys: list[str], order: list[int], cfg: PackConfig
) -> tuple[Counter, list[dict[str, str]], int, Counter, int | None]:
    """Read, convert and write every image in `order`; returns (counts, skipped, converted, bit depths, side)."""
    skipped: list[dict[str, str]] = []
    counts: Counter = Counter()
    depths: Counter = Counter()
    n_converted, size = 0, cfg.image_size
    rule = cfg.intensity_rule()
    for i in tqdm(order, desc=f"pack {cfg.src.name}", unit="img", disable=not is_main_process()):
        item, key = images[i], keys[i]
        try:
            if item.problem is not None:
                raise _Unusable(item.problem)
            data = item.path.read_bytes()
            size = size or _own_size(data)
            pixels, info, unchanged = load_image(
                data, size, intensity=rule, store_bits=cfg.bits, max_bytes=cfg.max_image_memory
            )
        except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError,
                MemoryError, _Unusable) as e:  # fmt: skip
            reason = str(e) if isinstance(e, _Unusable) else unreadable_reason(e)
            if cfg.strict:
                raise FingerprintError(f"{item.path}: unreadable image ({reason})") from None
            log.warning("skipping %s: unreadable image (%s)", item.path, reason)
            skipped.append({"path": item.rel, "reason": reason, "role": item.role})
            continue
        stored = data if (unchanged and cfg.encoding == "png") else encode_pixels(pixels, cfg.encoding)
        n_converted += info["converted"] is not None
        depths[info.get("bit_depth", 8)] += 1
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
    if len(depths) > 1:
        log.warning(
            "%s: images arrive at different bit depths (%s); each is mapped by the %s rule (manifest.json 'intensity')",
            cfg.src, ", ".join(f"{n} at {d} bits" for d, n in sorted(depths.items())), rule.describe()["rule"],
        )  # fmt: skip
    return counts, skipped, n_converted, depths, size


class _Unusable(Exception):
    """An input listed with a problem (a broken or refused link): skipped without reading."""


def _intensity_record(cfg: PackConfig, depths: Counter) -> dict[str, Any]:
    """The manifest's record of how intensities were mapped, and the bit depths the images arrived at."""
    wide = sum(n for d, n in depths.items() if d != 8)
    return {
        **cfg.intensity_rule().describe(),
        "stored_bits": cfg.bits if wide else 8,
        "depths": {str(d): n for d, n in sorted(depths.items())},
        "mixed": len(depths) > 1,
    }


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
