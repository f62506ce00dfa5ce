"""Files: atomic outputs, stale temporaries, JSON files and hashing.

Every file a stage writes goes through `atomic_path`/`write_json`, so an
interrupted stage never leaves a file that looks complete; an operating-system
error while writing (a full disk, a read-only folder) becomes a one-line
FingerprintError naming the file, and temporaries left by killed processes
(`.<name>.tmp-<pid>`, `.<name>.old-<pid>`) are removed the next time that
output is written (or by `remove_stale_temporaries` over a whole folder).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import save_file

from fingerprint.core.errors import FingerprintError, os_error, os_error_text

log = logging.getLogger(__name__)


def pid_alive(pid: int) -> bool:
    """True if a process with this id runs on this host (a pid we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)$")


def _stale(p: Path) -> bool:
    m = _TEMPORARY.match(p.name)
    return m is not None and int(m["pid"]) != os.getpid() and not pid_alive(int(m["pid"]))


def remove_stale_temporaries(folder: str | os.PathLike, *, name: str | None = None, recursive: bool = False) -> int:
    """Remove `.<name>.tmp-<pid>` / `.<name>.old-<pid>` left in `folder` by processes no longer running.

    `name` limits it to one output's temporaries; `recursive` walks the
    subfolders too. Returns how many were removed. A process id is only
    meaningful on its own host: temporaries of live processes are kept.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    found = folder.rglob(".*") if recursive else folder.glob(".*")
    removed = 0
    for p in sorted(found, key=lambda q: len(q.parts)):
        m = _TEMPORARY.match(p.name)
        if m is None or (name is not None and m["name"] != name) or not _stale(p):
            continue
        if p.exists() or p.is_symlink():
            log.info("removing %s, left by process %s (no longer running)", p, m["pid"])
            with contextlib.suppress(OSError):
                _remove(p)
                removed += 1
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it to `path` only if the block succeeds.

    Works for files and directories. On error the temporary is removed and
    `path` is left as it was; an OSError (full disk, read-only folder, ...)
    becomes a FingerprintError naming the file. Temporaries of `path` left
    by killed processes are removed first.
    """
    path = Path(path)
    new = created_folders(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        remove_if_empty(new)
        raise os_error(e, path.parent) from e
    if path.exists() and not overwrite:
        raise FingerprintError(f"{path}: already exists (use force to replace it)")
    remove_stale_temporaries(path.parent, name=path.name)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink() and tmp.is_dir():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            _remove(tmp)
        remove_if_empty(new)
        if isinstance(e, OSError):
            inside = e.filename is None or str(e.filename).startswith(str(tmp))
            raise FingerprintError(f"{path if inside else e.filename}: {os_error_text(e)}") from e
        raise


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def check_writable(folder: str | os.PathLike) -> Path:
    """Fail early, before any work, if files cannot be created in `folder` (or where it would be created).

    Creates and removes a probe file in `folder`, or in its nearest existing
    parent when it does not exist yet (nothing is left behind), so a
    read-only file system, missing permissions or an immutable folder give a
    one-line FingerprintError now rather than after the stage has computed
    its result.
    """
    folder = Path(folder)
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise FingerprintError(f"{existing}: not a folder (cannot write {folder})")
    probe = existing / f".write-probe-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"0")
    except OSError as e:
        raise FingerprintError(f"{folder}: cannot write here ({os_error_text(e)})") from e
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return folder


def created_folders(path: str | os.PathLike) -> list[Path]:
    """The folders `path.mkdir(parents=True)` would create, outermost first (for cleaning up after a failure)."""
    path = Path(path).absolute()
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing[::-1]


def remove_if_empty(folders: list[Path]) -> None:
    """Remove the given folders, innermost first, where they hold nothing but empty folders."""
    for folder in reversed(folders):
        if folder.is_dir() and not any(p.is_file() or p.is_symlink() for p in folder.rglob("*")):
            with contextlib.suppress(OSError):
                shutil.rmtree(folder)


@contextlib.contextmanager
def output_folder(out: str | os.PathLike) -> Iterator[Path]:
    """A command's output folder: when the block fails, everything it created there is removed again.

    For commands whose outputs are many files and folders written in turn
    (audit, attribute): each file is still written atomically, and on any
    error or interrupt the files and folders that did not exist before the
    block are removed, then `out` itself (and the parents made for it) when
    the block created it, so a failed command leaves its output absent or as
    it was (files it replaced with force are the new, complete versions).
    """
    out = Path(out)
    new = created_folders(out)
    before = set(out.rglob("*")) if out.is_dir() else set()
    try:
        yield out
    except BaseException:
        if out.is_dir():
            for p in sorted(out.rglob("*"), key=lambda q: len(q.parts), reverse=True):
                if p not in before:
                    with contextlib.suppress(OSError):
                        _remove(p)
        remove_if_empty(new)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def read_json(path: str | os.PathLike) -> Any:
    """Read JSON, turning a missing or broken file into a one-line FingerprintError."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FingerprintError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise FingerprintError(f"{path}: not valid JSON ({e})") from None


def text_lines(path: str | os.PathLike, what: str = "file") -> list[str]:
    """The lines of a small text table (truth, id and run files), read alike everywhere.

    UTF-8 with or without a byte-order mark (Excel's "CSV UTF-8"), LF or
    CRLF line ends; a final line end does not make a blank line. Fields are
    for the caller to strip (str.strip also removes non-breaking spaces). A
    missing or undecodable file is a FingerprintError naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FingerprintError(f"{path}: {what} not found")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise FingerprintError(f"{path}: {what} is not UTF-8 text (undecodable byte at offset {e.start})") from None
    except OSError as e:
        raise os_error(e, path) from None
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_tensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """safetensors' `save_file`, its I/O failures raised as the OSError they are (a full disk is ENOSPC), so that
    `atomic_path` names the file and the cause on one line."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as e:
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        n = int(code.group(1))
        raise OSError(n, os.strerror(n), str(path)) from e
