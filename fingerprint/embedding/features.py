"""Keyed features: the embeddings (and feature maps) of a shard set, one row per image key.

A single .npz (no pickle, with a JSON `meta` string: image size, model
sha256, shards) is the small-set form. `Features.load` reads it, or a
features folder, into the same in-memory rows: sorted by key, each key once,
so every later file can be joined on the key. Index, score, compare, cluster
and report read them.

Out-of-core features: one memory-mappable file set per input shard, and the
generated "gallery" scorers search. `fingerprint embed` writes a features folder, one part per shard it read
(each rank writes its own shards; nothing is gathered):

```
OUT/parts/<shard>.keys.npy    str (n,)                     rows: real first, then generated, each sorted by key
OUT/parts/<shard>.roles.npy   str (n,)
OUT/parts/<shard>.labels.npy  str (n,)
OUT/parts/<shard>.emb.npy     float32 (n, D), unit norm
OUT/parts/<shard>.fmaps.npy   float16 (n, C, h, w)         only with embed.fmaps
OUT/parts/<shard>.json        the part's record, written after its arrays: it marks the part complete
OUT/features.json             the set (meta + every part's counts), written last: it marks the set complete
```

Readers memory-map the arrays (`np.load(mmap_mode="r")`). `FeatureStore.load`
gives the in-memory `Features` every small-set consumer uses (rows sorted by
key, exactly what the single-.npz format held); `FeatureStore.gallery` gives
the generated rows in store order for the bounded-memory paths: the index is
built part by part from it, and the scorers read only the rows they need
(the top-k neighbours' feature maps) from the memory-mapped files, dropping
each mapping after use, so resident memory does not grow with the number of
generated images. `ArrayGallery` is the same interface over in-memory arrays.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import atomic_path, read_json, write_json
from fingerprint.core.vocab import ROLES

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


FORMAT = "fingerprint-features"
FORMAT_VERSION = 1
SET_FILE = "features.json"
PARTS = "parts"
ARRAYS = ("keys", "roles", "labels", "emb")


def is_store(path: str | Path) -> bool:
    """True for a features folder (as opposed to a single .npz)."""
    return Path(path).is_dir()


def part_paths(folder: Path, name: str) -> dict[str, Path]:
    """Every file of part `name` (a shard's file name without .tar)."""
    base = Path(folder) / PARTS
    return {a: base / f"{name}.{a}.npy" for a in (*ARRAYS, "fmaps")} | {"json": base / f"{name}.json"}


def _save_npy(path: Path, array: np.ndarray) -> None:
    """One .npy, written atomically; serialised first so that a failed write is the file's own OSError (EFBIG,
    ENOSPC), not numpy's errno-less "requested and written" message."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())


def write_part(folder: Path, name: str, feats: Features, record: dict[str, Any]) -> dict[str, Any]:
    """Write one part (rows re-ordered real first, then generated, each by key); its JSON last. Returns the JSON."""
    order = np.lexsort((feats.keys, np.array([ROLES.index(r) for r in feats.roles.tolist()], dtype=np.int64)))
    rows = feats.take(order)
    paths = part_paths(folder, name)
    paths["json"].parent.mkdir(parents=True, exist_ok=True)
    try:
        for name_, arr in (
            ("keys", rows.keys),
            ("roles", rows.roles),
            ("labels", rows.labels),
            ("emb", rows.embeddings),
        ):
            _save_npy(paths[name_], arr)
        if rows.fmaps is not None:
            _save_npy(paths["fmaps"], rows.fmaps)
    except BaseException:  # a part is its JSON plus its arrays, or nothing
        for p in paths.values():
            p.unlink(missing_ok=True)
        raise
    counts = {r: int((rows.roles == r).sum()) for r in ROLES}
    rec = {
        "format": f"{FORMAT}-part",
        "format_version": FORMAT_VERSION,
        "name": name,
        "n": len(rows),
        **counts,
        "dim": rows.dim,
        "fmap_shape": None if rows.fmaps is None else list(rows.fmaps.shape[1:]),
        **record,
    }
    write_json(paths["json"], rec)
    return rec


def complete_parts(folder: Path) -> dict[str, dict[str, Any]]:
    """name -> record of every part whose JSON (written last) exists and reads."""
    found = {}
    for path in sorted((Path(folder) / PARTS).glob("*.json")):
        try:
            rec = read_json(path)
        except FingerprintError:
            continue
        if isinstance(rec, dict) and rec.get("format") == f"{FORMAT}-part":
            found[rec["name"]] = rec
    return found


def finish_store(folder: Path, names: list[str], meta: dict[str, Any]) -> dict[str, Any]:
    """Check that every expected part is complete and write features.json (the set's completeness marker)."""
    parts = complete_parts(folder)
    missing = [n for n in names if n not in parts]
    if missing:
        raise FingerprintError(f"{folder}: {len(missing)} shard(s) not embedded (first: {missing[0]}); run embed again")
    listed = [parts[n] for n in sorted(names)]
    dims = {p["dim"] for p in listed if p["n"]}
    if len(dims) > 1:
        raise FingerprintError(f"{folder}: parts of different embedding widths {sorted(dims)}")
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "meta": meta,
        "n": sum(p["n"] for p in listed),
        **{r: sum(p[r] for p in listed) for r in ROLES},
        "dim": dims.pop() if dims else 0,
        "fmap_shape": next((p["fmap_shape"] for p in listed if p["n"] and p["fmap_shape"]), None),
        "parts": [{k: p[k] for k in ("name", "n", *ROLES)} for p in listed],
    }
    write_json(Path(folder) / SET_FILE, record)
    return record


class FeatureStore:
    """A complete features folder, read through memory maps."""

    def __init__(self, path: Path, record: dict[str, Any]):
        self.path, self.record = Path(path), record
        self.parts: list[dict[str, Any]] = record["parts"]
        self.meta: dict[str, Any] = dict(record.get("meta", {}))

    @classmethod
    def open(cls, path: str | Path) -> "FeatureStore":
        path = Path(path)
        if not path.is_dir():
            raise FingerprintError(f"{path}: features folder not found")
        if not (path / SET_FILE).is_file():
            raise FingerprintError(
                f"{path}: no {SET_FILE} (an unfinished 'fingerprint embed': run it again to finish, it resumes)"
            )
        record = read_json(path / SET_FILE)
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise FingerprintError(f"{path / SET_FILE}: not a features folder record")
        if record.get("format_version", 0) > FORMAT_VERSION:
            version = record["format_version"]
            raise FingerprintError(f"{path / SET_FILE}: format version {version} is newer than this tool reads")
        return cls(path, record)

    def __len__(self) -> int:
        return int(self.record["n"])

    def count(self, role: str) -> int:
        return int(self.record[role])

    def signature(self) -> str:
        """Identifies this set of rows (parts, counts, model): an index built on it records it."""
        text = json.dumps([self.parts, self.meta.get("model_sha256")], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def arrays(self, name: str, which: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Memory-mapped arrays of one part; a one-line error naming a missing or unreadable file."""
        paths = part_paths(self.path, name)
        out = {}
        for a in which:
            try:
                out[a] = np.load(paths[a], mmap_mode="r", allow_pickle=False)
            except FileNotFoundError:
                raise FingerprintError(f"{paths[a]}: missing from the features folder") from None
            except (OSError, ValueError) as e:
                raise FingerprintError(f"{paths[a]}: cannot read ({e})") from None
        return out

    def part_rows(self, part: dict[str, Any], role: str | None) -> slice:
        """The rows of `role` in a part (real first, then generated)."""
        if role is None:
            return slice(0, part["n"])
        start = sum(part[r] for r in ROLES[: ROLES.index(role)])
        return slice(start, start + part[role])

    def load(self, role: str | None = None, *, fmaps: bool = True) -> Features:
        """The rows (of `role`) in memory, sorted by key: the `Features` every small-set consumer reads."""
        fmaps = fmaps and bool(self.meta.get("fmaps"))
        which = (*ARRAYS, "fmaps") if fmaps else ARRAYS
        parts = []
        for part in self.parts:
            rows = self.part_rows(part, role)
            if rows.stop <= rows.start:
                continue
            a = self.arrays(part["name"], which)
            got = {k: np.array(v[rows]) for k, v in a.items()}
            parts.append(Features(got["keys"], got["roles"], got["labels"], got["emb"], got.get("fmaps")))
            del a
        if not parts:
            return _empty(self.record, fmaps, self.meta)
        feats, _ = merge(parts)
        feats.meta = dict(self.meta)
        return feats

    def rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(keys, roles, labels) of every row, sorted by key, without reading embeddings or maps."""
        cols: dict[str, list[np.ndarray]] = {"keys": [], "roles": [], "labels": []}
        for part in self.parts:
            if part["n"]:
                for name, arr in self.arrays(part["name"], tuple(cols)).items():
                    cols[name].append(np.array(arr))
        if not cols["keys"]:
            return tuple(np.array([], dtype=str) for _ in range(3))
        keys, roles, labels = (np.concatenate(cols[c]) for c in ("keys", "roles", "labels"))
        order = np.argsort(keys, kind="stable")
        return keys[order], roles[order], labels[order]

    def gallery(self) -> "StoreGallery":
        return StoreGallery(self)


def _empty(record: dict[str, Any], fmaps: bool, meta: dict[str, Any]) -> Features:
    shape = record.get("fmap_shape") or [1, 1, 1]
    return Features(
        np.array([], dtype=str), np.array([], dtype=str), np.array([], dtype=str),
        np.zeros((0, int(record.get("dim") or 1)), np.float32),
        np.zeros((0, *shape), np.float16) if fmaps else None, dict(meta),
    )  # fmt: skip


# ----------------------------------------------------------------------------- galleries


class Gallery:
    """The generated rows scorers search: row numbers 0..n-1, their keys, embeddings and feature maps."""

    dim: int
    channels: int | None  # feature-map channels (None without maps)

    def __len__(self) -> int:
        raise NotImplementedError

    def keys_at(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def embeddings_at(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def fmaps_at(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 embeddings) blocks covering every row in order."""
        raise NotImplementedError

    def supports(self) -> Any:
        """What `inference.relation_logits` takes as its support source."""
        return self.fmaps_at


@dataclass
class ArrayGallery(Gallery):
    """A gallery over in-memory arrays (the generated rows of a `Features`, or bare embeddings)."""

    embeddings: np.ndarray
    keys: np.ndarray | None = None
    fmaps: np.ndarray | None = None

    @classmethod
    def of(cls, feats: Features) -> "ArrayGallery":
        return cls(feats.embeddings, feats.keys, feats.fmaps)

    def __post_init__(self) -> None:
        self.dim = int(self.embeddings.shape[1]) if self.embeddings.ndim == 2 else 0
        self.channels = None if self.fmaps is None else int(self.fmaps.shape[1])

    def __len__(self) -> int:
        return len(self.embeddings)

    def keys_at(self, rows: np.ndarray) -> np.ndarray:
        return self.keys[rows]

    def embeddings_at(self, rows: np.ndarray) -> np.ndarray:
        return self.embeddings[rows]

    def fmaps_at(self, rows: np.ndarray) -> np.ndarray:
        return self.fmaps[rows]

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        yield 0, self.embeddings

    def supports(self) -> Any:
        return self.fmaps


class StoreGallery(Gallery):
    """The generated rows of a FeatureStore, in store order (parts by name, then key); read through memory maps.

    Each read maps the part files it needs and drops the mapping afterwards,
    so resident memory holds only the rows asked for.
    """

    def __init__(self, store: FeatureStore):
        self.store = store
        self.parts = [p for p in store.parts if p["generated"]]
        self.start = np.cumsum([0] + [p["generated"] for p in self.parts])
        self.dim = int(store.record.get("dim") or 0)
        shape = store.record.get("fmap_shape")
        self.channels = int(shape[0]) if shape and store.meta.get("fmaps") else None

    def __len__(self) -> int:
        return int(self.start[-1])

    def _gather(self, array: str, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        flat = rows.reshape(-1)
        if len(flat) and (flat.min() < 0 or flat.max() >= len(self)):
            raise FingerprintError(f"{self.store.path}: generated row out of range (0..{len(self) - 1})")
        which = np.searchsorted(self.start, flat, side="right") - 1
        out = None
        for p in np.unique(which):
            part = self.parts[p]
            sel = np.flatnonzero(which == p)
            local = flat[sel] - self.start[p] + self.store.part_rows(part, "generated").start
            mapped = self.store.arrays(part["name"], (array,))[array]
            block = np.asarray(mapped[local])
            del mapped
            if out is None:
                out = np.empty((len(flat), *block.shape[1:]), dtype=block.dtype)
            out[sel] = block
        if out is None:
            return np.empty((0,), dtype=np.float32)
        return out.reshape(*rows.shape, *out.shape[1:])

    def keys_at(self, rows: np.ndarray) -> np.ndarray:
        return self._gather("keys", rows)

    def embeddings_at(self, rows: np.ndarray) -> np.ndarray:
        return self._gather("emb", rows)

    def fmaps_at(self, rows: np.ndarray) -> np.ndarray:
        if self.channels is None:
            raise FingerprintError(f"{self.store.path}: no feature maps (re-run 'fingerprint embed' with embed.fmaps)")
        return self._gather("fmaps", rows)

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        for i, part in enumerate(self.parts):
            rows = self.store.part_rows(part, "generated")
            mapped = self.store.arrays(part["name"], ("emb",))["emb"]
            block = np.array(mapped[rows], dtype=np.float32)
            del mapped
            yield int(self.start[i]), block
