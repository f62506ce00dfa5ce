"""FAISS indexes over unit-norm embeddings (inner product = cosine).

The default, "Flat", is exact search (IndexFlatIP), right up to ~10^5-10^6
generated images. Any `faiss.index_factory` string (e.g. "IVF64,Flat",
"IVF64,PQ16", "HNSW32") is accepted for larger sets, always with
METRIC_INNER_PRODUCT; approximate indexes report recall@k against exact
search. IVF k-means wants >= 39 training points per centroid, so an IVF
`nlist` larger than N // 39 is capped automatically (logged, and the factory
actually used is stored); below 39 points in total IVF is refused.
`run_index(IndexConfig)` is the index stage. It trains the index (IVF
k-means, PQ codebooks) on a seeded sample, then adds the generated vectors
one features part at a time, so memory holds the index and one part; with
faiss's GPU build and GPUs present it builds sharded over every GPU. Indexes
are saved with FAISS's own write_index/read_index plus a JSON sidecar: the
keys in index order (a .npz's rows), or, for a features folder, the folder's
signature (the ids are its generated rows in store order, so no key list of
millions is written or read). `neighbours` is the retrieval every embedding
scorer uses: top-k generated rows of each real embedding, with exact search
(part by part for a folder) filling whatever an approximate index could not,
and lossy (PQ) similarities re-ranked exactly.
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

from fingerprint.core.config import check_fields, exists_error, option
from fingerprint.core.distributed import seed_everything, set_threads
from fingerprint.core.errors import FingerprintError
from fingerprint.core.files import atomic_path, check_writable, read_json, write_json
from fingerprint.core.logs import JsonlLogger
from fingerprint.embedding.features import ArrayGallery, Features, FeatureStore, Gallery, is_store

log = logging.getLogger(__name__)

MIN_POINTS_PER_CENTROID = 39
#: a lossy (PQ/SQ) index is asked for REFINE x k candidates, re-ranked exactly, cut to k
REFINE = 4
_IVF = re.compile(r"IVF(\d+)")


@dataclass(kw_only=True)
class IndexConfig:
    """Options of the index stage (`fingerprint index`)."""

    SECTION = "index"

    features: Path = option(help="features from 'fingerprint embed': a features folder (per-shard parts) or a .npz")
    out: Path = option(help="index file to write, e.g. RUN/index/test.faiss (+ .json sidecar)")
    index_factory: str = option(
        "Flat",
        help="FAISS factory string, inner product: Flat (exact), IVF64,Flat, IVF1024,PQ16 (millions of vectors), "
        "HNSW32; IVF nlist is capped at N // 39",
    )
    nprobe: int | None = option(None, min=1, help="IVF lists searched per query (default min(nlist, 16))")
    ef_search: int | None = option(None, min=1, help="HNSW search depth (default 64)")
    train_size: int = option(
        200_000, min=1, help="vectors in the seeded sample an IVF/PQ index is trained on (the rest are only added)"
    )
    recall_k: int = option(10, min=1, help="k for recall@k against exact search")
    recall_queries: int = option(
        1000, min=1, help="queries sampled for recall@k: real embeddings first, then generated ones"
    )
    gpu: bool = option(
        True, help="build on faiss GPU, sharded over every GPU, when faiss has GPU support and GPUs are present"
    )
    threads: int | None = option(None, min=1, help="FAISS/torch CPU threads (default: all cores)")
    log: Path | None = option(None, help="append a JSON-lines record here")
    seed: int = option(0, help="seeds the training sample, IVF k-means and the recall sample")
    force: bool = option(False, help="replace the output if it exists")

    def __post_init__(self) -> None:
        check_fields(self)


def open_features(path: str | Path) -> tuple[Gallery, np.ndarray, list[str] | None, dict]:
    """(generated gallery, real embeddings, the gallery's keys for a keyed sidecar or None, sidecar ids) of a
    features folder (rows addressed by store position) or .npz (rows addressed by key)."""
    if is_store(path):
        store = FeatureStore.open(path)
        real = store.load(role="real", fmaps=False).embeddings
        return store.gallery(), real, None, {"ids": "features", "features_signature": store.signature()}
    feats = Features.load(path, fmaps=False)
    gen = feats.select(role="generated")
    return ArrayGallery.of(gen), feats.select(role="real").embeddings, gen.keys.tolist(), {"ids": "keys"}


def run_index(cfg: IndexConfig) -> dict:
    """Index the generated embeddings of `cfg.features` into `cfg.out` (+ sidecar); return the sidecar's meta.

    The index is trained on a seeded sample and filled part by part, so memory
    holds the index and one part, not every vector.
    """
    if Path(cfg.out).exists() and not cfg.force:
        raise exists_error(cfg, cfg.out)
    check_writable(Path(cfg.out).parent)
    seed_everything(cfg.seed)
    set_threads(cfg.threads)
    t0 = time.perf_counter()
    gallery, real, keys, ids = open_features(cfg.features)
    if len(gallery) == 0:
        raise FingerprintError(f"{cfg.features}: no generated images to index")
    built: dict = {}
    index, factory, gpus = build_gallery_index(
        gallery, cfg.index_factory, seed=cfg.seed, nprobe=cfg.nprobe, ef_search=cfg.ef_search,
        train_size=cfg.train_size, gpu=cfg.gpu, stats=built,
    )  # fmt: skip
    meta = {"factory": factory, "requested_factory": cfg.index_factory, "features": str(cfg.features), "gpus": gpus}
    k = min(cfg.recall_k, len(gallery))
    t1 = time.perf_counter()
    if factory != "Flat":
        queries = recall_queries(real, gallery, cfg.recall_queries, cfg.seed)
        meta["recall"] = {"k": k, "queries": len(queries), "value": recall_at_k(index, gallery, queries, k)}
        if not exact_distances(index):  # what the scorers get: REFINE x k candidates re-ranked exactly
            meta["recall"] |= {"refined": recall_at_k(index, gallery, queries, k, refined=True), "refine": REFINE}
        log.info("recall@%d against exact search over %d queries: %s", k, len(queries), meta["recall"])
    else:
        meta["recall"] = {"k": k, "queries": 0, "value": 1.0, "exact": True}
    meta["seconds"] = {**built, "recall": round(time.perf_counter() - t1, 3)}
    save_index(index, cfg.out, keys, meta={**meta, **ids})
    seconds = time.perf_counter() - t0
    log.info("indexed %d generated embeddings (%s) in %.2f s -> %s", len(gallery), factory, seconds, cfg.out)
    JsonlLogger(cfg.log).log(
        stage="index", seconds=round(seconds, 3), n=len(gallery), factory=factory, recall=meta["recall"]["value"]
    )
    return meta


def recall_queries(real: np.ndarray, gallery: Gallery, n: int, seed: int) -> np.ndarray:
    """Up to `n` query embeddings for the recall check: the real images (the actual queries), then generated ones."""
    rng = np.random.default_rng(seed)
    if len(real) >= n:
        return real[np.sort(rng.choice(len(real), n, replace=False))] if len(real) > n else real
    extra = min(n - len(real), len(gallery))
    rows = np.sort(rng.choice(len(gallery), extra, replace=False))
    return np.concatenate([real, gallery.embeddings_at(rows)]) if extra else real


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


def new_index(
    dim: int, factory: str, *, seed: int = 0, nprobe: int | None = None, ef_search: int | None = None
) -> faiss.Index:
    """An empty inner-product index of `factory` (already capped), with IVF/HNSW search settings and seeded k-means."""
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise FingerprintError(f"index: bad index factory {factory!r} ({_faiss_msg(e)})") from None
    ivf = _ivf(index)
    if ivf is not None:
        ivf.cp.seed = int(seed)
        ivf.nprobe = int(nprobe) if nprobe else min(ivf.nlist, 16)
    hnsw = _hnsw(index)
    if hnsw is not None:
        hnsw.hnsw.efSearch = int(ef_search) if ef_search else 64
    for part in (faiss.downcast_index(index), faiss.downcast_index(ivf) if ivf is not None else None):
        if hasattr(part, "do_polysemous_training"):
            # the factory turns on polysemous training for PQ: a codebook re-ordering for Hamming-filtered
            # search, which is never used here, and which took 19 s of 19 s training "IVF8,PQ4" on 400 vectors
            part.do_polysemous_training = False
    return index


def _train(index: faiss.Index, x: np.ndarray, factory: str) -> None:
    if not index.is_trained:
        try:
            index.train(x)
        except RuntimeError as e:
            raise FingerprintError(f"index: cannot train {factory!r} on {len(x)} vectors ({_faiss_msg(e)})") from None


def build_index(
    vectors: np.ndarray,
    factory: str = "Flat",
    *,
    seed: int = 0,
    nprobe: int | None = None,
    ef_search: int | None = None,
) -> faiss.Index:
    """An inner-product index over in-memory `vectors` (normalised to unit length first).

    IVF: k-means seeded with `seed`, nlist capped (see module doc), `nprobe`
    lists searched (default: min(nlist, 16)). HNSW: `ef_search` (default 64).
    The factory string actually used is `cap_factory(factory, len(vectors))`.
    """
    x = as_unit(vectors)
    if len(x) == 0:
        raise FingerprintError("index: no vectors to index")
    used = cap_factory(factory, len(x))
    index = new_index(x.shape[1], used, seed=seed, nprobe=nprobe, ef_search=ef_search)
    _train(index, x, used)
    index.add(x)
    return index


def training_sample(gallery: Gallery, size: int, seed: int) -> np.ndarray:
    """Unit vectors of a seeded sample of `size` gallery rows (every row, in order, when there are fewer)."""
    n = len(gallery)
    if n <= size:
        return np.concatenate([as_unit(chunk) for _, chunk in gallery.chunks()])
    rows = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    return as_unit(gallery.embeddings_at(rows))


def build_gallery_index(
    gallery: Gallery,
    factory: str = "Flat",
    *,
    seed: int = 0,
    nprobe: int | None = None,
    ef_search: int | None = None,
    train_size: int = 200_000,
    gpu: bool = True,
    stats: dict | None = None,
) -> tuple[faiss.Index, str, int]:
    """(index, factory used, GPUs used) over every gallery row, in row order, with bounded memory.

    Trained (IVF k-means, PQ codebooks) on a seeded sample of `train_size`
    rows, then filled chunk by chunk (one features part at a time). With
    `gpu`, faiss's GPU build and GPUs present, it is built sharded over every
    GPU and copied back to the CPU to be saved. `stats` (if given) receives
    the seconds spent training and adding.
    """
    if len(gallery) == 0:
        raise FingerprintError("index: no vectors to index")
    used = cap_factory(factory, len(gallery))
    index = new_index(gallery.dim, used, seed=seed, nprobe=nprobe, ef_search=ef_search)
    t0 = time.perf_counter()
    if not index.is_trained:
        _train(index, training_sample(gallery, train_size, seed), used)
    t1 = time.perf_counter()
    target, gpus = to_gpus(index) if gpu else (index, 0)
    for _, chunk in gallery.chunks():
        if len(chunk):
            target.add(as_unit(chunk))
    if stats is not None:
        stats.update(train=round(t1 - t0, 3), add=round(time.perf_counter() - t1, 3))
    return (faiss.index_gpu_to_cpu(target) if gpus else target), used, gpus


def to_gpus(index: faiss.Index) -> tuple[faiss.Index, int]:
    """`index` sharded over every GPU when faiss was built with GPU support and GPUs are present, else as is.

    Not exercised by the CPU test suite (faiss-cpu has no GPU build); see docs/scale.md.
    """
    n = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if n < 1 or not hasattr(faiss, "GpuMultipleClonerOptions"):
        return index, 0
    options = faiss.GpuMultipleClonerOptions()
    options.shard = True
    options.useFloat16 = True
    try:
        return faiss.index_cpu_to_all_gpus(index, co=options), n
    except RuntimeError as e:
        log.warning("index: staying on the CPU (%s has no GPU version: %s)", type(index).__name__, _faiss_msg(e))
        return index, 0


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


def exact_topk(gallery: Gallery | np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (cosine sims (Q,k), gallery rows (Q,k)) over a gallery, one chunk (features part) at a time.

    Each chunk is searched exactly and the per-chunk results merged in a
    faiss ResultHeap, so memory holds one chunk, not the whole gallery.
    """
    if isinstance(gallery, np.ndarray):
        return exact_search(gallery, queries, k)
    blocks = list(gallery.chunks()) if isinstance(gallery, ArrayGallery) else None
    if blocks is not None and len(blocks) == 1:
        return exact_search(blocks[0][1], queries, k)
    k = min(int(k), len(gallery))
    q = as_unit(queries)
    heap = faiss.ResultHeap(len(q), k, keep_max=True)
    for start, chunk in blocks or gallery.chunks():
        if len(chunk):
            sims, ids = exact_search(chunk, q, min(k, len(chunk)))
            heap.add_result(np.ascontiguousarray(sims), np.where(ids >= 0, ids + start, -1))
    heap.finalize()
    return heap.D.astype(np.float32), heap.I.astype(np.int64)


def recall_at_k(
    index: faiss.Index, vectors: Gallery | np.ndarray, queries: np.ndarray, k: int, *, refined: bool = False
) -> float:
    """Share of the exact top-k ids (over `vectors` or a gallery, in index order) that `index` also returns
    (`refined`: that `neighbours` returns, i.e. after a lossy index's exact re-ranking)."""
    if refined:
        _, approx = neighbours(queries, vectors, index, k=k)
    else:
        _, approx = search(index, queries, k)
    _, exact = exact_topk(vectors, queries, k)
    hits = sum(len(set(a[a >= 0]) & set(e)) for a, e in zip(approx, exact))
    return float(hits / exact.size)


def sidecar_path(path: str | Path) -> Path:
    """`index/generated.faiss` -> `index/generated.json`."""
    return Path(path).with_suffix(".json")


def save_index(index: faiss.Index, path: str | Path, keys: Sequence[str] | None, *, meta: dict | None = None) -> Path:
    """write_index to `path` and a JSON sidecar: the keys in index order, or (keys None) the features folder
    whose generated rows the ids are (`meta["features_signature"]`), plus `meta` (factory, recall, ...).

    Both are written atomically; load_index checks they match.
    """
    path = Path(path)
    if keys is not None:
        keys = [str(k) for k in keys]
        if len(keys) != index.ntotal:
            raise FingerprintError(f"{path}: {len(keys)} keys for an index of {index.ntotal} vectors")
    elif not (meta or {}).get("features_signature"):
        raise FingerprintError(f"{path}: an index without keys must name the features folder it was built from")
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


def load_index(path: str | Path, *, mmap: bool = False) -> tuple[faiss.Index, list[str] | None]:
    """read_index + the sidecar's keys (None: ids are rows of the features folder it names); checks they match.

    `mmap` maps large indexes instead of reading them into memory.
    """
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
    meta = meta if isinstance(meta, dict) else {}
    keys = meta.get("keys")
    by_row = keys is None and bool(meta.get("features_signature")) and meta.get("ntotal") == index.ntotal
    if not by_row and (not isinstance(keys, list) or len(keys) != index.ntotal):
        n = len(keys) if isinstance(keys, list) else "no"
        raise FingerprintError(f"{side}: {n} keys for an index of {index.ntotal} vectors (stale sidecar?)")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise FingerprintError(f"{path}: index metric is not inner product")
    return index, None if keys is None else [str(k) for k in keys]


def read_index_meta(path: str | Path) -> dict:
    """The sidecar of a saved index (keys, factory, recall, ...)."""
    return read_json(sidecar_path(path))


# ----------------------------------------------------------------------------- retrieval for scorers


def neighbours(
    real_emb: np.ndarray, gen: np.ndarray | Gallery, index=None, *, k: int, refine: int = REFINE
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k generated neighbours of each real embedding: (cosine sims (R,k) float32, gen rows (R,k) int64).

    `gen` is the generated embeddings or a `Gallery` (a features folder's
    generated rows, read part by part). `index`: None (exact search), a faiss
    index whose ids are gen rows, or `(index, id -> gen row)` as
    `resolve_index` makes from a keyed sidecar. Rows an approximate index
    could not fill (id -1) are filled by exact search, so every row has k
    neighbours. A lossy index (PQ, SQ codes) is asked for `refine` x k
    candidates, which are re-ranked by their exact cosine (their embeddings
    read from the gallery) and cut to k, as faiss's IndexRefine does but
    without holding every vector in memory.
    """
    gallery = gen if isinstance(gen, Gallery) else ArrayGallery(np.asarray(gen))
    if len(gallery) == 0:
        raise FingerprintError("score: no generated images to compare with")
    k = min(int(k), len(gallery))
    index, id_rows = index if isinstance(index, tuple) else (index, None)
    if index is None:
        return exact_topk(gallery if not isinstance(gen, np.ndarray) else gen, real_emb, k)
    if index.ntotal != len(gallery):
        raise FingerprintError(
            f"score: the index holds {index.ntotal} vectors, the features {len(gallery)} generated images"
        )
    lossy = not exact_distances(index)
    kk = min(len(gallery), k * max(1, int(refine))) if lossy else k
    sims, ids = search(index, real_emb, kk)
    bad = (ids[:, :k] < 0).any(axis=1)
    rows = np.where(ids >= 0, ids if id_rows is None else id_rows[np.maximum(ids, 0)], -1)
    if bad.any():
        log.info(
            "score: %d queries got fewer than %d neighbours from the index; using exact search for them",
            int(bad.sum()),
            k,
        )
        sims[bad], rows[bad] = exact_topk(gallery, real_emb[bad], kk)
    if lossy:
        sims, rows = rerank(gallery, real_emb, rows)
    return sims[:, :k], rows[:, :k]


def exact_distances(index: faiss.Index) -> bool:
    """True when the index's returned similarities are exact (Flat storage: Flat, IVF-Flat, HNSW-Flat)."""
    ivf = _ivf(index)
    inner = faiss.downcast_index(ivf) if ivf is not None else faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexHNSW):
        inner = faiss.downcast_index(inner.storage)
    return isinstance(inner, (faiss.IndexFlat, faiss.IndexIVFFlat))


def rerank(gallery: Gallery, queries: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine of each query with its candidate rows (Q,k), re-sorted best first (missing rows, -1, last)."""
    q = as_unit(queries)
    cand = gallery.embeddings_at(np.maximum(rows, 0)).astype(np.float32)
    cand /= np.maximum(np.linalg.norm(cand, axis=-1, keepdims=True), 1e-12)
    sims = np.einsum("qd,qkd->qk", q, cand).astype(np.float32)
    sims[rows < 0] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")
    return np.take_along_axis(sims, order, 1), np.take_along_axis(rows, order, 1)


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
