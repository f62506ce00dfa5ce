"""Fault-injection kit: real `fingerprint` processes (through tests/_forkserver.py) and the fault mechanisms.

`ForkServer.start(argv, cwd=...)` runs a command in its own forked process
(real exit code, real stderr, killable with SIGKILL) without paying the
package's import time again; `fsize=` sets RLIMIT_FSIZE in that process only
(a full disk: writes past the limit fail with EFBIG, as ENOSPC would).
`read_only(folder)` makes a folder unwritable even for root: a read-only bind
mount, else `chattr +i`, else (not root) chmod; it skips the test with the
reason when none works. `snapshot` records a folder tree (names and sha256)
to show inputs untouched and nothing written outside the output folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

HERE = Path(__file__).resolve().parent
ERROR_PREFIX = "fingerprint {cmd}: error: "


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("fingerprint ") and ": error: " in line]


class Child:
    """One running command."""

    def __init__(self, server: ForkServer, cid: int, pid: int, out: Path, err: Path):
        self.server, self.id, self.pid, self.out_path, self.err_path = server, cid, pid, out, err
        self.rc: int | None = None

    def err_text(self) -> str:
        return self.err_path.read_text(errors="replace") if self.err_path.exists() else ""

    def wait(self, timeout: float = 300) -> Result:
        if self.rc is None:
            try:
                self.rc = self.server.wait_exit(self.id, timeout)
            except TimeoutError:
                self.kill()
                self.rc = self.server.wait_exit(self.id, 30)
                raise
        time.sleep(0.05)  # the server's copier threads have flushed by the time it reports the exit
        return Result(self.rc, self.out_path.read_text(errors="replace"), self.err_text())

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def wait_for(self, text: str, timeout: float = 120, poll: float = 0.01) -> bool:
        """Wait until `text` appears in the child's stderr; False if the child ended first."""
        return self.wait_first([text], timeout, poll) is not None

    def wait_first(self, texts: list[str], timeout: float = 120, poll: float = 0.01) -> str | None:
        """Wait until one of `texts` appears in the child's stderr; returns it (None if the child ended first)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            ended = self.server.ended(self.id)
            err = self.err_text()
            seen = [t for t in texts if t in err]
            if seen:
                return min(seen, key=err.index)
            if ended:
                return None
            time.sleep(poll)
        raise TimeoutError(f"none of {texts!r} seen in {timeout} s")


class ForkServer:
    def __init__(self, logs: Path):
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "_forkserver.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env=env, cwd=HERE.parent,
        )  # fmt: skip
        self.events: dict[int, queue.Queue] = {}
        self.exits: dict[int, int] = {}
        self.ready = queue.Queue()
        self.ids = itertools.count(1)
        threading.Thread(target=self._read, daemon=True).start()
        self.ready.get(timeout=600)

    def _read(self) -> None:
        for line in self.proc.stdout:
            msg = json.loads(line)
            if msg.get("ready"):
                self.ready.put(True)
                continue
            if "rc" in msg:
                self.exits[msg["id"]] = msg["rc"]
            self.events.setdefault(msg["id"], queue.Queue()).put(msg)

    def start(self, argv: list[str], *, cwd: Path, env: dict | None = None, fsize: int | None = None) -> Child:
        cid = next(self.ids)
        q = self.events.setdefault(cid, queue.Queue())
        out, err = self.logs / f"{cid}.out", self.logs / f"{cid}.err"
        req = {"id": cid, "argv": [str(a) for a in argv], "cwd": str(cwd), "env": env or {}, "fsize": fsize,
               "stdout": str(out), "stderr": str(err)}  # fmt: skip
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        pid = q.get(timeout=60)["pid"]
        return Child(self, cid, pid, out, err)

    def run(self, argv: list[str], *, cwd: Path, timeout: float = 300, **kw) -> Result:
        return self.start(argv, cwd=cwd, **kw).wait(timeout)

    def ended(self, cid: int) -> bool:
        return cid in self.exits

    def wait_exit(self, cid: int, timeout: float) -> int:
        end = time.monotonic() + timeout
        while cid not in self.exits:
            if time.monotonic() > end:
                raise TimeoutError(f"command {cid} still running after {timeout} s")
            time.sleep(0.02)
        return self.exits[cid]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.stdin.close()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=10)
        if self.proc.poll() is None:
            self.proc.kill()


# ----------------------------------------------------------------------------- fault mechanisms


def run_ok(*cmd: str) -> bool:
    """True if the command ran and succeeded (False also when the program is missing)."""
    try:
        return subprocess.run(list(cmd), capture_output=True).returncode == 0
    except OSError:
        return False


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[str]:
    """Make `folder` unwritable for the block; yields the mechanism's name. Works as root (bind mount or chattr)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            yield "chmod 555"
        finally:
            folder.chmod(mode)
        return
    if run_ok("mount", "--bind", str(folder), str(folder)):
        if run_ok("mount", "-o", "remount,bind,ro", str(folder)):
            try:
                yield "read-only bind mount"
            finally:
                run_ok("umount", str(folder))
            return
        run_ok("umount", str(folder))
    if shutil.which("chattr") and run_ok("chattr", "+i", str(folder)):
        try:
            yield "chattr +i"
        finally:
            run_ok("chattr", "-i", str(folder))
        return
    pytest.skip("no way to make a folder read-only for root here (no mount privilege, no chattr)")


def snapshot(root: Path, exclude: tuple[Path, ...] = ()) -> dict[str, str]:
    """{relative path: sha256 (files), '<dir>' or '-> target' (links)} of a tree, leaving out the `exclude`d
    subtrees."""
    root = Path(root)
    skip = [Path(os.path.abspath(e)) for e in exclude]
    out = {}
    for p in sorted(root.rglob("*")):
        rp = Path(os.path.abspath(p))
        if any(rp == s or s in rp.parents for s in skip):
            continue
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():  # a link is recorded as where it points (it may be broken or a loop)
            out[rel] = "-> " + os.readlink(p)
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out


def files_under(folder: Path) -> list[str]:
    """Every file under `folder` (relative), hidden ones included."""
    folder = Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def link_copy(src: Path, dst: Path) -> Path:
    """A cheap copy of a folder: files over 1 MB are hard links (every writer replaces them by renaming), smaller
    ones (logs a command appends to, JSON) are copied. Replace a linked file by unlinking before writing it."""

    def copy(a: str, b: str) -> None:
        if os.path.getsize(a) > 1 << 20:
            os.link(a, b)
        else:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=copy)
    return dst


def replace_bytes(path: Path, data: bytes) -> None:
    """Write `data` as a new file at `path` (never through a hard link shared with a reference copy)."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)
