"""FAISS indexes over unit-norm embeddings (inner product = cosine).

The default, "Flat", is exact search (IndexFlatIP), right up to ~10^5-10^6
generated images. Any `faiss.index_factory` string (e.g. "IVF64,Flat",
"IVF64,PQ16", "HNSW32") is accepted for larger sets, always with
METRIC_INNER_PRODUCT; approximate indexes report recall@k against exact
search. IVF k-means wants >= 39 training points per centroid, so an IVF
`nlist` larger than N // 39 is capped automatically (logged, and the factory
actually used is stored); below 39 points in total IVF is refused.
Indexes are saved with FAISS's own write_index/read_index plus a JSON
sidecar holding the keys in index order. `neighbours` is the retrieval every
embedding scorer uses: top-k generated rows of each real embedding, with
exact search filling whatever an approximate index could not.
`run_index(IndexConfig)` is the index stage.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np

from fingerprint.config import check_fields, exists_error, option
from fingerprint.distributed import seed_everything, set_threads
from fingerprint.features import Features
from fingerprint.utils import FingerprintError, JsonlLogger, atomic_path, check_writable, read_json, write_json

log = logging.getLogger(__name__)

MIN_POINTS_PER_CENTROID = 39
_IVF = re.compile(r"IVF(\d+)")


@dataclass(kw_only=True)
class IndexConfig:
    """Options of the index stage (`fingerprint index`)."""

    SECTION = "index"

    features: Path = option(help="features .npz from 'fingerprint embed'")
    out: Path = option(help="index file to write, e.g. RUN/index/test.faiss (+ .json sidecar)")
    index_factory: str = option(
        "Flat",
        help="FAISS factory string, inner product: Flat (exact), IVF64,Flat, IVF64,PQ16, HNSW32; "
        "IVF nlist is capped at N // 39",
    )
    nprobe: int | None = option(None, min=1, help="IVF lists searched per query (default min(nlist, 16))")
    ef_search: int | None = option(None, min=1, help="HNSW search depth (default 64)")
    recall_k: int = option(10, min=1, help="k for recall@k against exact search")
    recall_queries: int = option(
        1000, min=1, help="queries sampled for recall@k: real embeddings first, then generated ones"
    )
    threads: int | None = option(None, min=1, help="FAISS/torch CPU threads (default: all cores)")
    log: Path | None = option(None, help="append a JSON-lines record here")
    seed: int = option(0, help="seeds IVF k-means and the recall sample")
    force: bool = option(False, help="replace the output if it exists")

    def __post_init__(self) -> None:
        check_fields(self)


def run_index(cfg: IndexConfig) -> dict:
    """Index the generated embeddings of `cfg.features` into `cfg.out` (+ sidecar); return the sidecar's meta."""
    if Path(cfg.out).exists() and not cfg.force:
        raise exists_error(cfg, cfg.out)
    check_writable(Path(cfg.out).parent)
    seed_everything(cfg.seed)
    set_threads(cfg.threads)
    t0 = time.perf_counter()
    feats = Features.load(cfg.features, fmaps=False)
    gen = feats.select(role="generated")
    if len(gen) == 0:
        raise FingerprintError(f"{cfg.features}: no generated images to index")
    factory = cap_factory(cfg.index_factory, len(gen))
    index = build_index(gen.embeddings, factory, seed=cfg.seed, nprobe=cfg.nprobe, ef_search=cfg.ef_search)
    meta = {"factory": factory, "requested_factory": cfg.index_factory, "features": str(cfg.features)}
    k = min(cfg.recall_k, len(gen))
    if factory != "Flat":
        queries = recall_queries(feats, cfg.recall_queries, cfg.seed)
        meta["recall"] = {"k": k, "queries": len(queries), "value": recall_at_k(index, gen.embeddings, queries, k)}
        log.info("recall@%d against exact search over %d queries: %.4f", k, len(queries), meta["recall"]["value"])
    else:
        meta["recall"] = {"k": k, "queries": 0, "value": 1.0, "exact": True}
    save_index(index, cfg.out, gen.keys.tolist(), meta=meta)
    seconds = time.perf_counter() - t0
    log.info("indexed %d generated embeddings (%s) in %.2f s -> %s", len(gen), factory, seconds, cfg.out)
    JsonlLogger(cfg.log).log(
        stage="index", seconds=round(seconds, 3), n=len(gen), factory=factory, recall=meta["recall"]["value"]
    )
    return meta


def recall_queries(feats: Features, n: int, seed: int) -> np.ndarray:
    """Up to `n` query embeddings for the recall check: the real images (the actual queries), then generated."""
    real = feats.select(role="real").embeddings
    gen = feats.select(role="generated").embeddings
    pool = np.concatenate([real, gen]) if len(real) < n else real
    if len(pool) > n:
        pool = pool[np.sort(np.random.default_rng(seed).choice(len(pool), n, replace=False))]
    return pool


def as_unit(x: np.ndarray) -> np.ndarray:
    """A float32 C-contiguous L2-normalised copy of a 2-D array (zero rows stay zero)."""
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    if x.ndim != 2:
        raise FingerprintError(f"index: expected a 2-D array of vectors, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise FingerprintError("index: vectors contain NaN or infinity")
    faiss.normalize_L2(x)
    return x


def cap_factory(factory: str, n: int) -> str:
    """`factory` with an IVF nlist capped at n // 39 (FAISS's minimum points per centroid)."""
    m = _IVF.search(factory)
    if not m:
        return factory
    nlist = int(m.group(1))
    cap = n // MIN_POINTS_PER_CENTROID
    if cap < 1:
        raise FingerprintError(
            f"index: {factory!r} needs at least {MIN_POINTS_PER_CENTROID} vectors to train, got {n}; use 'Flat'"
        )
    if nlist > cap:
        capped = factory[: m.start(1)] + str(cap) + factory[m.end(1) :]
        log.warning("index: %d vectors allow at most %d IVF lists; using %r instead of %r", n, cap, capped, factory)
        return capped
    return factory


def build_index(
    vectors: np.ndarray,
    factory: str = "Flat",
    *,
    seed: int = 0,
    nprobe: int | None = None,
    ef_search: int | None = None,
) -> faiss.Index:
    """An inner-product index over `vectors` (normalised to unit length first).

    IVF: k-means seeded with `seed`, nlist capped (see module doc), `nprobe`
    lists searched (default: min(nlist, 16)). HNSW: `ef_search` (default 64).
    The factory string actually used is `cap_factory(factory, len(vectors))`.
    """
    x = as_unit(vectors)
    if len(x) == 0:
        raise FingerprintError("index: no vectors to index")
    used = cap_factory(factory, len(x))
    try:
        index = faiss.index_factory(x.shape[1], used, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise FingerprintError(f"index: bad index factory {factory!r} ({_faiss_msg(e)})") from None
    ivf = _ivf(index)
    if ivf is not None:
        ivf.cp.seed = int(seed)
        ivf.nprobe = int(nprobe) if nprobe else min(ivf.nlist, 16)
    hnsw = _hnsw(index)
    if hnsw is not None:
        hnsw.hnsw.efSearch = int(ef_search) if ef_search else 64
    if not index.is_trained:
        try:
            index.train(x)
        except RuntimeError as e:
            raise FingerprintError(f"index: cannot train {used!r} on {len(x)} vectors ({_faiss_msg(e)})") from None
    index.add(x)
    return index


def _faiss_msg(e: Exception) -> str:
    """The useful tail of a FAISS C++ exception message."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    msg = lines[-1] if lines else type(e).__name__
    if "Error: " in msg:
        return msg.rsplit("Error: ", 1)[-1]
    if ".cpp:" in msg:
        return msg.rsplit(".cpp:", 1)[-1].split(":", 1)[-1].strip()
    return msg


def _ivf(index: faiss.Index):
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _hnsw(index: faiss.Index):
    downcast = faiss.downcast_index(index)
    return downcast if isinstance(downcast, faiss.IndexHNSW) else None


def search(index: faiss.Index, queries: np.ndarray, k: int, *, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (cosine sims float32 Q x k, ids int64 Q x k), best first; k is capped at index.ntotal.

    Approximate indexes may find fewer than k: those ids are -1 (sims -inf).
    Queries go in batches (one-by-one is several times slower).
    """
    if index.ntotal == 0:
        raise FingerprintError("index: the index is empty")
    if k < 1:
        raise FingerprintError(f"index: k must be >= 1, got {k}")
    q = as_unit(queries)
    if q.shape[1] != index.d:
        raise FingerprintError(f"index: queries have dimension {q.shape[1]}, the index {index.d}")
    k = min(int(k), int(index.ntotal))
    sims = np.empty((len(q), k), dtype=np.float32)
    ids = np.empty((len(q), k), dtype=np.int64)
    for i in range(0, len(q), batch_size):
        s, j = index.search(q[i : i + batch_size], k)
        sims[i : i + batch_size], ids[i : i + batch_size] = s, j
    sims[ids < 0] = -np.inf
    return sims, ids


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product of unit vectors (IndexFlatIP)."""
    x = as_unit(vectors)
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    return search(flat, queries, k)


def recall_at_k(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Share of the exact top-k ids (over `vectors`, in index order) that `index` also returns."""
    _, approx = search(index, queries, k)
    _, exact = exact_search(vectors, queries, k)
    hits = sum(len(set(a[a >= 0]) & set(e)) for a, e in zip(approx, exact))
    return float(hits / exact.size)


def sidecar_path(path: str | Path) -> Path:
    """`index/generated.faiss` -> `index/generated.json`."""
    return Path(path).with_suffix(".json")


def save_index(index: faiss.Index, path: str | Path, keys: Sequence[str], *, meta: dict | None = None) -> Path:
    """write_index to `path` and the keys (index order) + `meta` (factory, recall, ...) to the JSON sidecar.

    Both are written atomically; load_index checks they match.
    """
    path = Path(path)
    keys = [str(k) for k in keys]
    if len(keys) != index.ntotal:
        raise FingerprintError(f"{path}: {len(keys)} keys for an index of {index.ntotal} vectors")
    with atomic_path(path) as tmp:
        try:
            faiss.write_index(index, str(tmp))
        except RuntimeError as e:  # FAISS reports a failed write (full disk, ...) as RuntimeError
            raise FingerprintError(f"{path}: cannot write the index ({str(e).strip().splitlines()[-1][:200]})") from e
    record = {
        "keys": keys,
        "ntotal": int(index.ntotal),
        "dim": int(index.d),
        "metric": "inner_product",
        **(meta or {}),
    }
    write_json(sidecar_path(path), record)
    return path


def load_index(path: str | Path, *, mmap: bool = False) -> tuple[faiss.Index, list[str]]:
    """read_index + the sidecar's keys; checks they belong together. `mmap` maps large indexes."""
    path = Path(path)
    if not path.is_file():
        raise FingerprintError(f"{path}: index file not found")
    side = sidecar_path(path)
    if not side.is_file():
        raise FingerprintError(f"{side}: index sidecar not found (it holds the keys of {path.name})")
    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP if mmap else 0)
    except RuntimeError as e:
        raise FingerprintError(f"{path}: not a readable FAISS index ({_faiss_msg(e)})") from None
    meta = read_json(side)
    keys = meta.get("keys") if isinstance(meta, dict) else None
    if not isinstance(keys, list) or len(keys) != index.ntotal:
        n = len(keys) if isinstance(keys, list) else "no"
        raise FingerprintError(f"{side}: {n} keys for an index of {index.ntotal} vectors (stale sidecar?)")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise FingerprintError(f"{path}: index metric is not inner product")
    return index, [str(k) for k in keys]


def read_index_meta(path: str | Path) -> dict:
    """The sidecar of a saved index (keys, factory, recall, ...)."""
    return read_json(sidecar_path(path))


# ----------------------------------------------------------------------------- retrieval for scorers


def neighbours(real_emb: np.ndarray, gen_emb: np.ndarray, index=None, *, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k generated neighbours of each real embedding: (cosine sims (R,k) float32, gen rows (R,k) int64).

    `index`: None (exact IndexFlatIP over gen_emb), a faiss index whose ids are
    rows of gen_emb, or `(index, keys)` as load_index returns it together with
    `gen_keys` (use `resolve_index`). Rows an approximate index could not fill
    (id -1) are filled by exact search, so every row has k neighbours.
    """
    if len(gen_emb) == 0:
        raise FingerprintError("score: no generated images to compare with")
    k = min(int(k), len(gen_emb))
    index, id_rows = index if isinstance(index, tuple) else (index, None)
    if index is None:
        index = build_index(gen_emb, "Flat")
    if index.ntotal != len(gen_emb):
        raise FingerprintError(
            f"score: the index holds {index.ntotal} vectors, the features {len(gen_emb)} generated images"
        )
    sims, ids = search(index, real_emb, k)
    bad = (ids < 0).any(axis=1)
    rows = np.where(ids >= 0, ids if id_rows is None else id_rows[np.maximum(ids, 0)], -1)
    if bad.any():
        log.info(
            "score: %d queries got fewer than %d neighbours from the index; using exact search for them",
            int(bad.sum()),
            k,
        )
        sims[bad], rows[bad] = exact_search(gen_emb, real_emb[bad], k)
    return sims, rows


def resolve_index(index, index_keys: Sequence[str] | None, gen_keys: Sequence[str], *, source: str = "index"):
    """What `neighbours` takes: the index alone (ids are gen rows) or (index, id -> gen row) from saved keys."""
    if index is None or index_keys is None:
        return index
    return index, index_rows(index_keys, gen_keys, source=source)


def index_rows(index_keys: Sequence[str], gen_keys: Sequence[str], *, source: str = "index") -> np.ndarray:
    """Positions in gen_keys of each index key (so index ids can be mapped to feature rows)."""
    pos = {k: i for i, k in enumerate(gen_keys)}
    missing = [k for k in index_keys if k not in pos]
    if missing:
        raise FingerprintError(
            f"{source}: {len(missing)} indexed key(s) not among the generated features "
            f"(first: {', '.join(missing[:3])})"
        )
    if len(index_keys) != len(gen_keys):
        raise FingerprintError(
            f"{source}: indexes {len(index_keys)} images, the features hold {len(gen_keys)} generated"
        )
    return np.array([pos[k] for k in index_keys], dtype=np.int64)
