"""Out-of-core features: one memory-mappable file set per input shard, and the generated "gallery" scorers search.

`fingerprint embed` writes a features folder, one part per shard it read
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from fingerprint.features import Features, merge
from fingerprint.utils import FingerprintError, atomic_path, read_json, write_json
from fingerprint.vocab import ROLES

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
