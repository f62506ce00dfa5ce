"""The shard format: WebDataset tar shards of keyed images with a manifest, read back and verified.

`fingerprint.data.pack` writes a folder of `shard-NNNNNN.tar` files plus
`manifest.json`; here `shard_urls` lists them (checked against the manifest),
`iter_shard` reads one (a truncated shard is an error naming it), and
`decode_sample` turns one raw WebDataset sample back into (key, uint8 HxW
pixels, record). Every later stage reads images through these shards, so the
format (spec in shards/README.md) is the project's one data contract.
`run_inspect(InspectConfig)` summarises a folder and re-checks every checksum.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import webdataset as wds
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from fingerprint.core.config import check_fields, option
from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import read_json, sha256_bytes
from fingerprint.core.logs import is_main_process
from fingerprint.data import urls
from fingerprint.data.sources import pixel_sha256, unreadable_reason

log = logging.getLogger(__name__)

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

    shards: str = option(
        positional=True, help="shard folder written by 'fingerprint pack': a local path or a folder URL"
    )
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


@dataclass
class ShardSet:
    """The shard URLs of one selection, in order, with the manifest found beside them (None if there is none)."""

    urls: list[str]
    manifest: dict[str, Any] | None
    where: str  # what the user gave, for messages
    _entries: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._entries = {s["name"]: s for s in self.manifest["shards"]} if self.manifest else {}

    def entry(self, url: str) -> dict[str, Any] | None:
        """The manifest's record of this shard (count, bytes, sha256, groups), if any."""
        return self._entries.get(urls.shard_name(url))

    @property
    def local(self) -> bool:
        return not any(urls.is_url(u) for u in self.urls)


def _check_manifest(man: Any, where: str) -> dict[str, Any]:
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise FingerprintError(f"{where}: not a fingerprint shard manifest")
    version = man.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise FingerprintError(f"{where}: format_version is {version!r}, not a number")
    if version > FORMAT_VERSION:
        raise FingerprintError(f"{where}: format version {man.get('format_version')} is newer than this tool reads")
    _check_manifest_fields(man, where)
    return man


#: the manifest fields every reader relies on, and their JSON types
_MANIFEST_FIELDS = {"count": int, "encoding": str, "image_size": int, "shards": list, "counts": dict}
_SHARD_FIELDS = {"name": str, "count": int, "bytes": int, "sha256": str}


def _check_manifest_fields(man: dict[str, Any], where: str) -> None:
    """The fields readers use have their types (`shards` must be there), each shard entry names a plain .tar file."""
    for key, kind in _MANIFEST_FIELDS.items():
        value = man.get(key)
        if (key in man or key == "shards") and (not isinstance(value, kind) or isinstance(value, bool)):
            raise FingerprintError(f"{where}: '{key}' is {man.get(key)!r}, expected a JSON {_json_kind(kind)}")
    names = set()
    for i, entry in enumerate(man["shards"]):
        if not isinstance(entry, dict):
            raise FingerprintError(
                f"{where}: shards[{i}] is {entry!r}, expected an object (name, count, bytes, sha256)"
            )
        for key, kind in _SHARD_FIELDS.items():
            if key in entry and (not isinstance(entry[key], kind) or isinstance(entry[key], bool)):
                raise FingerprintError(
                    f"{where}: shards[{i}].{key} is {entry[key]!r}, expected a JSON {_json_kind(kind)}"
                )
        name = entry.get("name")
        if not isinstance(name, str) or not name.endswith(".tar") or not _plain_member_name(name):
            raise FingerprintError(f"{where}: shards[{i}].name is {name!r}, expected a shard file name (*.tar)")
        if name in names:
            raise FingerprintError(f"{where}: shards[{i}].name {name!r} is listed twice")
        names.add(name)


def _json_kind(kind: type) -> str:
    return {int: "number", str: "string", list: "list", dict: "object"}[kind]


def read_manifest(shards_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and check `manifest.json` of a shard folder: a local folder or a folder URL (http(s)://, s3://, ...)."""
    if urls.is_url(shards_dir):
        where = urls.join(str(shards_dir), "manifest.json")
        return _check_manifest(_json_at(where), where)
    d = urls.local_path(shards_dir)
    path = d / "manifest.json"
    if not d.is_dir():
        raise FingerprintError(f"{d}: shard folder not found")
    if not path.is_file():
        raise FingerprintError(f"{d}: no manifest.json (not a folder written by 'fingerprint pack')")
    return _check_manifest(read_json(path), str(path))


def _json_at(url: str) -> Any:
    try:
        return json.loads(urls.read_bytes(url))
    except (ValueError, UnicodeDecodeError) as e:
        raise FingerprintError(f"{url}: not valid JSON ({e})") from None


def _folder_urls(d: Path) -> list[str]:
    """Sorted paths of the shard tars in local folder `d`; checks them against the manifest when there is one."""
    if not d.is_dir():
        raise FingerprintError(f"{d}: shard folder not found")
    found = sorted(str(p) for p in d.glob("*.tar"))
    if (d / "manifest.json").is_file():
        man = read_manifest(d)
        listed = [s["name"] for s in man["shards"]]
        missing = [n for n in listed if not (d / n).is_file()]
        if missing:
            raise FingerprintError(
                f"{d / missing[0]}: shard listed in manifest.json is missing ({len(missing)} missing)"
            )
        found = [str(d / n) for n in sorted(listed)]
    if not found:
        raise FingerprintError(f"{d}: no .tar shards found")
    return found


def shard_urls(shards: str | os.PathLike | Iterable[str]) -> list[str]:
    """The shard URLs of a folder, pattern, URL or list (`resolve`); local folders are checked against the manifest."""
    return resolve(shards).urls


def manifest_for(shard_list: list[str]) -> dict[str, Any] | None:
    """The manifest beside `shard_list` (local or remote), if they all sit beside one; None otherwise."""
    where = {urls.sibling(u, "manifest.json") for u in shard_list if urls.shard_name(u).endswith(".tar")}
    if len(where) != 1 or len(shard_list) == 0:
        return None
    url = where.pop()
    path = urls.local_path(url)
    if path is not None:
        return read_manifest(path.parent) if path.is_file() else None
    try:
        return _check_manifest(_json_at(url), url)
    except FingerprintError as e:
        log.info("no manifest beside the shards (%s): sizes and counts are not checked", e)
        return None


def _plain_member_name(name: str) -> bool:
    """A shard member is `<key>.<ext>`: no folders, no absolute path, no `..`, no hidden name."""
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")


def _members(url: str, stream: Any) -> Iterator[dict[str, Any]]:
    """The files of one tar stream ({fname, data, __url__}), refusing members that are not plain `<key>.<ext>` files.

    WebDataset's own tar iterator skips non-regular members silently and takes
    any name; a name like `../../x` or `/etc/x` is refused here instead.
    """
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for m in tar:
            if not _plain_member_name(m.name):
                raise FingerprintError(f"{url}: unsafe member name {m.name!r} (members are <key>.<ext>)")
            if not m.isfile():
                raise FingerprintError(f"{url}: member {m.name!r} is not a regular file")
            yield {"fname": m.name, "data": tar.extractfile(m).read(), "__url__": url}
            tar.members = []


def resolve(shards: "str | os.PathLike | Iterable[str] | ShardSet") -> ShardSet:
    """Shard URLs and their manifest from any way of naming shards.

    - a local folder (`RUN/shards/dev`): its manifest's shards (or every .tar);
    - a folder URL (`https://host/dev/`, `s3://bucket/dev`): the shards its manifest.json lists;
    - a shard or brace pattern, local or remote (`dev/shard-{000000..000010}.tar`,
      `pipe:curl -s https://host/dev/shard-{000000..000010}.tar`): those shards;
    - a list of any of these shard URLs.
    The manifest is looked up beside the shards wherever they live; explicit shard
    lists work without one (nothing to check sizes and counts against).
    """
    if isinstance(shards, ShardSet):
        return shards
    if isinstance(shards, (str, os.PathLike)):
        spec = os.fspath(shards)
        local = urls.local_path(spec)
        if local is not None and local.is_dir():
            found = _folder_urls(local)
            man = read_manifest(local) if (local / "manifest.json").is_file() else None
            return ShardSet(found, man, spec)
        if not urls.shard_name(spec).endswith(".tar") and "{" not in spec:
            if local is not None:
                raise FingerprintError(f"{spec}: shard folder not found")
            man = read_manifest(spec)
            names = sorted(s["name"] for s in man["shards"])
            return ShardSet([urls.join(spec, n) for n in names], man, spec)
        listed = urls.expand(spec)
    else:
        spec = "the shard list"
        listed = [u for item in shards for u in urls.expand(os.fspath(item))]
    if not listed:
        raise FingerprintError("no shards given")
    for u in listed:
        path = urls.local_path(u)
        if path is not None and not path.is_file():
            raise FingerprintError(f"{u}: shard not found")
    return ShardSet(listed, manifest_for(listed), str(spec))


class _Tally:
    """A read-only stream wrapper that counts bytes, keeps the last 1024 and (optionally) hashes them.

    Lets a shard be checked as it streams (no seeking): the end-of-archive
    marker, the byte count and the sha256 are known when the stream ends.
    """

    def __init__(self, raw: Any, sha: bool):
        self.raw, self.bytes, self.tail = raw, 0, b""
        self.hash = hashlib.sha256() if sha else None

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        if data:
            self.bytes += len(data)
            self.tail = (self.tail + data)[-1024:]
            if self.hash is not None:
                self.hash.update(data)
        return data

    def finish(self) -> None:
        """Read to the end and close (a failed reader command raises here)."""
        while self.read(1 << 20):
            pass
        self.raw.close()

    def close_quietly(self) -> None:
        try:
            self.raw.close()
        except Exception:  # noqa: BLE001 - the stream is abandoned; its error is not the one to report
            pass


def iter_shard(url: str, expect: dict[str, Any] | None = None, *, checksum: bool = True) -> Iterator[dict[str, Any]]:
    """Raw samples ({__key__, __url__, json, png|npy}) of one shard, streamed with WebDataset's tar reader.

    Opened with WebDataset's gopen (local, http(s), pipe:, fsspec). As the
    stream ends it checks the end-of-archive marker (a shard cut at a member
    boundary reads as valid otherwise) and, given the manifest's record
    `expect`, the byte count, the number of samples and (with `checksum`) the
    sha256. Any problem is a FingerprintError naming the shard's URL. The last
    sample is held back until those checks pass, so a cut shard's incomplete
    last sample is never handed out; the ones before it have been.
    """
    tally, done, n = None, False, 0
    try:
        tally = _Tally(urls.open_url(url), sha=checksum and bool(expect and expect.get("sha256")))
        files = _members(url, tally)
        last = None  # held back one sample: a cut shard's incomplete last sample is never handed out
        for sample in wds.tariterators.group_by_keys(files, handler=wds.reraise_exception):
            n += 1
            if last is not None:
                yield last
            last = sample
        tally.finish()
        done = True
        _check_end(url, tally, n, expect)
        if last is not None:
            yield last
    except FileNotFoundError:
        raise FingerprintError(f"{url}: shard not found") from None
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        reason = urls.reader_error(e)
        if tally is not None and not done:
            done = True
            try:  # a reader command that failed (curl 404, a cut connection) says more than the tar error
                tally.raw.close()
            except (OSError, ValueError) as closing:
                reason = urls.reader_error(closing)
        if reason.startswith("stalled"):
            raise FingerprintError(f"{url}: {reason}") from None
        raise FingerprintError(f"{url}: corrupt or truncated shard ({reason})") from None
    finally:
        if tally is not None and not done:
            tally.close_quietly()


def _check_end(url: str, tally: _Tally, n: int, expect: dict[str, Any] | None) -> None:
    """The checks that need the whole stream: end marker, bytes, sample count, sha256."""
    expect = expect or {}
    if "bytes" in expect and tally.bytes != expect["bytes"]:
        raise FingerprintError(
            f"{url}: shard is {tally.bytes} bytes, manifest.json says {expect['bytes']} (truncated or changed)"
        )
    if len(tally.tail) != 1024 or tally.tail.strip(b"\0"):
        raise FingerprintError(f"{url}: corrupt or truncated shard (no end-of-archive marker after its last member)")
    if "count" in expect and n != expect["count"]:
        raise FingerprintError(f"{url}: holds {n} samples, manifest.json says {expect['count']} (truncated shard?)")
    if tally.hash is not None and tally.hash.hexdigest() != expect["sha256"]:
        raise FingerprintError(f"{url}: shard sha256 differs from manifest.json")


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
            if pixels.dtype not in (np.uint8, np.uint16) or pixels.ndim != 2:
                raise ValueError(f"npy array is {pixels.dtype} {pixels.shape}, expected uint8 or uint16 HxW")
            pixels = pixels.astype(pixels.dtype.newbyteorder("="), copy=False)
        elif "png" in sample:
            with Image.open(io.BytesIO(sample["png"])) as img:
                if img.mode not in ("L", "I;16"):
                    raise ValueError(f"png mode is {img.mode}, expected L (8-bit) or I;16 (16-bit)")
                pixels = np.asarray(img, dtype=np.uint8 if img.mode == "L" else np.uint16)
        else:
            raise FingerprintError(f"{where}: no png or npy image")
    except (OSError, ValueError, UnidentifiedImageError, SyntaxError) as e:
        raise FingerprintError(f"{where}: cannot decode image ({unreadable_reason(e)})") from None
    if list(pixels.shape) != list(record.get("size", pixels.shape)):
        raise FingerprintError(f"{where}: image is {pixels.shape}, record says {record.get('size')}")
    return key, pixels, record


# ----------------------------------------------------------------------------- inspection


def summarize(shards_dir: str | os.PathLike) -> dict[str, Any]:
    """What `fingerprint inspect` prints: counts, encoding, image size, shards (a local folder or a folder URL)."""
    found = resolve(shards_dir)
    man = found.manifest or read_manifest(shards_dir)
    if found.local:
        size = sum(Path(u).stat().st_size for u in found.urls)
    else:
        size = sum(int((found.entry(u) or {}).get("bytes", 0)) for u in found.urls)
    return {
        "folder": os.fspath(shards_dir),
        "count": man["count"],
        "counts": man["counts"],
        "encoding": man["encoding"],
        "image_size": man["image_size"],
        "layout": man["layout"],
        "shards": len(found.urls),
        "bytes": size,
        "converted": man.get("converted", 0),
        "skipped_at_pack": man.get("n_skipped", 0),
        "tool_version": man.get("tool_version"),
        "seed": man.get("seed"),
    }


def verify(shards_dir: str | os.PathLike, *, progress: bool = True) -> dict[str, Any]:
    """Re-check every shard (end marker, bytes, count, sha256 as it streams) and every sample's checksums.

    Works on a local folder or a folder URL. Returns {"ok": bool, "checked": n,
    "problems": [one line each]}.
    """
    man = read_manifest(shards_dir)
    problems: list[str] = []
    seen: set[str] = set()
    checked = 0
    for shard in tqdm(man["shards"], desc="verify", unit="shard", disable=not (progress and is_main_process())):
        url = urls.join(os.fspath(shards_dir), shard["name"])
        path = urls.local_path(url)
        if path is not None and not path.is_file():
            problems.append(f"{url}: shard missing")
            continue
        checked += _verify_shard(url, shard, man["encoding"], seen, problems)
    if checked != man["count"] and not problems:
        problems.append(f"{shards_dir}: read {checked} samples, manifest.json says {man['count']}")
    return {"ok": not problems, "checked": checked, "problems": problems}


def _verify_shard(url: str, shard: dict[str, Any], encoding: str, seen: set[str], problems: list[str]) -> int:
    """Check one shard's samples (appending to `problems`); returns how many decoded."""
    checked = 0
    try:
        for sample in iter_shard(url, shard):
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
    return checked
