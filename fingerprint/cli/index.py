"""Build a FAISS index over the generated embeddings of a features file (exact by default)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from fingerprint.cli.base import run_command
from fingerprint.embed import Features
from fingerprint.index import build_index, cap_factory, recall_at_k, save_index
from fingerprint.utils import FingerprintError, JsonlLogger, seed_everything, set_threads

NAME = "index"
log = logging.getLogger(__name__)


def add_arguments(p):
    p.add_argument("--features", required=True, help="features .npz from 'fingerprint embed'")
    p.add_argument("--out", required=True, help="index file to write, e.g. RUN/index/test.faiss (+ .json sidecar)")
    p.add_argument(
        "--index-factory",
        default="Flat",
        help="FAISS factory string, inner product: Flat (exact, default), IVF64,Flat, IVF64,PQ16, HNSW32; "
        "IVF nlist is capped at N // 39",
    )
    p.add_argument("--nprobe", type=int, help="IVF lists searched per query (default min(nlist, 16))")
    p.add_argument("--ef-search", type=int, help="HNSW search depth (default 64)")
    p.add_argument("--recall-k", type=int, default=10, help="k for recall@k against exact search")
    p.add_argument(
        "--recall-queries",
        type=int,
        default=1000,
        help="queries sampled for recall@k: real embeddings first, then generated ones",
    )
    p.add_argument("--threads", type=int, help="FAISS/torch CPU threads (default: all cores)")
    p.add_argument("--log", help="append a JSON-lines record here")
    p.add_argument("--seed", type=int, default=0, help="seeds IVF k-means and the recall sample")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")


def recall_queries(feats: Features, n: int, seed: int) -> np.ndarray:
    """Up to `n` query embeddings for the recall check: the real images (the actual queries), then generated."""
    real = feats.select(role="real").embeddings
    gen = feats.select(role="generated").embeddings
    pool = np.concatenate([real, gen]) if len(real) < n else real
    if len(pool) > n:
        pool = pool[np.sort(np.random.default_rng(seed).choice(len(pool), n, replace=False))]
    return pool


def run(args) -> int:
    out = Path(args.out)
    if out.exists() and not args.force:
        raise FingerprintError(f"{out}: already exists (use --force to replace it)")
    seed_everything(args.seed)
    set_threads(args.threads)
    t0 = time.perf_counter()
    feats = Features.load(args.features, fmaps=False)
    gen = feats.select(role="generated")
    if len(gen) == 0:
        raise FingerprintError(f"{args.features}: no generated images to index")
    factory = cap_factory(args.index_factory, len(gen))
    index = build_index(gen.embeddings, factory, seed=args.seed, nprobe=args.nprobe, ef_search=args.ef_search)
    meta = {"factory": factory, "requested_factory": args.index_factory, "features": str(args.features)}
    if factory != "Flat":
        queries = recall_queries(feats, args.recall_queries, args.seed)
        k = min(args.recall_k, len(gen))
        meta["recall"] = {"k": k, "queries": len(queries), "value": recall_at_k(index, gen.embeddings, queries, k)}
        log.info("recall@%d against exact search over %d queries: %.4f", k, len(queries), meta["recall"]["value"])
    else:
        meta["recall"] = {"k": min(args.recall_k, len(gen)), "queries": 0, "value": 1.0, "exact": True}
    save_index(index, out, gen.keys.tolist(), meta=meta)
    seconds = time.perf_counter() - t0
    log.info("indexed %d generated embeddings (%s) in %.2f s -> %s", len(gen), factory, seconds, out)
    JsonlLogger(args.log).log(
        stage="index", seconds=round(seconds, 3), n=len(gen), factory=factory, recall=meta["recall"]["value"]
    )
    return 0


def main(argv=None) -> int:
    return run_command(NAME, add_arguments, run, argv, __doc__)
