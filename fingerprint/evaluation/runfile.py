"""Official run files (ImageCLEFmedical GANs 2023, task 1): write them and check them.

A run file has one `<figure_id>,<0|1>` row per real test image, no header.
The rules checked here are the organisers' (see the task description and
their sample runs); each problem names its rule and line number.
`run_validate(ValidateConfig)` is the `fingerprint validate` stage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

from fingerprint.core.config import check_fields, option
from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import atomic_path, text_lines

log = logging.getLogger(__name__)

#: Rule names used in problem messages.
RULES = {
    "encoding": "the file is UTF-8 text",
    "empty-file": "the file has rows",
    "blank-line": "no blank line",
    "header": "no header row",
    "format": "exactly two comma-separated fields: figure_id,label",
    "extension": "figure_id has no file extension",
    "unknown-id": "figure_id is one of the official ids",
    "duplicate-id": "each figure_id appears once",
    "label": "label is the integer 0 or 1",
    "missing-ids": "every official figure_id is present",
}
DEFAULT_IDS = "imageclef2023_ids.txt"
_MAX_LISTED = 5


@dataclass(kw_only=True)
class ValidateConfig:
    """Options of `fingerprint validate`."""

    SECTION = "validate"

    runfile: Path = option(positional=True, help="the run file to check (<figure_id>,<0|1> rows, no header)")
    ids: Path | None = option(None, help="file with one official figure_id per line (default: the 2023 test ids)")
    seed: int = option(0, help="unused (the check is deterministic); accepted like every command")

    def __post_init__(self) -> None:
        check_fields(self)


def run_validate(cfg: ValidateConfig) -> tuple[list[str], int]:
    """(every problem of the run file, number of official ids); no problems means valid."""
    ids = load_ids(cfg.ids)
    return validate(cfg.runfile, ids), len(ids)


def load_ids(path: str | Path | None = None) -> list[str]:
    """The official ids: one per line in `path`, or the packaged 2023 test ids."""
    if path is None:
        text = resources.files("fingerprint").joinpath("data", DEFAULT_IDS).read_text()
        source = f"fingerprint/data/{DEFAULT_IDS}"
    else:
        text = "\n".join(text_lines(path, "id file"))
        source = str(path)
    ids = [line.strip() for line in text.splitlines() if line.strip()]
    if not ids:
        raise FingerprintError(f"{source}: id file has no ids")
    if len(set(ids)) != len(ids):
        raise FingerprintError(f"{source}: id file lists an id more than once")
    return ids


def write_run_file(path: str | Path, keys: Sequence[str], labels: Sequence[int]) -> Path:
    """Write `<key>,<label>` rows (labels 0/1), atomically; refuses anything validate would reject."""
    if len(keys) != len(labels):
        raise FingerprintError(f"{path}: {len(keys)} keys for {len(labels)} labels")
    if len(set(keys)) != len(keys):
        raise FingerprintError(f"{path}: a key appears more than once")
    rows = []
    for key, label in zip(keys, labels):
        if not key or "," in key or "." in key or key != key.strip():
            raise FingerprintError(f"{path}: key {key!r} cannot be a figure_id")
        if int(label) != label or int(label) not in (0, 1):
            raise FingerprintError(f"{path}: label {label!r} of {key} must be 0 or 1")
        rows.append(f"{key},{int(label)}\n")
    with atomic_path(path) as tmp:
        tmp.write_text("".join(rows))
    return Path(path)


def read_run_file(path: str | Path) -> dict[str, int]:
    """Read a valid run file into {figure_id: label}; FingerprintError naming the first problem otherwise."""
    path = Path(path)
    problems = _check(path, None)
    if problems:
        raise FingerprintError(f"{path}: {problems[0]}")
    out = {}
    for line in text_lines(path, "run file"):
        key, label = (f.strip() for f in line.split(","))
        out[key] = int(label)
    return out


def validate(path: str | Path, ids: Sequence[str] | None = None) -> list[str]:
    """All problems of run file `path` against `ids` (default: the 2023 test ids); [] when valid.

    Each problem reads `line N: <rule>: <what>` (or `<rule>: <what>` for the
    whole file). Spaces around fields and a final newline are tolerated.
    """
    return _check(Path(path), load_ids() if ids is None else list(ids))


def _check(path: Path, ids: list[str] | None) -> list[str]:
    try:
        lines = text_lines(path, "run file")
    except FingerprintError as e:
        if "not UTF-8" not in str(e):
            raise
        return [f"encoding: {RULES['encoding']} ({str(e).rsplit('(', 1)[-1]}"]
    if "".join(lines).strip() == "":
        return [f"empty-file: {RULES['empty-file']}"]
    known = set(ids) if ids is not None else None
    seen: dict[str, int] = {}
    problems: list[str] = []
    for lineno, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r")
        if line.strip() == "":
            problems.append(f"line {lineno}: blank-line: {RULES['blank-line']}")
            continue
        fields = [f.strip() for f in line.split(",")]
        if (
            lineno == 1
            and len(fields) == 2
            and fields[0].lower() in ("figure_id", "id", "key")
            and fields[1].lower() in ("label", "score")
        ):
            problems.append(f"line {lineno}: header: {RULES['header']} (found {line.strip()!r})")
            continue
        if len(fields) != 2:
            problems.append(f"line {lineno}: format: {RULES['format']} (found {len(fields)} fields)")
            continue
        key, label = fields
        if not key:
            problems.append(f"line {lineno}: format: {RULES['format']} (empty figure_id)")
            continue
        if known is not None and key not in known:
            stem = key.rsplit(".", 1)[0]
            if "." in key and stem in known:
                problems.append(f"line {lineno}: extension: {RULES['extension']} (found {key!r})")
            else:
                problems.append(f"line {lineno}: unknown-id: {RULES['unknown-id']} (found {key!r})")
        elif key in seen:
            problems.append(f"line {lineno}: duplicate-id: {RULES['duplicate-id']} ({key!r} first on line {seen[key]})")
        else:
            seen[key] = lineno
        if label not in ("0", "1"):
            problems.append(f"line {lineno}: label: {RULES['label']} (found {label!r})")
    if known is not None:
        missing = [k for k in ids if k not in seen]
        if missing:
            listed = ", ".join(missing[:_MAX_LISTED]) + (", ..." if len(missing) > _MAX_LISTED else "")
            problems.append(f"missing-ids: {RULES['missing-ids']} ({len(missing)} of {len(ids)} missing: {listed})")
    return problems
