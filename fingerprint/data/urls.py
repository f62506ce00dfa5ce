"""Where shards live: local paths, brace patterns, http(s)://, pipe: commands and fsspec URLs, opened by WebDataset.

Every shard and manifest is opened with WebDataset's own opener,
`webdataset.gopen.gopen`: local files and `file://` directly, `http(s)://`
through `curl`, `pipe:CMD` through the shell, and the object stores
(`s3://`, `gs://`, `az://`, ...) through fsspec, registered here in
gopen's scheme table (`gopen_schemes`, its extension point). The fsspec
back-ends are optional extras (`pip install 'fingerprint[s3]'` for s3fs,
`'fingerprint[gcs]'` for gcsfs) and are imported only when such a URL is
opened, with a one-line error naming the extra when they are missing.
`sibling` finds the file beside a shard (its `manifest.json`) in any of
these forms, including inside a `pipe:` command, and `upload_folder` copies
a packed folder to an fsspec URL, the manifest last.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable

from webdataset.gopen import gopen, gopen_schemes
from webdataset.shardlists import expand_urls

from fingerprint.core.errors import FingerprintError

#: URL schemes opened through fsspec (registered in webdataset.gopen.gopen_schemes)
FSSPEC_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "hdfs", "webhdfs", "memory")
#: which optional extra provides each scheme's fsspec back-end
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")
#: the last `<name>.tar` in a URL or command: the shard's file name
_TAR = re.compile(r"[^/\s'\"=:]+\.tar(?=$|[\s'\"?#&;|)])")


def scheme(url: str) -> str | None:
    """'https' for https://..., 'pipe' for pipe:..., None for a local path (also C:\\ style drive letters)."""
    m = _SCHEME.match(str(url))
    if not m or len(m.group(1)) == 1:
        return None
    s = m.group(1).lower()
    return s if s == "pipe" or str(url)[m.end() :].startswith("//") else None


def is_url(spec: Any) -> bool:
    """True for anything read through gopen other than a local path (file:// counts as local)."""
    s = scheme(str(spec)) if isinstance(spec, (str, os.PathLike)) else None
    return s is not None and s != "file"


def local_path(spec: str | os.PathLike) -> Path | None:
    """The local path of `spec` (a path or a file:// URL); None for other URLs."""
    text = os.fspath(spec)
    s = scheme(text)
    if s is None:
        return Path(text)
    if s == "file":
        return Path(re.sub(r"^file://", "", text))
    return None


def expand(spec: str) -> list[str]:
    """Expand a shard pattern as WebDataset does: braces (`shard-{000000..000009}.tar`), `::` between lists."""
    return list(expand_urls(str(spec)))


def shard_name(url: str) -> str:
    """The file name of the shard a URL or pipe: command reads (`.../shard-000003.tar` -> `shard-000003.tar`)."""
    found = list(_TAR.finditer(str(url)))
    if found:
        return found[-1].group(0)
    return str(url).rstrip("/").rsplit("/", 1)[-1]


def sibling(url: str, name: str) -> str:
    """The URL (or command) that reads file `name` beside the shard `url` reads.

    `http://h/d/shard-000001.tar` -> `http://h/d/manifest.json`;
    `pipe:cat /d/shard-000001.tar` -> `pipe:cat /d/manifest.json`.
    """
    found = list(_TAR.finditer(str(url)))
    if not found:
        raise FingerprintError(f"{url}: cannot tell which .tar file it reads")
    m = found[-1]
    return str(url)[: m.start()] + name + str(url)[m.end() :]


def join(folder: str, name: str) -> str:
    """`name` inside a folder URL (or local folder)."""
    return str(folder).rstrip("/") + "/" + name


def _fsspec_filesystem(url: str):
    """(fsspec filesystem, path) of an fsspec URL; a one-line error naming the optional extra if it is missing."""
    try:
        import fsspec
    except ImportError:
        raise FingerprintError(f"{url}: reading fsspec URLs needs fsspec (pip install fsspec)") from None
    s = scheme(url) or ""
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:
        extra = EXTRAS.get(s)
        hint = f"pip install 'fingerprint[{extra}]'" if extra else f"install the fsspec back-end for {s}://"
        raise FingerprintError(f"{url}: {s}:// needs an optional package ({hint}; {e})") from None
    except ValueError as e:
        raise FingerprintError(f"{url}: not an fsspec URL ({e})") from None


def gopen_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any):
    """gopen handler for fsspec URLs (WebDataset's scheme table calls it like its own curl/pipe handlers)."""
    fs, path = _fsspec_filesystem(url)
    return fs.open(path, mode)


def register_schemes() -> None:
    """Send the object-store schemes to fsspec in WebDataset's gopen table (idempotent)."""
    for s in FSSPEC_SCHEMES:
        gopen_schemes[s] = gopen_fsspec


register_schemes()


def open_url(url: str, mode: str = "rb"):
    """Open a shard or manifest for reading (or writing) with WebDataset's gopen."""
    if scheme(url) in ("http", "https") and not _has_curl():
        raise FingerprintError(f"{url}: http(s) shards are read with curl (WebDataset's gopen), which is not installed")
    return gopen(str(url), mode)


def _has_curl() -> bool:
    import shutil

    return shutil.which("curl") is not None


def read_bytes(url: str) -> bytes:
    """The whole content of `url`; a one-line FingerprintError naming it when it cannot be read."""
    try:
        stream = open_url(url)
        try:
            data = stream.read()
        finally:
            stream.close()
        return data
    except FingerprintError:
        raise
    except FileNotFoundError:
        raise FingerprintError(f"{url}: not found") from None
    except (OSError, ValueError) as e:
        raise FingerprintError(f"{url}: cannot read ({reader_error(e)})") from None


def reader_error(e: BaseException) -> str:
    """A short reason from a gopen error (a failed curl/pipe command says only its exit status)."""
    text = str(e.args[0]) if getattr(e, "args", None) else type(e).__name__
    m = re.search(r": exit (\d+) \(read\)", text)
    if m:
        return f"reader command exited with status {m.group(1)}"
    return text.split(" @ ")[0]


def exists(url: str) -> bool:
    """True if `url` can be read (local: the file exists; otherwise: it opens and reads)."""
    path = local_path(url)
    if path is not None:
        return path.is_file()
    try:
        read_bytes(url)
    except FingerprintError:
        return False
    return True


def upload_folder(local: Path, url: str, *, last: Iterable[str] = ("manifest.json",)) -> list[str]:
    """Copy every file of `local` to the fsspec folder `url`, the `last` names after the rest; returns the URLs.

    Readers treat a folder with its manifest as complete, so the manifest goes
    last: an interrupted upload leaves a folder no reader accepts.
    """
    if scheme(url) in ("http", "https", "pipe") or not is_url(url):
        raise FingerprintError(f"{url}: can only upload to an fsspec URL (s3://, gs://, ...)")
    fs, root = _fsspec_filesystem(url)
    names = sorted(p.name for p in Path(local).iterdir() if p.is_file())
    order = [n for n in names if n not in set(last)] + [n for n in last if n in names]
    written = []
    for name in order:
        fs.put_file(str(Path(local) / name), join(root, name))
        written.append(join(url, name))
    return written


def remove_folder(url: str) -> None:
    """Delete an fsspec folder and everything in it, if it exists (pack.force over a URL)."""
    fs, root = _fsspec_filesystem(url)
    if fs.exists(root):
        fs.rm(root, recursive=True)
