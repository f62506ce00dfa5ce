"""One writer per output folder: an advisory `fcntl.flock` on `<folder>/.lock` while a command writes into it.

`folder_lock(folder, command)` takes the lock or fails at once with a
one-line FingerprintError naming the holder (pid, host, command, since when),
so two `fingerprint run --force` into one folder cannot delete each other's
checkpoints or interleave their logs. The kernel drops a flock when its
process dies, however it dies (kill -9 included), so a lock file left by a
dead process is simply taken over (and logged as such); the holder's record
in the file is informational. The lock is re-entrant within a process (the
pipeline holds the run folder's lock while its stages take their own), only
the main process of a distributed launch takes it, and a folder the lock
created is removed again when the command fails and leaves it empty.
flock is reliable on local file systems; on NFS it depends on the server.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from fingerprint.core.errors import FingerprintError, os_error
from fingerprint.core.files import check_writable, created_folders, remove_if_empty
from fingerprint.core.logs import is_main_process

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
#: folders this process holds: resolved path -> [depth, file descriptor]
_HELD: dict[Path, list[int]] = {}


def holder_text(record: dict[str, Any]) -> str:
    """`pid 123 on host h (fingerprint run, since 2024-01-01 12:00:00)` from a lock record."""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("started", 0)))
    return (
        f"pid {record.get('pid', '?')} on host {record.get('host', '?')} ({record.get('command', '?')}, since {since})"
    )


def read_holder(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The record of the last process that took the folder's lock (it may have ended)."""
    try:
        record = json.loads((Path(folder) / LOCK_FILE).read_text() or "null")
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _open_locked(path: Path) -> int:
    """Open and flock `path` without waiting; FingerprintError naming the holder if another process has it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = read_holder(path.parent)
            who = holder_text(holder) if holder else "another process"
            raise FingerprintError(
                f"{path.parent}: in use by {who}; wait for it to end or write elsewhere (lock file {path})"
            ) from None
        except OSError:
            os.close(fd)
            raise
        try:  # the previous holder may have removed the file between our open and our flock: retry on the new one
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _acquire(folder: Path, command: str) -> int:
    path = folder / LOCK_FILE
    fd = _open_locked(path)
    stale = read_holder(folder)
    if stale and stale.get("pid") != os.getpid():
        log.info("taking over the lock of %s, which is no longer running", holder_text(stale))
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "started": round(time.time(), 3)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    return fd


def _release(folder: Path, fd: int) -> None:
    with contextlib.suppress(OSError):
        (folder / LOCK_FILE).unlink()  # while still holding it, so a waiting opener sees a new inode
    os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold `<folder>/.lock` for the block (creating `folder`); re-entrant; no-op off the main process.

    If this call created `folder` and the block fails, leaving it empty, the
    folder is removed again: a failed command leaves no empty output folder.
    """
    folder = Path(folder)
    if not is_main_process():
        yield folder
        return
    key = folder.resolve()
    if key in _HELD:
        _HELD[key][0] += 1
        try:
            yield folder
        finally:
            _HELD[key][0] -= 1
        return
    new = created_folders(folder)
    try:
        check_writable(folder)
        folder.mkdir(parents=True, exist_ok=True)
        fd = _acquire(folder, command)
    except OSError as e:
        remove_if_empty(new)
        raise os_error(e, folder) from e
    except BaseException:
        remove_if_empty(new)
        raise
    _HELD[key] = [1, fd]
    ok = False
    try:
        yield folder
        ok = True
    finally:
        del _HELD[key]
        _release(folder, fd)
        if not ok:
            remove_if_empty(new)


def locks_folder(where: Callable[[Any], Any], command: str, *, create: bool = True) -> Callable:
    """Decorator for a stage entry `fn(cfg, ...)`: hold the lock of the folder `where(cfg)` while it runs.

    No lock when `where(cfg)` is None, or when the folder is missing and not
    to be `create`d (the stage then reports the missing folder itself).
    """

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def locked(cfg: Any, *args: Any, **kwargs: Any) -> Any:
            folder = where(cfg)
            if folder is None or (not create and not Path(folder).is_dir()):
                return fn(cfg, *args, **kwargs)
            with folder_lock(folder, command):
                return fn(cfg, *args, **kwargs)

        return locked

    return wrap
