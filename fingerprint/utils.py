"""Small shared helpers: one-line user errors, atomic outputs, JSON files and logs, hashing.

Every file a stage writes goes through `atomic_path`/`write_json`, so an
interrupted stage never leaves a file that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

log = logging.getLogger(__name__)


class FingerprintError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""


def is_main_process() -> bool:
    """True on rank 0 (or outside a distributed launch)."""
    return int(os.environ.get("RANK", "0")) == 0


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr on the main process; other ranks log warnings only."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(level if is_main_process() else logging.WARNING)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it to `path` only if the block succeeds.

    Works for files and directories. On error the temporary is removed and
    `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FingerprintError(f"{path}: already exists (use force to replace it)")
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
    except BaseException:
        _remove(tmp)
        raise


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


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


class JsonlLogger:
    """Append one JSON object per line (metrics and timings); main process only."""

    def __init__(self, path: str | os.PathLike | None, **static: Any):
        self.path = Path(path) if path is not None and is_main_process() else None
        self.static = static
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, **record: Any) -> None:
        if self.path is None:
            return
        line = json.dumps({"time": round(time.time(), 3), **self.static, **record}, default=_json_default)
        with open(self.path, "a") as f:
            f.write(line + "\n")


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
