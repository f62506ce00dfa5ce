"""Stage-complete records: a pipeline stage is done when, and only when, its record says so.

`pipeline.Stages` runs a stage, then writes `RUN/.stages/<stage>.json` last:
the stage's config (its equivalent command line without `force`), a digest
of its inputs' listing (file names, sizes, times), the digest of the record
before it in the run (a chain: redoing a stage redoes every stage after it),
and the size, time and sha256 of each output file (every file of an output
folder). A stage is skipped only when its record exists, the config, inputs
and chain match, and every output is still as recorded (size, then the
sha256 when the file's time differs), so a stage that was interrupted,
failed half-way (e.g. a score file written but not its run file) or whose
options changed is redone. The record is removed before a stage is redone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from fingerprint.core.files import read_json, sha256_file, write_json

RECORDS_DIR = ".stages"
FORMAT = "fingerprint-stage/1"


def _files(path: Path) -> list[Path]:
    """`path` itself, or every file under the folder `path`, sorted (hidden temporaries skipped)."""
    if path.is_file():
        return [path]
    files = [
        p for p in path.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(path).parts)
    ]
    return sorted(files)


def describe(path: Path, *, hash_files: bool = True) -> dict[str, Any]:
    """{relative name: {size, mtime_ns, sha256}} for a file or every file of a folder."""
    path = Path(path)
    out = {}
    for p in _files(path):
        st = p.stat()
        rel = p.name if p == path else p.relative_to(path).as_posix()
        out[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns} | ({"sha256": sha256_file(p)} if hash_files else {})
    return out


def listing_digest(paths: Iterable[Path]) -> str:
    """sha256 of the (name, size, mtime) listing of input files and folders: changes when an input changes."""
    h = hashlib.sha256()
    for path in paths:
        path = Path(path)
        h.update(str(path).encode())
        if not path.exists():
            h.update(b"<missing>")
            continue
        for rel, d in describe(path, hash_files=False).items():
            h.update(f"{rel}\0{d['size']}\0{d['mtime_ns']}\n".encode())
    return h.hexdigest()


def _unchanged(path: Path, recorded: dict[str, Any]) -> bool:
    if not path.exists():
        return False
    now = describe(path, hash_files=False)
    if set(now) != set(recorded):
        return False
    for rel, d in now.items():
        was = recorded[rel]
        if d["size"] != was["size"]:
            return False
        if d["mtime_ns"] != was["mtime_ns"]:
            file = path if path.is_file() else path / rel
            if sha256_file(file) != was.get("sha256"):
                return False
    return True


class StageRecords:
    """The stage-complete records of one run folder (`RUN/.stages/<stage>.json`)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / RECORDS_DIR

    def path(self, stage: str) -> Path:
        return self.dir / f"{stage}.json"

    def read(self, stage: str) -> dict[str, Any] | None:
        """The stage's record, or None if it has none (or an unreadable one)."""
        try:
            record = read_json(self.path(stage))
        except Exception:
            return None
        return record if isinstance(record, dict) and record.get("format") == FORMAT else None

    def complete(
        self, stage: str, config: Sequence[str], after: str, outputs: Sequence[Path], inputs: str = ""
    ) -> dict[str, Any] | None:
        """The record if `stage` is complete for this config, inputs and chain, with its outputs as recorded."""
        record = self.read(stage)
        if record is None or record.get("config") != list(config) or record.get("after") != after:
            return None
        if record.get("inputs", "") != inputs:
            return None
        recorded = record.get("outputs", {})
        if set(recorded) != {self._name(p) for p in outputs}:
            return None
        if not all(_unchanged(Path(p), recorded[self._name(p)]) for p in outputs):
            return None
        return record

    def invalidate(self, stage: str) -> None:
        """Remove the stage's record: from now on the stage counts as not done."""
        with contextlib.suppress(FileNotFoundError):
            self.path(stage).unlink()

    def write(
        self, stage: str, config: Sequence[str], after: str, outputs: Sequence[Path], inputs: str = "", **extra: Any
    ) -> dict[str, Any]:
        """Describe the outputs (sha256 of every file) and write the record, last; returns it."""
        body = {
            "format": FORMAT,
            "stage": stage,
            "config": list(config),
            "after": after,
            "inputs": inputs,
            "outputs": {self._name(p): describe(Path(p)) for p in outputs},
        }
        body["digest"] = record_digest(body)
        write_json(self.path(stage), body | {"finished": round(time.time(), 3), **extra})
        return body

    def _name(self, path: Path) -> str:
        path = Path(path)
        try:
            return path.relative_to(self.run_dir).as_posix()
        except ValueError:
            return str(path)


def record_digest(body: dict[str, Any]) -> str:
    """sha256 of what a record says (stage, config, chain, inputs, output hashes; not the times)."""
    stable = {k: body[k] for k in ("stage", "config", "after", "inputs")}
    stable["outputs"] = {
        name: {rel: [d["size"], d.get("sha256")] for rel, d in files.items()} for name, files in body["outputs"].items()
    }
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()
