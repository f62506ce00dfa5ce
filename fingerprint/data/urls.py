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

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable

from webdataset.gopen import Pipe, gopen, gopen_curl, gopen_schemes
from webdataset.shardlists import expand_urls

from fingerprint.core.errors import FingerprintError

log = logging.getLogger(__name__)

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


#: environment variables holding the network read limits (set by every command's --stall-timeout and --retries)
STALL_ENV, RETRIES_ENV = "FINGERPRINT_STALL_TIMEOUT", "FINGERPRINT_RETRIES"
DEFAULT_STALL_SECONDS, DEFAULT_RETRIES = 60, 3
#: curl's exit status when a transfer ran below --speed-limit for --speed-time seconds (or timed out connecting)
CURL_TIMED_OUT = 28


def network_limits() -> tuple[int, int]:
    """(stall seconds, retries) of http(s) reads: $FINGERPRINT_STALL_TIMEOUT, $FINGERPRINT_RETRIES, else 60 and 3."""

    def read(name: str, default: int, low: int) -> int:
        text = os.environ.get(name, "").strip()
        if not text:
            return default
        try:
            value = int(text)
        except ValueError:
            raise FingerprintError(f"{name}={text!r}: not a whole number") from None
        if value < low:
            raise FingerprintError(f"{name}={text!r}: must be >= {low}")
        return value

    return read(STALL_ENV, DEFAULT_STALL_SECONDS, 1), read(RETRIES_ENV, DEFAULT_RETRIES, 0)


def set_network_limits(stall: int | None = None, retries: int | None = None) -> None:
    """Set the http(s) read limits for this process and the processes it starts (worker processes, launches)."""
    if stall is not None:
        os.environ[STALL_ENV] = str(int(stall))
    if retries is not None:
        os.environ[RETRIES_ENV] = str(int(retries))
    network_limits()  # refuse bad values now


#: curl exit statuses worth another try: could not connect, partial file, empty reply, send/receive failure, stall
_TRANSIENT = {7, 18, 52, 55, 56, CURL_TIMED_OUT}


def curl_command(url: str) -> list[str]:
    """The curl command that reads `url`: a transfer that delivers under 1 byte/s for the stall time is abandoned
    (curl's --speed-limit/--speed-time, exit 28), and connecting may take no longer than that either."""
    stall, _ = network_limits()
    return ["curl", "--connect-timeout", str(min(30, stall)), "--speed-limit", "1", "--speed-time", str(stall),
            "-f", "-s", "-L", url]  # fmt: skip


def curl_status(e: BaseException) -> int | None:
    """The exit status of a failed curl reader in a gopen error, else None."""
    text = str(e.args[0]) if getattr(e, "args", None) else ""
    m = re.search(r": exit (\d+) \(read\)", text)
    return int(m.group(1)) if m and "'curl'" in text else None


class RetryingCurl:
    """A curl reader that starts again after a stall or a dropped connection, up to `retries` times.

    The new transfer starts from the beginning and the bytes already handed
    out are read and dropped, so the reader sees one unbroken stream (no
    Range support needed from the server). A failure that persists raises
    the last curl error (exit 28: stalled).
    """

    def __init__(self, url: str, bufsize: int = 8192):
        self.url, self.bufsize, self.offset = url, bufsize, 0
        self.left = network_limits()[1]
        self.pipe = self._open()
        self.closed = False

    def _open(self) -> Pipe:
        return Pipe(curl_command(self.url), mode="rb", bufsize=self.bufsize, ignore_status=[141])

    def _retry(self, e: OSError) -> None:
        if curl_status(e) not in _TRANSIENT or self.left <= 0:
            raise e
        self.left -= 1
        log.warning("%s: %s; trying again (%d retries left)", self.url, reader_error(e), self.left)
        with contextlib.suppress(OSError, ValueError):
            self.pipe.close()
        self.pipe = self._open()
        skip = self.offset
        while skip > 0:
            got = self.pipe.read(min(skip, 1 << 20))
            if not got:
                self.pipe.close()  # raises the reason the transfer ended early
                raise OSError(f"{self.url}: shorter on a second read ({self.offset - skip} of {self.offset} bytes)")
            skip -= len(got)

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:  # to the end, in chunks: the end of each transfer is checked inside read(n)
            return b"".join(iter(lambda: self.read(1 << 20), b""))
        while True:
            try:
                data = self.pipe.read(n)
                if not data and not self.closed:
                    self.pipe.close()  # a failed transfer raises here
                    self.closed = True
                self.offset += len(data)
                return data
            except OSError as e:
                self._retry(e)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pipe.close()


def gopen_http(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any):
    """gopen handler for http(s): a curl reader with a stall timeout and retries (`curl_command`, `RetryingCurl`)."""
    if mode[0] != "r":
        return gopen_curl(url, mode, bufsize)
    return RetryingCurl(url, bufsize)


def register_schemes() -> None:
    """Send the object-store schemes to fsspec, and http(s) to the curl reader with a stall timeout, in WebDataset's
    gopen table (idempotent)."""
    for s in FSSPEC_SCHEMES:
        gopen_schemes[s] = gopen_fsspec
    for s in ("http", "https"):
        gopen_schemes[s] = gopen_http


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
        reason = reader_error(e)
        text = reason if reason.startswith("stalled") else f"cannot read ({reason})"
        raise FingerprintError(f"{url}: {text}") from None


def reader_error(e: BaseException) -> str:
    """A short reason from a gopen error (a failed curl/pipe command says only its exit status)."""
    text = str(e.args[0]) if getattr(e, "args", None) else type(e).__name__
    m = re.search(r": exit (\d+) \(read\)", text)
    if curl_status(e) == CURL_TIMED_OUT:
        return stalled_text()
    if m:
        return f"reader command exited with status {m.group(1)}"
    return text.split(" @ ")[0]


def stalled_text() -> str:
    """`stalled after N s (...)`: the cause of a read curl abandoned for want of data."""
    stall, retries = network_limits()
    return f"stalled after {stall} s (no data for {stall} s, {retries + 1} tries; see --stall-timeout, --retries)"


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
