"""The shard format: WebDataset tar shards of keyed images with a manifest, read back and verified.

`fingerprint.pack` writes a folder of `shard-NNNNNN.tar` files plus
`manifest.json`; here `shard_urls` lists them (checked against the manifest),
`iter_shard` reads one (a truncated shard is an error naming it), and
`decode_sample` turns one raw WebDataset sample back into (key, uint8 HxW
pixels, record). Every later stage reads images through these shards, so the
format (spec in shards/README.md) is the project's one data contract.
`run_inspect(InspectConfig)` summarises a folder and re-checks every checksum.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import webdataset as wds
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from fingerprint.config import check_fields, option
from fingerprint.sources import pixel_sha256, unreadable_reason
from fingerprint.utils import FingerprintError, is_main_process, read_json, sha256_bytes, sha256_file

#: Default stored encoding; chosen by benchmarks/bench_stream.py (see shards/README.md).
DEFAULT_ENCODING = "npy"
DEFAULT_MAX_COUNT = 64
DEFAULT_MAX_SIZE = 256 * 1024 * 1024
SHARD_PATTERN = "shard-%06d.tar"
FORMAT = "fingerprint-shards"
FORMAT_VERSION = 1


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


def run_inspect(cfg: InspectConfig) -> dict[str, Any]:
    """`summarize(cfg.shards)`, with a `verify` entry ({ok, checked, problems}) when asked."""
    summary = summarize(cfg.shards)
    if cfg.verify:
        result = verify(cfg.shards)
        summary["verify"] = {"ok": result["ok"], "checked": result["checked"], "problems": result["problems"]}
    return summary


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


def _plain_member_name(name: str) -> bool:
    """A shard member is `<key>.<ext>`: no folders, no absolute path, no `..`, no hidden name."""
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")


def check_archive(url: str) -> None:
    """Check a shard's tar structure before reading it: plain file members, and the end-of-archive marker.

    Walks the member headers (cheap: data is skipped) and refuses members that
    are not regular files or whose names could point anywhere but a key
    (`../../x`, `/etc/x`, `a/b`), and a shard that does not end with the two
    zero blocks right after its last member: a shard cut at a member
    boundary reads as a valid tar otherwise.
    """
    with open(url, "rb") as f:
        end = 0
        with tarfile.open(fileobj=f, mode="r:") as tar:
            for m in tar:
                if not _plain_member_name(m.name):
                    raise FingerprintError(f"{url}: unsafe member name {m.name!r} (members are <key>.<ext>)")
                if not m.isfile():
                    raise FingerprintError(f"{url}: member {m.name!r} is not a regular file")
                end = m.offset_data + -(-m.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        f.seek(end)
        marker = f.read(2 * tarfile.BLOCKSIZE)
    if len(marker) != 2 * tarfile.BLOCKSIZE or marker.strip(b"\0"):
        raise FingerprintError(f"{url}: corrupt or truncated shard (no end-of-archive marker after its last member)")


def iter_shard(url: str) -> Iterator[dict[str, Any]]:
    """Raw samples ({__key__, __url__, json, png|npy}) of one shard, read with WebDataset's tar reader.

    `check_archive` runs first (unsafe member names; a shard cut at a member
    boundary, which reads as valid otherwise); it or any read error becomes a
    FingerprintError naming the shard.
    """
    try:
        check_archive(url)
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
