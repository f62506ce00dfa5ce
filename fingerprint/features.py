"""Keyed features: the embeddings (and feature maps) of a shard set, one row per image key.

`fingerprint embed` writes them as a folder of per-shard memory-mappable
parts (`fingerprint.feature_store`); a single .npz (no pickle, with a JSON
`meta` string: image size, model sha256, shards) is the small-set form.
`Features.load` reads either into the same in-memory rows: sorted by key,
each key once, so every later file can be joined on the key. Index, score,
compare, cluster and report read them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from fingerprint.utils import FingerprintError, atomic_path

_ARRAYS = ("keys", "roles", "labels", "embeddings")


@dataclass
class Features:
    """Rows of keyed features; `fmaps` (float16 N x C x h x w) only when exported with fmaps."""

    keys: np.ndarray
    roles: np.ndarray
    labels: np.ndarray
    embeddings: np.ndarray
    fmaps: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.keys = np.asarray(self.keys, dtype=str)
        self.roles = np.asarray(self.roles, dtype=str)
        self.labels = np.asarray(self.labels, dtype=str)
        self.embeddings = np.ascontiguousarray(self.embeddings, dtype=np.float32)
        n = len(self.keys)
        if self.embeddings.ndim != 2:
            raise FingerprintError(f"features: embeddings must be N x D, got shape {self.embeddings.shape}")
        if not (len(self.roles) == len(self.labels) == len(self.embeddings) == n):
            raise FingerprintError(
                f"features: {n} keys, {len(self.roles)} roles, {len(self.labels)} labels, "
                f"{len(self.embeddings)} embeddings"
            )
        if self.fmaps is not None:
            self.fmaps = np.asarray(self.fmaps, dtype=np.float16)
            if self.fmaps.ndim != 4 or len(self.fmaps) != n:
                raise FingerprintError(f"features: fmaps must be N x C x h x w for {n} rows, got {self.fmaps.shape}")

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def take(self, idx: np.ndarray | Sequence[int]) -> "Features":
        """The rows `idx`, in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        return Features(
            self.keys[idx],
            self.roles[idx],
            self.labels[idx],
            self.embeddings[idx],
            None if self.fmaps is None else self.fmaps[idx],
            dict(self.meta),
        )

    def select(self, role: str | Iterable[str] | None = None, label: str | Iterable[str] | None = None) -> "Features":
        """The rows with this role and label (each a name or a collection of names; None = any)."""
        mask = np.ones(len(self), dtype=bool)
        for values, want in ((self.roles, role), (self.labels, label)):
            if want is not None:
                mask &= np.isin(values, [want] if isinstance(want, str) else list(want))
        return self.take(np.flatnonzero(mask))

    def rows_of(self, keys: Sequence[str], *, source: str = "features") -> np.ndarray:
        """Row numbers of `keys`; a clear error for any key these features lack."""
        pos = {k: i for i, k in enumerate(self.keys.tolist())}
        missing = [k for k in keys if k not in pos]
        if missing:
            raise FingerprintError(
                f"{source}: {len(missing)} key(s) not in the features (first: {', '.join(missing[:3])})"
            )
        return np.array([pos[k] for k in keys], dtype=np.int64)

    def save(self, path: str | Path) -> Path:
        """One .npz (no pickle), written atomically."""
        arrays = {
            "keys": self.keys,
            "roles": self.roles,
            "labels": self.labels,
            "embeddings": self.embeddings,
            "meta": np.array(json.dumps(self.meta, sort_keys=True)),
        }
        if self.fmaps is not None:
            arrays["fmaps"] = self.fmaps
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, *, fmaps: bool = True) -> "Features":
        """Read a features folder (per-shard parts) or a single .npz; `fmaps=False` skips the (large) feature maps."""
        path = Path(path)
        if path.is_dir():
            from fingerprint.feature_store import FeatureStore  # the folder format builds on this class

            return FeatureStore.open(path).load(fmaps=fmaps)
        if not path.is_file():
            raise FingerprintError(f"{path}: features file not found")
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [a for a in _ARRAYS if a not in z.files]
                if missing:
                    raise FingerprintError(f"{path}: not a features file (missing {', '.join(missing)})")
                meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
                feats = cls(
                    z["keys"],
                    z["roles"],
                    z["labels"],
                    z["embeddings"],
                    z["fmaps"] if fmaps and "fmaps" in z.files else None,
                    meta,
                )
        except FingerprintError:
            raise
        except (OSError, ValueError, EOFError) as e:
            raise FingerprintError(f"{path}: cannot read features ({e})") from None
        if len(set(feats.keys.tolist())) != len(feats):
            raise FingerprintError(f"{path}: a key appears more than once")
        bad = ~np.isfinite(feats.embeddings).all(axis=1) if feats.embeddings.ndim == 2 else np.zeros(0, bool)
        if bad.any():
            raise FingerprintError(
                f"{path}: embeddings contain NaN or infinity ({int(bad.sum())} row(s), first: {feats.keys[bad][0]})"
            )
        return feats


def merge(parts: Sequence[Features]) -> tuple[Features, int]:
    """Concatenate, drop repeated keys (first kept) and sort by key; returns (features, duplicates dropped)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        raise FingerprintError("embed: no images were read")
    with_fmaps = {p.fmaps is not None for p in parts}
    if len(with_fmaps) != 1:
        raise FingerprintError("embed: some parts have feature maps and some do not")
    keys = np.concatenate([p.keys for p in parts])
    _, first = np.unique(keys, return_index=True)  # np.unique sorts by key
    cat = Features(
        keys,
        np.concatenate([p.roles for p in parts]),
        np.concatenate([p.labels for p in parts]),
        np.concatenate([p.embeddings for p in parts]),
        np.concatenate([p.fmaps for p in parts]) if parts[0].fmaps is not None else None,
        dict(parts[0].meta),
    )
    return cat.take(first), len(keys) - len(first)
