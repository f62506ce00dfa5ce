"""Score files, the common currency of every scorer: `key,score,label` CSVs with a JSON sidecar.

A score file has one row per real image (higher score = more likely used,
label 1/0 after the threshold); its sidecar (`x.csv` -> `x.json`) records the
threshold and how it was chosen. `evaluate`, `compare` and `report` read
them. `ScoreResult` is a scorer's output in memory, with what each score was
made from (neighbours, pair scores, components) for `scores/neighbours.npz`.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import atomic_path, read_json, write_json

SCORE_HEADER = ["key", "score", "label"]


class ScoreTable(NamedTuple):
    """A score file in memory: keys (list[str]), scores (float64), labels (int64 0/1)."""

    keys: list[str]
    scores: np.ndarray
    labels: np.ndarray


def score_meta_path(path: str | Path) -> Path:
    """The JSON sidecar of a score file (threshold, rule, scorer): `scores/x.csv` -> `scores/x.json`."""
    return Path(path).with_suffix(".json")


def write_scores(
    path: str | Path,
    keys: Sequence[str],
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    *,
    meta: dict | None = None,
) -> Path:
    """Write `key,score,label` rows atomically (scores at full float precision).

    `meta` (e.g. {"scorer", "threshold", "rule"}) goes to the JSON sidecar
    beside the file, which `evaluate` reads for the threshold.
    """
    path = Path(path)
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if not (len(keys) == len(scores) == len(labels)):
        raise FingerprintError(f"{path}: {len(keys)} keys, {len(scores)} scores, {len(labels)} labels")
    if len(set(keys)) != len(keys):
        raise FingerprintError(f"{path}: a key appears more than once")
    if not np.isfinite(scores).all():
        raise FingerprintError(f"{path}: scores contain NaN or infinity")
    if not np.isin(labels, (0, 1)).all():
        raise FingerprintError(f"{path}: labels must be 0 or 1")
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(SCORE_HEADER)
            for k, s, y in zip(keys, scores, labels):
                w.writerow([k, repr(float(s)), int(y)])
    if meta is not None:
        write_json(score_meta_path(path), meta)
    return path


def read_scores(path: str | Path) -> ScoreTable:
    """Read a score file; a one-line FingerprintError naming the file and line for bad input."""
    path = Path(path)
    if not path.is_file():
        raise FingerprintError(f"{path}: score file not found")
    keys: list[str] = []
    scores: list[float] = []
    labels: list[int] = []
    seen: set[str] = set()
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or [h.strip() for h in header] != SCORE_HEADER:
                raise FingerprintError(f"{path}: line 1: expected header 'key,score,label'")
            for lineno, row in enumerate(reader, start=2):
                if len(row) != 3:
                    raise FingerprintError(f"{path}: line {lineno}: expected 3 fields, got {len(row)}")
                key, s, y = (c.strip() for c in row)
                try:
                    value = float(s)
                except ValueError:
                    raise FingerprintError(f"{path}: line {lineno}: score {s!r} is not a number") from None
                if not math.isfinite(value):
                    raise FingerprintError(f"{path}: line {lineno}: score {s!r} is not finite")
                if y not in ("0", "1"):
                    raise FingerprintError(f"{path}: line {lineno}: label must be 0 or 1, got {y!r}")
                if key in seen:
                    raise FingerprintError(f"{path}: line {lineno}: key {key!r} appears twice")
                seen.add(key)
                keys.append(key)
                scores.append(value)
                labels.append(int(y))
    except UnicodeDecodeError:
        raise FingerprintError(f"{path}: not UTF-8 text") from None
    if not keys:
        raise FingerprintError(f"{path}: score file has no rows")
    return ScoreTable(keys, np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.int64))


def read_score_meta(path: str | Path) -> dict | None:
    """The sidecar of a score file, or None when there is none."""
    meta = score_meta_path(path)
    return read_json(meta) if meta.is_file() else None


@dataclass
class ScoreResult:
    """Scores of real images (keys in = keys out), with what each score was made from."""

    keys: list[str]
    score: np.ndarray  # (N,) float64, higher = more likely used
    components: dict[str, np.ndarray] = field(default_factory=dict)  # plain scores, e.g. nn_sim, mean_topk_sim
    neighbour_keys: np.ndarray | None = None  # (N, k) str, best first
    neighbour_sims: np.ndarray | None = None  # (N, k) float32 cosine
    pair_scores: np.ndarray | None = None  # (N, k) float32 relation probability

    def save_neighbours(self, path: str | Path) -> Path:
        """scores/neighbours.npz, no pickle, atomic.

        Arrays: keys, neighbour_keys, neighbour_sims, pair_scores (when known),
        and each component (e.g. nn_sim, mean_topk_sim) under its own name.
        """
        if self.neighbour_keys is None or self.neighbour_sims is None:
            raise FingerprintError(f"{path}: this scorer has no neighbours to save")
        arrays = {
            "keys": np.asarray(self.keys, dtype=str),
            "neighbour_keys": np.asarray(self.neighbour_keys, dtype=str),
            "neighbour_sims": np.asarray(self.neighbour_sims, dtype=np.float32),
        }
        if self.pair_scores is not None:
            arrays["pair_scores"] = np.asarray(self.pair_scores, dtype=np.float32)
        for name, values in self.components.items():
            if name in arrays:
                raise FingerprintError(f"{path}: component name {name!r} clashes with an array")
            arrays[name] = np.asarray(values, dtype=np.float64)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        return Path(path)
